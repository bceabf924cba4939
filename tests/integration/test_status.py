# SPDX-License-Identifier: MIT
"""Delivery status (PROTOCOL.md section 4): GET /v1/events/{id} returns the event with how many
subscriptions it was queued to, written to and dropped for, and 404 not_found for ids that are
unknown, malformed, or have left history.
"""

import asyncio
import unittest
import urllib.parse

from herald_testlib import HeraldTestCase, RawWS, WSClient, async_test
from history_testlib import wait_until

EVENT_KEYS = {"type", "topic", "id", "time", "event", "data"}


class StatusTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon({"history": {"max_events_per_topic": 3}})

    def status(self, event_id):
        return self.d.get("/v1/events/" + urllib.parse.quote(event_id, safe=""))

    def counts(self, event_id):
        r = self.status(event_id)
        self.assertEqual(r.status, 200, r)
        return (r.json["queued"], r.json["written"], r.json["dropped"])

    @async_test()
    async def test_counts_after_delivery_to_two_subscribers(self):
        subs = []
        for pattern in ("st.a", "st.*"):
            c = await WSClient.connect(self.d)
            await c.subscribe(pattern)
            subs.append(c)
        reply = self.d.publish_ok("st.a", {"hello": 1}, "application/json", "ping")
        self.assertEqual(reply["receivers"], 2)
        for c in subs:
            self.assertEqual((await c.recv_event())["id"], reply["id"])
        # Written is counted once the frame is with the kernel, which the subscribers just
        # proved; allow the loop a moment to account for it.
        got = await asyncio.to_thread(
            wait_until, lambda: self.counts(reply["id"]) == (2, 2, 0), 2.0)
        r = self.status(reply["id"])
        self.assertEqual(r.header("content-type"), "application/json")
        body = r.json
        self.assertEqual(set(body), {"event", "queued", "written", "dropped"}, body)
        self.assertEqual((body["queued"], body["written"], body["dropped"]), (2, 2, 0),
                         f"after waiting: {got}")
        ev = body["event"]
        self.assertEqual(set(ev), EVENT_KEYS)
        self.assertEqual((ev["type"], ev["id"], ev["topic"], ev["event"], ev["data"], ev["time"]),
                         ("event", reply["id"], "st.a", "ping", {"hello": 1}, reply["time"]))

    @async_test()
    async def test_one_connection_with_overlapping_patterns_counts_once(self):
        c = await WSClient.connect(self.d)
        await c.subscribe("st.b")
        await c.subscribe("st.>")
        reply = self.d.publish_ok("st.b", "x")
        self.assertEqual(reply["receivers"], 1)
        await c.recv_event()
        await c.expect_no_event(0.2)
        self.assertEqual(await asyncio.to_thread(
            wait_until, lambda: self.counts(reply["id"]), 2.0), (1, 1, 0))

    def test_no_subscribers(self):
        reply = self.d.publish_ok("st.c", "nobody listens")
        self.assertEqual(self.counts(reply["id"]), (0, 0, 0))

    def test_slow_consumer_events_are_written_or_dropped(self):
        """Every event queued to a subscriber that is cut off as a slow consumer ends up either
        written or dropped: queued == written + dropped, and some were dropped."""
        d = self.start_daemon({"limits": {"max_queue_bytes": 65536},
                               "history": {"max_events_per_topic": 100000}})
        slow = RawWS(d.port, rcvbuf=4096)
        self.addCleanup(slow.close)
        self.assertEqual(slow.recv_json()["type"], "welcome")
        slow.send_json({"op": "subscribe", "id": 1, "topic": "st.slow"})
        self.assertEqual(slow.recv_json()["type"], "ok")
        pad = "x" * 16384
        ids = []
        with d.http(timeout=10) as c:
            while len(ids) < 3000:
                status, _, r = c.publish("st.slow", {"seq": len(ids), "pad": pad},
                                         "application/json")
                self.assertEqual(status, 202, r)
                ids.append(r["id"])
                if len(ids) % 50 == 0 and d.metric("herald_slow_consumer_disconnects_total"):
                    break
        self.assertGreaterEqual(d.metric("herald_slow_consumer_disconnects_total") or 0, 1,
                                f"no slow-consumer cut-off after {len(ids)} events of 16 KB")
        totals = [0, 0, 0]
        limbo, queued = [], []
        with d.http() as c:
            for i in ids:
                r = c.get("/v1/events/" + i)
                self.assertEqual(r.status, 200, r)
                q, w, dr = r.json["queued"], r.json["written"], r.json["dropped"]
                totals = [totals[0] + q, totals[1] + w, totals[2] + dr]
                queued.append(q)
                if q != w + dr:
                    limbo.append((i, q, w, dr))
        # Queued to the one subscriber until the cut-off, to nobody after it.
        k = queued.count(1)
        self.assertGreater(k, 0)
        self.assertEqual(queued, [1] * k + [0] * (len(ids) - k), "queued counts")
        self.assertEqual(limbo[:5], [], f"{len(limbo)} of {len(ids)} events neither written nor "
                                        f"dropped after the cut-off (queued, written, dropped "
                                        f"totals {totals})")
        self.assertGreaterEqual(totals[2], 1, f"nothing counted as dropped: {totals}")

    def test_unknown_and_malformed_ids_are_not_found(self):
        reply = self.d.publish_ok("st.e", "x")
        bad_ids = ["0000000000000001", "ffffffffffffffff", "nothex!!nothex!!", "abc",
                   reply["id"] + "0", reply["id"][:-1], reply["id"][:-1] + "G", "-1", " "]
        if reply["id"].upper() != reply["id"]:  # an all-digit id has no uppercase form
            bad_ids.append(reply["id"].upper())
        for bad in bad_ids:
            with self.subTest(id=bad):
                r = self.status(bad)
                self.assertEqual(r.status, 404, r)
                self.assertErrorBody(r.json, "not_found")
        self.assertEqual(self.status(reply["id"]).status, 200)

    def test_not_found_once_the_event_left_history(self):
        ids = [self.d.publish_ok("st.f", str(i))["id"] for i in range(5)]
        for i in ids[:2]:
            r = self.status(i)
            self.assertEqual(r.status, 404, r)
            self.assertErrorBody(r.json, "not_found")
        for i in ids[2:]:
            self.assertEqual(self.status(i).status, 200)

    def test_wrong_method(self):
        reply = self.d.publish_ok("st.g", "x")
        r = self.d.request("POST", "/v1/events/" + reply["id"], b"{}")
        self.assertEqual(r.status, 405, r)
        self.assertIn("GET", r.header("Allow", ""))


if __name__ == "__main__":
    unittest.main()
