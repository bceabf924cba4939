// SPDX-License-Identifier: MIT
// herald.js in Chromium against the real heraldd: replay and live delivery in order, exactly
// once across a daemon restart (SQLite store), gaps, publish answers and refusals, tokens.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Daemon, launchBrowser, lossyProxy, newPage, sha256hex, until } from "./lib.js";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** A page on the daemon's origin with herald.js imported as window.H. */
async function clientPage(d) {
  const page = await newPage(browser);
  await page.goto(`${d.base}/healthz`);
  await page.evaluate(async () => {
    // Timers still pending, to check that close() leaves none behind.
    window.liveTimers = new Set();
    const st = window.setTimeout, ct = window.clearTimeout;
    const si = window.setInterval, ci = window.clearInterval;
    window.setTimeout = (f, ms, ...a) => {
      const id = st(() => {
        window.liveTimers.delete(id);
        f(...a);
      }, ms);
      window.liveTimers.add(id);
      return id;
    };
    window.clearTimeout = (id) => (window.liveTimers.delete(id), ct(id));
    window.setInterval = (f, ms, ...a) => {
      const id = si(f, ms, ...a);
      window.liveTimers.add(id);
      return id;
    };
    window.clearInterval = (id) => (window.liveTimers.delete(id), ci(id));
    window.H = await import("/v1/herald.js");
    window.log = { events: [], gaps: [], states: [], ends: [] };
  });
  return page;
}

/** Creates window.h and subscribes window.sub to `pattern`, recording into window.log. */
async function subscribe(page, pattern, opts = {}) {
  return page.evaluate(
    async ([pattern, opts]) => {
      const { Herald } = window.H;
      window.h ??= new Herald(`ws://${location.host}`, {
        token: opts.token,
        minBackoffMs: 50,
        maxBackoffMs: 400,
        onStateChange: (s) => window.log.states.push(s),
      });
      window.sub = window.h.subscribe(
        pattern,
        {
          since: opts.since,
          onGap: (g) => window.log.gaps.push(g),
          onEnd: (e) => window.log.ends.push(e ? e.code : null),
        },
        (ev) => window.log.events.push(ev),
      );
      const ok = await window.sub.ready;
      return ok;
    },
    [pattern, opts],
  );
}

const events = (page) => page.evaluate(() => window.log.events);

test("replay and live events arrive in order, once, from a since=all subscription", async () => {
  const d = await new Daemon().start();
  try {
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push((await d.publish("chat.room1", { n: i })).body.id);
    const page = await clientPage(d);
    const ok = await subscribe(page, "chat.>", { since: "all" });
    assert.equal(ok.type, "ok");
    assert.equal(ok.replayed, 5);
    for (let i = 5; i < 15; i++) {
      const r = await d.publish(i % 2 ? "chat.room1" : "chat.room2", { n: i }, { event: "msg" });
      assert.equal(r.status, 202);
      ids.push(r.body.id);
    }
    await d.publish("other.topic", { n: -1 }); // not matching: never delivered
    await until(async () => (await events(page)).length >= 15, 5000, "15 events");
    const got = await events(page);
    assert.deepEqual(
      got.map((e) => e.id),
      ids,
    );
    assert.deepEqual(
      got.map((e) => e.data.n),
      [...Array(15).keys()],
    );
    assert.equal(got[6].event, "msg");
    assert.equal(got[6].topic, "chat.room2");
    assert.deepEqual(page.errors, []);
    // unsubscribe and close leave nothing behind: no more events, state closed
    await page.evaluate(async () => {
      await window.sub.unsubscribe();
      window.h.close();
    });
    await d.publish("chat.room1", { n: 99 });
    const after = await page.evaluate(() => ({
      n: window.log.events.length,
      s: window.h.state,
      timers: window.liveTimers.size,
    }));
    assert.deepEqual(after, { n: 15, s: "closed", timers: 0 });
    await page.close();
  } finally {
    await d.cleanup();
  }
});

test("a restart of heraldd (SQLite store) while events are published: every event exactly once", async () => {
  const d = await new Daemon({ config: { history: { store: "sqlite" } } }).start();
  try {
    const page = await clientPage(d);
    await subscribe(page, "feed.>", { since: "latest" });
    const accepted = [];
    let stop = false;
    // A publisher that keeps going through the restart: a refused connection published
    // nothing and is tried again; every 202 is an event the page must get exactly once.
    const publisher = (async () => {
      for (let i = 0; !stop && i < 2000; i++) {
        try {
          const r = await d.publish("feed.a", { n: i });
          if (r.status === 202) accepted.push(r.body.id);
        } catch (e) {
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    })();
    await until(() => accepted.length >= 20, 5000, "20 accepted publishes");
    // A publish from the page while the daemon is down: sent after the reconnect.
    await d.stop();
    const pagePublish = page.evaluate(() => window.h.publish("feed.b", { from: "page" }));
    await until(() => page.evaluate(() => window.h.state === "reconnecting"), 5000, "reconnecting");
    await d.start(); // same port, same data_dir
    const n0 = accepted.length;
    await until(() => accepted.length >= n0 + 20, 10000, "20 more accepted publishes");
    stop = true;
    await publisher;
    const pub = await pagePublish;
    assert.match(pub.id, /^[0-9a-f]{16}$/);
    await until(
      async () => (await events(page)).length >= accepted.length + 1,
      10000,
      "every accepted event",
    );
    const got = await events(page);
    const ids = got.map((e) => e.id);
    assert.equal(new Set(ids).size, ids.length, "no event twice");
    assert.deepEqual(
      got.filter((e) => e.topic === "feed.a").map((e) => e.id),
      accepted,
      "every accepted event, in order",
    );
    assert.equal(got.filter((e) => e.topic === "feed.b").length, 1);
    assert.deepEqual([...ids].sort(), ids, "in id order");
    const states = await page.evaluate(() => window.log.states);
    assert.ok(states.includes("reconnecting") && states.at(-1) === "open", states.join(","));
    await page.evaluate(() => window.h.close());
    await page.close();
  } finally {
    await d.cleanup();
  }
});

test("a subscription that has delivered nothing resumes from the ok's next after a restart", async () => {
  const d = await new Daemon({ config: { history: { store: "sqlite" } } }).start();
  try {
    const page = await clientPage(d);
    await page.evaluate(async () => {
      // Slow reconnects: the events below are published before the client is back.
      window.h = new window.H.Herald(`ws://${location.host}`, { minBackoffMs: 3000, maxBackoffMs: 3000 });
      window.sub = window.h.subscribe("quiet.>", {}, (ev) => window.log.events.push(ev));
      window.ok = await window.sub.ready;
    });
    assert.match(await page.evaluate(() => window.ok.next), /^[0-9a-f]{16}$/, "the ok carries next");
    await d.stop();
    await until(() => page.evaluate(() => window.h.state === "reconnecting"), 5000, "reconnecting");
    await d.start();
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await d.publish("quiet.t", { i })).body.id);
    assert.equal(await page.evaluate(() => window.h.state), "reconnecting", "published before the client came back");
    await until(async () => (await events(page)).length === 3, 10000, "the 3 events published while away");
    assert.deepEqual(
      (await events(page)).map((e) => e.id),
      ids,
    );
    await page.evaluate(() => window.h.close());
    await page.close();
  } finally {
    await d.cleanup();
  }
});

test("a publish whose answer was lost is sent again with its key: the event exists once", async () => {
  const d = await new Daemon().start();
  const proxy = await lossyProxy(d.port);
  try {
    const page = await clientPage(d);
    await page.evaluate(async (port) => {
      window.h = new window.H.Herald(`ws://127.0.0.1:${port}`, {
        minBackoffMs: 50,
        maxBackoffMs: 100,
        onStateChange: (s) => window.log.states.push(s),
      });
      await new Promise((r) => window.h.addEventListener("statechange", () => window.h.state === "open" && r()));
    }, proxy.port);
    proxy.dropNextAnswer(); // the server will publish, the page will not hear it
    const r = await page.evaluate(() => window.h.publish("once.t", { n: 1 }, { key: "browser-once-1" }));
    assert.equal(proxy.armed, false, "the answer was dropped");
    assert.equal(r.duplicate, true, "answered by the second send, as a duplicate");
    assert.equal(r.key, "browser-once-1");
    const poll = await (await fetch(`${d.base}/v1/topics/once.t/events?since=all`)).json();
    assert.deepEqual(
      poll.events.map((e) => e.id),
      [r.id],
      "exactly one event",
    );
    // The same key again, on purpose: the first answer again, nothing new.
    const again = await page.evaluate(() => window.h.publish("once.t", { n: 1 }, { key: "browser-once-1" }));
    assert.deepEqual([again.id, again.duplicate], [r.id, true]);
    const states = await page.evaluate(() => window.log.states);
    assert.ok(states.includes("reconnecting"), states.join(","));
    await page.evaluate(() => window.h.close());
    await page.close();
  } finally {
    await proxy.close();
    await d.cleanup();
  }
});

test("onGap is called when the cursor is older than history", async () => {
  const d = await new Daemon({ config: { history: { max_events_per_topic: 3 } } }).start();
  try {
    const first = (await d.publish("g.t", { n: 0 })).body.id;
    for (let i = 1; i < 8; i++) await d.publish("g.t", { n: i });
    const page = await clientPage(d);
    const ok = await subscribe(page, "g.t", { since: first });
    assert.equal(ok.gap, true);
    await until(async () => (await events(page)).length >= 3, 5000, "the retained events");
    const log = await page.evaluate(() => window.log);
    assert.equal(log.gaps.length, 1);
    assert.equal(log.gaps[0].topic, "g.t");
    assert.equal(log.gaps[0].reason, "resume");
    assert.deepEqual(
      log.events.map((e) => e.data.n),
      [5, 6, 7],
    );
    await page.evaluate(() => window.h.close());
    await page.close();
  } finally {
    await d.cleanup();
  }
});

const TOKEN = "browser-test-token-1";
const authConfig = {
  auth: {
    anonymous: { publish: [], subscribe: [] },
    tokens: [
      { name: "web", sha256: sha256hex(TOKEN), publish: ["chat.>"], subscribe: ["chat.>"] },
    ],
  },
};

test("publish resolves with id and receivers, and rejects with the server's code", async () => {
  const d = await new Daemon({ config: authConfig }).start();
  try {
    const page = await clientPage(d);
    await subscribe(page, "chat.>", { token: TOKEN });
    const r = await page.evaluate(async () => {
      const ok = await window.h.publish("chat.room1", { text: "hi" }, { event: "message" });
      let refused;
      try {
        await window.h.publish("admin.secret", { x: 1 });
      } catch (e) {
        refused = { name: e.name, code: e.code, message: e.message, isError: e instanceof Error };
      }
      let invalid;
      try {
        await window.h.publish("bad topic", 1);
      } catch (e) {
        invalid = e.code;
      }
      return { ok, refused, invalid };
    });
    assert.match(r.ok.id, /^[0-9a-f]{16}$/);
    assert.equal(r.ok.receivers, 1); // this page's own subscription
    assert.ok(r.ok.key.length > 0);
    assert.equal(r.refused.code, "forbidden");
    assert.equal(r.refused.isError, true);
    assert.equal(r.refused.name, "HeraldError");
    assert.equal(r.invalid, "invalid_topic");
    await until(async () => (await events(page)).length === 1, 5000, "the published event");
    assert.equal((await events(page))[0].id, r.ok.id);
    await page.evaluate(() => window.h.close());
    await page.close();
  } finally {
    await d.cleanup();
  }
});

test("a token in the query authenticates the WebSocket; a subscribe it may not do is refused", async () => {
  const d = await new Daemon({ config: authConfig }).start();
  try {
    const page = await clientPage(d);
    await subscribe(page, "chat.room1", { token: TOKEN });
    assert.equal((await d.publish("chat.room1", { a: 1 }, { token: TOKEN })).status, 202);
    await until(async () => (await events(page)).length === 1, 5000, "the event");
    const refused = await page.evaluate(async () => {
      const s = window.h.subscribe("admin.>", () => {});
      try {
        await s.ready;
        return "accepted";
      } catch (e) {
        return e.code;
      }
    });
    assert.equal(refused, "forbidden");
    assert.deepEqual(await page.evaluate(() => window.log.ends), []);
    // A wrong token is refused at the upgrade: the client keeps trying and never opens.
    const anon = await page.evaluate(async () => {
      const states = [];
      const h = new window.H.Herald(`ws://${location.host}`, {
        token: "wrong",
        minBackoffMs: 20,
        maxBackoffMs: 40,
      });
      await new Promise((r) =>
        h.addEventListener("statechange", (ev) => {
          states.push(ev.state);
          if (ev.detail.attempt >= 3) r();
        }),
      );
      h.close();
      return states;
    });
    assert.ok(!anon.includes("open"), anon.join(","));
    await page.evaluate(() => window.h.close());
    await page.close();
  } finally {
    await d.cleanup();
  }
});

test("a reload that takes the right away ends the subscription through onEnd", async () => {
  const d = await new Daemon({ config: authConfig }).start();
  try {
    const page = await clientPage(d);
    await subscribe(page, "chat.>", { token: TOKEN });
    const narrowed = structuredClone(authConfig);
    narrowed.auth.tokens[0].subscribe = ["other.>"];
    await d.reload(narrowed);
    await until(() => page.evaluate(() => window.log.ends.length === 1), 5000, "onEnd");
    assert.deepEqual(await page.evaluate(() => window.log.ends), ["forbidden"]);
    assert.equal(await page.evaluate(() => window.sub.ended), true);
    // Nothing reaches the ended subscription, and the connection itself stays up.
    await d.publish("chat.room1", { late: true }, { token: TOKEN });
    assert.equal(await page.evaluate(() => window.h.state), "open");
    assert.equal((await events(page)).length, 0);
    await page.evaluate(() => window.h.close());
    await page.close();
  } finally {
    await d.cleanup();
  }
});

test("herald.js is served with ETag, 304 on If-None-Match, CORS and text/javascript", async () => {
  const d = await new Daemon({ config: { cors: { origins: ["https://app.example"] } } }).start();
  try {
    const r = await d.get("/v1/herald.js", { origin: "https://app.example" });
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type"), /^text\/javascript/);
    assert.equal(r.headers.get("access-control-allow-origin"), "https://app.example");
    const etag = r.headers.get("etag");
    assert.match(etag, /^"[0-9a-f]{20}"$/);
    assert.match(r.text, /export class Herald/);
    const c = await d.get("/v1/herald.js", { "if-none-match": etag });
    assert.equal(c.status, 304);
    assert.equal(c.text, "");
    assert.equal((await d.get("/v1/herald.js", { "if-none-match": '"other"' })).status, 200);
  } finally {
    await d.cleanup();
  }
});


