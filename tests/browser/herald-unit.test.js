// SPDX-License-Identifier: MIT
// herald.js against a scripted fake WebSocket (in node, no browser): the orderings a real
// server produces only by timing, made to happen on purpose.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Herald, HeraldError, isPattern, topicMatches } from "../../clients/js/herald.js";

/** A WebSocket stand-in: records what the client sends; the test plays the server. */
class FakeWS {
  static all = [];
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    FakeWS.all.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code = 1000) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    if (!this.dead) this.onclose?.({ code, reason: "" }); // a dead link never reports
  }
  // the server's side
  open(heartbeat = 25) {
    this.readyState = 1;
    this.frame({ type: "welcome", session: "s", server: "heraldd/test", heartbeat, max_event_bytes: 65536 });
  }
  frame(f) {
    this.onmessage?.({ data: JSON.stringify(f) });
  }
  last(op) {
    return [...this.sent].reverse().find((f) => f.op === op);
  }
}

const ev = (id, topic, data = {}) => ({ type: "event", topic, id, time: 1, event: "message", data });

function client(opts = {}) {
  FakeWS.all = [];
  const h = new Herald("ws://127.0.0.1:7070", { WebSocket: FakeWS, minBackoffMs: 1, maxBackoffMs: 2, ...opts });
  return { h, ws: () => FakeWS.all[FakeWS.all.length - 1] };
}

test("patterns and matching follow PROTOCOL.md section 1", () => {
  assert.ok(topicMatches("chat.>", "chat.a.b"));
  assert.ok(!topicMatches("chat.>", "chat"));
  assert.ok(topicMatches("a.*.c", "a.b.c"));
  assert.ok(!topicMatches("a.*.c", "a.b.c.d"));
  assert.ok(topicMatches(">", "x"));
  assert.ok(isPattern("user.*.inbox") && isPattern(">") && !isPattern("a.>.b") && !isPattern("a..b"));
});

test("the URL gets /v1/ws, the subprotocol and ?token=", () => {
  const { h, ws } = client({ token: "t 1&x" });
  assert.equal(ws().url, "ws://127.0.0.1:7070/v1/ws?token=t+1%26x");
  assert.equal(ws().protocol, "herald.v1");
  h.close();
});

test("an event already delivered to a subscription is not delivered again", () => {
  const { h, ws } = client();
  ws().open();
  const got = [];
  h.subscribe("a.>", {}, (e) => got.push(e.id));
  ws().frame({ type: "ok", id: ws().last("subscribe").id, topic: "a.>", replayed: 0, gap: false, next: "0000000000000005" });
  ws().frame(ev("0000000000000006", "a.x"));
  ws().frame(ev("0000000000000006", "a.x"));
  ws().frame(ev("0000000000000004", "a.x"));
  ws().frame(ev("0000000000000007", "a.y"));
  assert.deepEqual(got, ["0000000000000006", "0000000000000007"]);
  h.close();
});

test("events around a new subscribe are held, then handed out in id order to every match", () => {
  const { h, ws } = client();
  ws().open();
  const a = [];
  const b = [];
  h.subscribe("a.>", {}, (e) => a.push(e.id));
  ws().frame({ type: "ok", id: ws().last("subscribe").id, topic: "a.>", replayed: 0, gap: false, next: "06" });
  h.subscribe("a.b", { since: "all" }, (e) => b.push(e.id));
  // A live event for a.> (also a.b) before b's ok: the server will leave it out of b's
  // replay, since this connection already has it.
  ws().frame(ev("10", "a.b"));
  assert.deepEqual(a, [], "held until b's replay is complete");
  ws().frame({ type: "ok", id: ws().last("subscribe").id, topic: "a.b", replayed: 2, gap: false, next: "10" });
  ws().frame(ev("03", "a.b"));
  assert.deepEqual(b, []);
  ws().frame(ev("05", "a.b"));
  assert.deepEqual(a, ["10"], "b's replay is from before a began");
  assert.deepEqual(b, ["03", "05", "10"]);
  ws().frame(ev("11", "a.b"));
  assert.deepEqual(b, ["03", "05", "10", "11"]);
  assert.deepEqual(a, ["10", "11"]);
  h.close();
});

test("a reconnect resumes from the last delivered id, else the ok's next; gaps reach onGap", async () => {
  const { h, ws } = client();
  ws().open();
  const gaps = [];
  const got = [];
  const s1 = h.subscribe("x.>", { since: "latest", onGap: (g) => gaps.push(g) }, (e) => got.push(e.id));
  const s2 = h.subscribe("y.>", { since: "latest" }, () => {});
  const [f1, f2] = ws().sent.filter((f) => f.op === "subscribe");
  assert.deepEqual([f1.since, f2.since], ["latest", "latest"]);
  ws().frame({ type: "ok", id: f1.id, topic: "x.>", replayed: 0, gap: false, next: "20" });
  ws().frame({ type: "ok", id: f2.id, topic: "y.>", replayed: 0, gap: false, next: "20" });
  ws().frame(ev("21", "x.a"));
  ws().frame({ type: "gap", topic: "x.>", next: "30" });
  assert.equal(gaps.length, 1);
  assert.equal(gaps[0].next, "30");
  ws().close(1006);
  assert.equal(h.state, "reconnecting");
  await new Promise((r) => setTimeout(r, 20));
  ws().open();
  const [g1, g2] = ws().sent.filter((f) => f.op === "subscribe");
  assert.deepEqual([g1.since, g2.since], ["30", "20"], "x after the gap frame's next; y from its ok's next");
  ws().frame({ type: "ok", id: g1.id, topic: "x.>", replayed: 0, gap: true, next: "40" });
  assert.equal(gaps.length, 2);
  assert.equal(gaps[1].reason, "resume");
  await s1.ready;
  await s2.ready;
  h.close();
});

test("a publish is re-sent after a reconnect with the same key; refusals carry the code", async () => {
  const { h, ws } = client();
  ws().open();
  const p = h.publish("t.a", { n: 1 }, { event: "login" });
  const first = ws().last("publish");
  assert.equal(first.event, "login");
  assert.ok(first.key && first.key.length >= 16, "a key is generated");
  ws().close(1006);
  await new Promise((r) => setTimeout(r, 20));
  ws().open();
  const again = ws().last("publish");
  assert.equal(again.key, first.key);
  ws().frame({ type: "ok", id: again.id, event_id: "77", receivers: 3, duplicate: true });
  assert.deepEqual(await p, { id: "77", receivers: 3, duplicate: true, key: first.key });

  const q = h.publish("t.b", 1, { key: "k-2" });
  ws().frame({ type: "error", id: ws().last("publish").id, code: "forbidden", message: "no" });
  await assert.rejects(q, (e) => e instanceof HeraldError && e.code === "forbidden" && e.message === "no");
  const r = h.publish("t.c", 1);
  h.close();
  await assert.rejects(r, (e) => e.code === "closed");
});

test("an unsubscribed frame ends the subscription through onEnd; unsubscribe() sends once", async () => {
  const { h, ws } = client();
  ws().open();
  const ends = [];
  const got = [];
  const s = h.subscribe("p.>", { onEnd: (e) => ends.push(e && e.code) }, (e) => got.push(e.id));
  ws().frame({ type: "ok", id: ws().last("subscribe").id, topic: "p.>", replayed: 0, gap: false, next: "1" });
  ws().frame({ type: "unsubscribed", topic: "p.>", code: "forbidden", message: "reloaded" });
  ws().frame(ev("2", "p.a"));
  assert.deepEqual(ends, ["forbidden"]);
  assert.deepEqual(got, []);
  assert.equal(s.ended, true);
  const t = h.subscribe("q.>", { onEnd: (e) => ends.push(e) }, () => {});
  ws().frame({ type: "ok", id: ws().last("subscribe").id, topic: "q.>", replayed: 0, gap: false, next: "1" });
  const done = t.unsubscribe();
  const u = ws().last("unsubscribe");
  assert.equal(u.topic, "q.>");
  ws().frame({ type: "ok", id: u.id });
  await done;
  assert.deepEqual(ends, ["forbidden", null]);
  assert.throws(() => h.subscribe("z", {}, () => {}) && h.subscribe("z", {}, () => {}), /already subscribed/);
  h.close();
});

test("reconnect delays grow with jitter up to the maximum", async () => {
  const delays = [];
  FakeWS.all = [];
  const h = new Herald("ws://h", {
    WebSocket: FakeWS,
    minBackoffMs: 100,
    maxBackoffMs: 800,
    onStateChange: (s, d) => s === "reconnecting" && delays.push(d.delayMs),
  });
  for (let i = 0; i < 6; i++) {
    FakeWS.all.at(-1).close(1006);
    clearTimeout(h._retryTimer); // drive attempts by hand
    h._connect();
  }
  h.close();
  const caps = [100, 200, 400, 800, 800, 800];
  delays.forEach((d, i) => assert.ok(d >= caps[i] / 2 && d <= caps[i], `attempt ${i}: ${d} ms`));
});

test("a link that stops answering pings is given up and reconnected", async () => {
  const { h, ws } = client();
  const first = ws();
  first.open(1); // heartbeat 1 s: a ping each second, given up after one unanswered
  first.dead = true;
  await new Promise((r) => setTimeout(r, 1100));
  const ping = first.last("ping");
  assert.ok(ping, "a ping was sent");
  await new Promise((r) => setTimeout(r, 1100));
  assert.notEqual(ws(), first, "a new connection was started");
  assert.equal(first.readyState, 3);
  h.close();
});

test("close() settles a pending unsubscribe and leaves nothing scheduled", async () => {
  const { h, ws } = client();
  ws().open();
  const s = h.subscribe("a", {}, () => {});
  ws().frame({ type: "ok", id: ws().last("subscribe").id, topic: "a", replayed: 0, gap: false, next: "1" });
  const done = s.unsubscribe();
  h.close();
  await done; // would hang if close() forgot it
  assert.equal(h.state, "closed");
  assert.equal(h._retryTimer, null);
  assert.equal(h._beatTimer, null);
});
