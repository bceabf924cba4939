// SPDX-License-Identifier: MIT
// The Herald web console: built only on herald.js (live events, publish) and the public
// HTTP API (delivery status, /metrics). No inline script or style, no network but heraldd.
import { Herald, isPattern } from "/v1/herald.js";

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 2000; // the Live table keeps the newest this many
const DATA_MAX = 4000; // characters of pretty-printed data shown per row
const TOKEN_KEY = "herald.console.token";

/* ---- small helpers ------------------------------------------------------------------- */

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");
function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function fmtNumber(v, digits = 0) {
  if (v == null || !Number.isFinite(v)) return "–";
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
  return v.toFixed(digits);
}

function fmtBytes(v) {
  if (v == null || !Number.isFinite(v)) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fmtSeconds(s) {
  if (s == null || !Number.isFinite(s)) return "–";
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

/* ---- notices: the server's errors, shown as they are ---------------------------------- */

function notify(text, kind = "bad") {
  $("notice-text").textContent = text;
  $("notice").className = `notice ${kind}`;
  $("notice").hidden = false;
}
$("notice-close").addEventListener("click", () => ($("notice").hidden = true));

const errorText = (e) => (e && e.code ? `${e.code}: ${e.message}` : String(e && e.message ? e.message : e));

/** fetch with the token; resolves with parsed JSON or throws {code, message} as sent. */
async function api(path) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(path, { headers, cache: "no-store" });
  const text = await r.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  if (!r.ok) {
    const err = new Error(body && body.message ? body.message : `HTTP ${r.status}`);
    err.code = body && body.code ? body.code : `http_${r.status}`;
    throw err;
  }
  return body;
}

/* ---- the connection ------------------------------------------------------------------ */

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let herald = null;
const subs = new Map(); // pattern -> {pattern, since, sub, chip}

function setState(state, detail = {}) {
  const s = $("conn-state");
  const text = {
    connecting: "connecting…",
    open: "connected",
    reconnecting: detail.delayMs != null ? `reconnecting in ${(detail.delayMs / 1000).toFixed(1)} s` : "reconnecting…",
    closed: "closed",
  }[state];
  s.textContent = text || state;
  s.className = `state state-${state}`;
  if (state === "open" && detail.server) $("server-name").textContent = detail.server;
}

function connect() {
  const old = herald;
  const resume = [...subs.values()].map((s) => ({
    pattern: s.pattern,
    since: s.sub && s.sub.lastId ? s.sub.lastId : s.since,
  }));
  if (old) {
    for (const s of subs.values()) s.replacing = true;
    old.close();
  }
  subs.clear();
  $("subs").replaceChildren();
  herald = new Herald(location.origin, {
    token: token || undefined,
    onStateChange: setState,
    onError: (e) => notify(errorText(e)),
  });
  setState("connecting");
  for (const r of resume) addSubscription(r.pattern, r.since);
}

$("token").value = token;
$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("notice").hidden = true;
  connect();
});

/* ---- views --------------------------------------------------------------------------- */

const VIEWS = ["live", "publish", "status", "server"];
let current = null;

function route() {
  const [name, arg] = location.hash.replace(/^#/, "").split("/");
  const view = VIEWS.includes(name) ? name : "live";
  for (const v of VIEWS) {
    $(`view-${v}`).hidden = v !== view;
    const tab = $(`tab-${v}`);
    if (v === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  current = view;
  if (view === "status") {
    if (arg) $("status-id").value = decodeURIComponent(arg);
    lookup(); // (again): the refresh stops while another view is shown
  }
}
window.addEventListener("hashchange", route);

/* ---- Live ---------------------------------------------------------------------------- */

const rows = []; // {ev, tr, text}, oldest first
let held = []; // events that arrived while paused
let paused = false;
let filter = "";

$("sub-since").addEventListener("change", () => {
  $("sub-id-field").hidden = $("sub-since").value !== "id";
});

function sinceLabel(since) {
  if (since === undefined || since === "") return "live";
  if (since === "all" || since === "latest") return `from ${since}`;
  return `after ${since}`;
}

function addSubscription(pattern, since) {
  if (subs.has(pattern)) {
    notify(`already subscribed to ${pattern}`, "warn");
    return;
  }
  const entry = { pattern, since };
  const label = el("span", { class: "chip-label" }, el("b", { text: pattern }), ` ${sinceLabel(since)}`);
  const stateDot = el("span", { class: "dot pending", title: "waiting for the server" });
  const close = el("button", {
    type: "button",
    class: "chip-x",
    "aria-label": `Unsubscribe from ${pattern}`,
    text: "×",
    onclick: () => {
      subs.delete(pattern);
      entry.chip.remove();
      entry.sub.unsubscribe();
    },
  });
  entry.chip = el("li", { class: "chip" }, stateDot, label, close);
  $("subs").append(entry.chip);
  subs.set(pattern, entry);
  try {
    entry.sub = herald.subscribe(
      pattern,
      {
        since: since || undefined,
        onGap: (g) =>
          notify(`${g.topic}: events may have been missed (gap${g.next ? ` before ${g.next}` : ""})`, "warn"),
        onEnd: (err) => {
          if (!err || entry.replacing) return;
          notify(`${pattern}: ${errorText(err)}`);
          subs.delete(pattern);
          entry.chip.remove();
        },
      },
      onEvent,
    );
  } catch (e) {
    subs.delete(pattern);
    entry.chip.remove();
    notify(errorText(e));
    return;
  }
  entry.sub.ready.then(
    () => {
      stateDot.className = "dot live";
      stateDot.title = "subscribed";
    },
    () => {},
  );
}

$("sub-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const pattern = $("sub-pattern").value.trim();
  if (!isPattern(pattern)) {
    notify(`invalid_topic: "${pattern}" is not a pattern (segments of A-Z a-z 0-9 _ - : @, * or a final >)`);
    return;
  }
  let since = $("sub-since").value;
  if (since === "id") {
    since = $("sub-id").value.trim();
    if (!since) {
      $("sub-id").focus();
      return;
    }
  }
  addSubscription(pattern, since);
});

function rowText(ev) {
  return `${ev.topic}\n${ev.event}\n${ev.id}\n${JSON.stringify(ev.data)}`.toLowerCase();
}

/**
 * Pretty-prints a JSON value as [class, text] pieces: a value whose one-line form fits in
 * `width` stays on one line (dense), larger ones break one member per line.
 */
function pretty(v, width = 72, indent = "") {
  const out = [];
  const flat = (x) => {
    if (x === null || typeof x !== "object") return scalarPiece(x);
    const inner = Array.isArray(x)
      ? x.map((y) => flat(y))
      : Object.entries(x).map(([k, y]) => [["k", JSON.stringify(k)], ["p", ": "], ...flat(y)]);
    const open = Array.isArray(x) ? "[" : "{";
    const close = Array.isArray(x) ? "]" : "}";
    if (!inner.length) return [["p", open + close]];
    const pieces = [["p", Array.isArray(x) ? "[" : "{ "]];
    inner.forEach((m, i) => pieces.push(...m, ...(i < inner.length - 1 ? [["p", ", "]] : [])));
    pieces.push(["p", Array.isArray(x) ? "]" : " }"]);
    return pieces;
  };
  const len = (pieces) => pieces.reduce((n, [, t]) => n + t.length, 0);
  const one = flat(v);
  if (v === null || typeof v !== "object" || len(one) + indent.length <= width) return one;
  const arr = Array.isArray(v);
  const inner = indent + "  ";
  out.push(["p", arr ? "[\n" : "{\n"]);
  const entries = arr ? v.map((y) => [null, y]) : Object.entries(v);
  entries.forEach(([k, y], i) => {
    out.push(["p", inner]);
    if (k !== null) out.push(["k", JSON.stringify(k)], ["p", ": "]);
    out.push(...pretty(y, width, inner));
    out.push(["p", i < entries.length - 1 ? ",\n" : "\n"]);
  });
  out.push(["p", indent + (arr ? "]" : "}")]);
  return out;
}

function scalarPiece(x) {
  if (typeof x === "string") return [["s", JSON.stringify(x)]];
  if (typeof x === "number") return [["n", String(x)]];
  return [["b", String(x)]]; // true, false, null
}

function jsonNode(v) {
  const pre = el("pre", { class: "json" });
  let used = 0;
  for (const [cls, text] of pretty(v)) {
    if (used > DATA_MAX) {
      pre.append("…");
      break;
    }
    used += text.length;
    pre.append(cls === "p" ? text : el("span", { class: `j-${cls}`, text }));
  }
  return pre;
}

function makeRow(ev) {
  return el(
    "tr",
    {},
    el("td", { class: "c-time mono", text: clock(ev.time), title: new Date(ev.time).toISOString() }),
    el("td", { class: "c-topic", text: ev.topic }),
    el("td", { class: "c-event" }, el("span", { class: "kind", text: ev.event })),
    el("td", { class: "c-id mono" }, el("a", { href: `#status/${encodeURIComponent(ev.id)}`, text: ev.id, title: "delivery status" })),
    el("td", { class: "c-data" }, jsonNode(ev.data === undefined ? null : ev.data)),
  );
}

const matches = (r) => !filter || r.text.includes(filter);

function updateCount() {
  const shown = filter ? rows.filter(matches).length : rows.length;
  let t = `${rows.length} event${rows.length === 1 ? "" : "s"}`;
  if (filter) t += ` · ${shown} shown`;
  if (paused) t += ` · ${held.length} held`;
  $("live-count").textContent = t;
  $("events-empty").hidden = rows.length > 0;
  $("pause").textContent = paused ? `Resume${held.length ? ` (${held.length})` : ""}` : "Pause";
}

function addRow(ev) {
  const r = { ev, text: rowText(ev), tr: null };
  rows.push(r);
  if (matches(r)) {
    r.tr = makeRow(ev);
    $("events-body").prepend(r.tr); // newest on top
  }
  while (rows.length > MAX_ROWS) {
    const old = rows.shift();
    if (old.tr) old.tr.remove();
  }
}

let countQueued = false;
function onEvent(ev) {
  if (paused) held.push(ev);
  else addRow(ev);
  if (!countQueued) {
    countQueued = true;
    requestAnimationFrame(() => {
      countQueued = false;
      updateCount();
    });
  }
}

function rerender() {
  const body = $("events-body");
  const frag = document.createDocumentFragment();
  for (let i = rows.length - 1; i >= 0; i--) {
    const r = rows[i];
    if (matches(r)) {
      r.tr = r.tr || makeRow(r.ev);
      frag.append(r.tr);
    } else {
      r.tr = null;
    }
  }
  body.replaceChildren(frag);
  updateCount();
}

$("filter").addEventListener("input", () => {
  filter = $("filter").value.trim().toLowerCase();
  rerender();
});
$("pause").addEventListener("click", () => {
  paused = !paused;
  $("pause").setAttribute("aria-pressed", String(paused));
  if (!paused) {
    const h = held;
    held = [];
    for (const ev of h) addRow(ev);
  }
  updateCount();
});
$("clear").addEventListener("click", () => {
  rows.length = 0;
  held = [];
  $("events-body").replaceChildren();
  updateCount();
});

/* ---- Publish ------------------------------------------------------------------------- */

function parseData() {
  const text = $("pub-data").value;
  try {
    const v = text.trim() === "" ? null : JSON.parse(text);
    $("pub-data-error").textContent = "";
    $("pub-data").removeAttribute("aria-invalid");
    return { ok: true, value: v };
  } catch (e) {
    $("pub-data-error").textContent = `not valid JSON: ${e.message}`;
    $("pub-data").setAttribute("aria-invalid", "true");
    return { ok: false };
  }
}
$("pub-data").addEventListener("input", parseData);

$("pub-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const data = parseData();
  if (!data.ok) {
    $("pub-data").focus();
    return;
  }
  const topic = $("pub-topic").value.trim();
  const kind = $("pub-event").value.trim() || "message";
  const key = $("pub-key").value.trim() || undefined;
  const out = $("pub-result");
  $("pub-send").disabled = true;
  try {
    const r = await herald.publish(topic, data.value, { event: kind, key });
    const link = el("a", { href: `#status/${encodeURIComponent(r.id)}`, text: "delivery status →" });
    out.className = "card result ok";
    out.replaceChildren(
      el("div", { class: "result-head", text: r.duplicate ? "Already published (same key): the first answer" : "Published" }),
      el(
        "dl",
        { class: "kv" },
        el("dt", { text: "id" }),
        el("dd", { class: "mono", id: "pub-result-id", text: r.id }),
        el("dt", { text: "receivers" }),
        el("dd", { id: "pub-result-receivers", text: String(r.receivers) }),
        el("dt", { text: "key" }),
        el("dd", { class: "mono", text: r.key }),
      ),
      link,
    );
    $("pub-history-body").prepend(
      el(
        "tr",
        {},
        el("td", { class: "mono", text: clock(Date.now()) }),
        el("td", { text: topic }),
        el("td", {}, el("span", { class: "kind", text: kind })),
        el("td", { class: "mono" }, el("a", { href: `#status/${encodeURIComponent(r.id)}`, text: r.id })),
        el("td", { class: "num", text: String(r.receivers) }),
      ),
    );
  } catch (err) {
    out.className = "card result bad";
    out.replaceChildren(el("div", { class: "result-head", text: "Refused" }), el("div", { class: "mono", text: errorText(err) }));
  } finally {
    out.hidden = false;
    $("pub-send").disabled = false;
  }
});

/* ---- Status -------------------------------------------------------------------------- */

let statusTimer = null;
let statusId = "";

async function lookup() {
  const id = $("status-id").value.trim();
  if (!id) return;
  statusId = id;
  clearTimeout(statusTimer);
  try {
    const s = await api(`/v1/events/${encodeURIComponent(id)}`);
    if (id !== statusId) return;
    $("st-queued").textContent = String(s.queued);
    $("st-written").textContent = String(s.written);
    $("st-dropped").textContent = String(s.dropped);
    $("st-dropped").classList.toggle("bad", s.dropped > 0);
    $("st-meta").replaceChildren(
      el("span", { class: "mono", text: s.event.id }),
      el("span", { text: s.event.topic }),
      el("span", { class: "kind", text: s.event.event }),
      el("span", { text: new Date(s.event.time).toLocaleString() }),
      el("span", { class: "muted", text: `checked ${clock(Date.now())}` }),
    );
    $("st-event").replaceChildren(...jsonNode(s.event.data).childNodes);
    $("status-out").hidden = false;
    $("status-empty").hidden = true;
    $("status-out").classList.remove("stale");
  } catch (e) {
    if (id !== statusId) return;
    notify(errorText(e));
    $("status-out").classList.add("stale");
    return; // no refresh of an id the server refused
  }
  if ($("status-auto").checked && current === "status")
    statusTimer = setTimeout(() => current === "status" && lookup(), 1000);
}

$("status-form").addEventListener("submit", (e) => {
  e.preventDefault();
  $("notice").hidden = true;
  const id = $("status-id").value.trim();
  if (location.hash !== `#status/${encodeURIComponent(id)}`) location.hash = `#status/${encodeURIComponent(id)}`;
  else lookup();
});
$("status-auto").addEventListener("change", () => $("status-auto").checked && lookup());

/* ---- Server: /metrics as small live charts ------------------------------------------- */

const SAMPLES = 120; // two minutes at one scrape a second
const scrapes = []; // {t, m: Map("name{labels}" -> number)}

function parseMetrics(text) {
  const m = new Map();
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const sp = line.lastIndexOf(" ");
    m.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return m;
}

function rate(name, back = 1) {
  if (scrapes.length < 2) return null;
  const a = scrapes[Math.max(0, scrapes.length - 1 - back)];
  const b = scrapes[scrapes.length - 1];
  const dt = (b.t - a.t) / 1000;
  if (dt <= 0 || !b.m.has(name)) return null;
  return Math.max(0, (b.m.get(name) - (a.m.get(name) ?? 0)) / dt);
}

/** Quantile q of a histogram over the last `back` scrapes (cumulative when only one). */
function quantile(name, q, back = 5) {
  const b = scrapes[scrapes.length - 1];
  const a = scrapes.length > 1 ? scrapes[Math.max(0, scrapes.length - 1 - back)] : null;
  const buckets = [];
  for (const [k, v] of b.m) {
    if (!k.startsWith(`${name}_bucket{le="`)) continue;
    const le = k.slice(name.length + 12, -2);
    const prev = a ? a.m.get(k) ?? 0 : 0;
    buckets.push({ le: le === "+Inf" ? Infinity : Number(le), n: v - prev });
  }
  buckets.sort((x, y) => x.le - y.le);
  const total = buckets.length ? buckets[buckets.length - 1].n : 0;
  if (!total) return null;
  const want = q * total;
  let lo = 0;
  let below = 0;
  for (const bk of buckets) {
    if (bk.n >= want) {
      if (bk.le === Infinity) return lo; // beyond the last bound: at least that
      const inside = bk.n - below;
      return lo + (bk.le - lo) * (inside ? (want - below) / inside : 1);
    }
    lo = bk.le;
    below = bk.n;
  }
  return null;
}

const g = (name) => {
  const b = scrapes[scrapes.length - 1];
  return b && b.m.has(name) ? b.m.get(name) : null;
};

const TILES = [
  {
    id: "connections",
    label: "Connections",
    value: () => g("herald_connections"),
    fmt: (v) => fmtNumber(v),
    foot: () => `SSE ${fmtNumber(g("herald_sse_streams"))} · long polls ${fmtNumber(g("herald_long_polls"))}`,
  },
  { id: "subscriptions", label: "Subscriptions", value: () => g("herald_subscriptions"), fmt: (v) => fmtNumber(v) },
  {
    id: "events",
    label: "Events / s",
    value: () => rate("herald_events_published_total"),
    fmt: (v) => fmtNumber(v, v && v < 10 ? 1 : 0),
    foot: () => `${fmtNumber(g("herald_events_published_total"))} published`,
  },
  {
    id: "deliveries",
    label: "Deliveries / s",
    value: () => rate("herald_deliveries_written_total"),
    fmt: (v) => fmtNumber(v, v && v < 10 ? 1 : 0),
    foot: () => `${fmtNumber(g("herald_deliveries_written_total"))} written`,
  },
  {
    id: "queued",
    label: "Queued bytes",
    value: () => g("herald_queued_bytes"),
    fmt: fmtBytes,
    foot: () => "in connection queues",
  },
  {
    id: "slow",
    label: "Slow-consumer closes",
    value: () => g("herald_slow_consumer_disconnects_total"),
    fmt: (v) => fmtNumber(v),
    warn: (v) => v > 0,
    foot: () =>
      `dropped: ${fmtNumber(g('herald_events_dropped_total{reason="slow_consumer"}'))} slow · ${fmtNumber(
        g('herald_events_dropped_total{reason="disconnect"}'),
      )} gone`,
  },
  {
    id: "p50",
    label: "Latency p50",
    value: () => quantile("herald_publish_to_write_seconds", 0.5),
    fmt: fmtSeconds,
    foot: () => `publish → write · p90 ${fmtSeconds(quantile("herald_publish_to_write_seconds", 0.9))}`,
  },
  {
    id: "p99",
    label: "Latency p99",
    value: () => quantile("herald_publish_to_write_seconds", 0.99),
    fmt: fmtSeconds,
    foot: () => "publish → write, last 5 s",
  },
  {
    id: "commit",
    label: "Store commit p99",
    value: () => quantile("herald_store_commit_seconds", 0.99),
    fmt: fmtSeconds,
    foot: () => `${fmtNumber(rate("herald_store_commit_seconds_count"), 1)} commits / s`,
  },
  {
    id: "history",
    label: "History",
    value: () => g("herald_history_events"),
    fmt: (v) => `${fmtNumber(v)} ev`,
    foot: () => fmtBytes(g("herald_history_bytes")),
  },
];

const SVG = "http://www.w3.org/2000/svg";
function buildTiles() {
  for (const t of TILES) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${SAMPLES - 1} 30`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", "spark");
    svg.setAttribute("aria-hidden", "true");
    const area = document.createElementNS(SVG, "polygon");
    area.setAttribute("class", "spark-area");
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", "spark-line");
    svg.append(area, line);
    t.series = [];
    t.valueEl = el("div", { class: "value", id: `m-${t.id}`, text: "–" });
    t.footEl = el("div", { class: "foot", text: "" });
    t.peakEl = el("span", { class: "peak", title: "highest value in the chart" });
    t.line = line;
    t.area = area;
    $("tiles").append(el(
        "div",
        { class: "tile", id: `tile-${t.id}` },
        el("div", { class: "tile-head" }, el("span", { class: "label", text: t.label }), t.peakEl),
        t.valueEl,
        t.footEl,
        svg,
      ));
  }
}

function draw(t) {
  const s = t.series;
  const peak = Math.max(...s.map((v) => v ?? 0), 0);
  t.peakEl.textContent = peak > 0 ? `peak ${t.fmt(peak)}` : "";
  const max = Math.max(peak, 1e-12);
  // Spread over the samples there are: a chart fills its tile from the first scrape on.
  const step = s.length > 1 ? (SAMPLES - 1) / (s.length - 1) : 0;
  const pts = s.map((v, i) => `${(i * step).toFixed(2)},${(29 - ((v ?? 0) / max) * 26).toFixed(2)}`);
  t.line.setAttribute("points", pts.join(" "));
  t.area.setAttribute("points", s.length > 1 ? `0,30 ${pts.join(" ")} ${SAMPLES - 1},30` : "");
}

let scrapeTimer = null;
async function scrape() {
  clearTimeout(scrapeTimer);
  try {
    const r = await fetch("/metrics", { cache: "no-store" });
    if (!r.ok) throw new Error(`/metrics answered ${r.status}`);
    scrapes.push({ t: performance.now(), m: parseMetrics(await r.text()) });
    if (scrapes.length > SAMPLES + 10) scrapes.shift();
    for (const t of TILES) {
      const v = t.value();
      t.series.push(v);
      if (t.series.length > SAMPLES) t.series.shift();
      t.valueEl.textContent = t.fmt(v);
      t.valueEl.classList.toggle("bad", !!(t.warn && v != null && t.warn(v)));
      t.footEl.textContent = t.foot ? t.foot() : "";
      draw(t);
    }
    $("server-note").classList.remove("bad");
  } catch (e) {
    $("server-note").textContent = `Could not read /metrics: ${e.message}`;
    $("server-note").classList.add("bad");
  }
  // Scraped all the time so that the charts have history when the view is opened.
  scrapeTimer = setTimeout(scrape, 1000);
}

/* ---- start --------------------------------------------------------------------------- */

buildTiles();
connect();
route();
scrape();
updateCount();
