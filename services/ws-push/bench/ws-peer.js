// The reference peer for the broadcast benchmark: a node `ws` server that broadcasts
// every body POSTed to /publish to every connected socket (the message is serialised
// once and written to each socket in one loop).
// Usage: node ws-peer.js <port>
"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");

const port = Number(process.argv[2] || 8090);
const server = http.createServer((req, res) => {
  if (req.method === "POST" && req.url === "/publish") {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      for (const client of wss.clients) client.send(body);
      res.end("ok");
    });
    return;
  }
  res.statusCode = 404;
  res.end();
});
const wss = new WebSocketServer({ server, path: "/ws", perMessageDeflate: false });
server.listen(port, "127.0.0.1", () => console.log(`ws peer on ${port}`));
