// SPDX-License-Identifier: MIT
/**
 * Herald's browser client: one WebSocket (subprotocol herald.v1) that reconnects by itself.
 *
 * - Subscriptions resume after a reconnect from the last event they delivered (or from the
 *   subscribe ok's `next` when they delivered none), so no event arrives twice and none is
 *   skipped; when the server cannot promise that, `onGap` is called.
 * - Publishes carry an idempotency key (made up when not given) and are sent again with the
 *   same key after a reconnect, so an event exists once even when an answer was lost.
 * - A refused command rejects with a {@link HeraldError} whose `code` is the protocol's code.
 *
 * The server sends an event once per connection however many of its patterns match. This
 * client hands each event to every subscription whose pattern matches it, in id order. One
 * consequence: a `since` replay leaves out events this connection already received for an
 * overlapping pattern before the subscribe (use a second Herald for an independent replay).
 *
 * No dependencies, no build step: `import { Herald } from "/v1/herald.js"`.
 * @module herald
 */

/** Connection states, in the order a healthy client goes through them. */
export const STATES = Object.freeze(["connecting", "open", "reconnecting", "closed"]);

/** An error from the server (or from this client: `closed`, `timeout`), with its code. */
export class HeraldError extends Error {
  /**
   * @param {string} code the protocol's error code (`forbidden`, `invalid_topic`, ...)
   * @param {string} message the server's sentence
   */
  constructor(code, message) {
    super(message || code);
    this.name = "HeraldError";
    /** @type {string} */
    this.code = code;
  }
}

const SEGMENT = /^[A-Za-z0-9_\-:@]+$/;

/**
 * True when `topic` matches `pattern` (`*`: one whole segment; `>` last: one or more).
 * @param {string} pattern
 * @param {string} topic
 * @returns {boolean}
 */
export function topicMatches(pattern, topic) {
  const p = pattern.split(".");
  const t = topic.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return i === p.length - 1 && t.length > i;
    if (i >= t.length) return false;
    if (p[i] !== "*" && p[i] !== t[i]) return false;
  }
  return p.length === t.length;
}

/**
 * True when `s` is a valid pattern (PROTOCOL.md section 1).
 * @param {string} s
 * @returns {boolean}
 */
export function isPattern(s) {
  if (typeof s !== "string" || s.length < 1 || s.length > 255) return false;
  const segs = s.split(".");
  return segs.every((g, i) => g === "*" || (g === ">" && i === segs.length - 1) || SEGMENT.test(g));
}

// Ids are opaque but ordered: a later event's id sorts after an earlier one's.
const later = (a, b) => (a === undefined ? b : b === undefined ? a : a > b ? a : b);

function randomKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && c.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Turns `ws://host:port`, `http://host:port` or a full URL into the endpoint URL. */
function endpoint(url, token) {
  const base = globalThis.location ? globalThis.location.href : undefined;
  const u = new URL(url || "/", base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.pathname === "/" || u.pathname === "") u.pathname = "/v1/ws";
  if (token) u.searchParams.set("token", token);
  return u.toString();
}

/**
 * One subscription. Created by {@link Herald#subscribe}.
 */
export class Subscription {
  /** @param {Herald} herald @param {string} pattern @param {object} options @param {Function} onEvent */
  constructor(herald, pattern, options, onEvent) {
    /** The pattern subscribed to. @type {string} */
    this.pattern = pattern;
    /** True from the first ok until it ends. @type {boolean} */
    this.active = false;
    /** True once ended (by unsubscribe, close, or the server). @type {boolean} */
    this.ended = false;
    /** The id of the last event delivered, or undefined. @type {string|undefined} */
    this.lastId = undefined;
    this._h = herald;
    this._onEvent = onEvent;
    this._onGap = options.onGap;
    this._onEnd = options.onEnd;
    this._since = options.since; // what the next subscribe sends
    this._next = undefined; // the last ok's (or gap frame's) `next`
    // The newest `next` whose replay was wholly delivered: a resume may start there.
    this._checkpoint = undefined;
    // Where the stream of the current subscribe begins: its since when that is an id, the ok's
    // next for live or latest, none for all. Events held for several subscriptions (see
    // Herald#_maybeFlush) reach this one only after it.
    this._floor = undefined;
    this._everReady = false;
    /** Resolves with the first subscribe ok frame; rejects with a HeraldError if refused. */
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {}); // an ignored refusal is reported through onEnd, not as unhandled
  }

  /** Where a new subscribe resumes: nothing missed, nothing twice. */
  _resumeSince() {
    return later(this.lastId, this._checkpoint) ?? this._since;
  }

  _deliver(ev) {
    // Nothing twice, and nothing from before where this subscription's stream begins.
    const after = later(this.lastId, this._floor);
    if (this.ended || (after !== undefined && ev.id <= after)) return;
    this.lastId = ev.id;
    try {
      this._onEvent(ev, this);
    } catch (e) {
      this._h._report(e);
    }
  }

  _end(err) {
    if (this.ended) return;
    this.ended = true;
    this.active = false;
    if (err) this._reject(err);
    else this._reject(new HeraldError("unsubscribed", "unsubscribed before the server answered"));
    if (this._onEnd) {
      try {
        this._onEnd(err || null, this);
      } catch (e) {
        this._h._report(e);
      }
    }
  }

  /**
   * Ends the subscription: no event is delivered to it after this call.
   * @returns {Promise<void>} resolves when the server confirmed (at once when disconnected)
   */
  unsubscribe() {
    return this._h._unsubscribe(this);
  }
}

/**
 * A client connection to heraldd. It connects at once and reconnects with jittered
 * exponential backoff until {@link Herald#close}.
 * @extends EventTarget
 */
export class Herald extends EventTarget {
  /**
   * @param {string} [url] `ws://host:port` (the path /v1/ws is added), an http(s) URL, or a
   *   full WebSocket URL; default: the page's own origin
   * @param {object} [options]
   * @param {string} [options.token] sent as `?token=` (browsers cannot set headers on a WebSocket)
   * @param {number} [options.minBackoffMs=250] first reconnect delay (before jitter)
   * @param {number} [options.maxBackoffMs=15000] longest reconnect delay
   * @param {(state: string, detail: object) => void} [options.onStateChange]
   * @param {(err: Error) => void} [options.onError] errors thrown by callbacks, stray server errors
   * @param {typeof WebSocket} [options.WebSocket] a WebSocket implementation (default: the global)
   */
  constructor(url, options = {}) {
    super();
    this._url = endpoint(url, options.token);
    this._opts = options;
    this._min = options.minBackoffMs ?? 250;
    this._max = options.maxBackoffMs ?? 15000;
    this._WS = options.WebSocket || globalThis.WebSocket;
    /** Current state: "connecting", "open", "reconnecting" or "closed". @type {string} */
    this.state = "connecting";
    /** The welcome frame of the current connection, or null. @type {object|null} */
    this.welcome = null;
    this._subs = new Set();
    this._outbox = []; // publishes not yet answered, in call order
    this._pending = new Map(); // op id -> handler, for the current socket
    this._nextOp = 1;
    this._attempt = 0;
    this._ws = null;
    this._retryTimer = null;
    this._beatTimer = null;
    this._awaitingPong = false;
    // Events are held while subscribes are unanswered or their replays incomplete, then
    // handed out in id order: see _maybeFlush.
    this._oksDue = 0;
    this._replayLeft = 0;
    this._pool = [];
    this._connect();
  }

  /** @private */
  _setState(state, detail = {}) {
    if (this.state === state && state !== "reconnecting") return; // each retry is news
    this.state = state;
    if (this._opts.onStateChange) {
      try {
        this._opts.onStateChange(state, detail);
      } catch (e) {
        this._report(e);
      }
    }
    const ev = new Event("statechange");
    ev.state = state;
    ev.detail = detail;
    this.dispatchEvent(ev);
  }

  /** @private */
  _report(err) {
    if (this._opts.onError) this._opts.onError(err);
    else console.error(err); // eslint-disable-line no-console
  }

  /** @private */
  _connect() {
    this._retryTimer = null;
    let ws;
    try {
      ws = new this._WS(this._url, "herald.v1");
    } catch (e) {
      this._report(e);
      this._scheduleReconnect({ error: String(e) });
      return;
    }
    this._ws = ws;
    ws.onmessage = (m) => this._onMessage(ws, m);
    ws.onclose = (c) => this._onClose(ws, c);
    ws.onerror = () => {}; // a close follows with what is known
  }

  /** @private */
  _send(frame) {
    if (!this._ws || this._ws.readyState !== 1) return false;
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  /** @private */
  _op(frame, handler) {
    const id = this._nextOp++;
    this._pending.set(id, handler);
    this._send({ ...frame, id });
    return id;
  }

  /** @private */
  _onMessage(ws, m) {
    if (ws !== this._ws) return;
    this._awaitingPong = false;
    let f;
    try {
      f = JSON.parse(m.data);
    } catch (e) {
      this._report(new HeraldError("bad_frame", "the server sent a frame that is not JSON"));
      return;
    }
    switch (f.type) {
      case "event":
        return this._onEvent(f);
      case "welcome":
        return this._onWelcome(f);
      case "ok":
      case "error":
      case "pong": {
        const h = f.id == null ? undefined : this._pending.get(f.id);
        if (h) {
          this._pending.delete(f.id);
          h(f);
        } else if (f.type === "error") {
          this._report(new HeraldError(f.code, f.message));
        }
        return;
      }
      case "gap":
        for (const s of this._subs)
          if (s.pattern === f.topic && s.active) {
            s._next = later(s._next, f.next);
            s._checkpoint = later(s._checkpoint, f.next);
            this._gap(s, { topic: f.topic, next: f.next, reason: "server" });
          }
        return;
      case "unsubscribed":
        for (const s of [...this._subs])
          if (s.pattern === f.topic) {
            this._subs.delete(s);
            s._end(new HeraldError(f.code || "forbidden", f.message));
          }
        return;
      default:
        return; // a newer server's frame: ignore
    }
  }

  /** @private */
  _gap(sub, info) {
    if (!sub._onGap) return;
    try {
      sub._onGap(info, sub);
    } catch (e) {
      this._report(e);
    }
  }

  /** @private */
  _onWelcome(f) {
    this.welcome = f;
    this._attempt = 0;
    this._setState("open", { session: f.session, server: f.server });
    // Our own pings: a browser cannot see the server's, and a dead link can stay "open".
    const beat = Math.max(1, Number(f.heartbeat) || 25) * 1000;
    clearInterval(this._beatTimer);
    this._beatTimer = setInterval(() => {
      if (this._awaitingPong) {
        // A dead link may take the browser minutes to notice: give up on it now.
        const ws = this._ws;
        try {
          ws.close(4100, "no answer to ping");
        } catch (e) {
          /* closing already */
        }
        this._onClose(ws, { code: 4100, reason: "no answer to ping" });
        return;
      }
      this._awaitingPong = true;
      this._op({ op: "ping" }, () => {});
    }, beat);
    for (const s of this._subs) this._sendSubscribe(s);
    for (const p of this._outbox) this._sendPublish(p);
  }

  /** @private */
  _sendSubscribe(sub) {
    const since = sub._resumeSince();
    const frame = { op: "subscribe", topic: sub.pattern };
    if (since !== undefined) frame.since = since;
    sub._attemptSince = since;
    sub._sent = true;
    this._oksDue++;
    this._op(frame, (f) => {
      this._oksDue--;
      if (sub.ended) {
        // unsubscribed while the subscribe was in flight: its replay still comes
        if (f.type === "ok") this._replayLeft += f.replayed || 0;
      } else if (f.type === "ok") {
        sub.active = true;
        sub._since = sub._attemptSince;
        const since = sub._attemptSince;
        if (f.gap || since === "all") sub._floor = undefined;
        else if (since === undefined || since === "latest") sub._floor = f.next;
        else sub._floor = since;
        if (f.next !== undefined) sub._next = f.next;
        this._replayLeft += f.replayed || 0;
        if (!sub._everReady) {
          sub._everReady = true;
          sub._resolve(f);
        }
        if (f.gap) this._gap(sub, { topic: sub.pattern, next: f.next, reason: "resume" });
      } else {
        this._subs.delete(sub);
        sub._end(new HeraldError(f.code, f.message));
      }
      this._maybeFlush();
    });
  }

  /** @private */
  _onEvent(ev) {
    if (this._replayLeft > 0) this._replayLeft--;
    if (this._oksDue > 0 || this._pool.length || this._replayLeft > 0) {
      this._pool.push(ev);
      this._maybeFlush();
      return;
    }
    for (const s of this._subs) if (s.active && topicMatches(s.pattern, ev.topic)) s._deliver(ev);
  }

  /**
   * Hands out what was held once no subscribe is unanswered and no replay incomplete: in id
   * order, to every active subscription whose pattern matches (each skips what it already
   * has). The server sends an event once per connection, so an event that came in another
   * subscription's replay, or live before an ok, may be the only copy a subscription gets.
   * @private
   */
  _maybeFlush(force = false) {
    if (!force && (this._oksDue > 0 || this._replayLeft > 0)) return;
    const pool = this._pool;
    this._pool = [];
    pool.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    for (const ev of pool)
      for (const s of this._subs) if (s.active && topicMatches(s.pattern, ev.topic)) s._deliver(ev);
    if (!force) for (const s of this._subs) if (s.active) s._checkpoint = later(s._checkpoint, s._next);
  }

  /** @private */
  _onClose(ws, c) {
    if (ws !== this._ws) return;
    this._ws = null;
    this.welcome = null;
    clearInterval(this._beatTimer);
    this._beatTimer = null;
    this._awaitingPong = false;
    // What arrived is delivered; each subscription resumes after its last delivered event.
    this._maybeFlush(true);
    this._oksDue = 0;
    this._replayLeft = 0;
    const pending = this._pending;
    this._pending = new Map();
    for (const h of pending.values()) h.onDisconnect?.();
    for (const s of this._subs) s.active = s._sent = false;
    for (const p of this._outbox) p.opId = undefined;
    if (this.state === "closed") return;
    this._scheduleReconnect({ code: c.code, reason: c.reason });
  }

  /** @private */
  _scheduleReconnect(detail) {
    const cap = Math.min(this._max, this._min * 2 ** Math.min(this._attempt, 16));
    const delay = Math.round(cap / 2 + Math.random() * (cap / 2)); // jitter: herds spread out
    this._attempt++;
    this._setState("reconnecting", { ...detail, delayMs: delay, attempt: this._attempt });
    this._retryTimer = setTimeout(() => this._connect(), delay);
  }

  /**
   * Subscribes to a pattern. Events reach `onEvent(event, subscription)` in id order.
   * @param {string} pattern e.g. `chat.>` or `user.*.inbox`
   * @param {object} [options]
   * @param {string} [options.since] `all`, `latest` or an event id; absent: live events only
   * @param {(gap: {topic: string, next?: string, reason: string}) => void} [options.onGap]
   *   events may have been missed (cursor older than history, or the server said so)
   * @param {(err: HeraldError|null) => void} [options.onEnd] the subscription ended: null after
   *   unsubscribe()/close(), or the server's error (refused, or `unsubscribed` by a reload)
   * @param {(event: object, sub: Subscription) => void} onEvent
   * @returns {Subscription}
   */
  subscribe(pattern, options, onEvent) {
    if (typeof options === "function") [options, onEvent] = [{}, options];
    options = options || {};
    if (typeof onEvent !== "function") throw new TypeError("subscribe: onEvent must be a function");
    if (this.state === "closed") throw new HeraldError("closed", "this client is closed");
    for (const s of this._subs)
      if (s.pattern === pattern)
        throw new HeraldError("bad_request", `already subscribed to ${pattern} on this client`);
    const sub = new Subscription(this, pattern, options, onEvent);
    this._subs.add(sub);
    if (this.state === "open") this._sendSubscribe(sub);
    return sub;
  }

  /** @private */
  _unsubscribe(sub) {
    if (sub.ended) return Promise.resolve();
    const sent = sub._sent; // on this connection: the unsubscribe follows it in order
    this._subs.delete(sub);
    sub._end(null);
    if (!sent || this.state !== "open") return Promise.resolve();
    return new Promise((resolve) => {
      const h = () => resolve();
      h.onDisconnect = resolve; // the connection ended: so did the subscription
      this._op({ op: "unsubscribe", topic: sub.pattern }, h);
    });
  }

  /**
   * Publishes an event. Sent now, or as soon as a connection is open; re-sent with the same
   * key after a reconnect until answered.
   * @param {string} topic
   * @param {*} data any JSON value
   * @param {object} [options]
   * @param {string} [options.event="message"] the event kind
   * @param {string} [options.key] idempotency key (1-128 visible ASCII); made up when absent
   * @returns {Promise<{id: string, receivers: number, duplicate: boolean, key: string}>}
   *   rejects with a HeraldError whose `code` is the server's (`forbidden`, `too_large`, ...)
   */
  publish(topic, data, options = {}) {
    if (this.state === "closed")
      return Promise.reject(new HeraldError("closed", "this client is closed"));
    const frame = { op: "publish", topic, data: data === undefined ? null : data };
    if (options.event) frame.event = options.event;
    frame.key = options.key || randomKey();
    return new Promise((resolve, reject) => {
      const p = { frame, resolve, reject, opId: undefined };
      this._outbox.push(p);
      if (this.state === "open") this._sendPublish(p);
    });
  }

  /** @private */
  _sendPublish(p) {
    const h = (f) => {
      const i = this._outbox.indexOf(p);
      if (i >= 0) this._outbox.splice(i, 1);
      if (f.type === "ok")
        p.resolve({
          id: f.event_id,
          receivers: f.receivers,
          duplicate: f.duplicate === true,
          key: p.frame.key,
        });
      else p.reject(new HeraldError(f.code, f.message));
    };
    p.opId = this._op(p.frame, h);
  }

  /**
   * Closes the connection for good: subscriptions end (onEnd(null)), unanswered publishes
   * reject with code `closed`, and no timer is left behind.
   */
  close() {
    if (this.state === "closed") return;
    clearTimeout(this._retryTimer);
    clearInterval(this._beatTimer);
    this._retryTimer = this._beatTimer = null;
    this._setState("closed", {});
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000, "client closed");
      } catch (e) {
        /* already closing */
      }
    }
    const pending = this._pending;
    this._pending = new Map();
    for (const h of pending.values()) h.onDisconnect?.(); // a pending unsubscribe is done
    this._pool = [];
    for (const s of [...this._subs]) s._end(null);
    this._subs.clear();
    const out = this._outbox;
    this._outbox = [];
    for (const p of out) p.reject(new HeraldError("closed", "closed before the server answered"));
  }
}

export default Herald;
