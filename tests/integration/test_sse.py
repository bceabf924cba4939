# SPDX-License-Identifier: MIT
"""Server-Sent Events (PROTOCOL.md section 6): the text/event-stream framing an EventSource
parses (`id:`, `event:`, `data:` lines and a blank line), replay then live, Last-Event-ID
winning over ?since= as a reconnecting browser needs, resuming across reconnects without a
duplicate or a hole while events keep coming, a `gap` event for an unknown cursor, CORS for an
Origin, and the `: keepalive` comment.
"""

import random
import time
import unittest

from herald_testlib import HeraldTestCase
from history_testlib import Publisher, SSEStream

EVENT_KEYS = {"type", "topic", "id", "time", "event", "data"}


class SSETest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon()

    def open(self, pattern, **kw):
        s = SSEStream(self.d.port, pattern, **kw)
        self.addCleanup(s.close)
        return s

    def test_framing_replay_then_live(self):
        a = self.d.publish_ok("s.a", {"text": "hi", "n": [1, 2]}, "application/json", "login")
        b = self.d.publish_ok("s.a", "line one\nline two")
        s = self.open("s.*", since="all")
        self.assertEqual(s.status, 200)
        self.assertTrue(s.header("content-type", "").startswith("text/event-stream"), s.headers)
        self.assertNotIn("content-length", s.headers)
        rec = s.next_record()
        # Exactly the three fields, in the documented order, on one line each.
        self.assertEqual(rec.raw.splitlines()[0], f"id: {a['id']}", rec)
        self.assertEqual(rec.raw.splitlines()[1], "event: login", rec)
        self.assertTrue(rec.raw.splitlines()[2].startswith("data: {"), rec)
        self.assertEqual(len(rec.raw.splitlines()), 3, rec)
        ev = rec.json()
        self.assertEqual(set(ev), EVENT_KEYS)
        self.assertEqual((ev["type"], ev["topic"], ev["id"], ev["event"], ev["data"]),
                         ("event", "s.a", a["id"], "login", {"text": "hi", "n": [1, 2]}))
        self.assertEqual(ev["time"], a["time"])
        # A newline inside the data stays inside the JSON string: still one data line.
        rec = s.next_record()
        self.assertEqual((rec.id, rec.event), (b["id"], "message"))
        self.assertEqual(len(rec.raw.splitlines()), 3, rec)
        self.assertEqual(rec.json()["data"], "line one\nline two")
        live = self.d.publish_ok("s.b", {"live": True}, "application/json")
        rec = s.next_record()
        self.assertEqual((rec.id, rec.event, rec.json()["data"]),
                         (live["id"], "message", {"live": True}))
        self.assertEqual(rec.json()["topic"], "s.b")

    def test_without_since_is_live_only(self):
        self.d.publish_ok("s.c", "old")
        s = self.open("s.c")
        self.assertEqual(s.status, 200)
        new = self.d.publish_ok("s.c", "new")
        self.assertEqual(s.next_record().id, new["id"])

    def test_since_id_replays_after_it(self):
        ids = [self.d.publish_ok("s.d", str(i))["id"] for i in range(5)]
        s = self.open("s.d", since=ids[1])
        self.assertEqual([s.next_record().id for _ in range(3)], ids[2:])

    def test_last_event_id_header_wins_over_query(self):
        ids = [self.d.publish_ok("s.e", str(i))["id"] for i in range(4)]
        s = self.open("s.e", since="all", last_event_id=ids[2])
        rec = s.next_record()
        self.assertEqual(rec.id, ids[3], "Last-Event-ID must win over ?since=")
        live = self.d.publish_ok("s.e", "live")
        self.assertEqual(s.next_record().id, live["id"])
        # And the header alone works too.
        s2 = self.open("s.e", last_event_id=ids[0])
        self.assertEqual([s2.next_record().id for _ in range(3)], ids[1:])

    def test_unknown_since_announces_a_gap_first(self):
        ids = [self.d.publish_ok("s.f", str(i))["id"] for i in range(3)]
        for kw in ({"since": "0000000000000001"}, {"since": "nonsense"},
                   {"last_event_id": "ffffffffffffffff"}):
            with self.subTest(**kw):
                s = self.open("s.f", **kw)
                rec = s.next_record()
                self.assertEqual(rec.event, "gap", rec)
                self.assertIsNone(rec.id, "a gap notice must not move the client's cursor")
                self.assertEqual(rec.json().get("type"), "gap", rec)
                self.assertEqual([s.next_record().id for _ in range(3)], ids)
                s.close()
        s = self.open("s.f", since=ids[0])
        self.assertEqual(s.next_record().id, ids[1], "no gap notice for a known id")

    def test_cors_header_for_an_origin(self):
        s = self.open("s.g", headers={"Origin": "https://app.example"})
        self.assertEqual(s.status, 200)
        self.assertIn(s.header("access-control-allow-origin"), ("*", "https://app.example"),
                      s.headers)

    def test_errors_are_plain_json_not_a_stream(self):
        s = self.open("bad..pattern")
        self.assertEqual(s.status, 400)
        self.assertFalse(s.header("content-type", "").startswith("text/event-stream"))

    def test_resume_with_last_event_id_while_publishing(self):
        """An EventSource that keeps reconnecting with Last-Event-ID while a publisher keeps
        publishing sees every event once, in order."""
        n = 800
        seed = self.d.publish_ok("s.r", {"seq": -1}, "application/json")["id"]
        pub = Publisher(self.d.port, "s.r", count=n)
        pub.start()
        self.addCleanup(pub.stop)
        rnd = random.Random(99)
        got, last, resumes = [], seed, 0
        deadline = time.monotonic() + 45
        while len(got) < n:
            self.assertLess(time.monotonic(), deadline, f"{len(got)} of {n} after {resumes}")
            s = SSEStream(self.d.port, "s.r", since="all", last_event_id=last)
            try:
                self.assertEqual(s.status, 200)
                resumes += 1
                for _ in range(min(rnd.randint(1, 150), n - len(got))):
                    rec = s.next_record(20)
                    self.assertNotEqual(rec.event, "gap", f"gap resuming from {last}")
                    got.append(rec.json())
                    last = rec.id
            finally:
                s.close(reset=resumes % 2 == 0)
        pub.finish()
        seqs = [e["data"]["seq"] for e in got]
        self.assertEqual(seqs, list(range(n)), f"after {resumes} resumes")
        self.assertEqual([e["id"] for e in got], pub.ids)

    def test_keepalive_comment(self):
        s = self.open("s.quiet")
        self.assertEqual(s.status, 200)
        t0 = time.monotonic()
        t = s.wait_comment("keepalive", 20)
        self.assertIsNotNone(t, "no ': keepalive' comment within 20 s")
        print(f"\nfirst keepalive after {t - t0:.1f} s")
        # The stream still works afterwards.
        live = self.d.publish_ok("s.quiet", "after")
        self.assertEqual(s.next_record().id, live["id"])


if __name__ == "__main__":
    unittest.main()
