# SPDX-License-Identifier: MIT
"""Hostile clients: a slowloris crowd (hundreds of connections that dribble a request one byte
a second) must neither slow down honest clients nor outlive limits.handshake_timeout_s by
much, and thousands of connections reset in the middle of the upgrade or of a frame must
leave nothing behind: /healthz answers, the connection gauge returns to its baseline and the
daemon's resident memory does not grow.
"""

import os
import select
import socket
import struct
import threading
import time
import unittest

from herald_testlib import (HeraldTestCase, RawWS, publish_path, raise_nofile_limit)

SLOW_CONNS = 500
HANDSHAKE_TIMEOUT_S = 2
# Slow connections must be gone by then. It is deliberately below libwebsockets' own 10 s
# default for an idle header buffer, so a handshake_timeout_s that never reaches lws fails.
REAP_BY_S = HANDSHAKE_TIMEOUT_S + 5
NORMAL_DEADLINE_S = 1.0
STORM_BATCH = 200
LINGER_RST = struct.pack("ii", 1, 0)


def sanitized(pid):
    """True when the daemon runs with AddressSanitizer."""
    with open(f"/proc/{pid}/maps") as f:
        return "libasan" in f.read()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


def reset_close(sock):
    """Closes with SO_LINGER 0 so the peer sees an RST, not a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    except OSError:
        pass
    sock.close()


def upgrade_request(port):
    return (f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: herald.v1\r\n\r\n").encode()


def masked_text_frame(text):
    payload = text.encode()
    mask = os.urandom(4)
    assert len(payload) < 126
    return (bytes([0x81, 0x80 | len(payload)]) + mask +
            bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))


class SlowLoris(threading.Thread):
    """Holds n connections, each sending one more byte of a never-ending request every second,
    and records when the server closed each one (EOF, reset or refused write)."""

    def __init__(self, port, n):
        super().__init__(daemon=True)
        self.port = port
        self.socks = []
        self.closed_at = {}
        self.stop = threading.Event()
        self.text = (f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nX-Padding: " + "a" * 200).encode()
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            self.socks.append(s)
        self.t0 = time.monotonic()

    def _mark(self, i):
        if i not in self.closed_at:
            self.closed_at[i] = time.monotonic() - self.t0

    def run(self):
        pos = 0
        next_send = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                byte = self.text[pos % len(self.text):pos % len(self.text) + 1]
                pos += 1
                for i, s in enumerate(self.socks):
                    if i in self.closed_at:
                        continue
                    try:
                        s.send(byte)
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        self._mark(i)
                next_send += 1.0
            live = [s for i, s in enumerate(self.socks) if i not in self.closed_at]
            if not live:
                next_send = time.monotonic() + 0.1
                self.stop.wait(0.1)
                continue
            r, _, _ = select.select(live, [], [], min(0.1, max(0.0, next_send - now)))
            for s in r:
                i = self.socks.index(s)
                try:
                    data = s.recv(4096)
                    if not data:
                        self._mark(i)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self._mark(i)

    def close_all(self):
        self.stop.set()
        self.join(5)
        for s in self.socks:
            s.close()


class SlowlorisTest(HeraldTestCase):
    @classmethod
    def setUpClass(cls):
        raise_nofile_limit()

    def normal_round(self, d, n):
        """One honest client round: connect a WS subscriber, subscribe, publish over HTTP,
        receive the event. Every step must answer within NORMAL_DEADLINE_S."""
        topic = f"loris.{n}"
        t = time.monotonic()
        ws = RawWS(d.port, timeout=NORMAL_DEADLINE_S)
        try:
            welcome = ws.recv_json(NORMAL_DEADLINE_S)
            self.assertEqual(welcome.get("type"), "welcome", welcome)
            ws.send_json({"op": "subscribe", "topic": topic, "id": 1})
            reply = ws.recv_json(NORMAL_DEADLINE_S)
            self.assertEqual(reply.get("type"), "ok", reply)
            connect_s = time.monotonic() - t
            self.assertLess(connect_s, NORMAL_DEADLINE_S,
                            f"round {n}: WS connect+subscribe took {connect_s:.2f}s")
            t = time.monotonic()
            status, _, body = d.publish(topic, {"n": n}, "application/json")
            pub_s = time.monotonic() - t
            self.assertEqual(status, 202, body)
            self.assertLess(pub_s, NORMAL_DEADLINE_S, f"round {n}: publish took {pub_s:.2f}s")
            t = time.monotonic()
            ev = ws.recv_json(NORMAL_DEADLINE_S)
            self.assertEqual((ev.get("type"), ev.get("data")), ("event", {"n": n}), ev)
            self.assertLess(time.monotonic() - t, NORMAL_DEADLINE_S)
        finally:
            ws.close()
        # A plain GET on a fresh connection too.
        t = time.monotonic()
        r = d.get("/healthz", timeout=NORMAL_DEADLINE_S)
        self.assertEqual(r.status, 200)
        self.assertLess(time.monotonic() - t, NORMAL_DEADLINE_S)

    def test_slowloris_does_not_starve_and_is_reaped(self):
        d = self.start_daemon({"limits": {"handshake_timeout_s": HANDSHAKE_TIMEOUT_S}})
        loris = SlowLoris(d.port, SLOW_CONNS)
        loris.start()
        try:
            rounds = 0
            deadline = loris.t0 + REAP_BY_S + 2.0
            while time.monotonic() < deadline:
                self.normal_round(d, rounds)
                rounds += 1
                time.sleep(0.2)
            self.assertGreater(rounds, 5)
            closed = dict(loris.closed_at)
        finally:
            loris.close_all()
        reaped = sum(1 for v in closed.values() if v <= REAP_BY_S)
        worst = max(closed.values()) if closed else None
        self.assertGreaterEqual(
            reaped, int(SLOW_CONNS * 0.9),
            f"only {reaped}/{SLOW_CONNS} slow connections closed by the server within "
            f"{REAP_BY_S} s (handshake_timeout_s={HANDSHAKE_TIMEOUT_S}; {len(closed)} closed "
            f"by {REAP_BY_S + 2} s, latest at {worst})")
        # And not absurdly early either: the server must not just refuse everybody.
        early = sum(1 for v in closed.values() if v < HANDSHAKE_TIMEOUT_S - 1)
        self.assertLess(early, SLOW_CONNS // 2, f"{early} closed before the timeout")
        self.assertTrue(d.alive())


class AbruptDropTest(HeraldTestCase):
    @classmethod
    def setUpClass(cls):
        raise_nofile_limit()

    def mid_handshake(self, port, n):
        req = upgrade_request(port)
        half = req[:len(req) // 2]
        socks = []
        try:
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                socks.append(s)
                s.sendall(half)
            time.sleep(0.05)  # let the server read the half request before the RST
        finally:
            for s in socks:
                reset_close(s)

    def mid_frame(self, port, n):
        frame = masked_text_frame('{"op":"subscribe","topic":"storm.frame.topic","id":12345}')
        half = frame[:len(frame) // 2]
        conns = []
        try:
            for _ in range(n):
                conns.append(RawWS(port, timeout=5))
            for c in conns:
                c.sock.sendall(half)
            time.sleep(0.05)
        finally:
            for c in conns:
                reset_close(c.sock)

    def wait_connections(self, d, want, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            cur = d.metric("herald_connections")
            if cur == want or time.monotonic() > deadline:
                return cur
            time.sleep(0.1)

    def test_reset_storm_leaves_nothing_behind(self):
        d = self.start_daemon()
        baseline = d.metric("herald_connections")
        self.assertIsNotNone(baseline, "/metrics has no herald_connections gauge")
        # Warm-up so allocator caches and lws pools exist before the baseline RSS.
        self.mid_handshake(d.port, STORM_BATCH // 2)
        self.mid_frame(d.port, STORM_BATCH // 2)
        self.assertEqual(self.wait_connections(d, baseline), baseline,
                         "gauge did not return to baseline after the warm-up")
        rss_before = rss_kb(d.pid)
        total_before = d.metric("herald_connections_total")

        t = time.monotonic()
        for _ in range(1000 // STORM_BATCH):
            self.mid_handshake(d.port, STORM_BATCH)
            self.mid_frame(d.port, STORM_BATCH)
        storm_s = time.monotonic() - t
        self.assertTrue(d.alive(), "heraldd died during the reset storm")

        self.assertEqual(d.get("/healthz").status, 200)
        cur = self.wait_connections(d, baseline)
        self.assertEqual(cur, baseline, f"herald_connections stuck at {cur} (baseline "
                                        f"{baseline}) 5 s after the storm")
        if total_before is not None:
            # The mid-frame half really completed their upgrades (else the test proves little).
            self.assertGreaterEqual(d.metric("herald_connections_total") - total_before, 1000)
        # A normal client works end to end.
        ws = RawWS(d.port)
        try:
            self.assertEqual(ws.recv_json().get("type"), "welcome")
            ws.send_json({"op": "subscribe", "topic": "storm.after", "id": 1})
            self.assertEqual(ws.recv_json().get("type"), "ok")
            self.assertEqual(d.publish("storm.after", "still here")[0], 202)
            ev = ws.recv_json()
            self.assertEqual(ev.get("data"), "still here", ev)
        finally:
            ws.close()
        time.sleep(0.5)
        rss_after = rss_kb(d.pid)
        grew = rss_after - rss_before
        if sanitized(d.pid):
            # ASan quarantines freed memory (256 MB by default), so RSS says nothing there;
            # the leak check at exit covers that build instead.
            return
        self.assertLess(grew, 10 * 1024,
                        f"RSS grew {grew} kB over 2000 reset connections "
                        f"({rss_before} -> {rss_after} kB, storm took {storm_s:.1f}s)")


if __name__ == "__main__":
    unittest.main()
