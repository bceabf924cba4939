# SPDX-License-Identifier: MIT
"""Shared harness for the heraldd integration suites.

Starts the real daemon on a free loopback port, keeps draining its logs, and talks to it the
way users do: HTTP over http.client, WebSocket over python3-websockets (10.4's legacy client on
Debian 12, 15's asyncio client on Debian 13; see ws_connect) and,
where a misbehaving client is the point, over a raw socket. Every wait is bounded so a missing
frame fails the test after a few seconds instead of hanging ctest.
"""

import asyncio
import atexit
import base64
import collections
import functools
import glob
import hashlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

import websockets
import websockets.exceptions

try:
    # websockets >= 13 (Debian 13 ships 15): the asyncio client, which websockets.connect also
    # names from 14 on. Extra request headers are `additional_headers`, a refused handshake
    # raises InvalidStatus (status in .response) and "open" is a state.
    from websockets.asyncio.client import connect as _ws_connect
    from websockets.protocol import State as _WSState

    _WS_HEADERS_KW = "additional_headers"
    WSInvalidStatus = websockets.exceptions.InvalidStatus
except ImportError:
    # websockets 10.4 (Debian 12): the legacy client.
    _ws_connect = websockets.connect
    _WSState = None
    _WS_HEADERS_KW = "extra_headers"
    WSInvalidStatus = websockets.exceptions.InvalidStatusCode


def ws_connect(url, headers=None, **kw):
    """websockets.connect (awaitable) taking extra request headers on either websockets."""
    if headers is not None:
        kw[_WS_HEADERS_KW] = headers
    return _ws_connect(url, **kw)


def ws_refused_status(e):
    """The HTTP status of a refused WebSocket handshake (a WSInvalidStatus)."""
    response = getattr(e, "response", None)
    return response.status_code if response is not None else e.status_code


def ws_is_open(ws):
    return ws.state is _WSState.OPEN if _WSState is not None else ws.open

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

LISTEN_RE = re.compile(r'msg="listening".*\bport=(\d+)')
# Sanitizer and crash reports that must fail the test even if every assertion passed.
SANITIZER_RE = re.compile(r"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|"
                          r"runtime error:|Segmentation fault|Assertion .* failed|"
                          r"^==\d+== \S", re.M)
# HERALDD_VALGRIND=1 runs every daemon under valgrind's memcheck (quiet: any "==pid==" line
# is an error report, and fails the test like a sanitizer's). Ten times slower: only suites
# that do not time the daemon closely are run this way (tests/CMakeLists.txt).
DAEMON_VALGRIND = os.environ.get("HERALDD_VALGRIND") == "1"
DAEMON_SLOW = 6.0 if DAEMON_VALGRIND else 1.0
ID_RE = re.compile(r"^[0-9a-f]{16}$")
WS_SUBPROTOCOL = "herald.v1"
DEFAULT_TIMEOUT = 5.0

_live_daemons = set()


def heraldd_path():
    """The binary under test: $HERALDD, else a build directory of this checkout."""
    path = os.environ.get("HERALDD")
    if path:
        return path
    for cand in sorted(glob.glob(os.path.join(REPO, "build*", "heraldd"))):
        if os.access(cand, os.X_OK):
            return cand
    raise AssertionError("heraldd not found: set HERALDD=/path/to/heraldd (ctest does)")


def build_dir():
    path = os.environ.get("HERALD_BUILD_DIR")
    if path:
        return path
    exe = heraldd_path()
    return os.path.dirname(os.path.abspath(exe))


def lws_version():
    """The libwebsockets version heraldd was built against, as a tuple: (4, 1, 6) on Debian 12,
    (4, 3, 5) on Debian 13. From the build directory's CMake cache."""
    with open(os.path.join(build_dir(), "CMakeCache.txt")) as f:
        m = re.search(r"^LWS_VERSION:INTERNAL=(\d+)\.(\d+)\.(\d+)", f.read(), re.M)
    if not m:
        raise AssertionError("LWS_VERSION not in the build's CMakeCache.txt")
    return tuple(int(x) for x in m.groups())


def sanitized_build():
    """Whether heraldd was built with ASan and UBSan (HERALD_SANITIZE in the CMake cache)."""
    with open(os.path.join(build_dir(), "CMakeCache.txt")) as f:
        return re.search(r"^HERALD_SANITIZE:BOOL=ON$", f.read(), re.M) is not None


def raise_nofile_limit():
    # Fan-out tests hold thousands of sockets; the default soft limit of 1024 is too low.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def write_config(config, directory=None):
    """Writes a dict (or a str verbatim) to a temporary .json file and returns its path."""
    fd, path = tempfile.mkstemp(prefix="herald-it-", suffix=".json", dir=directory)
    with os.fdopen(fd, "w") as f:
        if isinstance(config, str):
            f.write(config)
        else:
            json.dump(config, f, indent=2)
            f.write("\n")
    return path


def now_ms():
    return int(time.time() * 1000)


class DaemonError(AssertionError):
    pass


class Response:
    """One HTTP response: status, headers (case-insensitive), raw body, parsed JSON or None."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        self.json = None
        try:
            self.json = json.loads(body.decode("utf-8")) if body else None
        except (ValueError, UnicodeDecodeError):
            self.json = None

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def __repr__(self):
        return f"<Response {self.status} {self.body[:300]!r}>"


def topic_path(topic):
    return "/v1/topics/" + urllib.parse.quote(topic, safe="$.:@-_*>")


def publish_path(topic, event=None, query=None):
    path = topic_path(topic)
    q = dict(query or {})
    if event is not None:
        q["event"] = event
    if q:
        path += "?" + urllib.parse.urlencode(q)
    return path


def _encode_body(body, content_type):
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    # Anything else is a JSON value the caller wants sent as JSON.
    return json.dumps(body).encode("utf-8")


class HTTPClient:
    """A keep-alive HTTP/1.1 connection to the daemon (sequential requests reuse one socket)."""

    def __init__(self, port, timeout=DEFAULT_TIMEOUT, host="127.0.0.1"):
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def request(self, method, path, body=None, headers=None):
        self.conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = self.conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.headers, data)

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def publish(self, topic, body, content_type=None, event=None, headers=None):
        """POSTs to /v1/topics/{topic}; returns (status, headers, parsed json)."""
        r = self.publish_full(topic, body, content_type, event, headers)
        return r.status, r.headers, r.json

    def publish_full(self, topic, body, content_type=None, event=None, headers=None):
        h = dict(headers or {})
        if content_type is not None:
            h["Content-Type"] = content_type
        return self.request("POST", publish_path(topic, event), _encode_body(body, content_type),
                            h)

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Daemon:
    """One heraldd process. Use as a context manager or through HeraldTestCase.start_daemon.

    config: dict (or JSON text) written to a temporary file and passed with -c.
    listen: pass --listen 127.0.0.1:0 (overrides the file's listeners) so the port is free.
    """

    def __init__(self, config=None, args=(), listen=True, log_level=None, start_timeout=10.0,
                 env=None):
        self.config = config
        self.args = list(args)
        self.listen = listen
        self.log_level = log_level
        self.start_timeout = start_timeout * DAEMON_SLOW
        self.env = env
        self.config_path = None
        self.proc = None
        self.ports = []
        self.stopped = False
        self._lines = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._threads = []

    # -- process -------------------------------------------------------------------------

    def command(self):
        cmd = [heraldd_path()]
        if DAEMON_VALGRIND:
            vg = shutil.which("valgrind")
            if not vg:
                raise AssertionError("HERALDD_VALGRIND=1 but valgrind is not installed")
            cmd = [vg, "-q", "--leak-check=full", "--error-exitcode=99",
                   "--errors-for-leak-kinds=definite,indirect",
                   "--show-leak-kinds=definite,indirect"] + cmd
        if self.config is not None:
            self.config_path = write_config(self.config)
            cmd += ["-c", self.config_path]
        if self.listen:
            cmd += ["--listen", "127.0.0.1:0"]
        if self.log_level:
            cmd += ["--log-level", self.log_level]
        return cmd + self.args

    def start(self):
        cmd = self.command()
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env,
                                     preexec_fn=raise_nofile_limit)
        _live_daemons.add(self)
        for stream, name in ((self.proc.stderr, "stderr"), (self.proc.stdout, "stdout")):
            t = threading.Thread(target=self._drain, args=(stream, name), daemon=True)
            t.start()
            self._threads.append(t)
        if self.listen:
            deadline = time.monotonic() + self.start_timeout
            with self._cond:
                while not self.ports:
                    if self.proc.poll() is not None:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(left, 0.05))
            if not self.ports:
                rc = self.proc.poll()
                self.kill()
                raise DaemonError(f"heraldd did not log a listening line within "
                                  f"{self.start_timeout}s (exit status {rc}); cmd={cmd}\n"
                                  f"--- log ---\n{self.log_tail()}")
        return self

    def _drain(self, stream, name):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self._lines.append(line if name == "stderr" else "[stdout] " + line)
                m = LISTEN_RE.search(line)
                if m:
                    self.ports.append(int(m.group(1)))
                self._cond.notify_all()
        stream.close()

    @property
    def port(self):
        return self.ports[0]

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=10.0):
        """Waits for exit; returns the status or raises DaemonError after timeout."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DaemonError(f"heraldd did not exit within {timeout}s") from None
        self._join_drains()
        return rc

    def _join_drains(self):
        # The process has exited, but its last lines may still sit in the pipe: a test
        # that reads self.log right after stop() must see everything the daemon wrote.
        for t in self._threads:
            t.join(5)

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Sends sig and waits (bounded) for exit; returns the exit status. Kills on timeout."""
        self.stopped = True
        timeout *= DAEMON_SLOW  # valgrind's leak check at exit takes seconds
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise DaemonError(f"heraldd did not exit within {timeout}s of signal {sig}")
        self._join_drains()
        return rc

    def kill(self):
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._cleanup_files()
        _live_daemons.discard(self)

    def _cleanup_files(self):
        if self.proc is not None and self.proc.poll() is not None:
            for t in self._threads:
                t.join(2)
        if self.config_path and os.path.exists(self.config_path):
            os.unlink(self.config_path)
            self.config_path = None

    def rewrite_config(self, config):
        """Replaces the config file's content (for SIGHUP tests)."""
        with open(self.config_path, "w") as f:
            f.write(config if isinstance(config, str) else json.dumps(config, indent=2) + "\n")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()

    # -- logs ----------------------------------------------------------------------------

    @property
    def log(self):
        with self._lock:
            return "\n".join(self._lines)

    def log_tail(self, n=60):
        with self._lock:
            return "\n".join(self._lines[-n:])

    def wait_for_log(self, pattern, timeout=DEFAULT_TIMEOUT, start=0):
        """Waits until a log line (from index start) matches; returns the match or None."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self._lines):
                    m = rx.search(self._lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.05))

    def log_mark(self):
        with self._lock:
            return len(self._lines)

    # -- URLs and HTTP -------------------------------------------------------------------

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def http(self, timeout=DEFAULT_TIMEOUT):
        return HTTPClient(self.port, timeout)

    def request(self, method, path, body=None, headers=None, timeout=DEFAULT_TIMEOUT):
        with self.http(timeout) as c:
            return c.request(method, path, body, headers)

    def get(self, path, headers=None, timeout=DEFAULT_TIMEOUT):
        return self.request("GET", path, headers=headers, timeout=timeout)

    def publish(self, topic, body, content_type=None, event=None, headers=None):
        """POST /v1/topics/{topic}; returns (status, headers, parsed json)."""
        with self.http() as c:
            return c.publish(topic, body, content_type, event, headers)

    def publish_ok(self, topic, body, content_type=None, event=None):
        """Publishes and asserts 202; returns the reply object."""
        status, _, reply = self.publish(topic, body, content_type, event)
        if status != 202:
            raise AssertionError(f"publish to {topic!r} got {status} {reply}")
        return reply

    def metrics(self):
        """GET /metrics parsed into {sample name (with labels): value}."""
        r = self.get("/metrics")
        if r.status != 200:
            raise AssertionError(f"/metrics returned {r.status}")
        return parse_metrics(r.text)

    def metric(self, name):
        """Sum of all samples of `name` (any labels); None when absent."""
        return metric_sum(self.metrics(), name)


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)", line)
        if m:
            try:
                out[m.group(1)] = float(m.group(2))
            except ValueError:
                pass
    return out


def metric_sum(samples, name):
    total, seen = 0.0, False
    for key, val in samples.items():
        if key == name or key.startswith(name + "{"):
            total += val
            seen = True
    return total if seen else None


@atexit.register
def _kill_leftovers():
    for d in list(_live_daemons):
        d.kill()


# -- WebSocket (python3-websockets) ------------------------------------------------------

_open_clients = set()


class ClosedError(AssertionError):
    """The server closed the connection while a frame was expected."""

    def __init__(self, code, detail):
        super().__init__(f"connection closed by the server (code {code}): {detail}")
        self.code = code


class WSClient:
    """A herald.v1 WebSocket client. Events that arrive while waiting for a reply are kept for
    recv_event; anything else unexpected lands in `stray`."""

    def __init__(self, ws):
        self.ws = ws
        self.welcome = None
        self.events = collections.deque()
        self.stray = []
        self._next_id = 1000000  # far from the small ids tests choose by hand

    @classmethod
    async def connect(cls, target, *, timeout=DEFAULT_TIMEOUT, max_size=2 ** 24,
                      subprotocols=(WS_SUBPROTOCOL,), headers=None, compression=None,
                      expect_welcome=True, path="/v1/ws"):
        url = target if isinstance(target, str) else f"ws://127.0.0.1:{target.port}{path}"
        timeout *= DAEMON_SLOW  # a daemon under valgrind answers the handshake slowly too
        try:
            ws = await asyncio.wait_for(
                ws_connect(url, headers, subprotocols=list(subprotocols) or None,
                           max_size=max_size, max_queue=None, ping_interval=None,
                           open_timeout=timeout, close_timeout=2, compression=compression),
                timeout + 1)
        except asyncio.TimeoutError:
            raise AssertionError(f"WebSocket connect to {url} timed out") from None
        c = cls(ws)
        _open_clients.add(c)
        if expect_welcome:
            c.welcome = await c.recv_frame(timeout)
            if c.welcome.get("type") != "welcome":
                raise AssertionError(f"first frame is not a welcome: {c.welcome}")
        return c

    def next_id(self):
        i = self._next_id
        self._next_id += 1
        return i

    async def send_raw(self, data):
        await self.ws.send(data)

    async def send_json(self, obj):
        await self.ws.send(json.dumps(obj))

    async def recv_frame(self, timeout=DEFAULT_TIMEOUT):
        """Next frame as parsed JSON. AssertionError on timeout, ClosedError when closed."""
        try:
            msg = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no frame within {timeout}s") from None
        except websockets.ConnectionClosed as e:
            raise ClosedError(e.rcvd.code if e.rcvd else None, str(e)) from None
        if isinstance(msg, bytes):
            raise AssertionError(f"server sent a binary frame: {msg[:100]!r}")
        try:
            return json.loads(msg)
        except ValueError:
            raise AssertionError(f"server sent a frame that is not JSON: {msg[:200]!r}") from None

    async def recv_reply(self, rid, timeout=DEFAULT_TIMEOUT):
        """Reads until the reply (ok/pong/error) whose "id" equals rid (None matches null)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no reply with id {rid!r} within {timeout}s "
                                     f"(stray: {self.stray[-5:]})")
            f = await self.recv_frame(left)
            if f.get("type") == "event":
                self.events.append(f)
            elif f.get("type") in ("ok", "pong", "error") and "id" in f and f["id"] == rid:
                return f
            elif rid is None and f.get("type") in ("ok", "pong") and "id" not in f:
                return f
            else:
                self.stray.append(f)

    async def send_cmd(self, cmd, timeout=DEFAULT_TIMEOUT):
        """Sends a command (an id is added when absent) and returns its reply."""
        cmd = dict(cmd)
        if "id" not in cmd:
            cmd["id"] = self.next_id()
        await self.send_json(cmd)
        return await self.recv_reply(cmd["id"], timeout)

    async def subscribe(self, topic, since=None, timeout=DEFAULT_TIMEOUT):
        cmd = {"op": "subscribe", "topic": topic}
        if since is not None:
            cmd["since"] = since
        r = await self.send_cmd(cmd, timeout)
        if r.get("type") != "ok":
            raise AssertionError(f"subscribe {topic!r} failed: {r}")
        return r

    async def unsubscribe(self, topic, timeout=DEFAULT_TIMEOUT):
        r = await self.send_cmd({"op": "unsubscribe", "topic": topic}, timeout)
        if r.get("type") != "ok":
            raise AssertionError(f"unsubscribe {topic!r} failed: {r}")
        return r

    async def publish(self, topic, data, event=None, timeout=DEFAULT_TIMEOUT):
        cmd = {"op": "publish", "topic": topic, "data": data}
        if event is not None:
            cmd["event"] = event
        return await self.send_cmd(cmd, timeout)

    async def ping(self, timeout=DEFAULT_TIMEOUT):
        r = await self.send_cmd({"op": "ping"}, timeout)
        if r.get("type") != "pong":
            raise AssertionError(f"ping got {r}")
        return r

    async def recv_event(self, timeout=DEFAULT_TIMEOUT):
        """Next event frame; other frames go to `stray`. AssertionError on timeout."""
        if self.events:
            return self.events.popleft()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no event within {timeout}s")
            f = await self.recv_frame(left)
            if f.get("type") == "event":
                return f
            self.stray.append(f)

    async def recv_events(self, n, timeout=DEFAULT_TIMEOUT):
        """Exactly n events within an overall timeout."""
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {len(out)} of {n} events within {timeout}s")
            out.append(await self.recv_event(left))
        return out

    async def expect_no_event(self, duration=0.5):
        """Fails if an event arrives within duration seconds."""
        if self.events:
            raise AssertionError(f"unexpected event: {self.events[0]}")
        deadline = time.monotonic() + duration
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                f = await asyncio.wait_for(self.ws.recv(), left)
            except asyncio.TimeoutError:
                return
            except websockets.ConnectionClosed as e:
                raise ClosedError(e.rcvd.code if e.rcvd else None, str(e)) from None
            f = json.loads(f)
            if f.get("type") == "event":
                raise AssertionError(f"unexpected event: {f}")
            self.stray.append(f)

    async def wait_closed(self, timeout=DEFAULT_TIMEOUT):
        """Reads (and keeps in `stray`) until the server closes; returns the close code."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"connection still open after {timeout}s")
                try:
                    msg = await asyncio.wait_for(self.ws.recv(), left)
                except asyncio.TimeoutError:
                    raise AssertionError(f"connection still open after {timeout}s") from None
                self.stray.append(msg)
        except websockets.ConnectionClosed:
            pass
        try:
            await asyncio.wait_for(self.ws.wait_closed(), max(0.5, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            pass
        return self.ws.close_code

    @property
    def open(self):
        return ws_is_open(self.ws)

    async def close(self):
        _open_clients.discard(self)
        try:
            await asyncio.wait_for(self.ws.close(), 2)
        except Exception:
            pass
        if self.ws.transport is not None and not self.ws.transport.is_closing():
            self.ws.transport.abort()


def run(coro, timeout=60.0):
    """Runs a coroutine to completion with an overall deadline; closes leftover clients."""

    async def main():
        start = time.monotonic()
        try:
            return await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:
            # Since Python 3.10 a socket timeout inside the test is a TimeoutError too: that
            # one keeps its own traceback.
            if time.monotonic() - start < timeout:
                raise
            raise AssertionError(f"test coroutine did not finish within {timeout}s") from None
        finally:
            await asyncio.gather(*(c.close() for c in list(_open_clients)),
                                 return_exceptions=True)
            _open_clients.clear()

    return asyncio.run(main())


def async_test(timeout=60.0):
    """Decorator: turns `async def test_x(self)` into a bounded synchronous unittest method."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *a, **kw):
            return run(fn(self, *a, **kw), timeout)
        return wrapper

    return deco


# -- WebSocket over a raw socket ---------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def parse_frames(buf):
    """Splits server (unmasked) frames off the front of buf: ([(opcode, payload)], rest)."""
    frames = []
    pos = 0
    while True:
        if len(buf) - pos < 2:
            break
        b0, b1 = buf[pos], buf[pos + 1]
        n = b1 & 0x7F
        hdr = 2
        if n == 126:
            if len(buf) - pos < 4:
                break
            n = struct.unpack_from("!H", buf, pos + 2)[0]
            hdr = 4
        elif n == 127:
            if len(buf) - pos < 10:
                break
            n = struct.unpack_from("!Q", buf, pos + 2)[0]
            hdr = 10
        mask = None
        if b1 & 0x80:
            if len(buf) - pos < hdr + 4:
                break
            mask = buf[pos + hdr:pos + hdr + 4]
            hdr += 4
        if len(buf) - pos < hdr + n:
            break
        payload = bytes(buf[pos + hdr:pos + hdr + n])
        if mask:
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        frames.append((b0 & 0x0F, payload))
        pos += hdr + n
    return frames, buf[pos:]


def close_code_of(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


class RawWS:
    """A WebSocket client on a blocking socket that does only what it is told: it never answers
    pings and never reads unless asked (slow-consumer and heartbeat tests)."""

    def __init__(self, port, *, rcvbuf=None, path="/v1/ws", protocol=WS_SUBPROTOCOL,
                 timeout=DEFAULT_TIMEOUT, headers=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # Before connect, so the advertised window (and its scale) stays small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        if protocol:
            lines.append(f"Sec-WebSocket-Protocol: {protocol}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in buf:
            if len(buf) > 16384 or time.monotonic() > deadline:
                raise AssertionError(f"bad handshake response: {buf[:300]!r}")
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"connection closed during handshake: {buf[:300]!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise AssertionError(f"upgrade refused: {head[:300]!r}")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
        if accept.lower() not in head.lower():
            raise AssertionError(f"wrong Sec-WebSocket-Accept in {head[:300]!r}")
        # Frames the server sent right behind the 101 (the welcome) may be in this read.
        frames, rest = parse_frames(bytearray(rest))
        self.buf = bytearray(rest)
        self.frames = collections.deque(frames)

    def send_frame(self, opcode, payload, fin=True):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send_text(self, text):
        self.send_frame(OP_TEXT, text.encode("utf-8"))

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def _fill(self, timeout):
        """Reads once. Returns False on EOF; raises socket.timeout / ConnectionError."""
        self.sock.settimeout(max(timeout, 0.001))
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        frames, rest = parse_frames(self.buf)
        self.buf = bytearray(rest)
        self.frames.extend(frames)
        return True

    def recv_frame(self, timeout=DEFAULT_TIMEOUT):
        """Next (opcode, payload). AssertionError on timeout; EOFError on EOF."""
        deadline = time.monotonic() + timeout
        while not self.frames:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no frame within {timeout}s")
            try:
                if not self._fill(left):
                    raise EOFError("server closed the connection")
            except socket.timeout:
                continue
        return self.frames.popleft()

    def recv_json(self, timeout=DEFAULT_TIMEOUT):
        """Next text frame as JSON, skipping pings (which are deliberately not answered)."""
        deadline = time.monotonic() + timeout
        while True:
            op, payload = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if op == OP_TEXT:
                return json.loads(payload)
            if op == OP_CLOSE:
                raise AssertionError(f"closed with {close_code_of(payload)}")

    def read_until_closed(self, timeout=DEFAULT_TIMEOUT):
        """Reads everything until a close frame, EOF or reset.
        Returns (frames read, how: 'close'|'eof'|'reset', close code or None)."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            while self.frames:
                op, payload = self.frames.popleft()
                seen.append((op, payload))
                if op == OP_CLOSE:
                    return seen, "close", close_code_of(payload)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s "
                                     f"({len(seen)} frames read)")
            try:
                if not self._fill(left):
                    return seen, "eof", None
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return seen, "reset", None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# -- unittest base -----------------------------------------------------------------------

class HeraldTestCase(unittest.TestCase):
    """Starts daemons that are stopped (SIGTERM, then SIGKILL) after the test. Fails the test
    when the daemon died on its own, did not exit 0 on SIGTERM or printed a sanitizer report,
    and prints the daemon's log when the test failed."""

    def start_daemon(self, config=None, **kw):
        d = Daemon(config=config, **kw)
        self.addCleanup(self._finish_daemon, d)
        d.start()
        return d

    def _finish_daemon(self, d):
        problems = []
        if d.proc is None:
            return
        if not d.stopped:
            rc = d.proc.poll()
            if rc is not None:
                problems.append(f"heraldd died during the test with status {rc}")
            else:
                try:
                    rc = d.stop(signal.SIGTERM, 10)
                    if rc != 0:
                        problems.append(f"heraldd exited {rc} on SIGTERM at teardown")
                except DaemonError as e:
                    problems.append(str(e))
        d.kill()
        log = d.log
        m = SANITIZER_RE.search(log)
        if m:
            problems.append(f"heraldd log contains {m.group(0)!r}")
        failed = self._test_has_failed()
        if problems or failed or os.environ.get("HERALD_IT_VERBOSE"):
            sys.stderr.write(f"\n--- heraldd log ({self.id()}) ---\n{d.log_tail(80)}\n---\n")
        if problems:
            raise AssertionError("; ".join(problems))

    def _test_has_failed(self):
        # In a cleanup, _Outcome.success only describes the cleanup itself; the result lists
        # say whether the test body already failed.
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return False
        for test, _ in list(getattr(result, "failures", [])) + list(getattr(result, "errors", [])):
            if test is self:
                return True
        return False

    # Assertion helpers shared by the suites.

    def assertErrorBody(self, body, code, ws=False, rid=None):
        """body is exactly {"type":"error","code":code,"message":<non-empty>} (+ "id" on WS)."""
        self.assertIsInstance(body, dict, f"error body is not a JSON object: {body!r}")
        keys = {"type", "code", "message"} | ({"id"} if ws else set())
        self.assertEqual(set(body), keys, f"error body keys: {body}")
        self.assertEqual(body["type"], "error", body)
        if code is not None:
            self.assertEqual(body["code"], code, body)
        self.assertIsInstance(body["message"], str, body)
        self.assertTrue(body["message"], f"empty error message: {body}")
        if ws:
            self.assertEqual(body["id"], rid, body)

    def assertEventId(self, value):
        self.assertIsInstance(value, str)
        self.assertRegex(value, ID_RE)

    def assertIncreasing(self, ids, what="ids"):
        for a, b in zip(ids, ids[1:]):
            if not a < b:
                self.fail(f"{what} not strictly increasing: {a!r} then {b!r}")


# -- raw HTTP/1.1 ------------------------------------------------------------------------

class RawResponse:
    """One response read off a raw socket: status, lower-cased headers, body bytes."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        return json.loads(self.body) if self.body else None

    def __repr__(self):
        return f"<RawResponse {self.status} {self.headers} {self.body[:200]!r}>"


def raw_http(port, data, timeout=DEFAULT_TIMEOUT, chunks=None):
    """Sends data (bytes, or a list of byte strings sent one after another) on a fresh socket,
    then reads until the server closes or `timeout` passes with nothing more. Returns
    (responses, closed): every complete response parsed in order, and whether the server
    closed the connection (EOF or reset) rather than leaving it open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout * DAEMON_SLOW)
    try:
        for part in (data if isinstance(data, list) else [data]):
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        buf = b""
        closed = False
        while True:
            try:
                got = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not got:
                closed = True
                break
            buf += got
            if _raw_complete(buf) and b"connection: close" not in buf.lower():
                # Every response so far is whole and the server keeps the connection: a
                # short wait for another one instead of the full timeout.
                sock.settimeout(min(0.5, timeout) * DAEMON_SLOW)
        return _raw_parse(buf), closed
    finally:
        sock.close()


def _raw_parse(buf):
    out = []
    while buf:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        if len(rest) < n:
            break
        out.append(RawResponse(status, headers, rest[:n]))
        buf = rest[n:]
    return out


def _raw_complete(buf):
    rs = _raw_parse(buf)
    if not rs:
        return False
    total = 0
    for r in rs:
        head = buf[total:].partition(b"\r\n\r\n")[0]
        total += len(head) + 4 + len(r.body)
    return total == len(buf)
