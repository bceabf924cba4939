# SPDX-License-Identifier: MIT
"""Process lifecycle of heraldd (CONFIG.md command line, exit codes and signals; PROTOCOL.md
heartbeat): drain on SIGTERM/SIGINT with close 1001 and exit 0, --version, --check-config
with file:line:column, bad flags, a busy port, SIGHUP reload without dropping anyone, and the
server-side heartbeat that drops silent peers but keeps live ones.
"""

import asyncio
import ctypes
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from herald_testlib import (OP_PING, REPO, HeraldTestCase, HTTPClient, RawWS, WSClient,
                            async_test, heraldd_path, write_config)

GOOD_CONFIG = {
    "listen": [{"address": "127.0.0.1", "port": 7070}],
    "history": {"store": "memory", "max_events_per_topic": 1000, "max_age_s": 86400},
    "limits": {"max_connections": 100000, "max_event_bytes": 65536,
               "max_subscriptions_per_connection": 1000, "max_queue_bytes": 1048576,
               "publish_rate": 1000, "publish_burst": 2000},
    "heartbeat_s": 25,
    "cors": {"origins": ["*"]},
    "auth": {"anonymous": {"publish": [], "subscribe": ["public.>"]}},
    "log": {"level": "info"},
}


def run_heraldd(args, timeout=10):
    """Runs heraldd to completion (bounded); returns CompletedProcess with text output."""
    cmd = [heraldd_path()] + list(args)
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{cmd} still running after {timeout}s") from None


class ShutdownTest(HeraldTestCase):
    async def drain(self, sig):
        d = self.start_daemon()
        clients = [await WSClient.connect(d) for _ in range(20)]
        for c in clients:
            await c.subscribe("x")
        d.stopped = True  # this test owns the stop
        t0 = time.monotonic()
        d.send_signal(sig)
        codes = await asyncio.gather(*(c.wait_closed(5) for c in clients))
        self.assertEqual(codes, [1001] * 20)
        rc = await asyncio.to_thread(d.wait, 5)
        self.assertEqual(rc, 0, f"exit status after {sig.name}")
        self.assertLess(time.monotonic() - t0, 5)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", d.port), timeout=1).close()

    @async_test(timeout=30)
    async def test_sigterm_closes_clients_1001_and_exits_0(self):
        await self.drain(signal.SIGTERM)

    @async_test(timeout=30)
    async def test_sigint_closes_clients_1001_and_exits_0(self):
        await self.drain(signal.SIGINT)

    def test_sigterm_when_idle(self):
        d = self.start_daemon()
        t0 = time.monotonic()
        self.assertEqual(d.stop(signal.SIGTERM, 5), 0)
        self.assertLess(time.monotonic() - t0, 3)

    def test_healthz_while_serving(self):
        d = self.start_daemon()
        r = d.get("/healthz")
        self.assertEqual((r.status, r.text.strip()), (200, "ok"))

    def test_keepalive_requests_take_the_uv_poll_fast_path(self):
        # src/uvpoll.c: on libuv 1.44, lws's POLLOUT changes go through heraldd's own
        # uv_poll_start (one EPOLL_CTL_MOD, not libuv's remove-and-add). The daemon counts
        # them; every keep-alive request turns POLLOUT on and off again.
        uv = ctypes.CDLL("libuv.so.1")
        fast_expected = (uv.uv_version() >> 8) == (1 << 8 | 44)
        d = self.start_daemon(log_level="debug")
        self.assertIn(f"uv_poll={'fast' if fast_expected else 'libuv'}",
                      d.wait_for_log(r'msg="ready"').string)
        with HTTPClient(d.port) as h:
            for i in range(20):
                self.assertEqual(h.publish("public.ka", {"i": i})[0], 202)
        self.assertEqual(d.stop(signal.SIGTERM, 5), 0)
        m = re.search(r"uv_poll_fast_changes=(\d+)", d.log)
        self.assertIsNotNone(m, d.log_tail())
        if fast_expected:
            self.assertGreaterEqual(int(m.group(1)), 40)
        else:
            self.assertEqual(int(m.group(1)), 0)


class CommandLineTest(HeraldTestCase):
    def setUp(self):
        self.files = []

    def tearDown(self):
        for f in self.files:
            os.unlink(f)

    def config_file(self, content):
        path = write_config(content)
        self.files.append(path)
        return path

    def test_version(self):
        p = run_heraldd(["--version"], 5)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout, r"\d+\.\d+", "no version on stdout")
        self.assertNotIn("listening", p.stderr)

    def test_check_config_good(self):
        p = run_heraldd(["--check-config", "-c", self.config_file(GOOD_CONFIG)])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        p = run_heraldd(["--check-config", "--config", self.config_file({})])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_check_config_shipped_example(self):
        path = os.path.join(REPO, "config", "heraldd.json")
        # Its data_dir is the unit's StateDirectory, which systemd creates; --check-config
        # checks that it exists, so a directory that does stands in for it here.
        data = tempfile.mkdtemp(prefix="herald-it-")
        self.addCleanup(os.rmdir, data)
        p = run_heraldd(["--check-config", "-c", path, "--data-dir", data])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def check_bad(self, text, line, mention, args=("--check-config",)):
        path = self.config_file(text)
        p = run_heraldd(list(args) + ["-c", path])
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 1, out)
        self.assertRegex(out, re.escape(path) + rf":{line}:\d+", "no file:line:column")
        if mention:
            self.assertIn(mention, out)
        self.assertNotIn('msg="listening"', out)

    def test_check_config_unknown_key(self):
        self.check_bad('{\n  "heartbeat_s": 5,\n  "bogus_key": 1\n}\n', 3, "bogus_key")

    def test_check_config_nested_unknown_key(self):
        self.check_bad('{\n  "limits": {\n    "max_event_byte": 10\n  }\n}\n', 3,
                       "max_event_byte")

    def test_check_config_wrong_type(self):
        self.check_bad('{\n  "heartbeat_s": "5"\n}\n', 2, "heartbeat_s")

    def test_check_config_out_of_range(self):
        self.check_bad('{\n\n  "heartbeat_s": 0\n}\n', 3, "heartbeat_s")

    def test_check_config_syntax_error(self):
        self.check_bad('{\n  "heartbeat_s": 5,\n  "log": nope\n}\n', 3, None)

    def test_check_config_reports_every_error(self):
        text = ('{\n  "heartbeat_s": 0,\n  "bogus_key": 1,\n'
                '  "limits": {"max_event_bytes": 1}\n}\n')
        path = self.config_file(text)
        p = run_heraldd(["--check-config", "-c", path])
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        lines = [l for l in p.stderr.splitlines() if l.startswith(f"heraldd: {path}:")]
        self.assertEqual([re.match(re.escape(path) + r":(\d+):\d+:", l[9:]).group(1)
                          for l in lines], ["2", "3", "4"], p.stderr)
        for mention, line in zip(("heartbeat_s", "bogus_key", "max_event_bytes"), lines):
            self.assertIn(mention, line)

    def test_check_config_checks_the_data_dir(self):
        missing = "/nonexistent/herald-it-data"
        for cfg in ({"data_dir": missing, "history": {"store": "sqlite"}},
                    {"data_dir": self.config_file({}), "history": {"store": "sqlite"}}):
            with self.subTest(data_dir=cfg["data_dir"]):
                p = run_heraldd(["--check-config", "-c", self.config_file(cfg)])
                self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
                self.assertIn("data_dir", p.stderr)
                self.assertIn(cfg["data_dir"], p.stderr)
                self.assertNotIn("configuration ok", p.stdout)
        # The memory store needs none.
        p = run_heraldd(["--check-config", "-c",
                         self.config_file({"data_dir": missing, "history": {"store": "memory"}})])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_check_config_reports_cross_field_errors_together(self):
        cfg = {"listen": [{"address": "0.0.0.0", "port": 0}],
               "limits": {"max_queue_bytes": 4096, "max_event_bytes": 65536}}
        p = run_heraldd(["--check-config", "-c", self.config_file(cfg)])
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("not loopback", p.stderr)
        self.assertIn("max_queue_bytes", p.stderr)

    def test_bad_flag_prints_one_line_and_a_hint(self):
        for args in (["--no-such-flag"], ["--log-level", "loud"], ["-c"], ["serve"]):
            with self.subTest(args=args):
                p = run_heraldd(args)
                self.assertEqual(p.returncode, 1, p.stderr)
                lines = p.stderr.strip().splitlines()
                self.assertEqual(len(lines), 2, p.stderr)
                self.assertTrue(lines[0].startswith("heraldd: "), lines)
                self.assertEqual(lines[1], "try heraldd --help")
                self.assertNotIn("Usage", p.stderr)

    def test_bad_config_refuses_to_start(self):
        self.check_bad('{\n  "heartbeat_s": 5,\n  "bogus_key": 1\n}\n', 3, "bogus_key",
                       args=("--listen", "127.0.0.1:0"))

    def test_missing_config_file(self):
        path = "/nonexistent/herald-it.json"
        p = run_heraldd(["--check-config", "-c", path])
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(path, p.stdout + p.stderr)

    def test_bad_flags_exit_1(self):
        for args in (["--no-such-flag"], ["--log-level", "loud"], ["--store", "paper"],
                     ["--listen", "nonsense"], ["--listen", "127.0.0.1:99999"], ["-c"]):
            with self.subTest(args=args):
                p = run_heraldd(args + ["--listen", "127.0.0.1:0"] if args[0] != "-c" else args)
                self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
                self.assertNotIn('msg="listening"', p.stderr)
                self.assertTrue(p.stderr.strip(), "no explanation on stderr")

    def test_port_in_use_exits_2(self):
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        p = run_heraldd(["--listen", f"127.0.0.1:{port}"], 10)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(str(port), p.stderr)


class ReloadTest(HeraldTestCase):
    @async_test(timeout=30)
    async def test_sighup_keeps_connections_and_serving(self):
        d = self.start_daemon({"heartbeat_s": 25, "log": {"level": "info"}})
        c = await WSClient.connect(d)
        await c.subscribe("hup")
        mark = d.log_mark()
        d.send_signal(signal.SIGHUP)
        m = await asyncio.to_thread(d.wait_for_log, r"(?i)reload", 5, mark)
        self.assertIsNotNone(m, "no reload line logged after SIGHUP")
        self.assertTrue(d.alive())
        self.assertTrue(c.open)
        await c.ping()
        reply = d.publish_ok("hup", "after reload")
        self.assertEqual(reply["receivers"], 1)
        self.assertEqual((await c.recv_event())["id"], reply["id"])
        self.assertEqual(d.get("/healthz").status, 200)
        # A second reload works as well as the first.
        mark = d.log_mark()
        d.send_signal(signal.SIGHUP)
        self.assertIsNotNone(await asyncio.to_thread(d.wait_for_log, r"(?i)reload", 5, mark))
        await c.ping()

    @async_test(timeout=30)
    async def test_sighup_with_broken_config_keeps_serving(self):
        d = self.start_daemon({"heartbeat_s": 25})
        c = await WSClient.connect(d)
        await c.subscribe("hup")
        d.rewrite_config('{\n  "heartbeat_s": \n')
        mark = d.log_mark()
        d.send_signal(signal.SIGHUP)
        m = await asyncio.to_thread(d.wait_for_log, r"level=(error|warn)", 5, mark)
        self.assertIsNotNone(m, "a broken config on SIGHUP was not reported")
        self.assertTrue(d.alive(), "daemon died on SIGHUP with a broken config")
        reply = d.publish_ok("hup", "still serving")
        self.assertEqual((await c.recv_event())["id"], reply["id"])


class HeartbeatTest(HeraldTestCase):
    def test_silent_peer_is_dropped(self):
        d = self.start_daemon({"heartbeat_s": 1})
        raw = RawWS(d.port)
        self.addCleanup(raw.close)
        welcome = raw.recv_json()
        self.assertEqual(welcome["heartbeat"], 1)
        t0 = time.monotonic()
        frames, how, code = raw.read_until_closed(8)
        elapsed = time.monotonic() - t0
        pings = sum(1 for op, _ in frames if op == OP_PING)
        self.assertGreaterEqual(pings, 1, f"no ping before the close ({how}, {elapsed:.1f}s)")
        self.assertLess(elapsed, 4.5, f"silent peer dropped only after {elapsed:.1f}s")
        self.assertGreater(elapsed, 0.9, f"silent peer dropped too early ({elapsed:.1f}s)")

    @async_test(timeout=30)
    async def test_answering_peer_stays(self):
        d = self.start_daemon({"heartbeat_s": 1})
        c = await WSClient.connect(d)  # websockets answers pings by itself
        await c.subscribe("hb")
        await asyncio.sleep(4.0)  # the point of the test: time passing, 4 heartbeats
        self.assertTrue(c.open, f"closed with {c.ws.close_code}")
        await c.ping()
        reply = d.publish_ok("hb", "alive")
        self.assertEqual((await c.recv_event())["id"], reply["id"])


if __name__ == "__main__":
    unittest.main()
