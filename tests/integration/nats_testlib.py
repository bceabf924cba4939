# SPDX-License-Identifier: MIT
"""NATS servers for the cluster suites: a JetStream cluster of real nats-server processes on
loopback, and a minimal NATS protocol client for the JetStream API (no Python NATS library in
Debian 12: the protocol is a few text lines).

nats-server comes from scripts/nats-server (Debian 13's package, cached outside the clone; .ci/run
exports HERALD_NATS_SERVER). Every wait is bounded.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Valgrind/ASan runs are slower; scale waits like herald_testlib does.
SLOW = 6.0 if os.environ.get("HERALDD_VALGRIND") == "1" else 1.0


def nats_server_path():
    """The nats-server binary: $HERALD_NATS_SERVER, else what scripts/nats-server provides."""
    path = os.environ.get("HERALD_NATS_SERVER")
    if path and os.access(path, os.X_OK):
        return path
    out = subprocess.run([os.path.join(REPO, "scripts", "nats-server")], check=True,
                         stdout=subprocess.PIPE, timeout=300)
    path = out.stdout.decode().strip()
    os.environ["HERALD_NATS_SERVER"] = path
    return path


def free_ports(n):
    """n distinct free loopback ports (all held open while choosing, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class NatsClient:
    """Just enough of the NATS protocol for request/reply: CONNECT, SUB, PUB, MSG/HMSG."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.sid = 0
        self._line()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                          b'"no_responders":true,"protocol":1}\r\nPING\r\n')
        while self._line() != b"PONG":
            pass

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("NATS server closed the connection")
        self.buf += data

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _bytes(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def request(self, subject, payload=b"", timeout=5.0):
        """Publishes `payload` with a fresh reply inbox and returns the first reply's body."""
        self.sid += 1
        inbox = f"_INBOX.py.{os.getpid()}.{self.sid}"
        if isinstance(payload, str):
            payload = payload.encode()
        self.sock.sendall(f"SUB {inbox} {self.sid}\r\nUNSUB {self.sid} 1\r\n".encode() +
                          f"PUB {subject} {inbox} {len(payload)}\r\n".encode() + payload + b"\r\n")
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            line = self._line()
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG "):
                parts = line.split()
                body = self._bytes(int(parts[-1]))
                if parts[1].decode() == inbox:
                    return body
            elif line.startswith(b"HMSG "):
                parts = line.split()
                data = self._bytes(int(parts[-1]))
                hlen = int(parts[-2])
                if parts[1].decode() == inbox:
                    if b"503" in data[:hlen].split(b"\r\n")[0]:
                        raise ConnectionError("no responders")
                    return data[hlen:]
            elif line.startswith(b"-ERR"):
                raise ConnectionError(line.decode())

    def js(self, api, body=None, timeout=5.0):
        """A JetStream API call ($JS.API.<api>); returns the parsed JSON answer."""
        payload = json.dumps(body).encode() if body is not None else b""
        return json.loads(self.request("$JS.API." + api, payload, timeout))

    def close(self):
        self.sock.close()


class NatsServer:
    def __init__(self, name, directory, port, cluster_port, routes, cluster_name, clustered):
        self.clustered = clustered
        self.name = name
        self.dir = directory
        self.port = port
        self.cluster_port = cluster_port
        self.routes = routes
        self.cluster_name = cluster_name
        self.proc = None
        self.log = os.path.join(directory, name + ".log")

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def start(self, wait=True):
        args = [nats_server_path(), "-a", "127.0.0.1", "-p", str(self.port), "-n", self.name,
                "-js", "-sd", os.path.join(self.dir, self.name), "-l", self.log]
        if self.clustered:
            args += ["--cluster_name", self.cluster_name,
                     "--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
        if self.routes:
            args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if wait:
            self.wait_listening()

    def wait_listening(self):
        deadline = time.monotonic() + 10 * SLOW
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc is None or self.proc.poll() is not None:
                    raise AssertionError(f"nats-server {self.name} exited: {self.tail()}")
                time.sleep(0.05)
        raise AssertionError(f"nats-server {self.name} did not listen: {self.tail()}")

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n=20):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


class NatsCluster:
    """n nats-servers with JetStream, clustered when n > 1; one per suite (they start in ~1 s)."""

    def __init__(self, n=3):
        self.n = n
        self.dir = tempfile.mkdtemp(prefix="herald-nats-")
        self._make_servers()

    def _make_servers(self):
        n = self.n
        ports = free_ports(2 * n)
        ports, cports = ports[:n], ports[n:]
        # A star: every server (n1 too: a route to itself is ignored) routes to n1 only and
        # learns the rest by gossip. Full meshes of seed routes race into "Duplicate Route"
        # churn, after which a fresh cluster sometimes refuses placement for a minute or never
        # lets a server join the meta group (seen with 2.10.27).
        self.servers = [NatsServer(f"n{i + 1}", self.dir, ports[i], cports[i],
                                   [cports[0]] if n > 1 else [], "herald-test", clustered=n > 1)
                        for i in range(n)]

    def start(self, attempts=3):
        for attempt in range(attempts):
            for s in self.servers:
                s.start(wait=False)
            for s in self.servers:
                s.wait_listening()
            try:
                self.wait_jetstream(timeout=30.0)
                return self
            except AssertionError:
                if attempt == attempts - 1:
                    raise
            # A fresh cluster that cannot place streams: start again from nothing.
            for s in self.servers:
                s.kill()
            shutil.rmtree(self.dir, ignore_errors=True)
            os.makedirs(self.dir)
            self._make_servers()
        return self

    @property
    def urls(self):
        return ",".join(s.url for s in self.servers)

    def client(self, timeout=5.0):
        """A protocol client on the first running server."""
        for s in self.servers:
            if s.running():
                return NatsClient(s.port, timeout)
        raise AssertionError("no NATS server running")

    def wait_jetstream(self, timeout=60.0):
        """Until the JetStream API answers and, in a cluster, a stream with one replica per
        server can be placed: the meta leader learns of its peers from their periodic stats,
        and a fresh cluster can refuse placement ("no suitable peers") for tens of seconds."""
        deadline = time.monotonic() + timeout * SLOW
        replicas = sum(1 for s in self.servers if s.running())
        last = None
        while time.monotonic() < deadline:
            try:
                c = self.client(2.0)
                try:
                    info = c.js("STREAM.CREATE._HERALD_READY",
                                {"name": "_HERALD_READY", "subjects": ["_herald_ready.>"],
                                 "num_replicas": replicas, "storage": "memory"}, timeout=2.0)
                    if "error" not in info or info["error"].get("err_code") == 10058:
                        c.js("STREAM.DELETE._HERALD_READY", timeout=2.0)
                        return
                    last = info
                finally:
                    c.close()
            except (OSError, ConnectionError, ValueError) as e:
                last = e
            time.sleep(0.25)
        raise AssertionError(f"JetStream not available: {last}\n{self.tails()}")

    def wait_stream_quorum(self, stream="HERALD", timeout=60.0):
        """Until the stream's info names a leader and a majority of its replicas (the leader
        counted) current; returns that info. After a restart of every server the meta group
        answers (and can place new streams, what wait_jetstream checks) before an existing
        stream has elected its own leader and its followers have caught up from their files.
        Not every follower: after a whole-cluster restart 2.10.27 sometimes leaves one behind
        for minutes ("current": false, "active": 0), and a quorum is all a publish needs."""
        deadline = time.monotonic() + timeout * SLOW
        last = None
        while time.monotonic() < deadline:
            try:
                info = self.stream_info(stream)
                last = info
                cl = info.get("cluster", {})
                replicas = info.get("config", {}).get("num_replicas", 1)
                current = 1 + sum(1 for r in cl.get("replicas", []) if r.get("current"))
                if "error" not in info and cl.get("leader") and current > replicas // 2:
                    return info
            except (OSError, ConnectionError, ValueError) as e:
                last = e
            time.sleep(0.25)
        raise AssertionError(f"stream {stream} has no leader with a quorum of current replicas "
                             f"within {timeout * SLOW:.0f}s: {last}\n{self.tails()}")

    def tails(self, n=15):
        """The end of every server's log, for a failure message."""
        return "\n".join(f"--- nats-server {s.name} ---\n{s.tail(n)}" for s in self.servers)

    def reset_stream(self, stream="HERALD", timeout=30.0):
        """Deletes the stream if it exists, retrying while the cluster settles (a server that
        just came back can make the JetStream API slow to answer)."""
        deadline = time.monotonic() + timeout * SLOW
        while True:
            try:
                info = self.stream_info(stream)
                if "error" in info and info["error"].get("err_code") == 10059:
                    return  # no such stream
                if "error" not in self.delete_stream(stream):
                    return
            except (OSError, ConnectionError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"cannot delete stream {stream}")
            time.sleep(0.25)

    def stream_info(self, stream="HERALD"):
        c = self.client()
        try:
            return c.js("STREAM.INFO." + stream)
        finally:
            c.close()

    def stream_leader(self, stream="HERALD", timeout=30.0):
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            try:
                info = self.stream_info(stream)
                leader = info.get("cluster", {}).get("leader")
                if leader:
                    return next(s for s in self.servers if s.name == leader)
            except (OSError, ConnectionError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError("stream has no leader")

    def delete_stream(self, stream="HERALD"):
        c = self.client()
        try:
            return c.js("STREAM.DELETE." + stream)
        finally:
            c.close()

    def stop(self):
        for s in self.servers:
            s.kill(signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)
