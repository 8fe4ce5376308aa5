// Helpers shared by every browser-test package (tests/browser and
// services/*/browser-tests, which import this file by relative path): free ports,
// waiting, HS256 tokens, a real nats-server per test file, the service binaries, a
// page that records problems. Node built-ins only, so it resolves from any package.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { join } from "node:path";
import { createServer, connect } from "node:net";

/** Where cargo put the debug binaries (scripts/test.sh builds them first). */
export const targetDir = process.env.CARGO_TARGET_DIR || join(process.env.HOME || "/root", ".cache/switchboard/target");

/** The debug binary `name` of the workspace. */
export const binary = (name) => join(targetDir, "debug", name);

/** The browser Playwright drives: Debian's chromium unless CHROMIUM says otherwise. */
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A loopback port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

/** Whether something accepts connections on 127.0.0.1:`port`. */
export function portOpen(port) {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1", () => { socket.end(); resolve(true); });
    socket.on("error", () => resolve(false));
  });
}

/** Polls `check` until it returns something truthy (returned), or fails naming `what`. */
export async function waitFor(what, check, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check().catch(() => undefined);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** An HS256 JWT of `claims` signed with `secret`, as a site would issue it. */
export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** Waits until the service whose HTTP listener is `address` (host:port) is ready. */
export function ready(address, timeoutMs = 60000) {
  return waitFor(`ready at ${address}`, async () => (await fetch(`http://${address}/readyz`)).ok, timeoutMs);
}

/**
 * Starts nats-server (JetStream, store in `dir`/nats) on a free port and waits for it.
 * Returns { url, port, child }; kill the child when done.
 */
export async function startNats(dir) {
  const port = await freePort();
  const child = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", join(dir, "nats")], { stdio: "ignore" });
  await waitFor("nats-server", () => portOpen(port));
  return { url: `nats://127.0.0.1:${port}`, port, child };
}

/** Records every JS dialog (alert/confirm), page error and CSP violation of `page` in `problems`. */
export function watch(page, problems) {
  page.on("dialog", (d) => { problems.push(`dialog: ${d.message()}`); d.dismiss().catch(() => {}); });
  page.on("pageerror", (e) => problems.push(`page error: ${e}`));
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Refused/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  return page;
}

/** A new page of `context`, watched (see `watch`). */
export async function watchedPage(context, problems) {
  return watch(await context.newPage(), problems);
}
