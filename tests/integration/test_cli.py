# SPDX-License-Identifier: MIT
"""End to end: the herald CLI (and through it libherald) against the real daemon.

publish and subscribe, patterns, output formats, resuming across daemon restarts (durable
and in-memory history), --state across two runs, exit codes and one-line errors, HTTP
polling and delivery status, wss://, and the example app. Run under valgrind with
HERALD_CLI_VALGRIND=1 (ctest: it.test_cli_valgrind).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from cli_testlib import (SLOW, VALGRIND, VALGRIND_RC, CLITestCase, FakeBatchServer, FakeServer,
                         example_path, free_port, stop_gracefully, wrap)
from herald_testlib import ID_RE
from history_testlib import wait_until


def events(lines):
    return [json.loads(x) for x in lines]


class PublishSubscribe(CLITestCase):

    def test_publish_into_subscribe_count(self):
        d = self.start_daemon()
        sub = self.spawn("subscribe", "--count", "3", "chat.>", url=d.ws_url)
        self.wait_subscriptions(d, 1)
        ids = []
        for text in ("hello", "two words", "ünïcode ✓"):
            p = self.run_cli("publish", "chat.room1", text, url=d.ws_url, expect=0)
            self.assertRegex(p.stdout, r"^[0-9a-f]{16}\n$")
            self.assertEqual(p.stderr, "")
            ids.append(p.stdout.strip())
        got = events(sub.read_lines(3))
        self.finish(sub, 0)
        self.assertEqual([e["id"] for e in got], ids)
        self.assertEqual([e["data"] for e in got], ["hello", "two words", "ünïcode ✓"])
        for e in got:
            self.assertEqual(e["type"], "event")
            self.assertEqual(e["topic"], "chat.room1")
            self.assertEqual(e["event"], "message")
            self.assertIsInstance(e["time"], int)
        self.assertIncreasing(ids)

    def test_publish_json_kind_and_stdin(self):
        d = self.start_daemon()
        self.run_cli("publish", "--json", "--event", "login", "logins",
                     '{"user":"alice","n":0.1}', url=d.ws_url, expect=0)
        self.run_cli("publish", "logins", "-", url=d.ws_url, input="from stdin\n", expect=0)
        self.run_cli("publish", "-j", "logins", url=d.ws_url, input='[1, 2.50, "x"]',
                     expect=0)
        p = self.run_cli("subscribe", "--since", "all", "--count", "3", "logins",
                         url=d.ws_url, expect=0)
        lines = p.stdout.splitlines()
        self.assertEqual(len(lines), 3)
        got = events(lines)
        self.assertEqual(got[0]["event"], "login")
        self.assertEqual(got[0]["data"], {"user": "alice", "n": 0.1})
        self.assertIn('"n":0.1', lines[0], "numbers keep their spelling end to end")
        self.assertEqual(got[1]["data"], "from stdin")  # the trailing newline is not data
        self.assertEqual(got[2]["data"], [1, 2.5, "x"])

    def test_publish_lines_prints_ids_in_order(self):
        d = self.start_daemon()
        n = 200
        text = "".join(f"line {i}\n" for i in range(n)) + "\n"  # a blank line is skipped
        p = self.run_cli("publish", "--lines", "bulk", "-", url=d.ws_url, input=text,
                         expect=0)
        ids = p.stdout.split()
        self.assertEqual(len(ids), n)
        self.assertIncreasing(ids)
        p = self.run_cli("subscribe", "--since", "all", "--count", str(n), "bulk",
                         url=d.ws_url, expect=0, timeout=30)
        got = events(p.stdout.splitlines())
        self.assertEqual([e["data"] for e in got], [f"line {i}" for i in range(n)])
        self.assertEqual([e["id"] for e in got], ids)

    def test_publish_lines_reports_bad_lines_and_goes_on(self):
        d = self.start_daemon()
        p = self.run_cli("publish", "--lines", "--json", "j", url=d.ws_url,
                         input='{"ok":1}\nnot json\n{"ok":2}\n')
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertEqual(len(p.stdout.split()), 2)
        self.assertIn("line 2", p.stderr)

    def test_publish_lines_starting_with_a_blank_line(self):
        # A blank first line used to crash the line reader (nothing allocated yet).
        d = self.start_daemon()
        p = self.run_cli("publish", "--lines", "bl", url=d.ws_url, input="\nx\n", expect=0)
        self.assertEqual(len(p.stdout.split()), 1)

    def test_patterns(self):
        d = self.start_daemon()
        sub = self.spawn("subscribe", "chat.*", "user.42.>", url=d.ws_url)
        self.wait_subscriptions(d, 2)
        for topic in ("chat.a", "chat.a.b", "user.42.inbox", "user.42.inbox.x", "user.43.inbox",
                      "other", "chat"):
            self.run_cli("publish", topic, topic, url=d.ws_url, expect=0)
        got = events(sub.read_lines(3))
        self.assertEqual([e["topic"] for e in got], ["chat.a", "user.42.inbox",
                                                     "user.42.inbox.x"])
        sub.no_more_lines(0.5)
        sub.signal(signal.SIGINT)
        self.finish(sub, 0)

    def test_overlapping_patterns_deliver_once(self):
        d = self.start_daemon()
        sub = self.spawn("subscribe", "--count", "2", "a.>", "a.b", url=d.ws_url)
        self.wait_subscriptions(d, 2)
        self.run_cli("publish", "a.b", "x", url=d.ws_url, expect=0)
        self.run_cli("publish", "a.c", "y", url=d.ws_url, expect=0)
        got = events(sub.read_lines(2))
        self.finish(sub, 0)
        self.assertEqual([e["data"] for e in got], ["x", "y"])

    def test_text_format(self):
        d = self.start_daemon()
        self.run_cli("publish", "t.a", "two\nlines", url=d.ws_url, expect=0)
        self.run_cli("publish", "-j", "-e", "kind", "t.b", '{"k":[1]}', url=d.ws_url, expect=0)
        p = self.run_cli("subscribe", "--since", "all", "-n", "2", "--format", "text", "t.>",
                         url=d.ws_url, expect=0)
        self.assertEqual(p.stdout.splitlines(), ["t.a message two\\nlines",
                                                 't.b kind {"k":[1]}'])

    def test_since_id_and_latest(self):
        d = self.start_daemon()
        ids = [self.run_cli("publish", "s", str(i), url=d.ws_url, expect=0).stdout.strip()
               for i in range(4)]
        p = self.run_cli("subscribe", "--since", ids[1], "--count", "2", "s", url=d.ws_url,
                         expect=0)
        self.assertEqual([e["data"] for e in events(p.stdout.splitlines())], ["2", "3"])
        sub = self.spawn("subscribe", "--since", "latest", "--count", "1", "s", url=d.ws_url)
        self.wait_subscriptions(d, 1)
        self.run_cli("publish", "s", "new", url=d.ws_url, expect=0)
        self.assertEqual(events(sub.read_lines(1))[0]["data"], "new")
        self.finish(sub, 0)

    def test_url_from_environment(self):
        d = self.start_daemon()
        env = self.env(HERALD_URL=d.ws_url)
        p = self.run_cli("publish", "envtopic", "x", env=env, expect=0)
        self.assertRegex(p.stdout.strip(), ID_RE)
        # --url wins over the environment.
        p = self.run_cli("publish", "envtopic", "x", env=self.env(HERALD_URL="ws://127.0.0.1:1"),
                         url=d.ws_url, expect=0)

    def test_http_url_forms_work(self):
        d = self.start_daemon()
        for url in (d.base_url, d.base_url + "/", f"ws://127.0.0.1:{d.port}/v1/ws"):
            self.run_cli("publish", "forms", "x", url=url, expect=0)

    def test_exits_when_the_reader_goes_away(self):
        # `herald subscribe ... | head -1`: once head exits, so does herald, even while idle.
        d = self.start_daemon()
        self.run_cli("publish", "pipe", "one", url=d.ws_url, expect=0)
        p = subprocess.Popen(self.cli("--url", d.ws_url, "subscribe", "--since", "all", "pipe"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, env=self.env())
        try:
            self.assertEqual(json.loads(p.stdout.readline())["data"], "one")
            p.stdout.close()
            rc = p.wait(5 * SLOW)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
            p.stderr.close()
        self.assertEqual(rc, 0)

    def test_state_does_not_claim_events_stdout_refused(self):
        # Issue 16 (--state moves only past events handed to the user): with nobody reading
        # stdout the event cannot be written, so the state must not move past it.
        d = self.start_daemon()
        eid = self.run_cli("publish", "gone", "one", url=d.ws_url, expect=0).stdout.strip()
        tmp = tempfile.mkdtemp(prefix="herald-state-")
        self.addCleanup(shutil.rmtree, tmp, True)
        state = os.path.join(tmp, "s.json")
        r, w = os.pipe()
        os.close(r)  # the reader is gone before anything is written
        try:
            p = subprocess.run(self.cli("--url", d.ws_url, "subscribe", "--since", "all",
                                        "--state", state, "gone"),
                               stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               env=self.env(), timeout=15 * SLOW)
        finally:
            os.close(w)
        self.assertEqual(p.returncode, 0, p.stderr)
        if os.path.exists(state):
            with open(state) as f:
                self.assertNotEqual(json.load(f)["cursors"].get("gone"), eid)

    def test_sigint_stops_cleanly(self):
        d = self.start_daemon()
        sub = self.spawn("subscribe", "quiet", url=d.ws_url)
        self.wait_subscriptions(d, 1)
        sub.signal(signal.SIGTERM)
        self.finish(sub, 0)
        self.assertEqual(sub.out, [])


class Resume(CLITestCase):

    def _durable(self, data_dir, port=None):
        # No skip when it fails to start: the SQLite store ships, and a regression in it
        # must fail here (issue 13).
        args = ["--store", "sqlite", "--data-dir", data_dir]
        if port is None:
            return self.start_daemon(args=args)
        return self.start_port_daemon(port, args=args)

    def test_resume_across_durable_restart_no_loss_no_duplicates(self):
        data = tempfile.mkdtemp(prefix="herald-cli-")
        self.addCleanup(shutil.rmtree, data, True)
        d1 = self._durable(data)
        port = d1.port
        url = d1.ws_url
        sub = self.spawn("subscribe", "--count", "12", "job.>", url=url)
        self.wait_subscriptions(d1, 1)
        sent = [self.run_cli("publish", "job.a", f"before {i}", url=url, expect=0).stdout.strip()
                for i in range(5)]
        self.assertEqual([e["id"] for e in events(sub.read_lines(5))], sent)
        stop_gracefully(d1)
        sub.wait_stderr("reconnecting")
        d2 = self._durable(data, port)
        # Published right away: the subscriber is still backing off, so these come as replay.
        sent += [self.run_cli("publish", "job.b", f"after {i}", url=url, expect=0).stdout.strip()
                 for i in range(4)]
        sub.wait_stderr("reconnected")
        sent += [self.run_cli("publish", "job.c", f"live {i}", url=url, expect=0).stdout.strip()
                 for i in range(3)]
        got = events(sub.read_lines(7))
        self.finish(sub, 0)
        ids = [e["id"] for e in got]
        self.assertEqual(ids, sent[5:], "every event once, in order, across the restart")
        self.assertNotIn("may have been missed", sub.stderr)
        self.assertIncreasing(sent)
        stop_gracefully(d2)

    def test_restart_without_durable_history_reports_gap(self):
        d1 = self.start_daemon()
        port = d1.port
        url = d1.ws_url
        sub = self.spawn("subscribe", "--count", "3", "m", url=url)
        self.wait_subscriptions(d1, 1)
        self.run_cli("publish", "m", "one", url=url, expect=0)
        sub.read_lines(1)
        stop_gracefully(d1)
        sub.wait_stderr("reconnecting")
        self.start_port_daemon(port)
        self.run_cli("publish", "m", "two", url=url, expect=0)
        sub.wait_stderr("reconnected")
        self.run_cli("publish", "m", "three", url=url, expect=0)
        got = events(sub.read_lines(2))
        self.finish(sub, 0)
        # Nothing published after the restart is lost, and the possible loss is reported.
        self.assertEqual([e["data"] for e in got], ["two", "three"])
        self.assertIn("may have been missed", sub.stderr)

    def test_quiet_subscription_resumes_from_next_across_durable_restart(self):
        # Issue 13: nothing arrived on the subscription before the daemon restarted; it
        # resumes from the ok's `next`: what was published meanwhile arrives, and no gap.
        data = tempfile.mkdtemp(prefix="herald-cli-")
        self.addCleanup(shutil.rmtree, data, True)
        d1 = self._durable(data)
        port, url = d1.port, d1.ws_url
        sub = self.spawn("subscribe", "--count", "2", "q", url=url)
        self.wait_subscriptions(d1, 1)
        stop_gracefully(d1)
        sub.wait_stderr("reconnecting")
        d2 = self._durable(data, port)
        self.run_cli("publish", "q", "two", url=url, expect=0)
        self.wait_subscriptions(d2, 1)
        self.run_cli("publish", "q", "three", url=url, expect=0)
        got = events(sub.read_lines(2))
        self.finish(sub, 0)
        self.assertEqual([e["data"] for e in got], ["two", "three"])
        self.assertNotIn("missed", sub.stderr)

    def test_state_file_resumes_across_runs(self):
        d = self.start_daemon()
        url = d.ws_url
        state = os.path.join(tempfile.mkdtemp(prefix="herald-state-"), "s.json")
        self.addCleanup(shutil.rmtree, os.path.dirname(state), True)
        first = [self.run_cli("publish", "st.a", f"a{i}", url=url, expect=0).stdout.strip()
                 for i in range(3)]
        p = self.run_cli("subscribe", "--state", state, "--since", "all", "--count", "3",
                         "st.>", url=url, expect=0)
        self.assertEqual([e["id"] for e in events(p.stdout.splitlines())], first)
        with open(state) as f:
            saved = json.load(f)
        self.assertEqual(saved["cursors"]["st.>"], first[-1])
        self.assertEqual(saved["last"], first[-1])

        second = [self.run_cli("publish", "st.b", f"b{i}", url=url, expect=0).stdout.strip()
                  for i in range(2)]
        # --since all is overridden by the state: the next run starts where this one stopped.
        p = self.run_cli("subscribe", "--state", state, "--since", "all", "--count", "2",
                         "st.>", url=url, expect=0)
        self.assertEqual([e["id"] for e in events(p.stdout.splitlines())], second)

        sub = self.spawn("subscribe", "--state", state, "st.>", url=url)
        self.wait_subscriptions(d, 1)
        sub.no_more_lines(0.5)  # nothing old comes again
        third = self.run_cli("publish", "st.c", "c", url=url, expect=0).stdout.strip()
        self.assertEqual(events(sub.read_lines(1))[0]["id"], third)
        sub.signal(signal.SIGINT)
        self.finish(sub, 0)
        with open(state) as f:
            self.assertEqual(json.load(f)["cursors"]["st.>"], third)

    def test_state_records_only_printed_events(self):
        # Issue 16: --count 2 on three retained events must not save the third one's id (the
        # library had it queued, it was never printed): the next run prints it.
        d = self.start_daemon()
        url = d.ws_url
        state = os.path.join(tempfile.mkdtemp(prefix="herald-state-"), "s.json")
        self.addCleanup(shutil.rmtree, os.path.dirname(state), True)
        ids = [self.run_cli("publish", "cnt", f"e{i}", url=url, expect=0).stdout.strip()
               for i in range(3)]
        p = self.run_cli("subscribe", "--since", "all", "--count", "2", "--state", state,
                         "cnt", url=url, expect=0)
        self.assertEqual([e["id"] for e in events(p.stdout.splitlines())], ids[:2])
        with open(state) as f:
            self.assertEqual(json.load(f)["cursors"]["cnt"], ids[1])
        p = self.run_cli("subscribe", "--count", "1", "--state", state, "cnt", url=url,
                         expect=0)
        self.assertEqual([e["id"] for e in events(p.stdout.splitlines())], ids[2:])

    def test_bad_state_file_is_a_usage_error(self):
        d = self.start_daemon()
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        os.write(fd, b"not json")
        os.close(fd)
        p = self.run_cli("subscribe", "--state", path, "x", url=d.ws_url)
        self.one_line_error(p, 1)


class Errors(CLITestCase):

    def test_bad_url_is_a_usage_error(self):
        # Issue 16: a malformed --url is bad input (1), not a failed connection (2).
        for url in ("foo://x", "ws://", "ws://h:99999", "not a url"):
            for args in (("publish", "t", "x"), ("subscribe", "t"), ("poll", "t")):
                p = self.run_cli(*args, url=url)
                line = self.one_line_error(p, 1)
                self.assertIn("URL", line)

    def test_url_without_scheme_is_ws(self):
        # Issue 16: `--url localhost:7070` is what people type.
        d = self.start_daemon()
        url = f"127.0.0.1:{d.port}"
        eid = self.run_cli("publish", "bare", "x", url=url, expect=0).stdout.strip()
        p = self.run_cli("subscribe", "--since", "all", "-n", "1", "bare", url=url, expect=0)
        self.assertEqual(events(p.stdout.splitlines())[0]["id"], eid)
        self.run_cli("status", eid, url=url, expect=0)

    def test_http_calls_honour_timeout(self):
        # Issue 16: a server that accepts and never answers: poll and status give up after
        # --timeout (a deadline for the whole request), not after lws's own 30 s.
        with FakeServer(silent=True) as fake:
            for args in (("status", "0000000000000001"), ("poll", "t")):
                t0 = time.monotonic()
                p = self.run_cli("--timeout", "2000", *args, url=fake.url, timeout=25)
                self.assertIn("within 2000 ms", self.one_line_error(p, 2))
                self.assertLess(time.monotonic() - t0, 2 + 4 * SLOW, args)

    def test_interrupted_long_poll_exits_130(self):
        # Issue 16: SIGINT during `poll -w 30` must not look like a successful empty poll.
        d = self.start_daemon()
        for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            p = self.spawn("poll", "-w", "30", "--since", "latest", "ip", url=d.ws_url)
            self.assertTrue(wait_until(lambda: d.metric("herald_long_polls") == 1, 10 * SLOW),
                            "the long poll did not reach the daemon")
            p.signal(sig)
            self.finish(p, code)
            self.assertEqual(p.out, [])
            self.assertIn("interrupted", p.stderr)
            self.assertTrue(wait_until(lambda: d.metric("herald_long_polls") == 0, 10 * SLOW))

    def test_refused_connection_exit_2(self):
        url = f"ws://127.0.0.1:{free_port()}"
        for args in (("publish", "t", "x"), ("subscribe", "t"), ("poll", "t"),
                     ("status", "0000000000000001")):
            p = self.run_cli(*args, url=url)
            line = self.one_line_error(p, 2)
            self.assertIn("127.0.0.1", line)

    def test_wrong_path_exit_2(self):
        d = self.start_daemon()
        p = self.run_cli("publish", "t", "x", url=f"ws://127.0.0.1:{d.port}/nope")
        self.assertIn("404", self.one_line_error(p, 2))

    def test_silent_server_times_out_exit_2(self):
        with FakeServer(silent=True) as fake:
            t0 = time.monotonic()
            p = self.run_cli("--timeout", "1000", "publish", "t", "x", url=fake.url)
            self.assertIn("within 1000 ms", self.one_line_error(p, 2))
            self.assertLess(time.monotonic() - t0, 8 * SLOW)

    def test_close_1008_stops_without_retry_exit_3(self):
        # Authentication failed or the token expired: retrying the same token cannot help.
        with FakeServer(close_code=1008, close_reason="token expired") as fake:
            p = self.run_cli("subscribe", "t", url=fake.url, timeout=20)
            line = self.one_line_error(p, 3)
            self.assertIn("1008", line)
            self.assertIn("token expired", line)
            self.assertEqual(fake.connections, 1)

    def test_close_4000_reconnects(self):
        with FakeServer(close_code=4000, close_reason="slow consumer") as fake:
            sub = self.spawn("subscribe", "t", url=fake.url)
            sub.wait_stderr("4000")
            deadline = time.monotonic() + 10 * SLOW
            while fake.connections < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertGreaterEqual(fake.connections, 3, sub.stderr)
            sub.signal(signal.SIGINT)
            self.finish(sub, 0)

    def test_quiet_subscription_resumes_from_next_without_gap(self):
        # Issue 13: a live subscription that received nothing resumes from the ok's `next`
        # (nothing missed), not from "latest" with a gap warning.
        with FakeServer(close_code=4000, next_id="00000000000000aa") as fake:
            sub = self.spawn("subscribe", "t", url=fake.url)
            wait_until(lambda: len(fake.subscribes) >= 2, 10 * SLOW)
            self.assertGreaterEqual(len(fake.subscribes), 2, sub.stderr)
            sub.signal(signal.SIGINT)
            self.finish(sub, 0)
            self.assertNotIn("since", fake.subscribes[0])
            self.assertEqual(fake.subscribes[1].get("since"), "00000000000000aa")
            self.assertNotIn("missed", sub.stderr)

    def test_server_errors_exit_3_with_code(self):
        d = self.start_daemon()
        cases = [
            (("publish", "$sys.x", "x"), "forbidden"),
            (("publish", "a..b", "x"), "invalid_topic"),
            (("publish", "a.*", "x"), "invalid_topic"),
            (("publish", "-e", "bad kind!", "t", "x"), "bad_request"),
            (("subscribe", "a.>.b"), "invalid_topic"),
            (("subscribe", "ok", "bad..pattern"), "invalid_topic"),
        ]
        for args, code in cases:
            p = self.run_cli(*args, url=d.ws_url)
            line = self.one_line_error(p, 3)
            self.assertIn(code, line, args)

    def test_too_large_exit_3(self):
        # Issue 16: the library checks the data (not the frame) against the welcome's
        # max_event_bytes, and says the event was not sent rather than "rejected by the
        # server", which never saw it.
        d = self.start_daemon()
        for size in (65537, 70000, 100000):
            p = self.run_cli("publish", "big", "-", url=d.ws_url, input="x" * (size - 2))
            line = self.one_line_error(p, 3)
            self.assertIn("too_large", line)
            self.assertIn("65536", line)
            self.assertIn("not sent", line)
            self.assertNotIn("rejected by the server", line)
        self.assertEqual(d.metric("herald_publish_rejected_total") or 0, 0)
        # At the limit it goes out; insignificant whitespace does not count.
        self.run_cli("publish", "big", "-", url=d.ws_url, input="x" * 65534, expect=0)
        spaced = "[" + ", ".join(["1"] * 30000) + "]"  # 90,000 bytes, 60,001 compact
        self.run_cli("publish", "--json", "big", spaced, url=d.ws_url, expect=0)

    def test_usage_errors_exit_1(self):
        cases = [
            ("publish",), ("publish", "a", "b", "c"), ("subscribe",), ("bogus",),
            ("subscribe", "--count", "x", "p"), ("subscribe", "--format", "xml", "p"),
            ("--timeout", "0", "publish", "t", "x"), ("publish", "--nope", "t"),
            ("publish", "--json", "t", "{bad"), ("publish", "--lines", "t", "data"),
            ("poll",), ("poll", "--wait", "61", "p"), ("status",),
        ]
        for args in cases:
            p = self.run_cli(*args, url="ws://127.0.0.1:1")
            self.assertEqual(p.returncode, 1, f"{args}: {p.stderr}")
            self.assertEqual(p.stdout, "")
            self.assertTrue(p.stderr.startswith("herald"), p.stderr)

    def test_help_and_version(self):
        for cmd in ((), ("publish",), ("subscribe",), ("poll",), ("status",)):
            p = self.run_cli(*cmd, "--help", expect=0)
            self.assertIn("Usage: herald", p.stdout)
            self.assertIn("--url", p.stdout)
            self.assertEqual(p.stderr, "")
        p = self.run_cli("--version", expect=0)
        self.assertRegex(p.stdout, r"^herald \d+\.\d+\.\d+")


class Idempotency(CLITestCase):
    """Issue 13: every publish carries a key, and a publish whose connection dropped before
    the answer is sent once more with the same key; the server's "duplicate" is surfaced."""

    def test_publish_is_resent_with_its_key_after_a_lost_connection(self):
        with FakeServer(drop_publishes=1) as fake:
            p = self.run_cli("publish", "t", "x", url=fake.url, expect=0)
            self.assertEqual(p.stdout, "0000000000000001\n")
            self.assertIn("already had this event", p.stderr)
            self.assertEqual(fake.connections, 2)
            keys = [c.get("key") for c in fake.publishes]
            self.assertEqual(len(keys), 2, fake.publishes)
            self.assertEqual(keys[0], keys[1])
            self.assertRegex(keys[0], r"^[!-~]{1,128}$")

    def test_pipelined_publishes_are_resent_in_order(self):
        # The asynchronous path (--lines keeps many publishes in flight): all those without
        # an answer go again, in order, with their keys; each line's id is printed once.
        with FakeServer(drop_publishes=1) as fake:
            p = self.run_cli("publish", "--lines", "t", url=fake.url, input="a\nb\nc\n",
                             expect=0)
            self.assertEqual(p.stdout.split(), [f"{i:016x}" for i in (1, 2, 3)])
            keys = [c["key"] for c in fake.publishes]
            first = keys[0]
            resent = keys[1:]
            self.assertEqual(resent[0], first)  # the dropped one first, same key
            self.assertEqual(len(set(resent)), 3, keys)

    def test_keys_differ_between_publishes_and_clients(self):
        with FakeServer() as fake:
            p = self.run_cli("publish", "--lines", "t", url=fake.url, input="a\nb\n", expect=0)
            self.run_cli("publish", "t", "c", url=fake.url, expect=0)
            keys = [c.get("key") for c in fake.publishes]
            self.assertEqual(len(set(keys)), 3, keys)
            self.assertEqual(len(p.stdout.split()), 2)

    def test_caller_key_and_duplicate(self):
        with FakeServer() as fake:
            a = self.run_cli("publish", "--key", "order-42", "t", "x", url=fake.url, expect=0)
            self.assertEqual(a.stderr, "")
            b = self.run_cli("publish", "--key", "order-42", "t", "x", url=fake.url, expect=0)
            self.assertEqual(a.stdout, b.stdout)
            self.assertIn("already had this event", b.stderr)
            self.assertEqual([c["key"] for c in fake.publishes], ["order-42", "order-42"])
        for bad in ("", "has space", "k" * 129):
            self.run_cli("publish", "--key", bad, "t", "x", url="ws://127.0.0.1:1", expect=1)


class Batch(CLITestCase):
    """Issue 18: `herald publish --batch FILE|-` sends the NDJSON lines in one POST
    /v1/publish (PROTOCOL.md section 3) and prints one id per line; the client side against
    a scripted server until heraldd serves batches."""

    def test_batch_from_stdin_and_file(self):
        text = ('{"topic":"a.b","event":"login","data":{"n": 1.50}}\n'
                "\n"
                '{"topic":"c","key":"mine-1"}\n'
                '{"topic":"d","data":"x y"}\n')
        with FakeBatchServer() as fake:
            p = self.run_cli("publish", "--batch", "-", url=fake.url, input=text, expect=0)
            self.assertEqual(p.stdout.split(), [f"{i:016x}" for i in (1, 2, 3)])
            req = fake.requests[0]
            self.assertEqual(req["path"], "/v1/publish")
            self.assertEqual(req["type"], "application/x-ndjson")
            self.assertEqual([x["topic"] for x in req["lines"]], ["a.b", "c", "d"])
            self.assertEqual(req["lines"][0]["event"], "login")
            self.assertIn('"data":{"n":1.50}', req["raw"])  # as written, on one line
            self.assertEqual(req["lines"][1]["key"], "mine-1")
            keys = [x["key"] for x in req["lines"]]
            self.assertEqual(len(set(keys)), 3)  # every line has its own key
            path = os.path.join(tempfile.mkdtemp(prefix="herald-batch-"), "b.ndjson")
            self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
            with open(path, "w") as f:
                f.write(text)
            p = self.run_cli("publish", "-b", path, url=fake.url, expect=0)
            self.assertEqual(len(p.stdout.split()), 3)

    def test_refused_batch_names_the_input_line(self):
        with FakeBatchServer() as fake:
            text = '{"topic":"ok"}\n\n{"topic":"bad"}\n'
            p = self.run_cli("publish", "--batch", "-", url=fake.url, input=text)
            line = self.one_line_error(p, 3)
            self.assertIn("line 3", line)  # the input line, counting the blank one
            self.assertIn("invalid_topic", line)

    def test_bad_batch_input_is_a_usage_error(self):
        for text, where in (('{"topic":"a"}\nnot json\n', "line 2"),
                            ('{"topic":"a","extra":1}\n', "line 1"), ("\n\n", "no events")):
            p = self.run_cli("publish", "--batch", "-", url="ws://127.0.0.1:1", input=text)
            self.assertIn(where, self.one_line_error(p, 1))
        self.run_cli("publish", "--batch", "-", "t", url="ws://127.0.0.1:1", input="",
                     expect=1)


class Failover(CLITestCase):
    """Issue 14: several server URLs (--url A,B or HERALD_URL): a connection that is lost
    moves to the next server and resumes every subscription with its last id. Two
    independent daemons (their ids differ, so the test checks the move and the resume,
    not continuity: B does not know A's id and says so with a gap)."""

    def test_subscriber_moves_to_the_next_server_and_resumes(self):
        a, b = self.start_daemon(), self.start_daemon()
        urls = f"{a.ws_url},{b.ws_url}"
        sub = self.spawn("subscribe", "--count", "2", "fo.>", url=urls)
        self.wait_subscriptions(a, 1)
        first = self.run_cli("publish", "fo.x", "one", url=a.ws_url, expect=0).stdout.strip()
        self.assertEqual(events(sub.read_lines(1))[0]["id"], first)
        a.kill()
        self.wait_subscriptions(b, 1)
        # Resumed with since=<A's last id>: B does not know it and answers with a gap.
        sub.wait_stderr(f"after \"{first}\"")
        sub.wait_stderr(f"reconnected to 127.0.0.1:{b.port}")
        second = self.run_cli("publish", "fo.y", "two", url=b.ws_url, expect=0).stdout.strip()
        self.assertEqual(events(sub.read_lines(1))[0]["id"], second)
        self.finish(sub, 0)

    def test_first_connection_and_http_try_every_server(self):
        dead = f"ws://127.0.0.1:{free_port()}"
        d = self.start_daemon()
        env = self.env(HERALD_URL=f"{dead}, {d.ws_url}")
        eid = self.run_cli("publish", "fl", "x", env=env, expect=0).stdout.strip()
        p = self.run_cli("poll", "--since", "all", "fl", env=env, expect=0)
        self.assertEqual(events(p.stdout.splitlines())[0]["id"], eid)
        self.run_cli("status", eid, env=env, expect=0)
        p = self.run_cli("subscribe", "--since", "all", "-n", "1", "fl", env=env, expect=0)
        self.assertEqual(events(p.stdout.splitlines())[0]["id"], eid)
        # Every server refused: one error naming the last one tried, exit 2.
        dead2 = f"ws://127.0.0.1:{free_port()}"
        p = self.run_cli("publish", "fl", "x", url=f"{dead},{dead2}")
        self.assertIn(dead2.split("//")[1], self.one_line_error(p, 2))
        p = self.run_cli("publish", "fl", "x", url=f"{d.ws_url},,{dead}")
        self.assertIn("empty", self.one_line_error(p, 1))


class AgainstHeraldd(CLITestCase):
    """Issues 13 and 18 end to end: keys, duplicates and batches against the real daemon."""

    def test_publish_key_publishes_once(self):
        d = self.start_daemon()
        a = self.run_cli("publish", "--key", "order-7", "ik", "x", url=d.ws_url, expect=0)
        b = self.run_cli("publish", "--key", "order-7", "ik", "x", url=d.ws_url, expect=0)
        self.assertEqual(a.stdout, b.stdout)
        self.assertEqual(a.stderr, "")
        self.assertIn("already had this event", b.stderr)
        p = self.run_cli("poll", "--since", "all", "ik", url=d.ws_url, expect=0)
        self.assertEqual([e["id"] for e in events(p.stdout.splitlines())], [a.stdout.strip()])

    def test_batch(self):
        d = self.start_daemon()
        sub = self.spawn("subscribe", "--count", "3", "be.>", url=d.ws_url)
        self.wait_subscriptions(d, 1)
        text = ('{"topic":"be.a","event":"login","data":{"n":1.50},"key":"b-1"}\n'
                '\n'
                '{"topic":"be.b","data":"two","key":"b-2"}\n'
                '{"topic":"be.c","key":"b-3"}\n')
        p = self.run_cli("publish", "--batch", "-", url=d.ws_url, input=text, expect=0)
        ids = p.stdout.split()
        self.assertEqual(len(ids), 3)
        self.assertIncreasing(ids)
        got = events(sub.read_lines(3))
        self.finish(sub, 0)
        self.assertEqual([e["id"] for e in got], ids)
        self.assertEqual([e["topic"] for e in got], ["be.a", "be.b", "be.c"])
        self.assertEqual(got[0]["event"], "login")
        self.assertEqual(got[0]["data"], {"n": 1.5})
        # The same batch again: its keys make it publish nothing new.
        p = self.run_cli("publish", "--batch", "-", url=d.ws_url, input=text, expect=0)
        self.assertEqual(p.stdout.split(), ids)
        # One bad line refuses the whole batch, named by its input line.
        bad = '{"topic":"be.d"}\n\n{"topic":"a..b"}\n'
        p = self.run_cli("publish", "--batch", "-", url=d.ws_url, input=bad)
        line = self.one_line_error(p, 3)
        self.assertIn("line 3", line)
        self.assertIn("invalid_topic", line)
        p = self.run_cli("poll", "--since", "all", "be.>", url=d.ws_url, expect=0)
        self.assertEqual([e["id"] for e in events(p.stdout.splitlines())], ids)


class Auth(CLITestCase):

    def test_token_flag_env_and_refusals(self):
        token = "s3cret-token"
        digest = hashlib.sha256(token.encode()).hexdigest()
        d = self.start_daemon({"auth": {
            "anonymous": {"publish": [], "subscribe": []},
            "tokens": [{"name": "svc", "sha256": digest, "publish": ["logins"],
                        "subscribe": ["logins"]}]}})
        url = d.ws_url
        p = self.run_cli("--token", token, "publish", "logins", "x", url=url, expect=0)
        eid = p.stdout.strip()
        p = self.run_cli("subscribe", "--since", "all", "-n", "1", "logins", url=url,
                         env=self.env(HERALD_TOKEN=token), expect=0)
        self.assertEqual(events(p.stdout.splitlines())[0]["id"], eid)
        # Valid credentials without the right: the server's code, exit 3.
        p = self.run_cli("--token", token, "publish", "other", "x", url=url)
        self.assertIn("forbidden", self.one_line_error(p, 3))
        # Wrong credentials: the upgrade is refused with 401, and retrying cannot help.
        p = self.run_cli("--token", "wrong", "subscribe", "logins", url=url)
        self.assertIn("401", self.one_line_error(p, 3))
        # No credentials where anonymous may do nothing.
        p = self.run_cli("publish", "logins", "x", url=url)
        self.assertIn("unauthorized", self.one_line_error(p, 3))
        p = self.run_cli("--token", "has space", "publish", "logins", "x", url=url)
        self.one_line_error(p, 1)  # not a token at all: a usage error


class HTTP(CLITestCase):
    """Polling and delivery status (PROTOCOL.md sections 4 and 5)."""

    def test_poll_prints_events_and_state_continues(self):
        d = self.start_daemon()
        url = d.ws_url
        ids = [self.run_cli("publish", "p.x", f"e{i}", url=url, expect=0).stdout.strip()
               for i in range(3)]
        p = self.run_cli("poll", "p.>", "--since", "all", url=url, expect=0)
        self.assertEqual([e["id"] for e in events(p.stdout.splitlines())], ids)
        state = os.path.join(tempfile.mkdtemp(prefix="herald-poll-"), "st")
        self.addCleanup(shutil.rmtree, os.path.dirname(state), True)
        p = self.run_cli("poll", "p.>", "--state", state, "--limit", "2", url=url, expect=0)
        self.assertEqual(len(p.stdout.splitlines()), 2)
        p = self.run_cli("poll", "p.>", "--state", state, url=url, expect=0)
        self.assertEqual([e["id"] for e in events(p.stdout.splitlines())], ids[2:])
        p = self.run_cli("poll", "p.>", "--state", state, url=url, expect=0)
        self.assertEqual(p.stdout, "")
        p = self.run_cli("poll", "p.>", "--raw", "--since", ids[0], url=d.base_url, expect=0)
        body = json.loads(p.stdout)
        self.assertEqual([e["id"] for e in body["events"]], ids[1:])
        self.assertIs(body["gap"], False)

    def test_long_poll_returns_on_publish(self):
        d = self.start_daemon()
        poll = self.spawn("poll", "lp", "--since", "latest", "--wait", "20", url=d.ws_url)
        self.assertTrue(wait_until(lambda: d.metric("herald_long_polls") == 1, 10 * SLOW),
                        "the CLI's long poll never reached the server")
        t0 = time.monotonic()
        self.run_cli("publish", "lp", "wake", url=d.ws_url, expect=0)
        self.assertEqual(events(poll.read_lines(1))[0]["data"], "wake")
        self.finish(poll, 0)
        self.assertLess(time.monotonic() - t0, 10 * SLOW)

    def test_poll_gap_warns(self):
        d = self.start_daemon()
        self.run_cli("publish", "g", "x", url=d.ws_url, expect=0)
        p = self.run_cli("poll", "g", "--since", "zzzz", url=d.ws_url, expect=0)
        self.assertIn("may have been missed", p.stderr)
        self.assertEqual(len(p.stdout.splitlines()), 1)

    def test_status(self):
        d = self.start_daemon()
        sub = self.spawn("subscribe", "--count", "1", "st", url=d.ws_url)
        self.wait_subscriptions(d, 1)
        eid = self.run_cli("publish", "st", "x", url=d.ws_url, expect=0).stdout.strip()
        sub.read_lines(1)
        self.finish(sub, 0)
        p = self.run_cli("status", eid, url=d.ws_url, expect=0)
        body = json.loads(p.stdout)
        self.assertEqual(body["event"]["id"], eid)
        self.assertEqual(body["queued"], 1)
        self.assertEqual(body["written"], 1)
        self.assertEqual(body["dropped"], 0)
        p = self.run_cli("status", "0000000000000000", url=d.ws_url)
        self.assertIn("not_found", self.one_line_error(p, 3))


class TLS(CLITestCase):

    def test_wss_with_cacert_and_insecure(self):
        openssl = shutil.which("openssl")
        if not openssl:
            self.skipTest("openssl is not installed")
        tmp = tempfile.mkdtemp(prefix="herald-tls-")
        self.addCleanup(shutil.rmtree, tmp, True)
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        cfg = {"listen": [{"address": "127.0.0.1", "port": 0,
                           "tls": {"cert": cert, "key": key}}]}
        d = self.start_port_daemon(config=cfg, listen_from_config=True)
        url = f"wss://127.0.0.1:{d.port}"
        p = self.run_cli("--cacert", cert, "publish", "tls", "secret", url=url, expect=0)
        self.assertRegex(p.stdout.strip(), ID_RE)
        p = self.run_cli("--insecure", "subscribe", "--since", "all", "-n", "1", "tls", url=url,
                         expect=0)
        self.assertEqual(events(p.stdout.splitlines())[0]["data"], "secret")
        p = self.run_cli("publish", "tls", "x", url=url)  # self-signed, not trusted
        self.one_line_error(p, 2)


class Library(CLITestCase):
    """libherald through its own driver (clients/tests/libherald_e2e.c)."""

    def e2e(self, *args, timeout=120):
        p = subprocess.run(wrap([example_path("libherald_e2e")] + [str(a) for a in args]),
                           capture_output=True, text=True, timeout=timeout * SLOW)
        if VALGRIND and p.returncode == VALGRIND_RC:
            self.fail(f"valgrind reported errors:\n{p.stderr}")
        self.assertEqual(p.returncode, 0, f"stdout: {p.stdout}\nstderr: {p.stderr}")
        self.assertTrue(p.stdout.startswith("ok"), p.stdout)
        return p.stdout

    def test_threads_share_one_client(self):
        d = self.start_daemon()
        threads, each = (4, 25) if VALGRIND else (8, 200)
        out = self.e2e("threads", d.ws_url, threads, each)
        self.assertIn(f"received={threads * each}", out)

    def test_slow_consumer_is_cut_off_and_resumes_without_loss(self):
        # A tiny server queue and a client that stops reading: the server closes it with
        # 4000; the client resumes from its cursor. Every event arrives once, in order.
        d = self.start_daemon({"limits": {"max_queue_bytes": 16384, "max_event_bytes": 8192},
                               "history": {"max_events_per_topic": 100000}})
        out = self.e2e("slow", d.ws_url, 4000, 3000)
        m = re.search(r"reconnects=(\d+)", out)
        self.assertTrue(m, out)
        if not VALGRIND:  # under valgrind the reader may be too slow to fall that far behind
            self.assertGreaterEqual(int(m.group(1)), 1, "the slow-consumer path was not taken")
            self.assertIsNotNone(d.wait_for_log(r"slow consumer closed", timeout=1))


class ExampleApp(CLITestCase):

    def test_login_watch_resumes_after_its_own_restart(self):
        d = self.start_daemon()
        prog = example_path("herald_login_watch")
        tmp = tempfile.mkdtemp(prefix="herald-ex-")
        self.addCleanup(shutil.rmtree, tmp, True)
        cursor = os.path.join(tmp, "cursor")
        w = self.spawn(d.ws_url, cursor, program=prog)
        w.wait_stderr("connected")
        self.wait_subscriptions(d, 1)
        self.run_cli("publish", "-j", "-e", "login", "logins",
                     '{"user":"alice","ip":"10.0.0.7"}', url=d.ws_url, expect=0)
        self.run_cli("publish", "-j", "-e", "logout", "logins", '{"user":"alice"}',
                     url=d.ws_url, expect=0)
        line = w.read_lines(1)[0]
        self.assertRegex(line, r"alice logged in from 10\.0\.0\.7$")
        logout = self.run_cli("publish", "-j", "-e", "logout", "logins", '{"user":"carol"}',
                              url=d.ws_url, expect=0).stdout.strip()
        # Issue 16: the cursor moves past every event seen, logouts too.

        def saved():
            with open(cursor) as f:
                return f.read().strip()

        wait_until(lambda: saved() == logout, 10 * SLOW)
        with open(cursor) as f:
            self.assertEqual(f.read().strip(), logout)
        w.signal(signal.SIGINT)
        self.finish(w, 0)
        # While the watcher is down, bob logs in and dave out; the next run reports bob, and
        # counts one login (before, the logouts were replayed and counted as logins).
        self.run_cli("publish", "-j", "-e", "login", "logins", '{"user":"bob"}',
                     url=d.ws_url, expect=0)
        self.run_cli("publish", "-j", "-e", "logout", "logins", '{"user":"dave"}',
                     url=d.ws_url, expect=0)
        w2 = self.spawn(d.ws_url, cursor, program=prog)
        self.assertRegex(w2.read_lines(1)[0], r"bob logged in$")
        w2.wait_stderr("1 login happened while we were away")
        w2.no_more_lines(0.3)
        w2.signal(signal.SIGTERM)
        self.finish(w2, 0)

    def test_example_builds_with_pkg_config(self):
        # Issue 16: the installed pkg-config file gives plain paths (no .../pkgconfig/../..),
        # and the example builds as its comment says, installed or from the build tree.
        cc, pkgconf, cmake = shutil.which("cc"), shutil.which("pkg-config"), shutil.which("cmake")
        self.assertTrue(cc and pkgconf and cmake, "cc, pkg-config and cmake are required")
        build = os.path.dirname(os.path.dirname(example_path("herald_login_watch")))
        src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "..", "clients", "examples", "login_watch.c")
        tmp = tempfile.mkdtemp(prefix="herald-pc-")
        self.addCleanup(shutil.rmtree, tmp, True)
        prefix = os.path.join(tmp, "prefix")
        subprocess.run([cmake, "--install", build, "--prefix", prefix, "--component",
                        "libherald"], check=True, capture_output=True)
        for pcdir, run_env in ((os.path.join(prefix, "lib", "pkgconfig"),
                                {"LD_LIBRARY_PATH": os.path.join(prefix, "lib")}),
                               (os.path.join(build, "clients", "pkgconfig"), {})):
            env = dict(os.environ, PKG_CONFIG_PATH=pcdir)
            flags = subprocess.run([pkgconf, "--cflags", "--libs", "libherald"], env=env,
                                   check=True, capture_output=True, text=True).stdout.split()
            self.assertTrue(flags, pcdir)
            for f in flags:
                self.assertNotIn("..", f, flags)
            if pcdir.startswith(prefix):
                self.assertIn(f"-I{prefix}/include", flags)
            out = os.path.join(tmp, "watch")
            # A sanitizer build's library needs its runtime first: the example gets it too.
            san = []
            with open(os.path.join(build, "CMakeCache.txt")) as f:
                if "HERALD_SANITIZE:BOOL=ON" in f.read():
                    san = ["-fsanitize=address,undefined"]
            p = subprocess.run([cc, "-Wall", "-Werror", "-o", out, src] + san + flags, env=env,
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stderr)
            # It runs and reaches a daemon.
            d = self.start_daemon()  # its own, so the subscription count below is this run's
            w = self.spawn(d.ws_url, os.path.join(tmp, "cursor"), program=out,
                           env=dict(self.env(), **run_env))
            w.wait_stderr("connected")
            self.wait_subscriptions(d, 1)
            w.signal(signal.SIGTERM)
            self.finish(w, 0)


if __name__ == "__main__":
    unittest.main()
