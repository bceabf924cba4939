# SPDX-License-Identifier: MIT
"""Cluster mode (PROTOCOL.md section 10) with real processes on loopback: three nats-server
with JetStream clustering (replicas 3) and two or three heraldd. Publish on any node and every
node delivers the same ids in the same order; a subscriber moves to another node with `since`;
kill -9 of the stream leader, of a follower and of a heraldd node loses nothing answered 202;
a recreated stream turns old cursors into gaps; a key retried on another node makes one event;
delivery status sums the nodes. Every NATS server stopped at once is test_cluster_restart.

One NATS cluster is shared by the suite (each test starts from an empty stream); storms are
small and every wait is bounded."""

import asyncio
import json
import signal
import time
import unittest

from herald_testlib import DAEMON_SLOW, HeraldTestCase, HTTPClient, WSClient, async_test, run
from nats_testlib import NatsCluster

T = 30.0 * DAEMON_SLOW


class ClusterTestCase(HeraldTestCase):
    cluster = None
    ready_timeout = T  # for node(): how long a starting node may take to attach

    @classmethod
    def setUpClass(cls):
        cls.cluster = NatsCluster(3).start()

    @classmethod
    def tearDownClass(cls):
        if cls.cluster:
            cls.cluster.stop()

    def setUp(self):
        self.cluster.reset_stream()

    def tearDown(self):
        for s in self.cluster.servers:
            if not s.running():
                s.start(wait=False)
        for s in self.cluster.servers:
            s.wait_listening()
        self.cluster.wait_jetstream()

    def node(self, name, **extra):
        """Starts heraldd `name` in cluster mode and waits until it can take publishes."""
        cfg = {
            "engine": {"type": "nats", "servers": self.cluster.urls.split(","), "replicas": 3,
                       "node": name},
            "history": {"max_events_per_topic": 50000, "max_memory_bytes": 256 << 20},
            "limits": {"max_queue_bytes": 64 << 20, "max_batch_events": 1000},
        }
        for k, v in extra.items():
            cfg.setdefault(k, {}).update(v)
        d = self.start_daemon(cfg)
        self.assertTrue(d.wait_for_log("cluster engine ready", self.ready_timeout),
                        f"{name} never ready")
        return d

    async def publish_when_ready(self, d, topic, body, timeout=60 * DAEMON_SLOW):
        """Publishes, retrying while the node answers 503 (then nothing was sent); returns
        the 202 answer."""
        deadline = time.monotonic() + timeout
        while True:
            status, _, reply = d.publish(topic, body)
            if status == 202:
                return reply
            self.assertEqual(status, 503, reply)
            self.assertLess(time.monotonic(), deadline, f"still 503 after {timeout}s: {reply}")
            await asyncio.sleep(0.2)

    def poll_all(self, d, pattern, since="all"):
        """Every retained event matching `pattern` after `since`, paging with `next`."""
        out, gap = [], None
        with d.http(T) as c:
            while True:
                r = c.get(f"/v1/topics/{pattern}/events?since={since}&limit=1000")
                self.assertEqual(r.status, 200, r)
                if gap is None:
                    gap = r.json["gap"]
                out += r.json["events"]
                if not r.json["events"]:
                    return out, gap
                since = r.json["next"]


class ClusterTest(ClusterTestCase):

    @async_test(timeout=120)
    async def test_publish_on_any_node_same_ids_same_order(self):
        nodes = [self.node(n) for n in ("A", "B", "C")]
        subs = [await WSClient.connect(d) for d in nodes]
        for s in subs:
            await s.subscribe("chat.>")
        ids = []
        for i in range(60):
            d = nodes[i % 3]
            status, _, reply = await asyncio.to_thread(d.publish, f"chat.r{i % 4}", {"i": i})
            self.assertEqual(status, 202, reply)
            ids.append(reply["id"])
        self.assertIncreasing(ids, "publish ids")
        got = [[e["id"] for e in await s.recv_events(60, T)] for s in subs]
        for g in got:
            self.assertEqual(g, ids)  # the same ids, in the same order, on every node
        # And the same data and time everywhere: polls on two nodes are identical.
        a, _ = self.poll_all(nodes[0], "chat.>")
        c, _ = self.poll_all(nodes[2], "chat.>")
        self.assertEqual(a, c)
        self.assertEqual([e["id"] for e in a], ids)

    @async_test(timeout=120)
    async def test_resume_on_another_node_with_since(self):
        a, b = self.node("A"), self.node("B")
        s = await WSClient.connect(a)
        ok = await s.subscribe("room.>")
        quiet = await WSClient.connect(a)
        quiet_ok = await quiet.subscribe("room.>")
        first = [a.publish_ok("room.1", {"n": i})["id"] for i in range(5)]
        got = [e["id"] for e in await s.recv_events(5, T)]
        self.assertEqual(got, first)
        await s.close()
        missed = [b.publish_ok("room.1", {"n": i})["id"] for i in range(5, 10)]
        # On node B with the last id seen on node A: exactly what was missed, once.
        s2 = await WSClient.connect(b)
        r = await s2.subscribe("room.>", since=got[-1])
        self.assertFalse(r["gap"], r)
        self.assertEqual([e["id"] for e in await s2.recv_events(5, T)], missed)
        await s2.expect_no_event(0.5)
        # A subscription that had received nothing resumes from its ok's `next`.
        self.assertIn("next", quiet_ok)
        q2 = await WSClient.connect(b)
        r = await q2.subscribe("room.>", since=quiet_ok["next"])
        self.assertFalse(r["gap"], r)
        self.assertEqual([e["id"] for e in await q2.recv_events(10, T)], first + missed)
        del ok

    def storm(self, pick_victim, total=20000, batch=1000):
        a, b = self.node("A"), self.node("B")

        async def body():
            sub = await WSClient.connect(b, max_size=2 ** 26)
            await sub.subscribe("storm.>")
            victim = pick_victim()
            acked, killed = [], False
            with HTTPClient(a.port, timeout=90 * DAEMON_SLOW) as c:
                for start in range(0, total, batch):
                    lines = "".join(json.dumps({"topic": "storm.x", "data": {"i": i},
                                                "key": f"storm-{i}"}) + "\n"
                                    for i in range(start, start + batch))
                    if not killed and start >= total // 4:
                        victim.kill()
                        killed = True
                    # 503 while the stream (or JetStream's meta group, which places the
                    # node's new consumer) elects a leader: seconds, more on loaded cores.
                    deadline = time.monotonic() + 60 * DAEMON_SLOW
                    while True:
                        r = await asyncio.to_thread(
                            c.request, "POST", "/v1/publish", lines,
                            {"Content-Type": "application/x-ndjson"})
                        if r.status == 202:
                            acked += [e["id"] for e in r.json["events"]]
                            break
                        # The keys make a resend safe.
                        self.assertEqual(r.status, 503, r)
                        self.assertLess(time.monotonic(), deadline, "a batch was never accepted")
                        await asyncio.sleep(0.5)
            self.assertEqual(len(acked), total)
            self.assertEqual(len(set(acked)), total)
            # Every event answered 202 reaches the subscriber on the other node exactly once.
            seen = [e["id"] for e in await sub.recv_events(total, 120 * DAEMON_SLOW)]
            self.assertEqual(sorted(seen), sorted(acked))
            self.assertIncreasing(seen, "delivered ids")
            await sub.expect_no_event(0.5)
            return acked

        acked = run(body(), 400 * DAEMON_SLOW)
        # And is in history afterwards, on both nodes.
        for d in (a, b):
            events, _ = self.poll_all(d, "storm.x")
            self.assertEqual(sorted(e["id"] for e in events), sorted(acked))

    def test_storm_survives_kill_of_stream_leader(self):
        self.storm(lambda: self.cluster.stream_leader())

    def test_storm_survives_kill_of_follower(self):
        def follower():
            leader = self.cluster.stream_leader()
            return next(s for s in self.cluster.servers if s is not leader)
        self.storm(follower)

    @async_test(timeout=120)
    async def test_kill_9_of_a_heraldd_node(self):
        a, b = self.node("A"), self.node("B")
        s = await WSClient.connect(a)
        await s.subscribe("fo.>")
        first = [b.publish_ok("fo.x", {"n": i})["id"] for i in range(5)]
        last = [e["id"] for e in await s.recv_events(5, T)][-1]
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        a.stopped = True
        # Meanwhile the other node keeps publishing.
        more = [b.publish_ok("fo.x", {"n": i})["id"] for i in range(5, 12)]
        # The client moves to B with its last id and misses nothing.
        s2 = await WSClient.connect(b)
        r = await s2.subscribe("fo.>", since=last)
        self.assertFalse(r["gap"], r)
        self.assertEqual([e["id"] for e in await s2.recv_events(7, T)], more)
        self.assertEqual(first[-1], last)

    @async_test(timeout=120)
    async def test_recreated_stream_gives_old_cursors_a_gap(self):
        a = self.node("A")
        old = [a.publish_ok("ep.x", {"n": i})["id"] for i in range(5)]
        mark = a.log_mark()
        self.cluster.delete_stream()
        self.assertTrue(a.wait_for_log("new epoch", T, start=mark))
        self.assertTrue(a.wait_for_log("cluster engine ready", T, start=mark))
        new = a.publish_ok("ep.x", {"n": "new"})["id"]
        self.assertGreater(new, old[-1])
        # An old cursor never names a new event: it resolves with a gap.
        s = await WSClient.connect(a)
        r = await s.subscribe("ep.>", since=old[2])
        self.assertTrue(r["gap"], r)
        with a.http() as c:
            p = c.get(f"/v1/topics/ep.x/events?since={old[2]}")
        self.assertTrue(p.json["gap"], p.json)
        # A node that starts now sees only the new epoch, and the old cursor is a gap there too.
        b = self.node("B")
        with b.http() as c:
            p = c.get(f"/v1/topics/ep.x/events?since={old[2]}")
        self.assertTrue(p.json["gap"], p.json)
        self.assertEqual([e["id"] for e in p.json["events"]], [new])

    @async_test(timeout=120)
    async def test_same_key_on_another_node_is_one_event(self):
        a, b = self.node("A"), self.node("B")
        s = await WSClient.connect(b)
        await s.subscribe("orders.>")
        h = {"Idempotency-Key": "order-42"}
        st1, _, r1 = a.publish("orders.new", {"o": 42}, headers=h)
        st2, _, r2 = b.publish("orders.new", {"o": 42}, headers=h)
        self.assertEqual((st1, st2), (202, 202))
        self.assertEqual((r1["id"], r1["time"]), (r2["id"], r2["time"]))
        self.assertTrue(r2.get("duplicate"), r2)
        nxt = b.publish_ok("orders.new", {"o": 43})["id"]
        self.assertEqual([e["id"] for e in await s.recv_events(2, T)], [r1["id"], nxt])

    @async_test(timeout=120)
    async def test_delivery_status_sums_the_nodes(self):
        a, b = self.node("A"), self.node("B")
        subs = [await WSClient.connect(d) for d in (a, b, b)]
        for s in subs:
            await s.subscribe("st.>")
        id_ = a.publish_ok("st.x", {"n": 1})["id"]
        for s in subs:
            await s.recv_events(1, T)
        deadline = time.monotonic() + T
        while True:
            r = a.get(f"/v1/events/{id_}")
            self.assertEqual(r.status, 200, r)
            if r.json.get("written") == 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        self.assertEqual(r.json.get("nodes"), 2, r.json)
        self.assertEqual((r.json["queued"], r.json["written"]), (3, 3), r.json)

    def test_metrics_per_node(self):
        a = self.node("A")
        a.publish_ok("m.x", {"n": 1})
        m = a.metrics()
        self.assertEqual(m.get('herald_engine_connected{node="A"}'), 1)
        self.assertEqual(m.get('herald_engine_publishes_pending{node="A"}'), 0)
        self.assertIn('herald_engine_feed_lag{node="A"}', m)

    def test_poll_older_than_node_history_is_served_from_the_stream(self):
        # The node keeps 5 events per topic in memory; the stream keeps them all. A poll from
        # an older cursor is answered from JetStream: nothing missed, no gap, paged by limit.
        a = self.node("A", history={"max_events_per_topic": 5})
        ids = [a.publish_ok("old.t", {"n": i})["id"] for i in range(20)]
        r = a.get(f"/v1/topics/old.t/events?since={ids[2]}")
        self.assertEqual(r.status, 200, r)
        self.assertEqual([e["id"] for e in r.json["events"]], ids[3:])
        self.assertEqual((r.json["gap"], r.json["next"]), (False, ids[-1]))
        r = a.get(f"/v1/topics/old.t/events?since={ids[2]}&limit=5")
        self.assertEqual([e["id"] for e in r.json["events"]], ids[3:8])
        self.assertEqual((r.json["gap"], r.json["next"]), (False, ids[7]))
        # A long poll from there answers at once with the next page.
        r = a.get(f"/v1/topics/old.t/events?since={ids[7]}&limit=5&wait=20")
        self.assertEqual([e["id"] for e in r.json["events"]], ids[8:13])
        self.assertGreaterEqual(a.metric("herald_engine_replays_total"), 3)
        # Within the node's memory: history answers (and a cursor of the stream's future is a
        # gap, as on a single node).
        r = a.get(f"/v1/topics/old.t/events?since={ids[16]}")
        self.assertEqual([e["id"] for e in r.json["events"]], ids[17:])


if __name__ == "__main__":
    unittest.main()
