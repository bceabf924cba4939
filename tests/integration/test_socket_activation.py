# SPDX-License-Identifier: MIT
"""Socket activation (systemd/heraldd.socket): heraldd started by systemd-socket-activate (the
systemd package's stand-in for a .socket unit) serves the listening socket it is passed. The
first connection is made before heraldd runs (systemd-socket-activate starts it on that
connection) and is answered; the accept-time limits apply to the connections heraldd accepts
itself; a passed socket that no listener names is reported and the listener is bound as
usual; and the shipped heraldd.socket passes `systemd-analyze verify` beside the service.
libwebsockets cannot adopt a listening socket (4.1 or 4.3), so heraldd accepts and hands each
connection to lws, which works with both: nothing here depends on the lws version.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from herald_testlib import (DAEMON_SLOW, REPO, HeraldTestCase, WSClient, async_test,
                            heraldd_path, raw_http, write_config)

LISTEN_RE = re.compile(r'msg="listening".*\bport=(\d+).*from=systemd')


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Activated:
    """heraldd under systemd-socket-activate on a fresh port; stderr collected in `log`."""

    def __init__(self, args=(), config=None):
        tool = shutil.which("systemd-socket-activate")
        if not tool:
            raise AssertionError("systemd-socket-activate not found: install systemd "
                                 "(scripts/debian-packages.txt)")
        self.port = free_port()
        cmd = [tool, "-l", f"127.0.0.1:{self.port}"]
        self.tmp = tempfile.mkdtemp(prefix="herald-sa-")
        cmd += [heraldd_path()]
        if config is not None:
            cmd += ["-c", write_config(config, self.tmp)]
        cmd += list(args) or ["--listen", f"127.0.0.1:{self.port}"]
        self.lines = []
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        self._t = threading.Thread(target=self._drain, daemon=True)
        self._t.start()
        self.wait_log(r"Listening on 127\.0\.0\.1:%d" % self.port)

    def _drain(self):
        for line in self.p.stderr:
            self.lines.append(line)

    def wait_log(self, pattern, timeout=10.0):
        deadline = time.monotonic() + timeout * DAEMON_SLOW
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            if self.p.poll() is not None and not self._t.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r}:\n" + "".join(self.lines))

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10 * DAEMON_SLOW)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._t.join(5)
        self.p.stderr.close()
        shutil.rmtree(self.tmp, True)
        return self.p.returncode


HOST = b"Host: 127.0.0.1\r\n"


def post(topic, body):
    return (b"POST /v1/topics/" + topic + b" HTTP/1.1\r\n" + HOST + b"Content-Length: " +
            str(len(body)).encode() + b"\r\n\r\n" + body)


class SocketActivationTest(HeraldTestCase):
    def activated(self, **kw):
        a = Activated(**kw)
        self.addCleanup(a.stop)
        return a

    def test_first_connection_made_before_heraldd_runs_is_served(self):
        a = self.activated()
        self.assertFalse(any("msg=\"listening\"" in l for l in a.lines), "heraldd ran early")
        rs, _ = raw_http(a.port, post(b"sa.first", b"hello"), timeout=10)
        self.assertEqual([r.status for r in rs], [202], rs)
        line = a.wait_log(LISTEN_RE.pattern)
        self.assertEqual(int(LISTEN_RE.search(line).group(1)), a.port)
        rs, _ = raw_http(a.port, b"GET /v1/topics/sa.first/events?since=all HTTP/1.1\r\n" +
                         HOST + b"Connection: close\r\n\r\n")
        self.assertEqual([e["data"] for e in rs[0].json["events"]], ["hello"])
        self.assertEqual(a.stop(), 0)
        self.assertTrue(any('msg="stopped" exit=0' in l for l in a.lines), "".join(a.lines))

    @async_test(30)
    async def test_websocket_and_http_on_the_passed_socket(self):
        a = self.activated()
        raw_http(a.port, b"GET /healthz HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n")
        a.wait_log(LISTEN_RE.pattern)
        c = await WSClient.connect(f"ws://127.0.0.1:{a.port}/v1/ws")
        await c.subscribe("sa.ws")
        rs, _ = raw_http(a.port, post(b"sa.ws", b"over http"))
        self.assertEqual([r.status for r in rs], [202], rs)
        self.assertEqual((await c.recv_event())["data"], "over http")
        await c.close()

    def test_accept_time_limits_apply(self):
        a = self.activated(config={"limits": {"max_connections_per_ip": 1}},
                           args=["--listen", "127.0.0.1:0"])
        # Port 0 in the configuration takes the passed socket's port.
        held = socket.create_connection(("127.0.0.1", a.port), timeout=5)
        self.addCleanup(held.close)
        held.sendall(b"GET /healthz HTTP/1.1\r\n" + HOST + b"\r\n")
        self.assertIn(b" 200 ", held.recv(4096))
        a.wait_log(LISTEN_RE.pattern)
        rs, closed = raw_http(a.port, b"GET /healthz HTTP/1.1\r\n" + HOST + b"\r\n")
        self.assertEqual([r.status for r in rs], [429], rs)
        self.assertTrue(closed)

    def test_a_passed_socket_no_listener_names_is_reported(self):
        other = free_port()
        a = self.activated(args=["--listen", f"127.0.0.1:{other}"])
        # The connection that starts heraldd is on the passed socket, which nothing serves.
        raw_http(a.port, b"GET /healthz HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n",
                 timeout=1)
        a.wait_log(r"no listener names")
        line = a.wait_log(r'msg="listening"')
        self.assertIn(f"port={other}", line)
        self.assertNotIn("from=systemd", line)
        rs, _ = raw_http(other, b"GET /healthz HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n")
        self.assertEqual([r.status for r in rs], [200], rs)

    def test_shipped_socket_unit_verifies_beside_the_service(self):
        analyze = shutil.which("systemd-analyze")
        if not analyze:
            raise AssertionError("systemd-analyze not found: install systemd")
        tmp = tempfile.mkdtemp(prefix="herald-unit-")
        self.addCleanup(shutil.rmtree, tmp, True)
        with open(os.path.join(REPO, "systemd", "heraldd.service")) as f:
            service = f.read().replace("/usr/bin/heraldd", os.path.abspath(heraldd_path()))
        with open(os.path.join(tmp, "heraldd.service"), "w") as f:
            f.write(service)
        shutil.copy(os.path.join(REPO, "systemd", "heraldd.socket"), tmp)
        r = subprocess.run([analyze, "verify", "--man=no", os.path.join(tmp, "heraldd.socket")],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
        ours = [l for l in (r.stdout + r.stderr).splitlines() if "heraldd" in l]
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(ours, [], "\n".join(ours))
        # The socket's address is the shipped configuration's listener.
        with open(os.path.join(REPO, "config", "heraldd.json")) as f:
            listen = json.load(f)["listen"]
        with open(os.path.join(REPO, "systemd", "heraldd.socket")) as f:
            streams = re.findall(r"^ListenStream=(.+)$", f.read(), re.M)
        addrs = [f"{l['address']}:{l['port']}" for l in
                 (listen if isinstance(listen, list) else [listen])]
        self.assertEqual(streams, addrs)


if __name__ == "__main__":
    unittest.main()
