// The chat widget and the admin console in Debian's chromium (Playwright), against
// real binaries: nats-server with JetStream, ws-push and chat-store (SQLite in a temp
// dir), and a tiny fake site answering chat-store's users URL.
//
// Alice (desktop, English) and Bob (phone-sized, Russian) chat in two browser
// contexts: text, the XSS payload, an image; ticks go sent -> delivered -> read;
// unread counters follow; typing shows; Bob blocks Alice and her next message is
// refused; Bob complains; the admin console sees every message live, resolves the
// complaint and deletes a message, which Bob's widget shows as deleted.
// Screenshots go to ./artifacts (not committed).
//
// Needs: nats-server >= 2.10 on PATH, /usr/bin/chromium (or CHROMIUM), the debug
// builds of ws-push and chat-store in CARGO_TARGET_DIR (or WS_PUSH_BIN, CHAT_STORE_BIN).
// Run: cd services/chat-store/browser-tests && npm ci && npm test

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, existsSync, openSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { CHROMIUM, binary, freePort, jwt as signed, ready as readyAt, startNats, waitFor, watchedPage } from "../../../tests/browser/support.mjs";

const SECRET = "chat-browser-test-secret";
const WS_PUSH = process.env.WS_PUSH_BIN || binary("ws-push");
const CHAT_STORE = process.env.CHAT_STORE_BIN || binary("chat-store");
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), "artifacts");
const XSS = "<img src=x onerror=alert(1)>";
const USERS = {
  101: { user_id: 101, name: "Alice Smith", login: "alice" },
  102: { user_id: 102, name: "Bob Jones", login: "bob" },
  103: { user_id: 103, name: "Carol White", login: "carol" },
  1: { user_id: 1, name: "Site Admin", login: "admin" },
};

const jwt = (claims) => signed(SECRET, claims);

const exp = () => Math.floor(Date.now() / 1000) + 3600;
const tokens = {
  alice: jwt({ sub: "101", exp: exp() }),
  bob: jwt({ sub: "102", exp: exp() }),
  carol: jwt({ sub: "103", exp: exp() }),
  admin: jwt({ sub: "1", exp: exp(), admin: true, channels: ["chat-admin"] }),
};

// The site's users URL (the seed's URL_getUsersInfo): POST users=1,2 -> JSON array;
// a LibreTranslate-compatible /translate that upper-cases the text; and a page of the
// site (another origin than chat-store's) embedding the widget with one script tag.
function startSite() {
  const asked = new Set();
  const site = { asked, chatBase: "" };
  const server = createHttpServer((req, res) => {
    if (req.method === "GET" && req.url === "/embed.html") {
      res.setHeader("content-type", "text/html; charset=utf-8");
      res.end(`<!doctype html><html><head><meta charset="utf-8"><title>Another site</title>
<link rel="stylesheet" href="${site.chatBase}/widget/switchboard-chat.css"></head>
<body><h1>Another site</h1><p>Unread: <span id="unread">?</span></p>
<script src="${site.chatBase}/widget/switchboard-chat.js"></script>
<script src="/embed.js"></script></body></html>`);
      return;
    }
    if (req.method === "GET" && req.url === "/embed.js") {
      res.setHeader("content-type", "text/javascript");
      res.end(`SwitchboardChat.on("unread", (e) => { document.getElementById("unread").textContent = e.total; });
SwitchboardChat.init({ token: window.testToken, success(chat) {
  document.getElementById("unread").textContent = chat.countNewMessagesSum();
  document.body.dataset.chat = "ready";
} });`);
      return;
    }
    let body = "";
    req.on("data", (c) => { body += c; });
    req.on("end", () => {
      res.setHeader("content-type", "application/json");
      if (req.url === "/translate") {
        const { q, target } = JSON.parse(body);
        res.end(JSON.stringify({ translatedText: `[${target}] ${q.toUpperCase()}` }));
        return;
      }
      const ids = (new URLSearchParams(body).get("users") || "").split(",").filter(Boolean);
      ids.forEach((id) => asked.add(id));
      res.end(JSON.stringify(ids.map((id) => USERS[id]).filter(Boolean)));
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(Object.assign(site, { server, port: server.address().port }))));
}

// Each service's log goes to artifacts/<name>.log, to read after a failure.
function spawnService(bin, env) {
  const log = openSync(join(ARTIFACTS, `${bin.split("/").pop()}.log`), "a");
  return spawn(bin, [], { env: { ...process.env, SB_LOG__LEVEL: "info", NO_COLOR: "1", ...env }, stdio: ["ignore", log, log] });
}

const ready = (port) => readyAt(`127.0.0.1:${port}`);

async function signIn(page, base, token, lang) {
  await page.goto(`${base}/widget/demo.html`);
  await page.fill("#token", token);
  if (lang) await page.selectOption("#lang", lang);
  await page.click("#signin button[type=submit]");
  await page.waitForSelector("body[data-chat=ready]");
}

const shot = (page, name) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: false });

test("two users chat in the widget; the admin console watches live", { timeout: 240000 }, async (t) => {
  assert.ok(existsSync(WS_PUSH), `build ws-push first (${WS_PUSH})`);
  assert.ok(existsSync(CHAT_STORE), `build chat-store first (${CHAT_STORE})`);
  mkdirSync(ARTIFACTS, { recursive: true });

  // --- the stack ---------------------------------------------------------------------
  const dir = mkdtempSync(join(tmpdir(), "chat-browser-"));
  const nats = await startNats(dir);
  t.after(() => nats.child.kill("SIGKILL"));
  const natsUrl = nats.url;
  const site = await startSite();
  t.after(() => site.server.close());

  const pushPort = await freePort();
  const startPush = () => spawnService(WS_PUSH, {
    SB_NATS__URL: natsUrl,
    SB_HTTP__LISTEN: `127.0.0.1:${pushPort}`,
    SB_GRPC__LISTEN: "127.0.0.1:0",
    SB_AUTH__JWT_SECRET: SECRET,
  });
  let push = startPush();
  t.after(() => push.kill("SIGKILL"));
  const chatPort = await freePort();
  const pushUrl = `ws://127.0.0.1:${pushPort}/ws`;
  const chat = spawnService(CHAT_STORE, {
    SB_NATS__URL: natsUrl,
    SB_HTTP__LISTEN: `127.0.0.1:${chatPort}`,
    SB_GRPC__LISTEN: "127.0.0.1:0",
    SB_DATA_DIR: join(dir, "chat"),
    SB_AUTH__JWT_SECRET: SECRET,
    SB_AUTH__USERS_URL: `http://127.0.0.1:${site.port}/users`,
    SB_WIDGET__PUSH_URL: pushUrl,
    SB_WIDGET__ALLOWED_ORIGINS: `["http://127.0.0.1:${site.port}"]`,
    SB_TRANSLATE__URL: `http://127.0.0.1:${site.port}`,
    // Carol sends 65 messages in a few seconds to fill a long history.
    SB_CHAT__RATE_PER_MINUTE: "600",
    SB_CHAT__RATE_BURST: "100",
  });
  t.after(() => chat.kill("SIGKILL"));
  await ready(pushPort);
  await ready(chatPort);
  const base = `http://127.0.0.1:${chatPort}`;
  site.chatBase = base;

  // The pages carry a strict CSP that allows ws-push's origin and nothing inline.
  for (const path of ["/widget/demo.html", "/admin/"]) {
    const response = await fetch(base + path);
    assert.equal(response.status, 200, path);
    const csp = response.headers.get("content-security-policy") || "";
    assert.match(csp, /script-src 'self';/, `${path}: ${csp}`);
    assert.match(csp, /img-src 'self' blob: data:;/, csp);
    assert.ok(csp.includes(`connect-src 'self' ws://127.0.0.1:${pushPort};`), csp);
    assert.ok(!csp.includes("unsafe-inline") && !csp.includes("unsafe-eval"), csp);
  }
  const api = async (who, method, path, body) => {
    const response = await fetch(base + path, {
      method,
      headers: { authorization: `Bearer ${tokens[who]}`, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: response.status, body: await response.json().catch(() => null) };
  };

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  t.after(() => browser.close());
  const problems = [];
  const alice = await watchedPage(await browser.newContext({ viewport: { width: 1280, height: 800 } }), problems);
  const bobContext = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const bob = await watchedPage(bobContext, problems);
  const admin = await watchedPage(await browser.newContext({ viewport: { width: 1280, height: 900 } }), problems);

  // --- the admin console subscribes to the live channel --------------------------------
  await admin.goto(`${base}/admin/`);
  await admin.fill("#token", tokens.admin);
  await admin.click("#signin button[type=submit]");
  await admin.waitForSelector("body[data-admin=ready]");
  await admin.waitForSelector("#live[data-state=connected]");

  // --- both users open the demo page ----------------------------------------------------
  await signIn(bob, base, tokens.bob, "ru");
  await signIn(alice, base, tokens.alice, "en");
  await bob.waitForSelector(".sbc-root[data-live=connected]");
  await alice.waitForSelector(".sbc-root[data-live=connected]");
  // Bob's widget fetched his own details, so contact search finds him.
  await waitFor("the site to be asked about Bob", async () => site.asked.has("102"));

  // Alice finds Bob by name and writes: the payload, a greeting, an image.
  await alice.click(".sbc-launcher");
  await alice.fill(".sbc-search", "bob");
  await alice.click(".sbc-results .sbc-dialog[data-peer='102']");
  await alice.waitForSelector(".sbc-pane:not([hidden])");
  assert.equal(await alice.textContent(".sbc-peer-name"), "Bob Jones");
  await alice.fill(".sbc-input", XSS);
  await alice.press(".sbc-input", "Enter");
  await alice.fill(".sbc-input", "Hello Bob");
  await alice.press(".sbc-input", "Enter");
  const png = await alice.evaluate(() => {
    const c = document.createElement("canvas");
    c.width = 64; c.height = 48;
    const g = c.getContext("2d");
    g.fillStyle = "#d33"; g.fillRect(0, 0, 64, 48);
    g.fillStyle = "#33d"; g.fillRect(16, 12, 32, 24);
    return c.toDataURL("image/png").split(",")[1];
  });
  await alice.setInputFiles(".sbc-file", { name: "square.png", mimeType: "image/png", buffer: Buffer.from(png, "base64") });
  await alice.waitForSelector(".sbc-preview:not([hidden]) img");
  await alice.fill(".sbc-input", "a picture");
  await alice.click(".sbc-send");
  // Three stored messages, no pending ones; Bob's widget is online, so they reach
  // "delivered" (two grey ticks).
  await alice.waitForFunction(() => document.querySelectorAll(".sbc-mine[data-id]").length === 3 && !document.querySelector(".sbc-pending"));
  await alice.waitForFunction(() => [...document.querySelectorAll(".sbc-mine .sbc-ticks")].every((t) => t.dataset.status === "delivered"));
  const aliceImage = alice.locator(".sbc-mine .sbc-image");
  await alice.waitForFunction(() => { const i = document.querySelector(".sbc-mine .sbc-image"); return i && i.src.startsWith("blob:") && i.complete && i.naturalWidth > 0; });
  assert.equal(await aliceImage.count(), 1);
  await shot(alice, "01-alice-desktop-dialog");

  // --- Bob's counters update live ---------------------------------------------------------
  await bob.waitForFunction(() => SwitchboardChat.countNewMessagesSum() === 3);
  await bob.waitForSelector("#unread:text-is('3')");
  assert.equal(await bob.textContent(".sbc-badge"), "3");
  assert.equal(await bob.evaluate(() => SwitchboardChat.countNewMessages("101")), 3);
  await shot(bob, "02-bob-phone-closed-badge");
  await bob.click(".sbc-launcher");
  // Phone-sized: the panel fills the screen.
  const panel = await bob.locator(".sbc-panel").boundingBox();
  assert.equal(Math.round(panel.width), 390);
  assert.ok(panel.height >= 800, `panel height ${panel.height}`);
  await bob.waitForSelector(".sbc-dialogs .sbc-dialog[data-peer='101'] .sbc-unread:text-is('3')");
  assert.equal(await bob.textContent(".sbc-dialogs .sbc-dialog[data-peer='101'] .sbc-dialog-name"), "Alice Smith");
  assert.equal(await bob.textContent(".sbc-tab[data-tab=all]"), "Все");
  await shot(bob, "03-bob-phone-dialog-list");

  // Bob opens the dialog: the payload is text, the image loads, Alice sees "read".
  await bob.click(".sbc-dialogs .sbc-dialog[data-peer='101']");
  await bob.waitForFunction(() => document.querySelectorAll(".sbc-theirs[data-id]").length === 3);
  assert.equal(await bob.locator(".sbc-list").isVisible(), false, "on a phone the dialog replaces the list");
  const texts = await bob.$$eval(".sbc-theirs .sbc-text", (nodes) => nodes.map((n) => n.textContent));
  assert.deepEqual(texts, [XSS, "Hello Bob", "a picture"]);
  assert.equal(await bob.locator(".sbc-messages .sbc-text img").count(), 0, "no markup from user text");
  await bob.waitForFunction(() => { const i = document.querySelector(".sbc-theirs .sbc-image"); return i && i.src.startsWith("blob:") && i.complete && i.naturalWidth > 0; });
  await alice.waitForFunction(() => [...document.querySelectorAll(".sbc-mine .sbc-ticks")].every((t) => t.dataset.status === "read"));
  await bob.waitForFunction(() => SwitchboardChat.countNewMessagesSum() === 0);
  await bob.waitForSelector("#unread:text-is('0')", { state: "attached" });
  // Translation into the widget's language, shown as text under the original.
  await bob.click(".sbc-theirs:has(.sbc-text:text-is('Hello Bob')) .sbc-translate");
  await bob.waitForSelector(".sbc-theirs .sbc-translation:not([hidden]):text-is('[ru] HELLO BOB')");
  await shot(bob, "04-bob-phone-dialog");
  await shot(alice, "05-alice-sees-read");

  // A beep per incoming message (WebAudio); Alice mutes hers before Bob replies.
  assert.ok(await bob.evaluate(() => SwitchboardChat.soundsPlayed()) >= 1, "Bob heard the new messages");
  await alice.click(".sbc-mute");
  await alice.waitForSelector(".sbc-mute[aria-pressed=true]");
  assert.equal(await alice.evaluate(() => SwitchboardChat.isMuted()), true);

  // --- typing and a reply ----------------------------------------------------------------
  await bob.type(".sbc-input", "Hi Al");
  await alice.waitForSelector(".sbc-typing:not([hidden])");
  await bob.type(".sbc-input", "ice");
  await bob.press(".sbc-input", "Enter");
  await alice.waitForFunction(() => [...document.querySelectorAll(".sbc-theirs .sbc-text")].some((n) => n.textContent === "Hi Alice"));
  await alice.waitForSelector(".sbc-typing", { state: "hidden" });
  assert.equal(await alice.evaluate(() => SwitchboardChat.soundsPlayed()), 0, "muted: no sound");

  // --- a send that fails on the network keeps its bubble; Retry sends it once -------------
  await alice.route("**/api/v1/messages", (route) => route.abort("connectionrefused"));
  await alice.fill(".sbc-input", "second try");
  await alice.press(".sbc-input", "Enter");
  await alice.waitForSelector(".sbc-failed .sbc-retry");
  await alice.unroute("**/api/v1/messages");
  await alice.click(".sbc-failed .sbc-retry");
  await alice.waitForFunction(() => [...document.querySelectorAll(".sbc-mine[data-id] .sbc-text")].some((n) => n.textContent === "second try") && !document.querySelector(".sbc-pending"));
  await bob.waitForFunction(() => [...document.querySelectorAll(".sbc-theirs .sbc-text")].filter((n) => n.textContent === "second try").length === 1);

  // --- the admin console saw everything live ----------------------------------------------
  await admin.waitForFunction(() => document.querySelectorAll("#monitor-list li.message").length === 5);
  const monitorTexts = await admin.$$eval("#monitor-list li.message .text", (nodes) => nodes.map((n) => n.textContent));
  assert.deepEqual(monitorTexts, ["second try", "Hi Alice", "a picture", "Hello Bob", XSS], "newest first, as text");
  assert.equal(await admin.locator("#monitor-list .text img").count(), 0);
  await admin.waitForFunction(() => { const i = document.querySelector("#monitor-list img.thumb"); return i && i.complete && i.naturalWidth > 0; });
  await shot(admin, "06-admin-monitor");
  await admin.click("#tab-attachments");
  await admin.waitForFunction(() => document.querySelectorAll("#attachments-list li.message").length === 1);
  assert.equal(await admin.textContent("#attachments-list li.message .text"), "a picture");
  await admin.click("#tab-dialog");
  await admin.fill("#dialog-a", "102");
  await admin.fill("#dialog-b", "101");
  await admin.click("#dialog-form button[type=submit]");
  await admin.waitForFunction(() => document.querySelectorAll("#dialog-list li.message").length === 5);

  // --- Bob complains and blocks Alice; her next message is refused --------------------------
  await bob.click(".sbc-theirs[data-id] .sbc-complain-msg");
  await bob.selectOption("#sbc-reason", "spam");
  await bob.fill("#sbc-details", "unsolicited pictures");
  await shot(bob, "07-bob-phone-complaint");
  await bob.click(".sbc-sheet button[type=submit]");
  await bob.waitForSelector(".sbc-sheet", { state: "detached" });
  await bob.click(".sbc-block");
  await bob.waitForSelector(".sbc-block[aria-pressed=true]");
  await bob.waitForSelector(".sbc-note:not([hidden])");
  assert.equal(await bob.locator(".sbc-input").isDisabled(), true, "one cannot write to someone one blocked");
  await alice.fill(".sbc-input", "are you there?");
  await alice.press(".sbc-input", "Enter");
  await alice.waitForSelector(".sbc-failed .sbc-error");
  assert.match(await alice.textContent(".sbc-failed .sbc-error"), /does not accept your messages/);
  assert.equal(await alice.locator(".sbc-failed .sbc-retry").count(), 0, "a refusal is not retried");
  const history = await api("bob", "GET", "/api/v1/dialogs/101/messages");
  assert.equal(history.status, 200);
  assert.ok(!history.body.messages.some((m) => m.text === "are you there?"), "Bob never got it");
  await shot(alice, "08-alice-blocked");
  // Bob's blocked tab lists Alice.
  await bob.click(".sbc-back");
  await bob.click(".sbc-tab[data-tab=blocked]");
  await bob.waitForSelector(".sbc-dialogs .sbc-dialog[data-peer='101']");

  // --- the admin resolves the complaint and deletes a message --------------------------------
  await admin.click("#tab-complaints");
  await admin.waitForSelector("#complaints-list li.complaint");
  assert.equal(await admin.textContent("#complaints-list li.complaint .text"), "spam: unsolicited pictures");
  await shot(admin, "09-admin-complaints");
  await admin.fill("#complaints-list .resolution-input", "warned the sender");
  await admin.click("#complaints-list .resolve button[type=submit]");
  await admin.waitForSelector("#complaints-list li.complaint.resolved");
  const deleteId = await admin.evaluate(() => document.querySelector("#dialog-list li.message:last-child").dataset.id);
  await admin.click("#tab-dialog");
  await admin.click(`#dialog-list li.message[data-id='${deleteId}'] .delete`);
  await admin.click(`#dialog-list li.message[data-id='${deleteId}'] .delete`);
  await admin.waitForSelector(`#dialog-list li.message.deleted[data-id='${deleteId}']`);
  await bob.click(".sbc-tab[data-tab=all]");
  await bob.click(".sbc-dialogs .sbc-dialog[data-peer='101']");
  await bob.waitForSelector(`.sbc-msg[data-id='${deleteId}'] .sbc-deleted`);

  // --- the live connection's state is shown, and it comes back --------------------------------
  push.kill("SIGKILL");
  await alice.waitForSelector(".sbc-root[data-live=offline] .sbc-live:not([hidden])");
  assert.match(await alice.textContent(".sbc-live"), /reconnecting/);
  await shot(alice, "10-alice-offline");
  push = startPush();
  await ready(pushPort);
  await alice.waitForSelector(".sbc-root[data-live=connected]", { timeout: 30000 });
  assert.equal(await alice.locator(".sbc-live").isHidden(), true);

  // --- a long history loads page by page as one scrolls up ------------------------------------
  for (let n = 1; n <= 65; n++) {
    const sent = await api("carol", "POST", "/api/v1/messages", { to: "101", text: `carol ${n}`, clientId: `carol-${n}` });
    assert.equal(sent.status, 201, JSON.stringify(sent.body));
  }
  await alice.waitForFunction(() => SwitchboardChat.countNewMessages("103") === 65);
  await alice.evaluate(() => SwitchboardChat.openDialog("103"));
  await alice.waitForFunction(() => document.querySelector(".sbc-peer-name").textContent === "Carol White");
  await alice.waitForFunction(() => {
    const box = document.querySelector(".sbc-messages");
    box.scrollTop = 0;
    return box.querySelectorAll(".sbc-theirs[data-id]").length === 65;
  }, null, { polling: 250 });
  const carol = await alice.$$eval(".sbc-theirs[data-id] .sbc-text", (nodes) => nodes.map((n) => n.textContent));
  assert.deepEqual(carol, Array.from({ length: 65 }, (_, i) => `carol ${i + 1}`), "every message once, oldest first");
  await alice.waitForFunction(() => SwitchboardChat.countNewMessages("103") === 0 && SwitchboardChat.countNewMessagesSum() === 0);

  // --- another site embeds the widget with one script tag (CORS) ------------------------------
  const carolContext = await browser.newContext({ viewport: { width: 1024, height: 768 } });
  await carolContext.addInitScript((token) => { window.testToken = token; }, tokens.carol);
  const carolPage = await watchedPage(carolContext, problems);
  await carolPage.goto(`http://127.0.0.1:${site.port}/embed.html`);
  await carolPage.waitForSelector("body[data-chat=ready]");
  await carolPage.waitForSelector(".sbc-root[data-live=connected]");
  await carolPage.click(".sbc-launcher");
  await carolPage.click(".sbc-dialogs .sbc-dialog[data-peer='101']");
  await carolPage.waitForFunction(() => document.querySelectorAll(".sbc-mine[data-id]").length >= 30);
  await carolPage.waitForFunction(() => [...document.querySelectorAll(".sbc-mine .sbc-ticks")].every((t) => t.dataset.status === "read"));
  await carolPage.fill(".sbc-input", "from another site");
  await carolPage.press(".sbc-input", "Enter");
  await alice.waitForFunction(() => [...document.querySelectorAll(".sbc-theirs .sbc-text")].some((n) => n.textContent === "from another site"));
  await shot(carolPage, "11-carol-on-another-site");
  await carolContext.close();

  // --- keyboard: Esc closes the panel, the launcher gets the focus --------------------------
  await alice.keyboard.press("Escape");
  await alice.waitForSelector(".sbc-panel", { state: "hidden" });
  assert.equal(await alice.evaluate(() => document.activeElement.classList.contains("sbc-launcher")), true);
  await alice.keyboard.press("Enter");
  await alice.waitForSelector(".sbc-panel:not([hidden])");
  assert.equal(await alice.evaluate(() => document.activeElement.classList.contains("sbc-input")), true, "the focus goes into the panel");
  await alice.keyboard.press("Shift+Tab");
  assert.equal(await alice.evaluate(() => document.activeElement.closest(".sbc-panel") !== null), true, "Tab moves within the panel");

  assert.deepEqual(problems, [], "no JS dialogs, page errors or CSP violations");
});
