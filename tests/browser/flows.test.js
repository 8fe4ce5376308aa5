// Flows F1, F4 and F5 in a real browser (Debian's chromium driven by Playwright):
// nats-server, the AMI simulator, ami-bridge, hook-runner (with the example rules of
// examples/rules) and ws-push run as processes; the page is ws-push's demo page,
// signed in by typing the token into its form (never in the URL).
//
// - F1 screen pop: a call rings 101 on the simulated PBX; the page of operator 101
//   shows the caller's number and name.
// - F4 admin command: the admin's page asks for `ping 127.0.0.1`; the output appears
//   on that page and not on the same admin's other tab.
// - F5 site notification: a site's HTTP call pushes to a user with two tabs open;
//   both show it; the answer says online (2 connections), then offline once closed.
//
// Needs: nats-server >= 2.10 on PATH, /usr/bin/chromium (or CHROMIUM), /usr/bin/ping,
// the debug binaries in CARGO_TARGET_DIR (scripts/test.sh builds them first).
// Run: cd tests/browser && npm ci && npm test

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { CHROMIUM, binary as bin, freePort, jwt, portOpen, ready, sleep, startNats, waitFor } from "./support.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "../..");
const SECRET = "browser-flows-secret";
const SITE_KEY = "browser-flows-site-key";
const ARTIFACTS = join(here, "artifacts");

const token = (sub, extra = {}) => jwt(SECRET, { sub, exp: Math.floor(Date.now() / 1000) + 600, ...extra });

// Everything the flows need, started once for the file.
const stack = { children: [], work: mkdtempSync(join(tmpdir(), "sb-browser-flows-")) };

function start(name, args, env = {}) {
  const log = openSync(join(stack.work, `${name}.log`), "w");
  const child = spawn(bin(name), args, {
    cwd: stack.work,
    env: { ...process.env, RUST_LOG: "", ...env },
    stdio: ["ignore", log, log],
  });
  stack.children.push(child);
  return child;
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  for (const name of ["ami-sim", "ami-bridge", "hook-runner", "ws-push"]) {
    assert.ok(existsSync(bin(name)), `build ${name} first (${bin(name)}): cargo build --workspace --bins`);
  }
  const natsServer = await startNats(stack.work);
  stack.children.push(natsServer.child);
  const nats = { SB_NATS__URL: natsServer.url, SB_GRPC__LISTEN: "127.0.0.1:0" };
  const http = async () => `127.0.0.1:${await freePort()}`;

  stack.amiPort = await freePort();
  start("ami-sim", ["--listen", `127.0.0.1:${stack.amiPort}`]);
  await waitFor("ami-sim", () => portOpen(stack.amiPort));
  writeFileSync(join(stack.work, "ami-bridge.toml"),
    `[[pbx]]\nid = "pbx1"\nhost = "127.0.0.1"\nport = ${stack.amiPort}\nusername = "sb"\nsecret = "sbsecret"\n`);
  const amiHttp = await http();
  start("ami-bridge", ["--config", join(stack.work, "ami-bridge.toml")], { ...nats, SB_HTTP__LISTEN: amiHttp });

  const rules = join(stack.work, "rules");
  mkdirSync(rules);
  for (const file of ["f1-screen-pop.yaml", "f4-admin-ping.yaml"]) {
    copyFileSync(join(root, "examples/rules", file), join(rules, file));
  }
  const hookHttp = await http();
  start("hook-runner", [], { ...nats, SB_HTTP__LISTEN: hookHttp, SB_RULES__DIR: rules });

  stack.pushPort = await freePort();
  start("ws-push", [], {
    ...nats,
    SB_HTTP__LISTEN: `127.0.0.1:${stack.pushPort}`,
    SB_AUTH__JWT_SECRET: SECRET,
    SB_API__KEYS: `["${SITE_KEY}"]`,
  });
  await ready(`127.0.0.1:${stack.pushPort}`);
  await ready(amiHttp);
  await ready(hookHttp);
  stack.browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  if (stack.browser) await stack.browser.close();
  for (const child of stack.children) child.kill("SIGKILL");
});

// Speaks AMI to the simulator as a second manager: logs in and places the call
// `originate` (the simulator's events reach ami-bridge's session too); resolves with
// the Originate's `Response`.
function amiCall(port, originate) {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    let buffer = "";
    let sent = false;
    socket.setEncoding("utf8");
    socket.on("error", reject);
    socket.on("data", (chunk) => {
      buffer += chunk;
      const messages = buffer.split(/\r?\n\r?\n/);
      buffer = messages.pop();
      for (const message of messages) {
        if (!sent && message.includes("Message: Authentication accepted")) {
          const headers = Object.entries(originate).map(([k, v]) => `${k}: ${v}\r\n`).join("");
          socket.write(`Action: Originate\r\nActionID: call\r\n${headers}\r\n`);
          sent = true;
        } else if (/^ActionID: call\r?$/m.test(message)) {
          const response = /^Response: (\w+)\r?$/m.exec(message);
          if (response) { socket.end(); resolve(response[1]); }
        }
      }
    });
    socket.write("Action: Login\r\nActionID: login\r\nUsername: sb\r\nSecret: sbsecret\r\nEvents: off\r\n\r\n");
  });
}

// Opens ws-push's demo page and signs in by typing `jwt` into its form.
async function openPage(jwtText, name) {
  const context = await stack.browser.newContext();
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.on("dialog", (d) => { page.errors.push(`dialog: ${d.message()}`); d.dismiss(); });
  await page.goto(`http://127.0.0.1:${stack.pushPort}/demo`);
  await page.fill("#token", jwtText);
  await page.click("#connect");
  await page.waitForFunction(() => window.demoState === "connected", null, { timeout: 20000 });
  page.shot = (label) => page.screenshot({ path: join(ARTIFACTS, `${name}-${label}.png`) });
  return { context, page };
}

const pushesOf = (page, type) =>
  page.evaluate((t) => (window.demoPushes || []).filter((m) => m.push.type === t).map((m) => m.push.data), type);

test("F1: a call ringing 101 pops up on operator 101's page with the caller's number", { timeout: 90000 }, async () => {
  const { context, page } = await openPage(token("101"), "f1-operator-101");
  const other = await openPage(token("102"), "f1-operator-102");
  const response = await amiCall(stack.amiPort, {
    Channel: "Local/101@from-internal",
    Application: "Wait",
    Data: "1",
    CallerID: '"Alice Caller" <5551234>',
  });
  assert.equal(response, "Success");
  await page.waitForFunction(() => (window.demoPushes || []).some((m) => m.push.type === "call.ringing"), null, { timeout: 30000 });
  const [pop] = await pushesOf(page, "call.ringing");
  assert.equal(pop.number, "5551234");
  assert.equal(pop.name, "Alice Caller");
  assert.equal(pop.extension, "101");
  // Shown on the page, as text.
  const log = await page.locator("#log").textContent();
  assert.ok(log.includes("5551234") && log.includes("Alice Caller"), log);
  await page.shot("screen-pop");
  assert.deepEqual(await pushesOf(other.page, "call.ringing"), [], "102's page gets no pop for 101");
  assert.deepEqual(page.errors, []);
  await context.close();
  await other.context.close();
});

test("F4: the admin's page runs ping and the output appears on that page only", { timeout: 90000 }, async () => {
  const claims = { admin: true, topics: ["admin-ping"] };
  const { context, page } = await openPage(token("admin1", claims), "f4-admin");
  const otherTab = await openPage(token("admin1", claims), "f4-admin-other-tab");
  const user = await openPage(token("user7", { topics: ["other"] }), "f4-non-admin");

  await page.fill("#topic", "admin-ping");
  await page.fill("#data", JSON.stringify({ host: "127.0.0.1" }));
  await page.click("#publish");
  await page.waitForFunction(() => (window.demoPushes || []).some((m) => m.push.type === "admin.ping.result"), null, { timeout: 30000 });
  const [result] = await pushesOf(page, "admin.ping.result");
  assert.equal(result.host, "127.0.0.1");
  assert.equal(Number(result.exitCode), 0);
  assert.ok(result.output.includes("127.0.0.1 ping statistics"), result.output);
  assert.ok((await page.locator("#log").textContent()).includes("ping statistics"));
  await page.shot("ping-output");

  // The non-admin's page is refused the topic; nothing runs for it.
  await user.page.fill("#topic", "admin-ping");
  await user.page.fill("#data", JSON.stringify({ host: "127.0.0.1" }));
  await user.page.click("#publish");
  await user.page.waitForFunction(() => document.querySelector("#log").textContent.includes("error"), null, { timeout: 20000 });
  await sleep(3000);
  assert.deepEqual(await pushesOf(otherTab.page, "admin.ping.result"), [], "the admin's other tab does not show it");
  assert.deepEqual(await pushesOf(user.page, "admin.ping.result"), []);
  assert.equal((await pushesOf(page, "admin.ping.result")).length, 1, "one run, one answer");
  assert.deepEqual(page.errors, []);
  for (const c of [context, otherTab.context, user.context]) await c.close();
});

test("F5: a site's HTTP call reaches both tabs, says online, then offline after they close", { timeout: 90000 }, async () => {
  const publish = async (text) => {
    const response = await fetch(`http://127.0.0.1:${stack.pushPort}/api/v1/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${SITE_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ target: { user: "42" }, push: { type: "notice", data: { text } } }),
    });
    assert.equal(response.status, 200);
    return response.json();
  };
  const tab1 = await openPage(token("42"), "f5-tab1");
  const tab2 = await openPage(token("42"), "f5-tab2");
  const xss = "<img src=x onerror=alert(1)> paid";
  const answer = await publish(xss);
  assert.equal(answer.online, true);
  assert.equal(answer.connections, 2);
  for (const { page } of [tab1, tab2]) {
    await page.waitForFunction(() => (window.demoPushes || []).some((m) => m.push.type === "notice"), null, { timeout: 20000 });
    assert.deepEqual(await pushesOf(page, "notice"), [{ text: xss }]);
    assert.equal(await page.locator("#log img").count(), 0, "the text stays text");
    assert.deepEqual(page.errors, [], "no script ran from the push");
  }
  await tab1.page.shot("notice");
  await tab1.context.close();
  await tab2.context.close();
  // proto3 JSON leaves out false and zero: an offline answer has neither field.
  const offline = await waitFor("the user to be offline", async () => {
    const a = await publish("anyone there?");
    return a.online ? undefined : a;
  });
  assert.equal(offline.online ?? false, false);
  assert.equal(offline.connections ?? 0, 0);
  assert.ok(offline.offset, "the push is still stored for later: it has an offset");
});
