# SPDX-License-Identifier: MIT
"""Short and long polling (PROTOCOL.md section 5): since=all/latest/<id>, paging with `limit`
where following `next` never repeats and never skips an event (also while events keep
arriving), a malformed or unknown `since` as a gap rather than an error, long polls that wake
within a fraction of a second of a matching publish and answer empty after `wait`, and the
400 answers for out-of-range parameters and invalid patterns.
"""

import threading
import time
import unittest
import urllib.parse

from herald_testlib import HeraldTestCase, topic_path
from history_testlib import Publisher, check_page, poll, poll_all


class ShortPollTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon()

    def publish_n(self, topic, n, start=0, event=None):
        return [self.d.publish_ok(topic, {"seq": i}, "application/json", event)["id"]
                for i in range(start, start + n)]

    def page(self, pattern, **kw):
        return check_page(self, poll(self.d, pattern, **kw))

    def test_since_all_latest_and_id(self):
        ids = self.publish_n("p.a", 5, event="login")
        self.d.publish_ok("p.other", "not for p.a")
        for since in (None, "all"):
            with self.subTest(since=since):
                body = self.page("p.a", since=since)
                self.assertFalse(body["gap"])
                self.assertEqual([e["id"] for e in body["events"]], ids)
                ev = body["events"][0]
                self.assertEqual(set(ev), {"type", "topic", "id", "time", "event", "data"})
                self.assertEqual((ev["topic"], ev["event"], ev["data"]),
                                 ("p.a", "login", {"seq": 0}))
                self.assertEqual(body["next"], ids[-1])
        body = self.page("p.a", since=ids[1])
        self.assertEqual(([e["id"] for e in body["events"]], body["gap"]), (ids[2:], False))
        body = self.page("p.a", since="latest")
        self.assertEqual((body["events"], body["gap"]), ([], False))
        latest = body["next"]
        # Nothing new: next still continues from where the poll stood, and a later event
        # comes back on the next poll with it.
        body = self.page("p.a", since=latest)
        self.assertEqual((body["events"], body["gap"]), ([], False))
        new = self.publish_n("p.a", 1, start=5)
        body = self.page("p.a", since=latest)
        self.assertEqual([e["id"] for e in body["events"]], new)

    def test_empty_page_next_is_the_newest_id_in_the_server(self):
        self.publish_n("p.quiet", 2)
        newest = self.d.publish_ok("p.busy", "x")["id"]
        body = self.page("p.quiet", since="latest")
        self.assertEqual((body["events"], body["next"], body["gap"]), ([], newest, False))
        # A pattern that never matched anything still gets a usable cursor.
        body = self.page("p.never.*")
        self.assertEqual((body["events"], body["next"], body["gap"]), ([], newest, False))
        body = self.page("p.quiet", since=newest)
        self.assertEqual((body["events"], body["next"]), ([], newest))
        later = self.publish_n("p.quiet", 1, start=2)
        body = self.page("p.quiet", since=newest)
        self.assertEqual([e["id"] for e in body["events"]], later)

    def test_limit_paging_never_repeats_or_skips(self):
        ids = self.publish_n("p.page", 250)
        noise = self.publish_n("p.noise", 30)
        for limit in (1, 7, 40, 100, 250, 1000):
            with self.subTest(limit=limit):
                events, gap, pages, last = poll_all(self, self.d, "p.page", limit=limit)
                self.assertFalse(gap)
                self.assertEqual([e["id"] for e in events], ids)
                self.assertEqual(pages, -(-250 // limit) + 1)
                # The empty last page moves the cursor to the newest id in the server.
                self.assertEqual(last, noise[-1])
        body = self.page("p.page")
        self.assertEqual(len(body["events"]), 100, "default limit is 100")
        self.assertEqual(body["next"], ids[99])

    def test_paging_while_publishing(self):
        """A poller that follows next while a publisher is busy gets each event once."""
        n = 800
        first = self.d.publish_ok("p.live", {"seq": -1}, "application/json")["id"]
        pub = Publisher(self.d.port, "p.live", count=n)
        pub.start()
        self.addCleanup(pub.stop)
        got, cursor = [], first
        deadline = time.monotonic() + 40
        with self.d.http() as c:
            while len(got) < n:
                self.assertLess(time.monotonic(), deadline, f"{len(got)} of {n} events")
                body = check_page(self, poll(c, "p.live", since=cursor, limit=7))
                self.assertFalse(body["gap"], body)
                got += body["events"]
                if body["events"]:
                    self.assertEqual(body["next"], body["events"][-1]["id"])
                cursor = body["next"]
        pub.finish()
        seqs = [e["data"]["seq"] for e in got]
        self.assertEqual(seqs, list(range(n)), "repeated or skipped events across pages")
        self.assertEqual([e["id"] for e in got], pub.ids)

    def test_malformed_or_unknown_since_is_a_gap_not_an_error(self):
        ids = self.publish_n("p.g", 3)
        for since in ("garbage", "0000000000000001", "ffffffffffffffff", ids[0] + "00",
                      "12345", "", "x" * 200):
            with self.subTest(since=since):
                body = self.page("p.g", since=since)
                self.assertTrue(body["gap"], body)
                self.assertEqual([e["id"] for e in body["events"]], ids)
                self.assertEqual(body["next"], ids[-1])

    def test_overlong_since_is_a_gap_and_keeps_other_parameters(self):
        """A since longer than any id (here 300 bytes) is malformed like any other: a gap. It
        must not make the server ignore the parameters that come after it."""
        ids = self.publish_n("p.long", 3)
        body = self.page("p.long", since="x" * 300)
        self.assertTrue(body["gap"], f"a 300-byte since was not reported as a gap: {body}")
        body = check_page(self, self.d.get(topic_path("p.long") + "/events?since=" + "x" * 300 +
                                           "&limit=1"))
        self.assertEqual([e["id"] for e in body["events"]], ids[:1],
                         "limit after a long since was ignored")
        r = self.d.get(topic_path("p.long") + "/events?since=" + "x" * 300 + "&limit=5000")
        self.assertEqual(r.status, 400, "an out-of-range limit after a long since was ignored")

    def test_undecodable_since_is_refused(self):
        """since=%ZZ is not a URL at all: 400 bad_request (heraldd's framing check answers it
        before libwebsockets, which would send its own 403 page); a well-formed but unknown
        cursor still gets 200 with a gap."""
        ids = self.publish_n("p.esc", 2)
        r = self.d.get(topic_path("p.esc") + "/events?since=%ZZ")
        self.assertEqual(r.status, 400, r)
        self.assertErrorBody(r.json, "bad_request")
        r = self.d.get(topic_path("p.esc") + "/events?since=zz")
        body = check_page(self, r)
        self.assertTrue(body["gap"], body)
        self.assertEqual([e["id"] for e in body["events"]], ids)

    def test_parameters_out_of_range_are_bad_request(self):
        base = topic_path("p.a") + "/events?"
        for q in ("limit=0", "limit=1001", "limit=-1", "limit=abc", "limit=", "limit=10.5",
                  "wait=61", "wait=-1", "wait=x", "wait=1.5", "wait=100000000000",
                  # issue 16: only plain digits are a number (no sign, no spaces, no 20 digits)
                  "limit=%2B5", "limit=+5", "limit=%205", "wait=%20%201", "wait=1%20",
                  "wait=" + "1" * 20, "wait=%31%ZZ"):
            with self.subTest(q=q):
                r = self.d.get(base + q)
                self.assertEqual(r.status, 400, r)
                self.assertErrorBody(r.json, "bad_request")
        for q in ("limit=1", "limit=1000", "wait=0"):
            with self.subTest(q=q):
                self.assertEqual(self.d.get(base + q).status, 200)

    def test_invalid_pattern_is_invalid_topic(self):
        for pattern in ("a..b", ".a", "a.", "a.>.b", "a*", "a.b*", "a b", "a.>.>", "x" * 256):
            with self.subTest(pattern=pattern):
                path = "/v1/topics/" + urllib.parse.quote(pattern, safe="") + "/events"
                r = self.d.get(path)
                self.assertEqual(r.status, 400, r)
                self.assertErrorBody(r.json, "invalid_topic")
        for pattern in ("a.*", "a.>", ">", "*"):
            with self.subTest(pattern=pattern):
                self.assertEqual(self.d.get(topic_path(pattern) + "/events").status, 200)


class LongPollTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon()

    def long_poll_in_thread(self, pattern, since, wait):
        out = {}

        def run():
            t0 = time.monotonic()
            try:
                out["r"] = poll(self.d, pattern, since=since, wait=wait, timeout=wait + 5)
            except Exception as e:  # reported by the test thread
                out["error"] = e
            out["t"] = time.monotonic()
            out["elapsed"] = out["t"] - t0

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t, out

    def test_long_poll_wakes_on_matching_publish(self):
        since = check_page(self, poll(self.d, "lp.a", since="latest"))["next"]
        t, out = self.long_poll_in_thread("lp.*", since, 10)
        time.sleep(0.5)
        self.assertTrue(t.is_alive(), f"long poll answered early: {out}")
        # An event on another topic must not end the wait.
        self.d.publish_ok("other.x", "no")
        time.sleep(0.3)
        self.assertTrue(t.is_alive(), f"a non-matching publish ended the long poll: {out}")
        t_pub = time.monotonic()
        reply = self.d.publish_ok("lp.a", {"k": 1}, "application/json")
        t.join(5)
        self.assertFalse(t.is_alive(), "long poll did not answer within 5 s of the publish")
        self.assertNotIn("error", out)
        latency = out["t"] - t_pub
        body = check_page(self, out["r"])
        self.assertEqual([e["id"] for e in body["events"]], [reply["id"]])
        self.assertEqual(body["next"], reply["id"])
        self.assertFalse(body["gap"])
        print(f"\nlong-poll wake-up latency: {latency * 1000:.1f} ms")
        self.assertLess(latency, 1.0, f"long poll woke {latency:.3f} s after the publish")

    def test_long_poll_answers_at_once_when_events_exist(self):
        ids = [self.d.publish_ok("lp.b", str(i))["id"] for i in range(3)]
        t0 = time.monotonic()
        body = check_page(self, poll(self.d, "lp.b", since=ids[0], wait=20))
        self.assertLess(time.monotonic() - t0, 1.0)
        self.assertEqual([e["id"] for e in body["events"]], ids[1:])
        # A gap is news too: it answers at once with everything.
        t0 = time.monotonic()
        body = check_page(self, poll(self.d, "lp.b", since="nonsense", wait=20))
        self.assertLess(time.monotonic() - t0, 1.0)
        self.assertTrue(body["gap"])
        self.assertEqual([e["id"] for e in body["events"]], ids)

    def test_empty_answer_after_wait(self):
        newest = self.d.publish_ok("lp.c", "old")["id"]
        t0 = time.monotonic()
        r = poll(self.d, "lp.c", since="latest", wait=1)
        elapsed = time.monotonic() - t0
        body = check_page(self, r)
        self.assertEqual((body["events"], body["gap"], body["next"]), ([], False, newest))
        self.assertGreaterEqual(elapsed, 0.9, "answered before wait passed")
        self.assertLess(elapsed, 2.5, "answered long after wait passed")

    def test_long_poll_loop_never_repeats_an_event(self):
        """Long polls chained on next while a publisher publishes in bursts with pauses."""
        n = 300
        cursor = check_page(self, poll(self.d, "lp.loop", since="latest"))["next"]
        pub = Publisher(self.d.port, "lp.loop", count=n, interval=0.004)
        pub.start()
        self.addCleanup(pub.stop)
        got, polls = [], 0
        deadline = time.monotonic() + 40
        with self.d.http(timeout=15) as c:
            while len(got) < n:
                self.assertLess(time.monotonic(), deadline, f"{len(got)} of {n} events")
                body = check_page(self, poll(c, "lp.loop", since=cursor, limit=10, wait=5))
                polls += 1
                self.assertFalse(body["gap"], body)
                got += body["events"]
                cursor = body["next"]
        pub.finish()
        self.assertEqual([e["data"]["seq"] for e in got], list(range(n)))
        self.assertEqual([e["id"] for e in got], pub.ids)
        self.assertGreater(polls, 1)


if __name__ == "__main__":
    unittest.main()
