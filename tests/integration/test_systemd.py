# SPDX-License-Identifier: MIT
"""heraldd speaking systemd's notify protocol (CONFIG.md; systemd/heraldd.service is Type=notify
with NotifyAccess=main and WatchdogSec=). The test plays the service manager: it owns the
NOTIFY_SOCKET datagram socket, reads each message with the sender's credentials, and checks
READY=1 only once listening, STATUS= with live connection and subscription counts,
RELOADING=1 + MONOTONIC_USEC then READY=1 around SIGHUP, WATCHDOG=1 at least once per period
and only when asked for, and STOPPING=1 on SIGTERM.
"""

import os
import re
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
import unittest

from herald_testlib import Daemon, HeraldTestCase, RawWS, WSClient, async_test

STATUS_CONN_RE = re.compile(r"\b(\d+) connections?\b")
STATUS_SUBS_RE = re.compile(r"\b(\d+) subscriptions?\b")
KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def monotonic_usec():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notification:
    def __init__(self, t, pid, raw):
        self.t = t
        self.pid = pid
        self.raw = raw
        self.fields = {}
        self.bad_lines = []
        for line in raw.split("\n"):
            if not line:
                continue
            key, sep, value = line.partition("=")
            if not sep or not KEY_RE.match(key):
                self.bad_lines.append(line)
            else:
                self.fields[key] = value

    def __repr__(self):
        return f"<{self.pid}: {self.raw!r}>"


class NotifySocket:
    """The service manager's end of NOTIFY_SOCKET: a datagram socket in a private directory,
    read by a thread that records (time, sender pid, fields) for every message."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="herald-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        # systemd checks the sender (NotifyAccess=main); so do we.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.1)
        self.messages = []
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        creds_len = struct.calcsize("iII")
        while not self.stopping:
            try:
                data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(creds_len))
            except socket.timeout:
                continue
            except OSError:
                return
            pid = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", cdata[:creds_len])[0]
            msg = Notification(time.monotonic(), pid, data.decode("utf-8", "replace"))
            with self.cond:
                self.messages.append(msg)
                self.cond.notify_all()

    def close(self):
        self.stopping = True
        self.thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def mark(self):
        with self.cond:
            return len(self.messages)

    def since(self, start=0):
        with self.cond:
            return list(self.messages[start:])

    def wait_for(self, pred, timeout=5.0, start=0):
        """First message from index `start` on that satisfies pred, as (index, message)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.messages):
                    if pred(self.messages[i]):
                        return i, self.messages[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, None
                self.cond.wait(min(left, 0.05))

    def wait_key(self, key, value=None, timeout=5.0, start=0):
        return self.wait_for(lambda m: key in m.fields and (value is None or
                                                            m.fields[key] == value),
                             timeout, start)


def status_counts(msg):
    """(connections, subscriptions) from a STATUS= text, or None if either is missing."""
    text = msg.fields.get("STATUS")
    if text is None:
        return None
    c, s = STATUS_CONN_RE.search(text), STATUS_SUBS_RE.search(text)
    if not c or not s:
        return None
    return int(c.group(1)), int(s.group(1))


MINIMAL_CONFIG = {"history": {"store": "memory"}, "log": {"level": "info"}}


class NotifyTestCase(HeraldTestCase):
    def setUp(self):
        self.notify = NotifySocket()
        self.addCleanup(self.notify.close)

    def start_notified(self, watchdog_usec=None, extra_env=None, **kw):
        env = {"NOTIFY_SOCKET": self.notify.path}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        env.update(extra_env or {})
        d = self.start_daemon(env=env, **kw)
        _, ready = self.notify.wait_key("READY", "1")
        self.assertIsNotNone(ready, f"no READY=1 within 5 s; got {self.notify.since()}")
        return d

    def assertAllFrom(self, d):
        """Every message so far came from the main process, and each line is KEY=VALUE."""
        for m in self.notify.since():
            self.assertEqual(m.pid, d.pid, f"notification not from the main process: {m}")
            self.assertEqual(m.bad_lines, [], f"malformed notification {m}")


class ReadyTest(NotifyTestCase):
    def test_ready_once_listening_and_only_once(self):
        d = self.start_notified()
        # READY means clients can connect now.
        with socket.create_connection(("127.0.0.1", d.port), timeout=2):
            pass
        r = d.get("/healthz")
        self.assertEqual(r.status, 200)
        time.sleep(1.5)
        readies = [m for m in self.notify.since() if m.fields.get("READY") == "1"]
        self.assertEqual(len(readies), 1, f"READY=1 sent {len(readies)} times without a reload")
        self.assertAllFrom(d)

    def test_no_ready_when_the_port_cannot_be_bound(self):
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        d = Daemon(listen=False, args=["--listen", f"127.0.0.1:{port}"],
                   env={"NOTIFY_SOCKET": self.notify.path})
        self.addCleanup(d.kill)
        d.start()
        self.assertEqual(d.wait(10), 2, f"exit status when the port is taken\n{d.log_tail()}")
        time.sleep(0.2)  # let the reader thread drain anything sent just before the exit
        sent = self.notify.since()
        self.assertFalse([m for m in sent if "READY" in m.fields],
                         f"READY sent although nothing listens: {sent}")


class StatusTest(NotifyTestCase):
    def wait_counts(self, want, start, timeout=5.0):
        i, m = self.notify.wait_for(lambda m: status_counts(m) == want, timeout, start)
        if m is None:
            seen = [x.fields["STATUS"] for x in self.notify.since(start) if "STATUS" in x.fields]
            self.fail(f"no STATUS= with {want[0]} connections and {want[1]} subscriptions "
                      f"within {timeout}s; saw {seen[-5:]}")
        return i

    @async_test(timeout=60)
    async def test_status_follows_connections_and_subscriptions(self):
        d = self.start_notified()
        mark = self.wait_counts((0, 0), 0)
        a = await WSClient.connect(d)
        b = await WSClient.connect(d)
        await a.subscribe("news.a")
        await a.subscribe("news.b")
        await b.subscribe("news.>")
        mark = self.wait_counts((2, 3), mark + 1)
        await b.close()
        await a.unsubscribe("news.a")
        self.wait_counts((1, 1), mark + 1)
        self.assertAllFrom(d)


class ReloadTest(NotifyTestCase):
    def reload_and_check(self, d):
        mark = self.notify.mark()
        before = monotonic_usec()
        d.send_signal(signal.SIGHUP)
        i, m = self.notify.wait_key("RELOADING", "1", start=mark)
        after = monotonic_usec()
        self.assertIsNotNone(m, f"no RELOADING=1 after SIGHUP; got {self.notify.since(mark)}")
        # systemd needs the timestamp in the same datagram to match the reload to the request.
        self.assertIn("MONOTONIC_USEC", m.fields, f"RELOADING=1 without MONOTONIC_USEC: {m}")
        usec = int(m.fields["MONOTONIC_USEC"])
        self.assertTrue(before <= usec <= after,
                        f"MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC between the signal "
                        f"({before}) and its receipt ({after})")
        _, ready = self.notify.wait_key("READY", "1", start=i + 1)
        self.assertIsNotNone(ready, "no READY=1 after RELOADING=1: systemd would wait forever")
        self.assertNotIn("STOPPING", ready.fields)

    @async_test(timeout=60)
    async def test_sighup_reloading_then_ready_keeps_clients(self):
        d = self.start_notified(config=MINIMAL_CONFIG)
        c = await WSClient.connect(d)
        await c.subscribe("public.x")
        log_mark = d.log_mark()
        self.reload_and_check(d)
        self.assertTrue(d.wait_for_log(r'msg="configuration reloaded"', start=log_mark),
                        "no reload logged")
        await c.ping()
        self.assertTrue(d.alive())
        self.assertAllFrom(d)

    def test_failed_reload_still_ends_with_ready(self):
        d = self.start_notified(config=MINIMAL_CONFIG)
        d.rewrite_config('{"listen": [ {"address": "127.0.0.1", "port": "not a port"} ]}\n')
        log_mark = d.log_mark()
        self.reload_and_check(d)
        self.assertTrue(d.wait_for_log(r"level=error", start=log_mark),
                        "a rejected reload is not logged as an error")
        self.assertTrue(d.alive(), "a bad file on reload must not stop the daemon")
        self.assertEqual(d.get("/healthz").status, 200)
        self.assertAllFrom(d)


class WatchdogTest(NotifyTestCase):
    def pets(self, start=0):
        return [m for m in self.notify.since(start) if m.fields.get("WATCHDOG") == "1"]

    def test_watchdog_pets_at_least_once_per_period(self):
        period_s = 2.0
        d = self.start_notified(watchdog_usec=int(period_s * 1e6))
        # Five pets span at least two periods; waiting for them (rather than counting what
        # came in a fixed 5 s) does not depend on how late a loaded machine runs the timer.
        # The gaps between them are the measurement.
        seen = []

        def fifth_pet(m):  # wait_for looks at each message once, in order
            if m.fields.get("WATCHDOG") == "1":
                seen.append(m)
            return len(seen) >= 5

        _, fifth = self.notify.wait_for(fifth_pet, 6 * period_s)
        pets = self.pets()
        self.assertIsNotNone(fifth, f"{len(pets)} WATCHDOG=1 in {6 * period_s} s with a "
                                    f"{period_s} s watchdog")
        times = [p.t for p in pets]
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertLess(max(gaps), period_s,
                        f"a watchdog gap of {max(gaps):.2f} s: systemd would have killed heraldd")
        self.assertAllFrom(d)

    def test_no_watchdog_unless_asked(self):
        self.start_notified()
        time.sleep(2.0)
        self.assertEqual(self.pets(), [], "WATCHDOG=1 without WATCHDOG_USEC")

    def test_no_watchdog_for_another_pid(self):
        # WATCHDOG_PID names the process systemd watches; a child that inherited the variables
        # (or a daemon whose WATCHDOG_PID is not its own) must not pet.
        self.start_notified(watchdog_usec=400000, extra_env={"WATCHDOG_PID": str(os.getpid())})
        time.sleep(1.5)
        self.assertEqual(self.pets(), [], "WATCHDOG=1 although WATCHDOG_PID is another process")


class StoppingTest(NotifyTestCase):
    @async_test(timeout=60)
    async def test_sigterm_sends_stopping_and_exits_0(self):
        d = self.start_notified()
        c = await WSClient.connect(d)
        await c.subscribe("x")
        mark = self.notify.mark()
        d.stopped = True  # this test owns the stop
        d.send_signal(signal.SIGTERM)
        i, m = self.notify.wait_key("STOPPING", "1", start=mark)
        self.assertIsNotNone(m, f"no STOPPING=1 after SIGTERM; got {self.notify.since(mark)}")
        self.assertEqual(await c.wait_closed(5), 1001)
        self.assertEqual(d.wait(10), 0)
        time.sleep(0.2)
        later = [x for x in self.notify.since(i + 1) if "READY" in x.fields]
        self.assertEqual(later, [], "READY=1 after STOPPING=1")
        self.assertAllFrom(d)

    def test_sighup_while_draining_does_not_claim_ready(self):
        # A client that never reads keeps the drain busy; a SIGHUP then (logrotate, an admin's
        # kill -HUP) must not tell systemd the stopping service is reloading or ready again.
        d = self.start_notified()
        stuck = RawWS(d.port)
        self.addCleanup(stuck.close)
        d.stopped = True
        d.send_signal(signal.SIGTERM)
        i, m = self.notify.wait_key("STOPPING", "1")
        self.assertIsNotNone(m, "no STOPPING=1 after SIGTERM")
        d.send_signal(signal.SIGHUP)
        self.assertEqual(d.wait(10), 0)
        time.sleep(0.2)
        after = [x for x in self.notify.since(i + 1)
                 if "READY" in x.fields or "RELOADING" in x.fields]
        self.assertEqual(after, [], "RELOADING/READY sent after STOPPING=1")


if __name__ == "__main__":
    unittest.main()
