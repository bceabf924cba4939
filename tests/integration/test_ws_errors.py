# SPDX-License-Identifier: MIT
"""WebSocket error handling of heraldd (PROTOCOL.md section 7): every refused command gets an
error frame with its id (null when there is none) and the connection stays usable; oversized
and binary frames and runs of refused commands close it with the documented codes; an errored
publish delivers nothing.
"""

import json
import os
import unittest

from herald_testlib import HeraldTestCase, WSClient, async_test

MAX_EVENT = 1024
FRAME_LIMIT = MAX_EVENT + 16384


def pad(n):
    # Incompressible-looking text so no layer can shrink it below a limit.
    return os.urandom((n + 1) // 2).hex()[:n]


class WebSocketErrorTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon({"limits": {"max_event_bytes": MAX_EVENT,
                                               "max_subscriptions_per_connection": 5}})

    async def connect(self):
        return await WSClient.connect(self.d)

    async def expect_error(self, c, raw, code, rid):
        await c.send_raw(raw if isinstance(raw, str) else json.dumps(raw))
        r = await c.recv_reply(rid)
        self.assertErrorBody(r, code, ws=True, rid=rid)
        return r

    @async_test()
    async def test_malformed_json(self):
        c = await self.connect()
        for raw in ('{"op":', "not json", "", "[1,2", '{"op":"ping","id":1}{}'):
            with self.subTest(raw=raw):
                await self.expect_error(c, raw, "bad_request", None)
        await c.ping()

    @async_test()
    async def test_not_an_object_or_wrong_types(self):
        c = await self.connect()
        await self.expect_error(c, "[]", "bad_request", None)
        await self.expect_error(c, '"ping"', "bad_request", None)
        await self.expect_error(c, {"id": 5}, "bad_request", 5)
        await self.expect_error(c, {"op": 7, "id": 6}, "bad_request", 6)
        await self.expect_error(c, {"op": "subscribe", "id": 8, "topic": 12}, "bad_request", 8)
        # An id that is not an integer cannot be echoed.
        await self.expect_error(c, {"op": "ping", "id": "x"}, "bad_request", None)
        await c.ping()

    @async_test()
    async def test_unknown_op(self):
        c = await self.connect()
        await self.expect_error(c, {"op": "frobnicate", "id": 7}, "unknown_op", 7)
        await self.expect_error(c, {"op": "frobnicate"}, "unknown_op", None)
        await c.ping()

    @async_test()
    async def test_invalid_topic(self):
        c = await self.connect()
        for i, (op, topic) in enumerate((("subscribe", "chat..x"), ("subscribe", "a.>.b"),
                                          ("subscribe", "a*"), ("subscribe", ""),
                                          ("unsubscribe", "bad topic"),
                                          ("publish", "chat.*"), ("publish", "chat.>"),
                                          ("publish", "x" * 256))):
            with self.subTest(op=op, topic=topic):
                await self.expect_error(c, {"op": op, "id": 100 + i, "topic": topic},
                                        "invalid_topic", 100 + i)
        await c.ping()

    @async_test()
    async def test_reserved_topic_publish_forbidden(self):
        c = await self.connect()
        await self.expect_error(c, {"op": "publish", "id": 3, "topic": "$x", "data": 1},
                                "forbidden", 3)
        await self.expect_error(c, {"op": "publish", "id": 4, "topic": "$sys.clients",
                                    "data": 1}, "forbidden", 4)
        await c.ping()

    @async_test()
    async def test_missing_topic(self):
        c = await self.connect()
        for i, op in enumerate(("subscribe", "unsubscribe", "publish")):
            with self.subTest(op=op):
                await self.expect_error(c, {"op": op, "id": 20 + i}, "bad_request", 20 + i)

    @async_test()
    async def test_bad_event_kind(self):
        c = await self.connect()
        await self.expect_error(c, {"op": "publish", "id": 1, "topic": "a", "event": "x" * 65},
                                "bad_request", 1)
        await self.expect_error(c, {"op": "publish", "id": 2, "topic": "a", "event": "no way"},
                                "bad_request", 2)

    @async_test()
    async def test_frame_over_limit_closes_1009(self):
        c = await self.connect()
        frame = json.dumps({"op": "publish", "id": 1, "topic": "a",
                            "data": pad(FRAME_LIMIT + 1000)})
        self.assertGreater(len(frame), FRAME_LIMIT)
        await c.send_raw(frame)
        # 80 KB in 192-byte reads: seconds under a sanitizer on a busy machine.
        self.assertEqual(await c.wait_closed(timeout=20), 1009)

    @async_test()
    async def test_data_over_max_event_bytes_is_too_large(self):
        sub = await self.connect()
        await sub.subscribe("a")
        c = await self.connect()
        for i, size in enumerate((MAX_EVENT + 10, 8000, FRAME_LIMIT - 200)):
            with self.subTest(size=size):
                cmd = {"op": "publish", "id": 50 + i, "topic": "a", "data": pad(size)}
                self.assertLess(len(json.dumps(cmd)), FRAME_LIMIT)
                await self.expect_error(c, cmd, "too_large", 50 + i)
        await c.ping()
        r = await c.publish("a", pad(MAX_EVENT - 100))
        self.assertEqual(r["type"], "ok", r)
        ev = await sub.recv_event()
        self.assertEqual(ev["id"], r["event_id"], "a too_large publish was delivered")

    @async_test()
    async def test_binary_frame_closes_1003(self):
        c = await self.connect()
        await c.send_raw(b'{"op":"ping","id":1}')
        self.assertEqual(await c.wait_closed(), 1003)

    @async_test()
    async def test_100_refused_commands_close_4001(self):
        c = await self.connect()
        for i in range(100):
            await c.send_json({"op": "nope", "id": 10000 + i})
        self.assertEqual(await c.wait_closed(), 4001)
        # Replies still queued when the limit hits may be dropped with the connection; the
        # ones that did arrive are the errors for these commands, in order.
        errors = [json.loads(m) for m in c.stray if isinstance(m, str)]
        self.assertTrue(all(e["code"] == "unknown_op" for e in errors), errors[:3])
        self.assertEqual([e["id"] for e in errors], list(range(10000, 10000 + len(errors))))

    @async_test()
    async def test_mixed_refusals_also_count(self):
        c = await self.connect()
        bad = ["{", {"op": "nope"}, {"op": "subscribe", "topic": "a..b"},
               {"op": "publish", "topic": "$x"}, {"op": "subscribe"}]
        for i in range(100):
            b = bad[i % len(bad)]
            await c.send_raw(b if isinstance(b, str) else json.dumps(b))
        self.assertEqual(await c.wait_closed(), 4001)

    @async_test()
    async def test_good_command_resets_refusal_count(self):
        c = await self.connect()
        for round_ in range(3):
            for i in range(99):
                await c.send_json({"op": "nope", "id": 10000 * (round_ + 1) + i})
            await c.ping()  # replies come in order, so all 99 errors are in already
            errors = [f for f in c.stray if f.get("type") == "error"]
            self.assertEqual(len(errors), 99 * (round_ + 1))
            self.assertEqual(errors[-1]["id"], 10000 * (round_ + 1) + 98)
        self.assertTrue(c.open)
        await c.ping()

    @async_test()
    async def test_subscription_limit(self):
        c = await self.connect()
        for i in range(5):
            await c.subscribe(f"t{i}")
        r = await c.send_cmd({"op": "subscribe", "topic": "t5"})
        self.assertErrorBody(r, "limit_exceeded", ws=True, rid=r["id"])
        # The refused subscription really is not there.
        pub = await self.connect()
        r = await pub.publish("t5", "x")
        self.assertEqual(r["receivers"], 0, "a refused subscription receives events")
        # Unsubscribing frees a slot.
        await c.unsubscribe("t0")
        await c.subscribe("t5")
        r = await pub.publish("t5", "y")
        self.assertEqual(r["receivers"], 1)
        self.assertEqual((await c.recv_event())["data"], "y")

    @async_test()
    async def test_errored_publish_delivers_nothing(self):
        sub = await self.connect()
        await sub.subscribe(">")
        c = await self.connect()
        await self.expect_error(c, {"op": "publish", "id": 1, "topic": "a", "data": pad(2000)},
                                "too_large", 1)
        await self.expect_error(c, {"op": "publish", "id": 2, "topic": "a.*", "data": 1},
                                "invalid_topic", 2)
        await self.expect_error(c, {"op": "publish", "id": 3, "topic": "$a", "data": 1},
                                "forbidden", 3)
        await self.expect_error(c, {"op": "publish", "id": 4, "topic": "a", "event": "",
                                    "data": 1}, "bad_request", 4)
        await self.expect_error(c, '{"op":"publish","id":5,"topic":"a","data":', "bad_request",
                                None)
        r = await c.publish("marker", "m")
        ev = await sub.recv_event()
        self.assertEqual((ev["topic"], ev["id"]), ("marker", r["event_id"]),
                         "an errored publish was delivered")

    @async_test()
    async def test_other_connections_unaffected_by_a_close(self):
        sub = await self.connect()
        await sub.subscribe("a")
        bad = await self.connect()
        await bad.send_raw(b"\x00")
        self.assertEqual(await bad.wait_closed(), 1003)
        reply = self.d.publish_ok("a", "still here")
        self.assertEqual(reply["receivers"], 1)
        self.assertEqual((await sub.recv_event())["id"], reply["id"])


if __name__ == "__main__":
    unittest.main()
