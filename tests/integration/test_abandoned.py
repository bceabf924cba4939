# SPDX-License-Identifier: MIT
"""Clients that vanish without a goodbye (PROTOCOL.md sections 5 and 6; LWS_NOTES.md known
libwebsockets 4.1 issue): an SSE stream and a long poll (wait=30) whose sockets are dropped,
with an RST (SO_LINGER 0) or a plain close, must leave the daemon near idle (under 10% of one
core over 3 s, read from /proc/<pid>/stat), and the daemon must forget them within a few
seconds (herald_sse_streams and herald_long_polls back to 0). An open but quiet stream must not
burn CPU either.
"""

import socket
import threading
import time
import unittest

from herald_testlib import HeraldTestCase, topic_path
from history_testlib import abort_socket, cpu_fraction, raw_get, wait_until

CPU_LIMIT = 0.10
SAMPLE_S = 3.0
FORGET_S = 5.0


def read_head(sock, timeout=5.0):
    """Reads a response head; returns (status, head text, bytes after the head)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no response head within {timeout}s: {buf[:200]!r}")
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"closed before a response head: {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    return int(text.split()[1]), text, rest


class AbandonedTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon()

    def gauges(self):
        m = self.d.metrics()
        return m.get("herald_sse_streams"), m.get("herald_long_polls")

    def open_sse(self, pattern):
        sock = raw_get(self.d.port, topic_path(pattern) + "/sse?since=latest",
                       {"Accept": "text/event-stream"})
        status, head, _ = read_head(sock)
        self.assertEqual(status, 200, head)
        self.assertIn("text/event-stream", head.lower())
        return sock

    def open_long_poll(self, pattern):
        sock = raw_get(self.d.port, topic_path(pattern) + "/events?since=latest&wait=30")
        # It must be waiting: nothing comes back at once.
        sock.settimeout(0.3)
        try:
            early = sock.recv(4096)
        except socket.timeout:
            early = None
        self.assertIsNone(early, f"the long poll answered at once: {early!r}")
        return sock

    def open_clients(self, sse=0, polls=0):
        socks = [self.open_sse(f"ab.sse{i}") for i in range(sse)]
        socks += [self.open_long_poll(f"ab.lp{i}") for i in range(polls)]
        got = wait_until(lambda: self.gauges() == (sse, polls), 3.0)
        self.assertTrue(got, f"gauges (sse, long polls) = {self.gauges()}, "
                             f"expected {(sse, polls)}")
        return socks

    def idle_problem(self, what, frac=None):
        if frac is None:
            frac = cpu_fraction(self.d.pid, SAMPLE_S)
        print(f"\n{what}: heraldd used {frac * 100:.1f}% of a core over {SAMPLE_S:.0f} s")
        if frac >= CPU_LIMIT:
            return f"{what}: heraldd burns {frac * 100:.0f}% of a core"
        return None

    def check_vanished(self, what, socks):
        """Drops half the sockets with RST and the other half with a plain close, then
        samples the daemon's CPU over SAMPLE_S seconds from that moment while watching the
        gauges (up to FORGET_S). Both checks run, so one report shows both symptoms."""
        cpu = {}
        sampler = threading.Thread(target=lambda: cpu.setdefault(
            "frac", cpu_fraction(self.d.pid, SAMPLE_S)), daemon=True)
        for i, s in enumerate(socks):
            if i % 2 == 0:
                abort_socket(s)
            else:
                s.close()
        t0 = time.monotonic()
        sampler.start()
        forgotten = wait_until(lambda: self.gauges() == (0, 0), FORGET_S, 0.1)
        t_forget = time.monotonic() - t0
        sampler.join(SAMPLE_S + 5)
        problems = [self.idle_problem(what, cpu["frac"])]
        if forgotten:
            print(f"{what}: forgotten after {t_forget:.2f} s")
        else:
            problems.append(f"{what}: after {FORGET_S:.0f} s (herald_sse_streams, "
                            f"herald_long_polls) = {self.gauges()}, expected (0, 0)")
        self.assertEqual([p for p in problems if p], [])
        # The daemon still serves afterwards.
        self.d.publish_ok("ab.after", "x")
        self.assertEqual(self.d.get(topic_path("ab.after") + "/events").status, 200)

    def test_baseline_idle(self):
        self.assertIsNone(self.idle_problem("no clients"))

    def test_open_quiet_sse_stream_leaves_daemon_idle(self):
        socks = self.open_clients(sse=1)
        self.addCleanup(socks[0].close)
        self.assertIsNone(self.idle_problem("an open quiet SSE stream"))

    def test_waiting_long_poll_leaves_daemon_idle(self):
        socks = self.open_clients(polls=1)
        self.addCleanup(socks[0].close)
        self.assertIsNone(self.idle_problem("a waiting long poll"))

    def test_vanished_sse_streams(self):
        self.check_vanished("2 SSE streams dropped (RST, FIN)", self.open_clients(sse=2))

    def test_vanished_long_polls(self):
        self.check_vanished("2 long polls dropped (RST, FIN)", self.open_clients(polls=2))

    def test_vanished_sse_and_long_poll_together(self):
        self.check_vanished("SSE + long poll dropped (RST, FIN)",
                            self.open_clients(sse=1, polls=1))


if __name__ == "__main__":
    unittest.main()
