// SPDX-License-Identifier: MIT
// The web console in Chromium against the real heraldd: strict CSP and no console errors,
// live events within a second, publishing from the form, delivery status, the server view's
// counters, tokens, console.enabled; a screenshot of each view lands in the build directory.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { artifactDir, Daemon, launchBrowser, newPage, sha256hex, until } from "./lib.js";

let browser;
let shots;
before(async () => {
  browser = await launchBrowser();
  shots = artifactDir();
});
after(async () => {
  await browser?.close();
});

async function openConsole(d, hash = "") {
  const page = await newPage(browser);
  page.requests = [];
  page.on("request", (r) => page.requests.push(r.url()));
  page.on("websocket", (w) => page.requests.push(w.url()));
  const resp = await page.goto(`${d.base}/console/${hash}`);
  await page.waitForSelector("#conn-state.state-open", { timeout: 5000 });
  return { page, resp };
}

async function subscribeIn(page, pattern, since = "") {
  await page.fill("#sub-pattern", pattern);
  await page.selectOption("#sub-since", since);
  await page.click("#sub-form button[type=submit]");
  await page.waitForSelector("#subs .chip .dot.live", { timeout: 5000 });
}

/** A page holding `n` herald.js WebSocket subscribers to `pattern`, recording into window.got. */
async function subscriberPage(d, pattern, n = 1) {
  const page = await newPage(browser);
  await page.goto(`${d.base}/healthz`);
  await page.evaluate(
    async ([pattern, n]) => {
      const { Herald } = await import("/v1/herald.js");
      window.got = [];
      window.clients = [];
      for (let i = 0; i < n; i++) {
        const h = new Herald(`ws://${location.host}`);
        window.clients.push(h);
        await h.subscribe(pattern, {}, (ev) => window.got.push(ev)).ready;
      }
    },
    [pattern, n],
  );
  return page;
}

const shot = (page, name) => page.screenshot({ path: join(shots, `console-${name}.png`), fullPage: false });

// Realistic traffic for the screenshots: a few kinds of events on a few topics.
const SAMPLE = [
  ["chat.room1", "message", { from: "alice", text: "deploy finished, all green" }],
  ["user.42.inbox", "login", { user: 42, ip: "10.0.3.17", agent: "Firefox/133" }],
  ["orders.eu.created", "created", { order: "A-10293", total: 129.5, currency: "EUR", items: 3 }],
  ["chat.room2", "message", { from: "bob", text: "anyone seen the 502s on api-2?" }],
  ["user.7.inbox", "logout", { user: 7 }],
  ["deploy.api", "finished", { service: "api", version: "2.14.1", took_s: 84 }],
  ["alerts.disk", "warning", { host: "db-3", used: 0.91 }],
  ["chat.room1", "message", "plain text body"],
];

test("the console loads under a strict CSP with no errors, and a published event shows in Live within a second", async () => {
  const d = await new Daemon().start();
  try {
    const { page, resp } = await openConsole(d);
    const csp = resp.headers()["content-security-policy"];
    assert.match(csp, /default-src 'self'/);
    assert.match(csp, new RegExp(`connect-src 'self' ws://127\\.0\\.0\\.1:${d.port} wss://127\\.0\\.0\\.1:${d.port}`));
    assert.doesNotMatch(csp, /unsafe/);
    // Nothing a strict CSP would block: no inline script, no style attributes.
    const inline = await page.evaluate(() => ({
      scripts: [...document.scripts].filter((s) => !s.src).length,
      styled: document.querySelectorAll("[style]").length,
      handlers: [...document.querySelectorAll("*")].filter((e) =>
        [...e.attributes].some((a) => a.name.startsWith("on")),
      ).length,
    }));
    assert.deepEqual(inline, { scripts: 0, styled: 0, handlers: 0 });
    // Every control has a label a screen reader can read.
    const unlabelled = await page.evaluate(() =>
      [...document.querySelectorAll("input, select, textarea")]
        .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label"))
        .map((e) => e.id),
    );
    assert.deepEqual(unlabelled, []);

    await subscribeIn(page, ">");
    const t0 = Date.now();
    const r = await d.publish("chat.room1", { from: "alice", text: "hi" });
    assert.equal(r.status, 202);
    await page.waitForSelector(`#events-body a:text-is("${r.body.id}")`, { timeout: 1000 });
    const took = Date.now() - t0;
    assert.ok(took < 1000, `shown after ${took} ms`);
    const row = await page.textContent("#events-body tr:first-child");
    assert.match(row, /chat\.room1/);
    assert.match(row, /"from": "alice"/);

    for (const [topic, event, data] of SAMPLE) await d.publish(topic, data, { event });
    await until(async () => (await page.locator("#events-body tr").count()) === SAMPLE.length + 1, 3000, "rows");
    // Filter, pause and clear do what they say.
    await page.fill("#filter", "inbox");
    assert.equal(await page.locator("#events-body tr").count(), 2);
    await page.fill("#filter", "");
    await page.click("#pause");
    await d.publish("chat.room1", { text: "while paused" });
    await page.waitForSelector("#pause:text('Resume (1)')", { timeout: 3000 });
    assert.equal(await page.locator("#events-body tr").count(), SAMPLE.length + 1);
    await page.click("#pause");
    assert.equal(await page.locator("#events-body tr").count(), SAMPLE.length + 2);
    await page.fill("#filter", "");
    await shot(page, "live");
    await page.setViewportSize({ width: 375, height: 760 });
    await shot(page, "live-phone");
    await page.emulateMedia({ colorScheme: "dark" });
    await shot(page, "live-phone-dark");
    await page.emulateMedia({ colorScheme: "light" });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.click("#clear");
    assert.equal(await page.locator("#events-body tr").count(), 0);
    // Nothing but heraldd was asked for anything.
    const host = `127.0.0.1:${d.port}`;
    const outside = page.requests.filter((u) => !u.startsWith(`http://${host}/`) && !u.startsWith(`ws://${host}/`));
    assert.deepEqual(outside, []);
    assert.ok(page.requests.some((u) => u.startsWith(`ws://${host}/v1/ws`)), page.requests.join(" "));
    assert.deepEqual(page.errors, []);
    await page.close();
  } finally {
    await d.cleanup();
  }
});

test("a publish from the form reaches a WebSocket subscriber, and Status shows its counts", async () => {
  const d = await new Daemon().start();
  try {
    const sub = await subscriberPage(d, "orders.>", 2);
    const { page } = await openConsole(d, "#publish");
    await page.fill("#pub-topic", "orders.eu.created");
    await page.fill("#pub-event", "created");
    // Invalid JSON is caught before anything is sent.
    await page.fill("#pub-data", '{"order": ');
    await page.click("#pub-send");
    assert.match(await page.textContent("#pub-data-error"), /not valid JSON/);
    assert.equal(await page.isHidden("#pub-result"), true);
    await page.fill("#pub-data", '{"order": "A-10293", "total": 129.5, "items": 3}');
    await page.fill("#pub-key", "console-test-key-1");
    await page.click("#pub-send");
    await page.waitForSelector("#pub-result-id", { timeout: 5000 });
    const id = await page.textContent("#pub-result-id");
    assert.equal(await page.textContent("#pub-result-receivers"), "2");
    await until(() => sub.evaluate(() => window.got.length === 2), 5000, "both subscribers");
    const got = await sub.evaluate(() => window.got);
    assert.equal(got[0].id, id);
    assert.equal(got[0].event, "created");
    assert.deepEqual(got[0].data, { order: "A-10293", total: 129.5, items: 3 });
    // A refused publish shows the server's code and sentence.
    await page.fill("#pub-topic", "$sys.x");
    await page.click("#pub-send");
    await page.waitForSelector("#pub-result.bad", { timeout: 5000 });
    assert.match(await page.textContent("#pub-result"), /forbidden: topics starting with \$ are reserved/);
    await page.fill("#pub-topic", "chat.room1");
    await page.fill("#pub-event", "message");
    await page.fill("#pub-data", '{"from": "ops", "text": "maintenance at 22:00"}');
    await page.fill("#pub-key", "");
    await page.click("#pub-send");
    await page.waitForSelector("#pub-history-body tr:nth-child(2)", { timeout: 5000 });
    await shot(page, "publish");
    await page.setViewportSize({ width: 375, height: 760 });
    await shot(page, "publish-phone");
    await page.setViewportSize({ width: 1280, height: 800 });

    // The status link of the first publish.
    await page.click(`#pub-history-body a:text-is("${id}")`);
    await page.waitForSelector("#status-out:not([hidden])", { timeout: 5000 });
    const api = await (await fetch(`${d.base}/v1/events/${id}`)).json();
    await until(
      async () => (await page.textContent("#st-written")) === String(api.written),
      3000,
      "the written count",
    );
    assert.equal(await page.textContent("#st-queued"), String(api.queued));
    assert.equal(api.queued, 2);
    assert.equal(await page.textContent("#st-dropped"), "0");
    assert.match(await page.textContent("#st-event"), /"order": "A-10293"/);
    await shot(page, "status");
    assert.deepEqual(page.errors, []);
    await page.close();
    await sub.close();
  } finally {
    await d.cleanup();
  }
});

test("the Server view's connection count follows clients as they come and go", async () => {
  const d = await new Daemon().start();
  try {
    const { page } = await openConsole(d, "#server");
    const connections = async () => Number(await page.textContent("#m-connections"));
    const n0 = await until(async () => {
      const n = await connections();
      return Number.isFinite(n) && n >= 1 ? n : 0; // the console's own connection
    }, 5000, "a first scrape");
    const subs = await subscriberPage(d, "load.>", 3);
    await until(async () => (await connections()) === n0 + 3, 5000, `${n0 + 3} connections`);
    // Some traffic so that the charts have a shape in the screenshot.
    for (let i = 0; i < 40; i++) {
      await d.publish(`load.t${i % 4}`, { n: i, pad: "x".repeat(i * 8) });
      if (i % 10 === 9) await new Promise((r) => setTimeout(r, 1000));
    }
    await until(async () => (await page.textContent("#m-subscriptions")) === "3", 5000, "3 subscriptions");
    await shot(page, "server");
    await page.emulateMedia({ colorScheme: "dark" });
    await shot(page, "server-dark");
    await page.emulateMedia({ colorScheme: "light" });
    await page.setViewportSize({ width: 375, height: 760 });
    await shot(page, "server-phone");
    await page.setViewportSize({ width: 1280, height: 800 });
    await subs.evaluate(() => window.clients.forEach((h) => h.close()));
    await until(async () => (await connections()) === n0, 5000, `back to ${n0} connections`);
    assert.deepEqual(page.errors, []);
    await subs.close();
    await page.close();
  } finally {
    await d.cleanup();
  }
});

test("with auth, the token field is kept in sessionStorage and the server's refusals are shown", async () => {
  const TOKEN = "console-token-1";
  const d = await new Daemon({
    config: {
      auth: {
        anonymous: { publish: [], subscribe: [] },
        tokens: [{ name: "ops", sha256: sha256hex(TOKEN), publish: ["ops.>"], subscribe: ["ops.>"] }],
      },
    },
  }).start();
  try {
    const { page } = await openConsole(d);
    // Anonymous may not subscribe: the server's words, nothing more.
    await page.fill("#sub-pattern", "ops.>");
    await page.click("#sub-form button[type=submit]");
    await page.waitForSelector("#notice:not([hidden])", { timeout: 5000 });
    assert.match(await page.textContent("#notice-text"), /^ops\.>: unauthorized: /);
    await page.fill("#token", TOKEN);
    await page.click("#token-form button");
    await page.waitForSelector("#conn-state.state-open", { timeout: 5000 });
    assert.equal(await page.evaluate(() => sessionStorage.getItem("herald.console.token")), TOKEN);
    await subscribeIn(page, "ops.>");
    await d.publish("ops.deploy", { ok: true }, { token: TOKEN });
    await page.waitForSelector("#events-body tr", { timeout: 5000 });
    // Still there after a reload (same tab session), and used.
    await page.reload();
    await page.waitForSelector("#conn-state.state-open", { timeout: 5000 });
    assert.equal(await page.inputValue("#token"), TOKEN);
    await page.fill("#sub-pattern", "secret.>");
    await page.click("#sub-form button[type=submit]");
    await page.waitForSelector("#notice-text:text-matches('forbidden')", { timeout: 5000 });
    assert.match(await page.textContent("#notice-text"), /^secret\.>: forbidden: /);
    // Status of an event the token may not read: refused, as the server says.
    const other = await d.publish("ops.x", { a: 1 }, { token: TOKEN });
    await page.goto(`${d.base}/console/#status/${other.body.id}`);
    await page.waitForSelector("#status-out:not([hidden])", { timeout: 5000 });
    await page.close();
  } finally {
    await d.cleanup();
  }
});

test("console.enabled false (at start or by SIGHUP): /console/ is 404, herald.js is still served", async () => {
  const d = await new Daemon({ config: { console: { enabled: false } } }).start();
  try {
    const r = await d.get("/console/");
    assert.equal(r.status, 404);
    assert.equal(JSON.parse(r.text).code, "not_found");
    assert.equal((await d.get("/console")).status, 404);
    assert.equal((await d.get("/v1/herald.js")).status, 200);
  } finally {
    await d.cleanup();
  }
  const on = await new Daemon().start();
  try {
    const r = await on.get("/console");
    assert.equal(r.status, 308);
    assert.equal(r.headers.get("location"), "/console/");
    assert.equal((await on.get("/console/")).status, 200);
    await on.reload({ console: { enabled: false } }); // SIGHUP applies it
    assert.equal((await on.get("/console/")).status, 404);
  } finally {
    await on.cleanup();
  }
});
