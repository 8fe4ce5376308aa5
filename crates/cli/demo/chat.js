// One chat widget of the demo page, in a frame: signed in as alice (#alice) or bob
// (#bob) with a token from the demo's token endpoint.
(function () {
  "use strict";
  var user = location.hash === "#bob" ? "bob" : "alice";
  var peer = user === "alice" ? "bob" : "alice";
  document.getElementById("who").textContent = user;
  document.getElementById("peer").textContent = peer;
  document.body.setAttribute("data-user", user);

  function getToken() {
    return fetch("/demo/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user: user }),
      credentials: "omit",
      cache: "no-store",
    }).then(function (r) {
      if (!r.ok) throw new Error("no demo token (" + r.status + ")");
      return r.json();
    }).then(function (answer) { return answer.token; });
  }

  SwitchboardChat.on("state", function (e) {
    document.getElementById("chat-state").textContent = e.state;
    document.body.setAttribute("data-chat", e.state);
  });
  SwitchboardChat.init({ getToken: getToken, open: true }).then(function () {
    document.getElementById("write").addEventListener("click", function () {
      SwitchboardChat.openDialog(peer);
    });
  }, function (e) {
    document.getElementById("chat-state").textContent = "cannot start: " + e.message;
  });
})();
