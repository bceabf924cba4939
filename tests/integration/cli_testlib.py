# SPDX-License-Identifier: MIT
"""Helpers for the end-to-end tests of the herald CLI and libherald (test_cli.py).

Runs the real `herald` binary (and the example app) against the real daemon started by
herald_testlib's Daemon. With HERALD_CLI_VALGRIND=1 every client process runs under valgrind
and a memory error or leak makes it exit 99, which fails the test that ran it. Every wait is
bounded; a client still running at the end of a test is killed.
"""

import asyncio
import glob
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time

import websockets

from herald_testlib import REPO, Daemon, HeraldTestCase, build_dir

VALGRIND = os.environ.get("HERALD_CLI_VALGRIND") == "1"
# valgrind slows a client down by an order of magnitude; waits scale with it.
SLOW = 8.0 if VALGRIND else 1.0
VALGRIND_RC = 99


def _built(name):
    """A client binary of this build: $HERALD_BUILD_DIR/clients/NAME, else any build*/ dir."""
    base = build_dir()
    cands = [os.path.join(base, "clients", name)]
    cands += sorted(glob.glob(os.path.join(REPO, "build*", "clients", name)))
    for cand in cands:
        if os.access(cand, os.X_OK):
            return cand
    raise AssertionError(f"{name} not found (looked in {cands}); build the clients first")


def herald_path():
    return os.environ.get("HERALD_CLI") or _built("herald")


def example_path(name):
    return _built(name)


def wrap(cmd):
    if not VALGRIND:
        return cmd
    vg = shutil.which("valgrind")
    if not vg:
        raise AssertionError("HERALD_CLI_VALGRIND=1 but valgrind is not installed")
    return [vg, "-q", "--leak-check=full", f"--error-exitcode={VALGRIND_RC}",
            "--errors-for-leak-kinds=definite,indirect,possible",
            "--show-leak-kinds=definite,indirect,possible"] + cmd


def free_port():
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proc:
    """A long-running client: stdout lines and stderr lines are collected by threads."""

    def __init__(self, cmd, env=None, stdin=None):
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=stdin or subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.lines = queue.Queue()
        self.out = []
        self.err = []
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, True),
                                          daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, False),
                                          daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self, stream, is_out):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if is_out:
                self.out.append(line)
                self.lines.put(line)
            else:
                self.err.append(line)
        stream.close()

    def read_lines(self, n, timeout=10.0):
        """Exactly n more stdout lines within timeout (scaled under valgrind)."""
        deadline = time.monotonic() + timeout * SLOW
        got = []
        while len(got) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {len(got)} of {n} lines within {timeout * SLOW}s: "
                                     f"{got}\nstderr: {self.stderr}")
            try:
                got.append(self.lines.get(timeout=left))
            except queue.Empty:
                pass
        return got

    def no_more_lines(self, duration=0.5):
        try:
            line = self.lines.get(timeout=duration * SLOW)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected output: {line!r}")

    def wait(self, timeout=10.0):
        try:
            rc = self.proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.cmd} still running after {timeout * SLOW}s; "
                                 f"stderr: {self.stderr}") from None
        for t in self._threads:
            t.join(5)
        return rc

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def stderr(self):
        return "\n".join(self.err)

    def wait_stderr(self, needle, timeout=10.0):
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            if needle in self.stderr:
                return
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not on stderr within {timeout * SLOW}s:\n"
                             f"{self.stderr}")


class PortDaemon(Daemon):
    """A daemon on a given port (to restart one where its clients expect it), or, with
    port=None and listen_from_config=True, on the listeners of its config file (TLS)."""

    def __init__(self, port=None, listen_from_config=False, **kw):
        super().__init__(listen=True, **kw)
        self.fixed_port = port
        self.listen_from_config = listen_from_config

    def command(self):
        cmd = super().command()
        i = cmd.index("--listen")
        if self.listen_from_config:
            del cmd[i:i + 2]
        else:
            cmd[i + 1] = f"127.0.0.1:{self.fixed_port}"
        return cmd


class CLITestCase(HeraldTestCase):
    """HeraldTestCase plus running the CLI: run() for one-shot commands, spawn() for
    long-running ones. Under valgrind a client that reports memory errors fails the test."""

    def setUp(self):
        super().setUp()
        self.procs = []
        self.addCleanup(self._kill_procs)

    def _kill_procs(self):
        for p in self.procs:
            p.kill()

    def env(self, **extra):
        env = dict(os.environ)
        env.pop("HERALD_URL", None)
        env.pop("HERALD_TOKEN", None)
        env.update(extra)
        return env

    def cli(self, *args):
        return wrap([herald_path()] + [str(a) for a in args])

    def run_cli(self, *args, url=None, input=None, timeout=15.0, env=None, expect=None):
        """Runs `herald [--url URL] ARGS`; returns CompletedProcess (text). `expect`: the
        exit status it must have."""
        argv = (["--url", url] if url else []) + list(args)
        p = subprocess.run(self.cli(*argv), input=input, capture_output=True, text=True,
                           timeout=timeout * SLOW, env=env or self.env())
        if VALGRIND and p.returncode == VALGRIND_RC:
            self.fail(f"valgrind reported errors for herald {argv}:\n{p.stderr}")
        if expect is not None and p.returncode != expect:
            self.fail(f"herald {argv} exited {p.returncode}, expected {expect}\n"
                      f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def spawn(self, *args, url=None, env=None, stdin=None, program=None):
        argv = (["--url", url] if url else []) + [str(a) for a in args]
        cmd = wrap([program] + argv) if program else self.cli(*argv)
        p = Proc(cmd, env=env or self.env(), stdin=stdin)
        self.procs.append(p)
        return p

    def finish(self, p, expect=0, timeout=10.0):
        rc = p.wait(timeout)
        if VALGRIND and rc == VALGRIND_RC:
            self.fail(f"valgrind reported errors:\n{p.stderr}")
        self.assertEqual(rc, expect, f"exit status {rc}; stderr:\n{p.stderr}")
        return rc

    def start_port_daemon(self, port=None, **kw):
        d = PortDaemon(port=port, **kw)
        self.addCleanup(self._finish_daemon, d)
        d.start()
        return d

    def wait_subscriptions(self, d, n, timeout=10.0):
        """Waits until the daemon counts n subscriptions (a subscriber is ready)."""
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            if (d.metric("herald_subscriptions") or 0) >= n:
                return
            time.sleep(0.02)
        self.fail(f"the daemon did not see {n} subscriptions within {timeout * SLOW}s")

    def one_line_error(self, p, code):
        """stderr is exactly one line starting with 'herald' and the exit status is code."""
        self.assertEqual(p.returncode, code, f"stderr: {p.stderr}")
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        if VALGRIND:
            lines = [x for x in lines if not x.startswith("==")]
        self.assertEqual(len(lines), 1, f"expected one line on stderr, got: {p.stderr!r}")
        self.assertTrue(lines[0].startswith("herald"), lines[0])
        self.assertEqual(p.stdout, "", "nothing on stdout on failure")
        return lines[0]


class FakeServer:
    """A scripted herald.v1 server on a free port, for what the real daemon will not do on
    demand. Each connection gets a welcome; subscribes are answered ok; `close_code`, when
    set, closes the connection right after the first ok. `silent` accepts TCP and says
    nothing at all. `drop_publishes`: the first that many publishes are not answered, the
    connection is cut instead; later ones are answered ok, with `"duplicate": true` for a
    key seen before (as a server with idempotency keys does). Every publish command is kept
    in `publishes`, every subscribe in `subscribes`; `next_id` is sent as the subscribe ok's
    `next`. Runs its own asyncio loop on a thread."""

    def __init__(self, close_code=None, close_reason="", silent=False, drop_publishes=0,
                 next_id=None):
        self.next_id = next_id
        self.close_code = close_code
        self.close_reason = close_reason
        self.silent = silent
        self.drop_publishes = drop_publishes
        self.publishes = []
        self.subscribes = []
        self._answers = {}
        self.connections = 0
        self.port = None
        self._ready = threading.Event()
        self._stop = None
        self._loop = None
        self._sockets = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _publish(self, ws, cmd):
        self.publishes.append(cmd)
        key = cmd.get("key")
        answer = {"type": "ok", "id": cmd.get("id"), "receivers": 0}
        if key in self._answers:
            answer.update(self._answers[key], duplicate=True)
        else:
            answer["event_id"] = f"{len(self._answers) + 1:016x}"
            if key:
                self._answers[key] = {"event_id": answer["event_id"]}
        if len(self.publishes) <= self.drop_publishes:
            # Published, but the answer is lost with the connection.
            await ws.close(1011, "dropped on purpose")
            return False
        await ws.send(json.dumps(answer))
        return True

    async def _handler(self, ws, path=None):
        self.connections += 1
        await ws.send(json.dumps({"type": "welcome", "session": "fake", "server": "fake/0",
                                  "heartbeat": 25, "max_event_bytes": 65536}))
        async for msg in ws:
            cmd = json.loads(msg)
            if cmd.get("op") == "publish":
                if not await self._publish(ws, cmd):
                    return
                continue
            ok = {"type": "ok", "id": cmd.get("id"), "topic": cmd.get("topic"),
                  "replayed": 0, "gap": False}
            if cmd.get("op") == "subscribe":
                self.subscribes.append(cmd)
                if self.next_id:
                    ok["next"] = self.next_id
            await ws.send(json.dumps(ok))
            if self.close_code:
                await ws.close(self.close_code, self.close_reason)
                return

    async def _silent(self, reader, writer):
        self.connections += 1
        self._sockets.append(writer)
        await self._stop

    async def _main(self):
        self._stop = self._loop.create_future()
        if self.silent:
            server = await asyncio.start_server(self._silent, "127.0.0.1", 0)
        else:
            server = await websockets.serve(self._handler, "127.0.0.1", 0,
                                            subprotocols=["herald.v1"])
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop
        for w in self._sockets:
            w.close()
        server.close()
        await server.wait_closed()

    def _run(self):
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._main())
        self._loop.close()

    def __enter__(self):
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(5)

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}"


def stop_gracefully(d, timeout=10.0):
    """SIGTERM and wait (the daemon closes WebSockets with 1001)."""
    rc = d.stop(signal.SIGTERM, timeout)
    if rc != 0:
        raise AssertionError(f"heraldd exited {rc} on SIGTERM")


class FakeBatchServer:
    """POST /v1/publish as PROTOCOL.md section 3 describes it, for the client side of
    batches: records each request (headers and NDJSON lines) and answers 202 with one event
    per line, or, when a line's topic is "bad", 400 invalid_topic naming that line."""

    def __init__(self):
        import http.server

        outer = self
        self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n).decode()
                lines = [json.loads(x) for x in body.split("\n") if x]
                outer.requests.append({"path": self.path, "type":
                                       self.headers.get("Content-Type"), "lines": lines,
                                       "raw": body})
                bad = [i for i, x in enumerate(lines, 1) if x.get("topic") == "bad"]
                if bad:
                    code, answer = 400, {"type": "error", "code": "invalid_topic",
                                         "message": "invalid topic \"bad\"", "line": bad[0]}
                else:
                    code, answer = 202, {"events": [
                        {"id": f"{i:016x}", "topic": x["topic"], "time": 1, "receivers": 0}
                        for i, x in enumerate(lines, 1)]}
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}"
