# SPDX-License-Identifier: MIT
"""WebSocket protocol of heraldd (PROTOCOL.md sections 1, 2 and 7): welcome, subscribe and
unsubscribe replies, pattern matching as a subscriber sees it, single delivery across
overlapping patterns, publish and ping over the socket, and the receivers count.

"Nothing arrived" is checked deterministically where possible: a later marker event that the
connection does receive proves that an earlier, unwanted one was not queued before it.
"""

import asyncio
import time
import unittest

from herald_testlib import HeraldTestCase, WSClient, async_test

EVENT_KEYS = {"type", "topic", "id", "time", "event", "data"}


class WebSocketTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon()

    async def connect(self):
        return await WSClient.connect(self.d)

    async def assert_next_is(self, client, reply, topic):
        ev = await client.recv_event()
        self.assertEqual((ev["topic"], ev["id"]), (topic, reply["id"]), ev)
        return ev

    @async_test()
    async def test_welcome(self):
        c = await self.connect()
        w = c.welcome
        self.assertEqual(w["type"], "welcome")
        self.assertIsInstance(w["session"], str)
        self.assertTrue(w["session"])
        self.assertTrue(w["server"].startswith("heraldd/"), w)
        self.assertGreater(len(w["server"]), len("heraldd/"))
        self.assertEqual(w["heartbeat"], 25)
        self.assertEqual(w["max_event_bytes"], 65536)
        self.assertEqual(c.ws.subprotocol, "herald.v1")
        other = await self.connect()
        self.assertNotEqual(other.welcome["session"], w["session"])

    @async_test()
    async def test_welcome_reflects_config(self):
        d = self.start_daemon({"limits": {"max_event_bytes": 2048}, "heartbeat_s": 7})
        w = (await WSClient.connect(d)).welcome
        self.assertEqual((w["heartbeat"], w["max_event_bytes"]), (7, 2048))

    @async_test()
    async def test_subscribe_reply(self):
        c = await self.connect()
        await c.send_json({"op": "subscribe", "id": 41, "topic": "chat.>"})
        r = await c.recv_frame()
        nxt = r.pop("next", None)
        self.assertEqual(r, {"type": "ok", "id": 41, "topic": "chat.>", "replayed": 0,
                             "gap": False})
        self.assertRegex(nxt or "", r"^[0-9a-f]{16}$")

    @async_test()
    async def test_subscribe_without_since_is_live_only(self):
        old = self.d.publish_ok("chat.room1", "before")
        c = await self.connect()
        r = await c.subscribe("chat.room1")
        self.assertEqual((r["replayed"], r["gap"]), (0, False))
        new = self.d.publish_ok("chat.room1", "after")
        ev = await self.assert_next_is(c, new, "chat.room1")
        self.assertNotEqual(ev["id"], old["id"])

    @async_test()
    async def test_http_publish_reaches_all_matching_patterns(self):
        subs = {}
        for pattern in ("chat.room1", "chat.*", ">", "chat.>"):
            subs[pattern] = await self.connect()
            await subs[pattern].subscribe(pattern)
        reply = self.d.publish_ok("chat.room1", {"text": "hi"}, "application/json")
        self.assertEqual(reply["receivers"], 4)
        for pattern, c in subs.items():
            with self.subTest(pattern=pattern):
                ev = await self.assert_next_is(c, reply, "chat.room1")
                self.assertEqual(ev["data"], {"text": "hi"})

    @async_test()
    async def test_star_matches_exactly_one_segment(self):
        c = await self.connect()
        await c.subscribe("chat.*")
        for topic in ("chat.a.b", "chat", "chatx.a", "other.a"):
            self.d.publish_ok(topic, "no")
        marker = self.d.publish_ok("chat.a", "yes")
        await self.assert_next_is(c, marker, "chat.a")
        await c.expect_no_event(0.2)

    @async_test()
    async def test_star_in_the_middle(self):
        c = await self.connect()
        await c.subscribe("user.*.inbox")
        self.d.publish_ok("user.42.outbox", "no")
        self.d.publish_ok("user.42.inbox.x", "no")
        self.d.publish_ok("user.inbox", "no")
        marker = self.d.publish_ok("user.42.inbox", "yes")
        await self.assert_next_is(c, marker, "user.42.inbox")

    @async_test()
    async def test_tail_wildcard_needs_one_more_segment(self):
        c = await self.connect()
        await c.subscribe("chat.>")
        self.d.publish_ok("chat", "no")
        self.d.publish_ok("chatter.x", "no")
        first = self.d.publish_ok("chat.a", "yes")
        second = self.d.publish_ok("chat.a.b.c", "yes")
        await self.assert_next_is(c, first, "chat.a")
        await self.assert_next_is(c, second, "chat.a.b.c")

    @async_test()
    async def test_exact_pattern_matches_only_itself(self):
        c = await self.connect()
        await c.subscribe("chat.room1")
        self.d.publish_ok("chat.room10", "no")
        self.d.publish_ok("chat.room1.x", "no")
        marker = self.d.publish_ok("chat.room1", "yes")
        await self.assert_next_is(c, marker, "chat.room1")

    @async_test()
    async def test_overlapping_patterns_deliver_once(self):
        c = await self.connect()
        for p in ("chat.room1", "chat.*", ">", "chat.>"):
            await c.subscribe(p)
        reply = self.d.publish_ok("chat.room1", "once")
        self.assertEqual(reply["receivers"], 1)
        marker = self.d.publish_ok("zzz", "marker")
        await self.assert_next_is(c, reply, "chat.room1")
        await self.assert_next_is(c, marker, "zzz")

    @async_test()
    async def test_same_pattern_twice_delivers_once(self):
        c = await self.connect()
        await c.subscribe("chat.room1")
        r = await c.send_cmd({"op": "subscribe", "topic": "chat.room1"})
        self.assertEqual(r["type"], "ok", r)
        await c.subscribe("marker")
        reply = self.d.publish_ok("chat.room1", "once")
        marker = self.d.publish_ok("marker", "m")
        await self.assert_next_is(c, reply, "chat.room1")
        await self.assert_next_is(c, marker, "marker")

    @async_test()
    async def test_unsubscribe_stops_delivery(self):
        c = await self.connect()
        await c.subscribe("chat.room1")
        await c.subscribe("marker")
        first = self.d.publish_ok("chat.room1", "before")
        await self.assert_next_is(c, first, "chat.room1")
        await c.send_json({"op": "unsubscribe", "id": 9, "topic": "chat.room1"})
        self.assertEqual(await c.recv_frame(), {"type": "ok", "id": 9})
        self.d.publish_ok("chat.room1", "after")
        marker = self.d.publish_ok("marker", "m")
        await self.assert_next_is(c, marker, "marker")
        self.d.publish_ok("chat.room1", "after again")
        await c.expect_no_event(0.5)

    @async_test()
    async def test_unsubscribe_keeps_overlapping_pattern(self):
        c = await self.connect()
        await c.subscribe("chat.room1")
        await c.subscribe("chat.*")
        await c.unsubscribe("chat.room1")
        reply = self.d.publish_ok("chat.room1", "still via chat.*")
        await self.assert_next_is(c, reply, "chat.room1")

    @async_test()
    async def test_ws_publish(self):
        sub = await self.connect()
        await sub.subscribe("chat.*")
        other = await self.connect()
        await other.subscribe("chat.room1")
        pub = await self.connect()
        await pub.send_json({"op": "publish", "id": 3, "topic": "chat.room1", "event": "logout",
                             "data": {"from": "alice"}})
        r = await pub.recv_frame()
        self.assertEqual(set(r), {"type", "id", "event_id", "receivers"}, r)
        self.assertEqual((r["type"], r["id"], r["receivers"]), ("ok", 3, 2))
        self.assertEventId(r["event_id"])
        for c in (sub, other):
            ev = await c.recv_event()
            self.assertEqual(ev["id"], r["event_id"])
            self.assertEqual((ev["topic"], ev["event"], ev["data"]),
                             ("chat.room1", "logout", {"from": "alice"}))

    @async_test()
    async def test_ws_publish_defaults(self):
        sub = await self.connect()
        await sub.subscribe("a")
        pub = await self.connect()
        r = await pub.send_cmd({"op": "publish", "topic": "a"})
        self.assertEqual(r["type"], "ok", r)
        ev = await sub.recv_event()
        self.assertEqual((ev["event"], ev["data"]), ("message", None))

    @async_test()
    async def test_ws_and_http_ids_share_one_order(self):
        sub = await self.connect()
        await sub.subscribe("t")
        pub = await self.connect()
        ids = []
        for i in range(10):
            if i % 2:
                ids.append(self.d.publish_ok("t", str(i))["id"])
            else:
                ids.append((await pub.publish("t", str(i)))["event_id"])
        self.assertIncreasing(ids)
        got = await sub.recv_events(10)
        self.assertEqual([e["id"] for e in got], ids)
        self.assertEqual([e["data"] for e in got], [str(i) for i in range(10)])

    @async_test()
    async def test_ping(self):
        c = await self.connect()
        await c.send_json({"op": "ping", "id": 4})
        self.assertEqual(await c.recv_frame(), {"type": "pong", "id": 4})
        await c.send_json({"op": "ping"})
        r = await c.recv_frame()
        self.assertEqual(r["type"], "pong", r)
        self.assertIsNone(r.get("id"), r)

    @async_test()
    async def test_receivers_counts_connections(self):
        a = await self.connect()
        await a.subscribe("chat.room1")
        await a.subscribe("chat.*")
        b = await self.connect()
        await b.subscribe(">")
        c = await self.connect()
        await c.subscribe("other")
        await self.connect()  # connected, subscribed to nothing
        r = self.d.publish_ok("chat.room1", "x")
        self.assertEqual(r["receivers"], 2)
        r = self.d.publish_ok("other", "x")
        self.assertEqual(r["receivers"], 2)  # b and c
        r = self.d.publish_ok("nobody.here.x", "x")
        self.assertEqual(r["receivers"], 1)  # b
        await c.close()
        await b.close()
        # Closed connections stop counting once the server has seen the close; close()
        # returns when the handshake is done, which may be before the server dropped the
        # connection's subscriptions. Bounded in time, not in tries: publishes are slow
        # under ASan on a busy machine.
        deadline = time.monotonic() + 10
        while True:
            r = self.d.publish_ok("other", "x")
            if r["receivers"] == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        self.assertEqual(r["receivers"], 0)

    @async_test()
    async def test_event_frame_fields(self):
        c = await self.connect()
        await c.subscribe("logins")
        reply = self.d.publish_ok("logins", {"user": "carol"}, "application/json",
                                  event="login")
        ev = await c.recv_event()
        self.assertEqual(set(ev), EVENT_KEYS, ev)
        self.assertEqual(ev, {"type": "event", "topic": "logins", "id": reply["id"],
                              "time": reply["time"], "event": "login",
                              "data": {"user": "carol"}})
        plain = self.d.publish_ok("logins", "text")
        ev = await c.recv_event()
        self.assertEqual(set(ev), EVENT_KEYS, ev)
        self.assertEqual((ev["id"], ev["event"], ev["data"]), (plain["id"], "message", "text"))

    @async_test()
    async def test_event_data_survives_json_escaping(self):
        c = await self.connect()
        await c.subscribe("t")
        value = {"q": "\"quoted\" \\ back\nslash", "u": "é\u2028😀", "ctl": "\u0001",
                 "nested": {"a": [1, {"b": None}]}}
        self.d.publish_ok("t", value, "application/json")
        self.assertEqual((await c.recv_event())["data"], value)

    @async_test()
    async def test_data_is_delivered_compact_whatever_the_frame_looks_like(self):
        # Compact frames are read in place and the data bytes go out as they came; any other
        # frame goes through the JSON parser and its data is written compact. Subscribers
        # cannot tell the two apart, and both refuse duplicate keys.
        sub = await self.connect()
        await sub.subscribe("chat.room1")
        pub = await self.connect()
        cases = (
            ('{"op":"publish","id":1,"topic":"chat.room1","data":{"k":[true,-3,"caf\\u00e9"]}}',
             '{"k":[true,-3,"caf\u00e9"]}'),
            ('{"op":"publish","id":2,"topic":"chat.room1","data":{"k":[true,-3,"café"]}}',
             '{"k":[true,-3,"café"]}'),
            ('{ "op": "publish", "id": 3, "topic": "chat.room1", "data": {"k": [1.50, "\\u0041"]} }',
             '{"k":[1.5,"A"]}'),
            ('{"op":"publish","id":4,"topic":"chat.room1"}', 'null'),
        )
        for frame, want in cases:
            with self.subTest(frame=frame):
                await pub.send_raw(frame)
                r = await pub.recv_frame()
                self.assertEqual(r["type"], "ok", r)
                raw = await asyncio.wait_for(sub.ws.recv(), 5)
                self.assertTrue(raw.endswith('"data":' + want + '}'), raw)
        for n, frame in enumerate(('{"op":"publish","id":9,"topic":"a","data":{"k":1,"k":2}}',
                                   '{"op":"publish","id":9,"topic":"a","topic":"b"}',
                                   '{"op":"publish","id":9,"topic":"a","data":01}')):
            with self.subTest(frame=frame):
                await pub.send_raw(frame)
                r = await pub.recv_frame()
                self.assertEqual((r["type"], r["id"], r["code"]), ("error", None, "bad_request"), r)

    @async_test()
    async def test_many_subscribers_same_topic(self):
        clients = []
        for _ in range(20):
            c = await self.connect()
            await c.subscribe("room")
            clients.append(c)
        reply = self.d.publish_ok("room", "all")
        self.assertEqual(reply["receivers"], 20)
        for c in clients:
            await self.assert_next_is(c, reply, "room")


if __name__ == "__main__":
    unittest.main()
