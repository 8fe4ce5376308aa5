// The demo page of `switchboard up --demo` in a real browser (Debian's chromium driven
// by Playwright): the whole stack as a user starts it (nats-server, the AMI simulator,
// the five services, the call generator, the page server), then what docs/demo.md
// promises on the page:
// - F1: a generated call pops up on operator 101's panel with the caller's number;
// - the live feed shows call events from the `demo-events` channel;
// - F4: the admin panel's Ping shows ping's output;
// - F5: "Push to 101" shows the site's push on 101's panel and ws-push's answer that
//   101 is online;
// - F2, F3, F7 over the demo's prosody: "Send as alice" with `call 101` gets the bot's
//   answer in alice's conversation; bob's list shows a missed call on 102; "Notify
//   alice" reaches alice through the rule site-to-im; an XSS payload sent as alice
//   shows as characters;
// - F6: alice writes to bob in the chat widget frames; bob reads it, as text (an XSS
//   payload stays characters); the admin console, opened from the page, signed in
//   without a token in any URL, shows both messages in its live monitor;
// - no CSP violation, page error or JS dialog anywhere; SIGINT stops everything.
//
// Needs: what flows.test.js needs, plus the `switchboard` binary and every service's
// debug binary (scripts/test.sh builds them first).
// Run: cd tests/browser && npm ci && npm test

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { CHROMIUM, binary, freePort, waitFor, watch, watchedPage } from "./support.mjs";

const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), "artifacts");
const SERVICES = ["ami-bridge", "im-bridge", "ws-push", "chat-store", "hook-runner"];
const XSS = "<img src=x onerror=alert(1)>";

const running = { children: [], browser: null };
after(async () => {
  if (running.browser) await running.browser.close();
  // `up` runs in a process group of its own: killing the group takes the services,
  // nats-server, prosody and the simulator with it even when the test failed early.
  for (const child of running.children) {
    try { process.kill(-child.pid, "SIGKILL"); } catch { /* already gone */ }
  }
});

// `switchboard up --demo` on free ports in a temp dir; resolves once it printed the
// page's URL, with its output so far kept in `log`.
async function startDemo() {
  for (const name of ["switchboard", "ami-sim", ...SERVICES]) {
    assert.ok(existsSync(binary(name)), `build ${name} first (${binary(name)}): cargo build --workspace --bins`);
  }
  const work = mkdtempSync(join(tmpdir(), "sb-browser-demo-"));
  const configDir = join(work, "config");
  mkdirSync(configDir);
  for (const service of SERVICES) {
    writeFileSync(join(configDir, `${service}.toml`),
      `[http]\nlisten = "127.0.0.1:${await freePort()}"\n[grpc]\nlisten = "127.0.0.1:${await freePort()}"\n`);
  }
  const pagePort = await freePort();
  const child = spawn(binary("switchboard"), [
    "up", "--demo",
    "--demo-call-interval-secs", "1",
    "--ready-timeout-secs", "60",
    "--nats-port", String(await freePort()),
    "--demo-listen", `127.0.0.1:${pagePort}`,
    "--data-dir", join(work, "data"),
    "--config-dir", configDir,
  ], { env: { ...process.env, NO_COLOR: "1" }, stdio: ["ignore", "pipe", "pipe"], detached: true });
  running.children.push(child);
  const demo = { child, log: "", url: `http://127.0.0.1:${pagePort}/` };
  child.stdout.on("data", (chunk) => { demo.log += chunk; });
  child.stderr.on("data", (chunk) => { demo.log += chunk; });
  await waitFor("`demo: open` in switchboard's output", async () => {
    if (child.exitCode !== null) throw new Error(`switchboard up exited (${child.exitCode}):\n${demo.log}`);
    return demo.log.includes("demo: open");
  }, 120000).catch((e) => { throw new Error(`${e.message}\n${demo.log}`); });
  return demo;
}

test("the demo page shows F1 to F7 live, with no CSP violation", { timeout: 240000 }, async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  const demo = await startDemo();
  running.browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  const context = await running.browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const problems = [];
  const page = await watchedPage(context, problems);
  await page.goto(demo.url);
  assert.doesNotMatch(page.url(), /token/i, "no token in the page's URL");
  await page.waitForSelector("body[data-push=connected]", { timeout: 30000 });

  // F1: the call generator rings 101 about every other second. (The pop's state also
  // follows answered/ended events for 101, which can come first: wait for a pop.)
  await page.waitForSelector("#pop-history li", { timeout: 60000 });
  assert.match(await page.textContent("#pop-number"), /^\+?\d{3,}$/, "the caller's number pops up");

  // The feed: call events mirrored to the demo-events channel.
  await page.waitForFunction(() => document.querySelectorAll("#events li.call").length >= 3, null, { timeout: 60000 });

  // F4: ping, answered to this page's admin connection.
  await page.click("#ping-run");
  await page.waitForSelector("body[data-ping=done]", { timeout: 60000 });
  assert.match(await page.textContent("#ping-state"), /exit code 0/);
  assert.match(await page.textContent("#ping-output"), /127\.0\.0\.1/);

  // F5: the site pushes to 101 over ws-push's HTTP API and learns 101 is online.
  await page.fill("#notify-text", "Your payment was received");
  await page.click("#notify-send");
  await page.locator("#notices li", { hasText: "[shop] Your payment was received" }).waitFor({ timeout: 30000 });
  await page.waitForFunction(() => /^ws-push: 101 is online on [1-9]\d* connection/.test(document.getElementById("notify-state").textContent), null, { timeout: 30000 });

  // F2, F3, F7: the IM panel, over the demo's prosody.
  await page.waitForSelector("#im-panel[data-im=on]", { timeout: 30000 });
  assert.match(await page.textContent("#im-fifo"), /^echo '\/msg main alice@example\.org hello' > \/.+im\.fifo$/);
  await page.fill("#im-text", "call 101");
  await page.click("#im-send");
  await page.waitForFunction(() => document.getElementById("im-state").textContent === "sent", null, { timeout: 30000 });
  await page.locator("#im-alice li.im-out", { hasText: "alice → bot: call 101" }).first().waitFor({ timeout: 60000 });
  await page.locator("#im-alice li.im-in", { hasText: /bot → alice: Calling 101: Success/ }).first().waitFor({ timeout: 60000 });
  await page.locator("#im-bob li", { hasText: /bot → bob: Missed call on 102 from \d+/ }).first().waitFor({ timeout: 60000 });
  await page.fill("#site-text", "Your parcel is on its way");
  await page.click("#site-send");
  await page.locator("#im-alice li", { hasText: "bot → alice: [shop] Your parcel is on its way" }).waitFor({ timeout: 60000 });
  await page.fill("#im-text", XSS);
  await page.click("#im-send");
  await page.locator("#im-alice li", { hasText: `alice → bot: ${XSS}` }).waitFor({ timeout: 60000 });
  assert.equal(await page.locator("#im-panel img").count(), 0, "IM text is never markup");

  // F6: alice writes to bob in the widget frames; bob opens the dialog.
  const alice = page.frameLocator("#chat-alice");
  const bob = page.frameLocator("#chat-bob");
  await alice.locator(".sbc-root[data-live=connected]").waitFor({ state: "attached", timeout: 30000 });
  await bob.locator(".sbc-root[data-live=connected]").waitFor({ state: "attached", timeout: 30000 });
  await alice.locator("#write").click();
  await alice.locator(".sbc-pane:not([hidden]) .sbc-input").waitFor();
  await alice.locator(".sbc-input").fill("Hello from the demo");
  await alice.locator(".sbc-input").press("Enter");
  await alice.locator(".sbc-input").fill(XSS);
  await alice.locator(".sbc-input").press("Enter");
  // The frame is smaller than the widget's panel: the dialog row can lie below the
  // frame's fold, where a pointer cannot reach it; a click event does.
  await bob.locator(".sbc-dialog[data-peer='alice']").dispatchEvent("click", {}, { timeout: 30000 });
  await bob.locator(".sbc-messages .sbc-text", { hasText: "Hello from the demo" }).waitFor({ timeout: 30000 });
  await bob.locator(".sbc-messages .sbc-text", { hasText: XSS }).waitFor({ timeout: 30000 });
  assert.equal(await bob.locator(".sbc-messages .sbc-text img").count(), 0, "user text is never markup");

  // The chat admin console, opened from the page in a new tab, signed in.
  const [console_] = await Promise.all([context.waitForEvent("page"), page.click("#open-admin")]);
  watch(console_, problems);
  await console_.waitForLoadState();
  assert.doesNotMatch(console_.url(), /token/i, "no token in the console's URL");
  await console_.waitForFunction(
    (texts) => {
      const shown = [...document.querySelectorAll("#monitor-list li.message .text")].map((n) => n.textContent);
      return texts.every((t) => shown.includes(t));
    },
    ["Hello from the demo", XSS],
    { timeout: 30000 },
  );
  assert.equal(await console_.locator("#monitor-list .text img").count(), 0);
  await page.screenshot({ path: join(ARTIFACTS, "demo.png"), fullPage: true });

  assert.deepEqual(problems, [], "no CSP violation, page error or dialog on the page or the console");

  // Ctrl-C stops the whole stack.
  demo.child.kill("SIGINT");
  await waitFor("switchboard up to exit after SIGINT", async () => demo.child.exitCode !== null, 60000);
  assert.equal(demo.child.exitCode, 0, demo.log);
});
