// SPDX-License-Identifier: MIT
// Harness for the browser suites: starts the real heraldd on a free loopback port (as
// tests/integration/herald_testlib.py does), launches Debian's chromium through playwright-core
// with a fresh profile and no background networking, and publishes over plain HTTP.
import { spawn } from "node:child_process";
import { createServer, connect as tcpConnect } from "node:net";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(HERE, "..", "..");
export const CHROMIUM = process.env.HERALD_CHROMIUM || "/usr/bin/chromium";
// Valgrind or sanitizer builds are slower; every wait scales with this.
export const SLOW = Number(process.env.HERALD_TEST_SLOW || 1);

export function heralddPath() {
  if (process.env.HERALDD) return process.env.HERALDD;
  for (const d of readdirSync(REPO).filter((n) => n.startsWith("build")).sort()) {
    const p = join(REPO, d, "heraldd");
    if (existsSync(p)) return p;
  }
  throw new Error("heraldd not found: set HERALDD=/path/to/heraldd (ctest does)");
}

/** Where screenshots go: $HERALD_BUILD_DIR/browser-artifacts (ctest sets it). */
export function artifactDir() {
  const base = process.env.HERALD_BUILD_DIR || join(dirname(heralddPath()));
  const dir = join(base, "browser-artifacts");
  mkdirSync(dir, { recursive: true });
  return dir;
}

// Sanitizer and crash reports fail the test even when every assertion passed (as in
// tests/integration/herald_testlib.py).
const SANITIZER_RE =
  /AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:|Segmentation fault|Assertion .* failed|^==\d+== \S/m;

export const sha256hex = (s) => createHash("sha256").update(s).digest("hex");

// Daemons still running when this process ends (a failed or interrupted test) die with it.
const live = new Set();
process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});
for (const sig of ["SIGINT", "SIGTERM"])
  process.once(sig, () => process.exit(1));

/** One heraldd process; `port` 0 picks a free one (read back from its "listening" line). */
export class Daemon {
  constructor({ config = {}, port = 0, dataDir } = {}) {
    this.dir = mkdtempSync(join(tmpdir(), "herald-browser-"));
    this.dataDir = dataDir || this.dir;
    this.config = { data_dir: this.dataDir, ...config };
    this.wantPort = port;
    this.log = [];
    this.proc = null;
  }

  async start() {
    const cfg = (this.configPath = join(this.dir, `heraldd-${Date.now()}.json`));
    writeFileSync(cfg, JSON.stringify(this.config));
    this.checked = false;
    this.proc = spawn(heralddPath(), ["-c", cfg, "--listen", `127.0.0.1:${this.wantPort}`], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const proc = this.proc;
    live.add(proc);
    const exited = new Promise((res) =>
      proc.once("close", (code) => {
        live.delete(proc);
        res(code);
      }),
    );
    this.exited = exited;
    const port = await new Promise((resolvePort, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`heraldd did not listen within ${10 * SLOW}s:\n${this.tail()}`)),
        10000 * SLOW,
      );
      exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`heraldd exited with ${code}:\n${this.tail()}`));
      });
      let buf = "";
      const onData = (d) => {
        buf += d.toString();
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          this.log.push(line);
          const m = /msg="listening".*\bport=(\d+)/.exec(line);
          if (m) {
            clearTimeout(timer);
            resolvePort(Number(m[1]));
          }
        }
      };
      this.proc.stderr.on("data", onData);
      this.proc.stdout.on("data", onData);
    });
    this.port = this.wantPort = port;
    this.base = `http://127.0.0.1:${port}`;
    return this;
  }

  /** Rewrites the config file and sends SIGHUP; resolves when the daemon logged the reload. */
  async reload(config) {
    this.config = { data_dir: this.dataDir, ...config };
    writeFileSync(this.configPath, JSON.stringify(this.config));
    const seen = this.log.length;
    this.proc.kill("SIGHUP");
    await until(() => this.log.slice(seen).some((l) => /configuration reloaded/.test(l)), 5000, "the reload");
  }

  tail(n = 30) {
    return this.log.slice(-n).join("\n");
  }

  /** SIGTERM and wait (bounded); the port stays ours to start again on. A daemon that
   * exits uncleanly or reports a sanitizer error fails the test. */
  async stop() {
    if (!this.proc || this.checked) return;
    this.checked = true;
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill("SIGTERM");
    const t = setTimeout(() => this.proc.kill("SIGKILL"), 10000 * SLOW);
    const code = await this.exited;
    clearTimeout(t);
    const log = this.log.join("\n");
    if (code !== 0 || SANITIZER_RE.test(log))
      throw new Error(`heraldd exited with ${code ?? this.proc.signalCode}:\n${this.tail(60)}`);
  }

  async cleanup() {
    try {
      await this.stop();
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }

  /** POST /v1/topics/{topic} with JSON data; returns {status, body, headers}. */
  async publish(topic, data, { event, token, key } = {}) {
    const q = event ? `?event=${encodeURIComponent(event)}` : "";
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    if (key) headers["idempotency-key"] = key;
    const r = await fetch(`${this.base}/v1/topics/${topic}${q}`, {
      method: "POST",
      headers,
      body: JSON.stringify(data),
    });
    return { status: r.status, body: await r.json(), headers: r.headers };
  }

  async get(path, headers = {}) {
    const r = await fetch(this.base + path, { headers, redirect: "manual" });
    return { status: r.status, text: await r.text(), headers: r.headers };
  }
}

/**
 * Launches chromium with a fresh profile. Missing pieces fail with a sentence saying what to
 * install: a browser test that skips would hide a broken console.
 */
export async function launchBrowser() {
  if (!existsSync(CHROMIUM))
    throw new Error(`${CHROMIUM} is missing: apt-get install chromium (scripts/debian-packages.txt)`);
  let pw;
  try {
    pw = await import("playwright-core");
  } catch (e) {
    throw new Error("playwright-core is missing: run `npm ci` in tests/browser (.ci/run does)");
  }
  const profile = mkdtempSync(join(tmpdir(), "herald-chromium-"));
  const context = await pw.chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1280, height: 800 },
  });
  const close = context.close.bind(context);
  context.close = async () => {
    await close();
    rmSync(profile, { recursive: true, force: true });
  };
  return context;
}

/** A page that records console errors and page errors (asserted empty by the tests). */
export async function newPage(context) {
  const page = await context.newPage();
  page.errors = [];
  page.on("console", (m) => {
    // Chromium asks every page for /favicon.ico; that 404 is not the page's error.
    if (m.type() === "error" && !m.location().url.endsWith("/favicon.ico"))
      page.errors.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => page.errors.push(`pageerror: ${e.message}`));
  return page;
}

/** Polls `fn` until it returns a truthy value; fails after `ms` (scaled). */
export async function until(fn, ms = 5000, what = "condition") {
  const end = Date.now() + ms * SLOW;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * A TCP proxy on a free loopback port to `port`. dropNextAnswer() makes it swallow what the
 * server sends next and then cut both sides: the client's request was processed, its answer
 * lost, which is the case idempotency keys exist for.
 */
export async function lossyProxy(port) {
  const pairs = new Set();
  let armed = false;
  const server = createServer((client) => {
    const upstream = tcpConnect(port, "127.0.0.1");
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => {
      if (armed) {
        armed = false;
        end();
        return;
      }
      client.write(d);
    });
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: server.address().port,
    dropNextAnswer() {
      armed = true;
    },
    get armed() {
      return armed;
    },
    close() {
      for (const p of pairs) {
        p.client.destroy();
        p.upstream.destroy();
      }
      return new Promise((r) => server.close(r));
    },
  };
}
