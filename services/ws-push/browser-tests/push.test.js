// The JS client in Debian's chromium (Playwright): the demo page connects, receives a
// push, and survives a restart of its server without losing a message.
//
// Needs: nats-server >= 2.10 on PATH, /usr/bin/chromium (or CHROMIUM), the ws-push
// binary (WS_PUSH_BIN, default: the debug build in CARGO_TARGET_DIR).
// Run: cd services/ws-push/browser-tests && npm install && npm test

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM, binary, freePort, jwt as signed, ready as readyAt, sleep, startNats, waitFor } from "../../../tests/browser/support.mjs";

const SECRET = "browser-test-secret";
const API_KEY = "browser-test-key";
const WS_PUSH = process.env.WS_PUSH_BIN || binary("ws-push");
const jwt = (claims) => signed(SECRET, claims);

function startWsPush(natsUrl, httpPort) {
  const child = spawn(WS_PUSH, [], {
    env: {
      ...process.env,
      SB_NATS__URL: natsUrl,
      SB_HTTP__LISTEN: `127.0.0.1:${httpPort}`,
      SB_GRPC__LISTEN: "127.0.0.1:0",
      SB_AUTH__JWT_SECRET: SECRET,
      SB_API__KEYS: `["${API_KEY}"]`,
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  return child;
}

const ready = (port) => readyAt(`127.0.0.1:${port}`);

async function publish(port, user, type, data) {
  const response = await fetch(`http://127.0.0.1:${port}/api/v1/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ target: { user }, push: { type, data } }),
  });
  assert.equal(response.status, 200);
  return response.json();
}

test("the demo page receives pushes and survives a server restart without loss", { timeout: 120000 }, async (t) => {
  assert.ok(existsSync(WS_PUSH), `build ws-push first (${WS_PUSH})`);
  const nats = await startNats(mkdtempSync(join(tmpdir(), "ws-push-browser-")));
  t.after(() => nats.child.kill("SIGKILL"));
  const natsUrl = nats.url;

  // Node A serves the page; node B stays up to publish while A is down.
  const portA = await freePort();
  const portB = await freePort();
  let a = startWsPush(natsUrl, portA);
  const b = startWsPush(natsUrl, portB);
  t.after(() => { a.kill("SIGKILL"); b.kill("SIGKILL"); });
  await ready(portA);
  await ready(portB);

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  t.after(() => browser.close());
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const token = jwt({ sub: "browser-user", exp: Math.floor(Date.now() / 1000) + 600, channels: ["*"] });
  await page.goto(`http://127.0.0.1:${portA}/demo#token=${token}`);
  await page.waitForFunction(() => window.demoState === "connected", null, { timeout: 20000 });

  const first = await publish(portA, "browser-user", "hello", { n: 0 });
  assert.equal(first.online, true);
  await page.waitForFunction(() => (window.demoPushes || []).length === 1, null, { timeout: 20000 });
  // User text is shown as text, never as markup.
  await publish(portA, "browser-user", "hello", { n: 1, html: "<img src=x onerror=alert(1)>" });
  await page.waitForFunction(() => (window.demoPushes || []).length === 2, null, { timeout: 20000 });
  assert.equal(await page.locator("#log img").count(), 0);

  // Restart A; publish through B while A is down.
  a.kill("SIGTERM");
  await waitFor("node A to stop", async () => a.exitCode !== null || a.signalCode !== null);
  await page.waitForFunction(() => window.demoState !== "connected", null, { timeout: 20000 });
  for (let n = 2; n < 7; n++) await publish(portB, "browser-user", "hello", { n });
  a = startWsPush(natsUrl, portA);
  await ready(portA);
  await page.waitForFunction(() => (window.demoPushes || []).length >= 7, null, { timeout: 30000 });
  await publish(portB, "browser-user", "hello", { n: 7 });
  await page.waitForFunction(() => (window.demoPushes || []).length >= 8, null, { timeout: 20000 });
  await sleep(300);

  const pushes = await page.evaluate(() => window.demoPushes.map((m) => ({ n: m.push.data.n, offset: m.offset })));
  assert.deepEqual(pushes.map((p) => p.n), [0, 1, 2, 3, 4, 5, 6, 7], "every push once, in order");
  for (let i = 1; i < pushes.length; i++) assert.ok(pushes[i].offset > pushes[i - 1].offset);
  assert.deepEqual(errors, []);
});
