# SPDX-License-Identifier: MIT
"""Ordering and exactly-once delivery under rapid publishing (PROTOCOL.md sections 2 and 7):
1000 publishes over keep-alive HTTP and 1000 pipelined WebSocket publishes reach subscribers
in publish order, each once, with strictly increasing ids equal to the ones the publisher got.
Publishes that arrive together in one write are all read in the loop turn they arrive in.
"""

import asyncio
import json
import os
import struct
import unittest

from herald_testlib import HeraldTestCase, RawWS, WSClient, async_test

# lws 4.1 reads this much of a WebSocket per loop turn (WS_RX_CHUNK in src/server_int.h).
RX_CHUNK = 192


def masked_frame(text):
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) +
                            struct.pack("!H", n))
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))

N = 1000


class OrderTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon()

    def check_stream(self, events, ids, topic):
        self.assertEqual(len(events), len(ids))
        self.assertTrue(all(e["topic"] == topic for e in events))
        seqs = [e["data"]["seq"] for e in events]
        if seqs != list(range(len(ids))):
            missing = sorted(set(range(len(ids))) - set(seqs))[:10]
            self.fail(f"out of order or duplicated; first missing seqs {missing}, "
                      f"first seqs {seqs[:20]}")
        got = [e["id"] for e in events]
        self.assertIncreasing(got)
        self.assertEqual(got, ids, "delivered ids differ from the ids publishes returned")

    async def subscribers(self, *patterns):
        subs = []
        for p in patterns:
            c = await WSClient.connect(self.d)
            await c.subscribe(p)
            subs.append(c)
        return subs

    @async_test(timeout=90)
    async def test_http_keepalive_publishes_arrive_in_order(self):
        exact, wild = await self.subscribers("order.http", "order.>")

        def publish_all():
            ids = []
            with self.d.http() as c:
                for i in range(N):
                    status, _, r = c.publish("order.http", {"seq": i}, "application/json")
                    if status != 202:
                        raise AssertionError(f"publish {i} got {status} {r}")
                    ids.append(r["id"])
            return ids

        # Publish from a thread so both subscribers keep reading meanwhile.
        ids, ev_exact, ev_wild = await asyncio.gather(
            asyncio.to_thread(publish_all), exact.recv_events(N, 40), wild.recv_events(N, 40))
        self.assertIncreasing(ids, "publish reply ids")
        self.check_stream(ev_exact, ids, "order.http")
        self.check_stream(ev_wild, ids, "order.http")
        await exact.expect_no_event(0.3)
        await wild.expect_no_event(0.1)

    @async_test(timeout=90)
    async def test_ws_pipelined_publishes_arrive_in_order(self):
        (sub,) = await self.subscribers("order.ws")
        pub = await WSClient.connect(self.d)

        async def publish_all():
            for i in range(N):
                await pub.send_json({"op": "publish", "id": i + 1, "topic": "order.ws",
                                     "data": {"seq": i}})
            replies = []
            for _ in range(N):
                replies.append(await pub.recv_frame(20))
            return replies

        replies, events = await asyncio.gather(publish_all(), sub.recv_events(N, 40))
        self.assertEqual([r.get("type") for r in replies], ["ok"] * N,
                         [r for r in replies if r.get("type") != "ok"][:3])
        self.assertEqual([r["id"] for r in replies], list(range(1, N + 1)),
                         "replies not in command order")
        ids = [r["event_id"] for r in replies]
        self.assertIncreasing(ids, "publish reply ids")
        self.check_stream(events, ids, "order.ws")
        await sub.expect_no_event(0.3)

    def test_publishes_in_one_write_are_read_in_one_turn(self):
        # Eight publishes in one TCP write: lws reads one chunk of them per loop turn, and the
        # server reads the rest at the end of that same turn (herald_ws_reads_ahead_total),
        # so all eight are processed together. Each must still be answered, in order, and
        # fan out in order with the ids the publisher got.
        sub = RawWS(self.d.port)
        self.addCleanup(sub.sock.close)
        self.assertEqual(sub.recv_json()["type"], "welcome")
        sub.send_json({"op": "subscribe", "id": 1, "topic": "burst.t"})
        self.assertEqual(sub.recv_json()["type"], "ok")
        pub = RawWS(self.d.port)
        self.addCleanup(pub.sock.close)
        self.assertEqual(pub.recv_json()["type"], "welcome")
        before = self.d.metric("herald_ws_reads_ahead_total")
        self.assertIsNotNone(before, "no herald_ws_reads_ahead_total in /metrics")
        burst = b"".join(
            masked_frame(json.dumps({"op": "publish", "id": i + 1, "topic": "burst.t",
                                     "data": {"seq": i, "pad": "x" * 100}}))
            for i in range(8))
        self.assertGreater(len(burst), 2 * RX_CHUNK)
        pub.sock.sendall(burst)
        replies = [pub.recv_json() for _ in range(8)]
        self.assertEqual([(r["type"], r["id"]) for r in replies],
                         [("ok", i + 1) for i in range(8)], replies)
        ids = [r["event_id"] for r in replies]
        self.assertIncreasing(ids, "publish reply ids")
        events = [sub.recv_json() for _ in range(8)]
        self.assertEqual([e["data"]["seq"] for e in events], list(range(8)))
        self.assertEqual([e["id"] for e in events], ids)
        ahead = self.d.metric("herald_ws_reads_ahead_total") - before
        self.assertGreaterEqual(ahead, 1, "the burst was read one chunk per loop turn")

    def test_burst_from_one_publisher_does_not_cut_off_a_healthy_subscriber(self):
        # 16 publishes of 3 KB in one write, three times a subscriber's queue limit: read in
        # one turn, their fan-out would fill the queue before anything is written and close
        # a subscriber that reads everything as a slow consumer (4000). The frames queued so
        # far are written while the burst is read, so it gets every event, in order.
        d = self.start_daemon({"limits": {"max_queue_bytes": 16384, "max_event_bytes": 4096}})
        sub = RawWS(d.port)
        self.addCleanup(sub.sock.close)
        self.assertEqual(sub.recv_json()["type"], "welcome")
        sub.send_json({"op": "subscribe", "id": 1, "topic": "burst.big"})
        self.assertEqual(sub.recv_json()["type"], "ok")
        pub = RawWS(d.port)
        self.addCleanup(pub.sock.close)
        self.assertEqual(pub.recv_json()["type"], "welcome")
        n = 16
        pub.sock.sendall(b"".join(
            masked_frame(json.dumps({"op": "publish", "id": i + 1, "topic": "burst.big",
                                     "data": {"seq": i, "pad": "x" * 3000}}))
            for i in range(n)))
        self.assertEqual([(r["type"], r["id"]) for r in (pub.recv_json() for _ in range(n))],
                         [("ok", i + 1) for i in range(n)])
        self.assertEqual([sub.recv_json()["data"]["seq"] for _ in range(n)], list(range(n)))
        self.assertEqual(d.metric("herald_slow_consumer_disconnects_total"), 0)

    @async_test(timeout=90)
    async def test_concurrent_publishers_share_one_order(self):
        n = 300
        (sub,) = await self.subscribers("mix.>")
        pubs = [await WSClient.connect(self.d) for _ in range(3)]

        async def pipelined(k, pub):
            for i in range(n):
                await pub.send_json({"op": "publish", "id": i, "topic": f"mix.p{k}",
                                     "data": {"p": k, "seq": i}})
            return [(await pub.recv_frame(20))["event_id"] for _ in range(n)]

        def over_http():
            with self.d.http() as c:
                return [c.publish("mix.http", {"p": 3, "seq": i}, "application/json")[2]["id"]
                        for i in range(n)]

        results = await asyncio.gather(*(pipelined(k, p) for k, p in enumerate(pubs)),
                                       asyncio.to_thread(over_http),
                                       sub.recv_events(4 * n, 40))
        events = results[-1]
        got = [e["id"] for e in events]
        self.assertIncreasing(got, "delivered ids")
        self.assertEqual(sorted(got), sorted(i for r in results[:-1] for i in r))
        for k in range(4):
            seqs = [e["data"]["seq"] for e in events if e["data"]["p"] == k]
            self.assertEqual(seqs, list(range(n)), f"publisher {k} reordered")
        await sub.expect_no_event(0.3)


if __name__ == "__main__":
    unittest.main()
