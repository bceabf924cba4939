# SPDX-License-Identifier: MIT
"""History and resume over WebSocket (PROTOCOL.md sections 2, 5 and 7): `since` replays what
history retains and then goes live without a duplicate or a hole, also while a publisher keeps
publishing and the client keeps reconnecting; overlapping patterns on one connection deliver
each event once across replay and live; retention keeps the newest max_events_per_topic events
and reports a gap for ids it let go, also after a restart with the sqlite store (issue 13); a
restarted memory-store daemon reports a gap for ids from its previous life.
"""

import asyncio
import os
import random
import shutil
import sqlite3
import tempfile
import unittest

from herald_testlib import HeraldTestCase, WSClient, async_test
from history_testlib import Publisher, check_page, poll

RETAIN = 5


class ReplayTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon()

    def publish_n(self, topic, n, start=0):
        return [self.d.publish_ok(topic, {"seq": i}, "application/json")["id"]
                for i in range(start, start + n)]

    @async_test()
    async def test_since_id_replays_the_rest_then_live(self):
        ids = self.publish_n("h.a", 6)
        c = await WSClient.connect(self.d)
        r = await c.subscribe("h.a", since=ids[2])
        self.assertEqual((r["replayed"], r["gap"]), (3, False), r)
        got = await c.recv_events(3)
        self.assertEqual([e["id"] for e in got], ids[3:])
        self.assertEqual([e["data"]["seq"] for e in got], [3, 4, 5])
        live = self.d.publish_ok("h.a", {"seq": 6}, "application/json")
        ev = await c.recv_event()
        self.assertEqual(ev["id"], live["id"])
        await c.expect_no_event(0.3)

    @async_test()
    async def test_since_all_latest_and_newest_id(self):
        ids = self.publish_n("h.b", 4)
        other = self.d.publish_ok("h.other", "x")["id"]
        c = await WSClient.connect(self.d)
        r = await c.subscribe("h.b", since="all")
        self.assertEqual((r["replayed"], r["gap"]), (4, False), r)
        self.assertEqual([e["id"] for e in await c.recv_events(4)], ids)

        c2 = await WSClient.connect(self.d)
        r = await c2.subscribe("h.b", since="latest")
        self.assertEqual((r["replayed"], r["gap"]), (0, False), r)
        # The newest id in the server, even of another topic, is a valid cursor: no gap.
        c3 = await WSClient.connect(self.d)
        r = await c3.subscribe("h.b", since=other)
        self.assertEqual((r["replayed"], r["gap"]), (0, False), r)
        c4 = await WSClient.connect(self.d)
        r = await c4.subscribe("h.b", since=ids[-1])
        self.assertEqual((r["replayed"], r["gap"]), (0, False), r)

        live = self.d.publish_ok("h.b", "live")["id"]
        for cl in (c, c2, c3, c4):
            ev = await cl.recv_event()
            self.assertEqual(ev["id"], live)
            await cl.expect_no_event(0.1)

    @async_test()
    async def test_wildcard_replay_is_in_id_order_across_topics(self):
        ids = []
        for i in range(9):
            ids.append(self.d.publish_ok(f"h.w{i % 3}", {"seq": i}, "application/json")["id"])
        c = await WSClient.connect(self.d)
        r = await c.subscribe("h.*", since=ids[1])
        self.assertEqual((r["replayed"], r["gap"]), (7, False), r)
        got = await c.recv_events(7)
        self.assertEqual([e["id"] for e in got], ids[2:])
        self.assertEqual([e["data"]["seq"] for e in got], list(range(2, 9)))

    @async_test()
    async def test_unknown_or_malformed_since_is_a_gap_with_everything(self):
        ids = self.publish_n("h.g", 3)
        bad = ["zzzz", "0000000000000001", "ffffffffffffffff", ids[0][:-1] + "G",
               ids[0] + "0", ""]
        # Ids are lowercase hex; an uppercase copy is another (unknown) cursor only when the
        # id has a letter in it, and an all-digit id is likely enough to make this flaky.
        if ids[0].upper() != ids[0]:
            bad.append(ids[0].upper())
        for since in bad:
            with self.subTest(since=since):
                c = await WSClient.connect(self.d)
                r = await c.subscribe("h.g", since=since)
                self.assertEqual(r["type"], "ok", r)
                self.assertEqual((r["replayed"], r["gap"]), (3, True), r)
                self.assertEqual([e["id"] for e in await c.recv_events(3)], ids)
                await c.close()

    @async_test(timeout=90)
    async def test_resume_boundary_under_continuous_publishing(self):
        """A subscriber that keeps disconnecting and resuming with the last id it saw, while a
        publisher never pauses, sees every event exactly once and in order."""
        n = 3000
        seed = self.d.publish_ok("h.r", {"seq": -1}, "application/json")["id"]
        # Paced so that most resumes happen while it publishes.
        pub = Publisher(self.d.port, "h.r", count=n, interval=0.0005)
        pub.start()
        self.addCleanup(pub.stop)
        rnd = random.Random(1234)
        got, last, resumes, live_resumes = [], seed, 0, 0
        deadline = asyncio.get_running_loop().time() + 60
        while len(got) < n:
            if asyncio.get_running_loop().time() > deadline:
                self.fail(f"only {len(got)} of {n} events after {resumes} resumes")
            c = await WSClient.connect(self.d)
            r = await c.subscribe("h.r", since=last)
            self.assertFalse(r["gap"], f"gap on resume {resumes} from {last}: {r}")
            resumes += 1
            live_resumes += pub.is_alive()
            # Read a random number, then vanish mid-stream (sometimes mid-replay).
            take = min(rnd.randint(1, 120), n - len(got))
            for ev in await c.recv_events(take, 20):
                got.append(ev)
                last = ev["id"]
            await c.close()
        await asyncio.to_thread(pub.finish)
        seqs = [e["data"]["seq"] for e in got]
        if seqs != list(range(n)):
            dup = len(seqs) - len(set(seqs))
            missing = sorted(set(range(n)) - set(seqs))[:10]
            self.fail(f"{dup} duplicates, first missing {missing}, after {resumes} resumes")
        self.assertEqual([e["id"] for e in got], pub.ids)
        self.assertIncreasing([e["id"] for e in got])
        print(f"\n{resumes} resumes over {n} events, {live_resumes} while publishing")
        self.assertGreater(live_resumes, 10)

    @async_test(timeout=60)
    async def test_subscribe_with_since_while_publishing(self):
        """The snapshot boundary: subscribing mid-stream replays up to the newest event and
        continues live from the next one."""
        n = 1200
        first = self.d.publish_ok("h.s", {"seq": -1}, "application/json")["id"]
        pub = Publisher(self.d.port, "h.s", count=n)
        pub.start()
        self.addCleanup(pub.stop)
        subs = []
        for _ in range(4):
            # Join at different moments of the stream.
            while len(pub.acked) < 150 * (len(subs) + 1) and pub.is_alive():
                await asyncio.sleep(0.005)
            c = await WSClient.connect(self.d)
            r = await c.subscribe("h.s", since=first)
            self.assertFalse(r["gap"], r)
            subs.append(c)
        results = await asyncio.gather(*(c.recv_events(n, 40) for c in subs))
        await asyncio.to_thread(pub.finish)
        for k, evs in enumerate(results):
            seqs = [e["data"]["seq"] for e in evs]
            self.assertEqual(seqs, list(range(n)), f"subscriber {k}")
            self.assertEqual([e["id"] for e in evs], pub.ids, f"subscriber {k}")
        for c in subs:
            await c.expect_no_event(0.2)

    @async_test(timeout=60)
    async def test_overlapping_patterns_never_duplicate_across_replay_and_live(self):
        topics = ["ov.a.b", "ov.a.c", "ov.x.y"]
        pubs = [Publisher(self.d.port, None, tag=k, count=400,
                          topic_fn=lambda i, k=k: topics[(i + k) % 3]) for k in range(2)]
        early = self.d.publish_ok("ov.a.b", {"p": -1, "seq": 0}, "application/json")["id"]
        for p in pubs:
            p.start()
            self.addCleanup(p.stop)
        c = await WSClient.connect(self.d)
        await c.subscribe("ov.a.*", since="all")
        while len(pubs[0].acked) < 100:
            await asyncio.sleep(0.005)
        await c.subscribe("ov.>", since="all")
        while len(pubs[0].acked) < 200:
            await asyncio.sleep(0.005)
        await c.subscribe("ov.a.b", since=early)
        await c.subscribe("ov.*.y", since="all")
        for p in pubs:
            await asyncio.to_thread(p.finish)
        marker = self.d.publish_ok("ov.end", {"p": -2, "seq": 0}, "application/json")["id"]
        events = []
        while True:
            ev = await c.recv_event(20)
            if ev["id"] == marker:
                break
            events.append(ev)
        await c.expect_no_event(0.3)
        ids = [e["id"] for e in events]
        dups = sorted({i for i in ids if ids.count(i) > 1})
        self.assertEqual(dups, [], f"{len(dups)} events delivered twice")
        expected = {early} | {i for p in pubs for i in p.ids}
        self.assertEqual(set(ids), expected,
                         f"missing {len(expected - set(ids))}, extra {len(set(ids) - expected)}")
        for t in topics:
            self.assertIncreasing([e["id"] for e in events if e["topic"] == t], f"ids of {t}")


class RetentionTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon({"history": {"max_events_per_topic": RETAIN}})

    @async_test()
    async def test_old_id_gives_gap_and_retained_events_replay(self):
        ids = [self.d.publish_ok("ret.a", {"seq": i}, "application/json")["id"]
               for i in range(12)]
        b_ids = [self.d.publish_ok("ret.b", {"seq": i}, "application/json")["id"]
                 for i in range(3)]
        # An id that retention let go: gap, and the newest RETAIN events.
        c = await WSClient.connect(self.d)
        r = await c.subscribe("ret.a", since=ids[2])
        self.assertEqual((r["replayed"], r["gap"]), (RETAIN, True), r)
        self.assertEqual([e["id"] for e in await c.recv_events(RETAIN)], ids[-RETAIN:])
        # since=all is not a gap: it asks for what is retained.
        c2 = await WSClient.connect(self.d)
        r = await c2.subscribe("ret.a", since="all")
        self.assertEqual((r["replayed"], r["gap"]), (RETAIN, False), r)
        self.assertEqual([e["id"] for e in await c2.recv_events(RETAIN)], ids[-RETAIN:])
        # A retained id: no gap, exactly the newer ones.
        c3 = await WSClient.connect(self.d)
        r = await c3.subscribe("ret.a", since=ids[8])
        self.assertEqual((r["replayed"], r["gap"]), (3, False), r)
        self.assertEqual([e["id"] for e in await c3.recv_events(3)], ids[9:])
        # The oldest retained id itself is a valid cursor.
        c4 = await WSClient.connect(self.d)
        r = await c4.subscribe("ret.a", since=ids[-RETAIN])
        self.assertEqual((r["replayed"], r["gap"]), (RETAIN - 1, False), r)
        # Another topic's retention is its own: ret.b lost nothing.
        c5 = await WSClient.connect(self.d)
        r = await c5.subscribe("ret.b", since=b_ids[0])
        self.assertEqual((r["replayed"], r["gap"]), (2, False), r)
        self.assertEqual([e["id"] for e in await c5.recv_events(2)], b_ids[1:])
        # A wildcard from an id ret.a no longer holds events after: gap, everything retained.
        c6 = await WSClient.connect(self.d)
        r = await c6.subscribe("ret.>", since=ids[3])
        self.assertEqual((r["replayed"], r["gap"]), (RETAIN + 3, True), r)
        got = [e["id"] for e in await c6.recv_events(RETAIN + 3)]
        self.assertEqual(got, ids[-RETAIN:] + b_ids)

    def test_poll_after_pruning(self):
        ids = [self.d.publish_ok("ret.p", {"seq": i}, "application/json")["id"]
               for i in range(9)]
        body = check_page(self, poll(self.d, "ret.p", since=ids[0]))
        self.assertTrue(body["gap"], body)
        self.assertEqual([e["id"] for e in body["events"]], ids[-RETAIN:])
        body = check_page(self, poll(self.d, "ret.p", since=ids[5]))
        self.assertFalse(body["gap"], body)
        self.assertEqual([e["id"] for e in body["events"]], ids[6:])
        # The pruned events are gone from the status endpoint too; the retained ones are not.
        self.assertEqual(self.d.get(f"/v1/events/{ids[0]}").status, 404)
        self.assertEqual(self.d.get(f"/v1/events/{ids[-1]}").status, 200)


class MemoryRestartTest(HeraldTestCase):
    @async_test()
    async def test_memory_store_restart_gives_gap_for_old_ids(self):
        d1 = self.start_daemon({"history": {"store": "memory"}})
        old = [d1.publish_ok("mem.t", {"life": 1, "seq": i}, "application/json")["id"]
               for i in range(3)]
        self.assertEqual(d1.stop(), 0)
        d2 = self.start_daemon({"history": {"store": "memory"}})
        new = [d2.publish_ok("mem.t", {"life": 2, "seq": i}, "application/json")["id"]
               for i in range(2)]
        self.assertGreater(new[0], old[-1], "ids after a restart must sort after old ones")
        for since in (old[-1], old[0]):
            with self.subTest(since=since):
                c = await WSClient.connect(d2)
                r = await c.subscribe("mem.t", since=since)
                self.assertEqual((r["replayed"], r["gap"]), (2, True), r)
                evs = await c.recv_events(2)
                self.assertEqual([e["id"] for e in evs], new)
                self.assertEqual([e["data"]["life"] for e in evs], [2, 2])
                await c.close()
        body = check_page(self, poll(d2, "mem.t", since=old[-1]))
        self.assertTrue(body["gap"], body)
        self.assertEqual([e["id"] for e in body["events"]], new)
        # With no events at all yet in the new life, an old id is still a gap.
        d3 = self.start_daemon()
        c = await WSClient.connect(d3)
        r = await c.subscribe("mem.t", since=new[-1])
        self.assertEqual((r["replayed"], r["gap"]), (0, True), r)


class SqliteRestartRetentionTest(HeraldTestCase):
    """What retention let go before a restart stays let go: a cursor into it gets gap: true
    from the restarted daemon, however the events went (the per-topic limit, or max_age_s
    while it was down), and the newest id let go is still a valid cursor."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="herald-it-retain-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def config(self, **history):
        return {"data_dir": self.dir,
                "history": {"store": "sqlite", "max_events_per_topic": RETAIN, **history}}

    def publish_n(self, d, topic, n):
        return [d.publish_ok(topic, {"seq": i}, "application/json")["id"] for i in range(n)]

    @async_test()
    async def test_pruned_ids_give_gap_after_restart(self):
        d1 = self.start_daemon(self.config())
        ids = self.publish_n(d1, "sr.p", RETAIN + 4)
        self.assertTrue(check_page(self, poll(d1, "sr.p", since=ids[0]))["gap"])
        self.assertEqual(d1.stop(), 0)
        d2 = self.start_daemon(self.config())
        body = check_page(self, poll(d2, "sr.p", since=ids[0]))
        self.assertTrue(body["gap"], body)
        self.assertEqual([e["id"] for e in body["events"]], ids[-RETAIN:])
        # The newest pruned id: nothing after it is missing.
        body = check_page(self, poll(d2, "sr.p", since=ids[-RETAIN - 1]))
        self.assertFalse(body["gap"], body)
        self.assertEqual([e["id"] for e in body["events"]], ids[-RETAIN:])
        c = await WSClient.connect(d2)
        r = await c.subscribe("sr.>", since=ids[1])
        self.assertEqual((r["replayed"], r["gap"]), (RETAIN, True), r)
        self.assertEqual([e["id"] for e in await c.recv_events(RETAIN)], ids[-RETAIN:])

    def test_expired_topic_gives_gap_after_restart(self):
        d1 = self.start_daemon(self.config(max_age_s=3600))
        gone = self.publish_n(d1, "sr.gone", 2)
        kept = self.publish_n(d1, "sr.kept", 1)
        self.assertEqual(d1.stop(), 0)
        # As if sr.gone had been published two hours ago: it expires while the daemon is down.
        db = sqlite3.connect(os.path.join(self.dir, "herald.db"))
        with db:
            n = db.execute("UPDATE events SET time_ms = time_ms - 7200000 "
                           "WHERE topic = 'sr.gone'").rowcount
        db.close()
        self.assertEqual(n, 2)
        d2 = self.start_daemon(self.config(max_age_s=3600))
        body = check_page(self, poll(d2, "sr.gone", since=gone[0]))
        self.assertEqual((body["events"], body["gap"]), ([], True), body)
        body = check_page(self, poll(d2, "sr.gone", since=gone[-1]))
        self.assertEqual((body["events"], body["gap"]), ([], False), body)
        body = check_page(self, poll(d2, "sr.kept", since=kept[0]))
        self.assertEqual((body["events"], body["gap"]), ([], False), body)
        self.assertEqual(d2.get(f"/v1/events/{gone[-1]}").status, 404)


if __name__ == "__main__":
    unittest.main()
