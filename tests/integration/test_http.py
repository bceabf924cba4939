# SPDX-License-Identifier: MIT
"""HTTP API of heraldd (PROTOCOL.md sections 3 and 9): publishing with the three body forms,
the reply, every documented error with its exact body, methods and unknown paths, health,
metrics and CORS. Delivered data is checked through a real WebSocket subscriber, because what
a publisher cares about is what subscribers get.
"""

import asyncio
import json
import unittest

from herald_testlib import HeraldTestCase, WSClient, async_test, now_ms

SMALL = {"limits": {"max_event_bytes": 1024}}


def header_list(value):
    return {v.strip().lower() for v in (value or "").split(",") if v.strip()}


class PublishTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon()

    async def publish_and_receive(self, topic, body, content_type=None, event=None):
        sub = await WSClient.connect(self.d)
        await sub.subscribe(topic)
        status, _, reply = self.d.publish(topic, body, content_type, event)
        self.assertEqual(status, 202, reply)
        ev = await sub.recv_event()
        self.assertEqual(ev["id"], reply["id"])
        return reply, ev

    @async_test()
    async def test_plain_body_becomes_string_data(self):
        # curl -d hello .../v1/topics/chat.room1 sends form content type; no type at all is
        # the same rule: the body is the data, as a string.
        _, ev = await self.publish_and_receive("chat.room1", "hello")
        self.assertEqual(ev["data"], "hello")
        self.assertEqual(ev["event"], "message")
        _, ev = await self.publish_and_receive("chat.room1", "a=1&b=2",
                                               "application/x-www-form-urlencoded")
        self.assertEqual(ev["data"], "a=1&b=2")
        _, ev = await self.publish_and_receive("chat.room1", '{"not":"parsed"}', "text/plain")
        self.assertEqual(ev["data"], '{"not":"parsed"}')

    @async_test()
    async def test_utf8_text_body_round_trips(self):
        text = "grüße, 世界 ✓"
        _, ev = await self.publish_and_receive("chat.room1", text.encode("utf-8"))
        self.assertEqual(ev["data"], text)

    @async_test()
    async def test_json_body_becomes_the_value(self):
        for value in ({"from": "alice", "text": "hi", "n": [1, 2.5, None, True]}, [1, "two"],
                      42, "str", None, False):
            with self.subTest(value=value):
                _, ev = await self.publish_and_receive("user.42.inbox",
                                                       json.dumps(value).encode(),
                                                       "application/json")
                self.assertEqual(ev["data"], value)

    @async_test()
    async def test_json_body_is_delivered_compact(self):
        # A compact body is published as it came; any other is parsed and written compact.
        sub = await WSClient.connect(self.d)
        await sub.subscribe("chat.room1")
        cases = ((b'{"a":[1,"x"],"b":{"c":null},"d":"caf\xc3\xa9"}',
                  '{"a":[1,"x"],"b":{"c":null},"d":"caf\u00e9"}'),
                 (b'{ "a" : [ 1.50 , "\\u0041" ] }', '{"a":[1.5,"A"]}'),
                 (b'{"a":1,"a":2}', '{"a":2}'))
        for body, want in cases:
            with self.subTest(body=body):
                status, _, reply = self.d.publish("chat.room1", body, "application/json")
                self.assertEqual(status, 202, reply)
                raw = await asyncio.wait_for(sub.ws.recv(), 5)
                self.assertTrue(raw.endswith('"data":' + want + '}'), raw)

    @async_test()
    async def test_json_content_type_with_charset(self):
        _, ev = await self.publish_and_receive("chat.room1", {"a": 1},
                                               "application/json; charset=utf-8")
        self.assertEqual(ev["data"], {"a": 1})

    @async_test()
    async def test_event_kind_from_query(self):
        reply, ev = await self.publish_and_receive("logins", {"user": "bob"},
                                                   "application/json", event="login")
        self.assertEqual(ev["event"], "login")
        self.assertEqual(ev["data"], {"user": "bob"})
        self.assertEqual(ev["topic"], "logins")
        self.assertEqual(ev["time"], reply["time"])

    def test_reply_fields(self):
        before = now_ms()
        status, headers, reply = self.d.publish("chat.room1", "hello")
        after = now_ms()
        self.assertEqual(status, 202, reply)
        self.assertTrue(headers.get("Content-Type", "").startswith("application/json"),
                        headers.get("Content-Type"))
        self.assertEqual(set(reply), {"id", "topic", "time", "receivers"}, reply)
        self.assertEventId(reply["id"])
        self.assertEqual(reply["topic"], "chat.room1")
        self.assertIsInstance(reply["time"], int)
        self.assertGreaterEqual(reply["time"], before - 1000)
        self.assertLessEqual(reply["time"], after + 1000)
        self.assertEqual(reply["receivers"], 0)

    def test_ids_increase(self):
        ids = []
        with self.d.http() as c:
            for i in range(20):
                status, _, reply = c.publish("t%d" % (i % 3), str(i))
                self.assertEqual(status, 202, reply)
                ids.append(reply["id"])
        for i in ids:
            self.assertEventId(i)
        self.assertEqual(len(set(ids)), len(ids), "ids repeat")
        self.assertIncreasing(ids)

    def test_keep_alive_serves_many_requests(self):
        with self.d.http() as c:
            for i in range(50):
                status, _, reply = c.publish("chat.room1", "m%d" % i)
                self.assertEqual(status, 202, reply)
            self.assertEqual(c.get("/healthz").status, 200)


class PublishErrorTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon(SMALL)

    def check_error(self, topic, body, content_type, status, code, event=None):
        st, headers, reply = self.d.publish(topic, body, content_type, event)
        self.assertEqual(st, status, reply)
        self.assertTrue(headers.get("Content-Type", "").startswith("application/json"),
                        headers.get("Content-Type"))
        self.assertErrorBody(reply, code)

    def test_invalid_topics(self):
        for topic in ("chat..room", "chat.", ".chat", "chat.*", "chat.>", "a!b", "x" * 256,
                      "sp%20ace"):
            with self.subTest(topic=topic):
                self.check_error(topic, "hi", None, 400, "invalid_topic")

    def test_longest_valid_topic(self):
        status, _, reply = self.d.publish("a" * 255, "hi")
        self.assertEqual(status, 202, reply)

    def test_bad_json(self):
        for body in (b'{"a":', b"", b"{} {}", b"nope", b"[1,]"):
            with self.subTest(body=body):
                self.check_error("chat.room1", body, "application/json", 400, "bad_request")

    def test_invalid_utf8_text(self):
        for body in (b"\xff\xfe", b"ok\xc3(", b"\xed\xa0\x80"):
            with self.subTest(body=body):
                self.check_error("chat.room1", body, None, 400, "bad_request")
                self.check_error("chat.room1", body, "text/plain", 400, "bad_request")

    def test_bad_event_kind(self):
        for kind in ("x" * 65, "has space", "semi;colon"):
            with self.subTest(kind=kind):
                self.check_error("chat.room1", "hi", None, 400, "bad_request", event=kind)
        status, _, reply = self.d.publish("chat.room1", "hi", event="a" * 64)
        self.assertEqual(status, 202, reply)

    def test_too_large(self):
        self.check_error("chat.room1", "x" * 2000, None, 413, "too_large")
        self.check_error("chat.room1", {"pad": "y" * 2000}, "application/json", 413,
                         "too_large")
        # The limit is the limit, not a refusal of everything.
        status, _, reply = self.d.publish("chat.room1", "x" * 500)
        self.assertEqual(status, 202, reply)

    def test_too_large_body_names_the_limit_and_key(self):
        """Like the other 413s: the limit (max_event_bytes 1024 + 16384) and its key."""
        status, _, reply = self.d.publish("chat.room1", "x" * (1024 + 16384 + 1))
        self.assertEqual(status, 413, reply)
        self.assertErrorBody(reply, "too_large")
        self.assertIn("17408", reply["message"])
        self.assertIn("limits.max_event_bytes", reply["message"])

    def test_reserved_topic(self):
        for topic in ("$sys.x", "$x"):
            with self.subTest(topic=topic):
                self.check_error(topic, "hi", None, 403, "forbidden")

    @async_test()
    async def test_errors_change_nothing(self):
        sub = await WSClient.connect(self.d)
        await sub.subscribe(">")
        before = self.d.metric("herald_events_published_total")
        self.d.publish("chat.room1", b"\xff", None)
        self.d.publish("chat.room1", b"{", "application/json")
        self.d.publish("chat.room1", "x" * 2000)
        self.d.publish("chat.room1", "hi", event="bad kind")
        self.assertEqual(self.d.metric("herald_events_published_total"), before)
        reply = self.d.publish_ok("marker", "m")
        ev = await sub.recv_event()
        self.assertEqual((ev["topic"], ev["id"]), ("marker", reply["id"]),
                         "an errored publish was delivered")


class RoutingTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon()

    def test_wrong_method_on_publish_path(self):
        for method in ("GET", "PUT", "DELETE"):
            with self.subTest(method=method):
                r = self.d.request(method, "/v1/topics/x")
                self.assertEqual(r.status, 405, r)
                allow = {a.upper() for a in header_list(r.header("Allow"))}
                self.assertIn("POST", allow, r.header("Allow"))
                self.assertIn("OPTIONS", allow, r.header("Allow"))
                self.assertNotIn(method, allow)
                self.assertErrorBody(r.json, None)

    def test_wrong_method_on_healthz(self):
        r = self.d.request("POST", "/healthz", b"")
        self.assertEqual(r.status, 405, r)
        self.assertIn("GET", {a.upper() for a in header_list(r.header("Allow"))})

    def test_unknown_paths(self):
        for path in ("/", "/nope", "/v1", "/v1/nothing", "/v1/topics", "/healthz/x",
                     "/v2/topics/x"):
            with self.subTest(path=path):
                r = self.d.get(path)
                self.assertEqual(r.status, 404, r)
                self.assertErrorBody(r.json, "not_found")

    def test_healthz(self):
        r = self.d.get("/healthz")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.text.strip(), "ok")

    def test_metrics(self):
        r = self.d.get("/metrics")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.header("Content-Type", "").startswith("text/plain"),
                        r.header("Content-Type"))
        m = self.d.metrics()
        self.assertIsNotNone(m.get("herald_connections"), r.text[:500])
        before = m.get("herald_events_published_total")
        self.assertIsNotNone(before, r.text[:500])
        self.d.publish_ok("chat.room1", "one")
        self.d.publish_ok("chat.room2", "two")
        self.assertEqual(self.d.metrics()["herald_events_published_total"], before + 2)

    @async_test()
    async def test_metrics_count_connections(self):
        base = self.d.metrics()["herald_connections"]
        a = await WSClient.connect(self.d)
        await WSClient.connect(self.d)
        await a.ping()
        self.assertEqual(self.d.metrics()["herald_connections"], base + 2)


    @async_test()
    async def test_metrics_count_websocket_writes(self):
        a = await WSClient.connect(self.d)
        await a.subscribe("chat.room1")
        m = self.d.metrics()
        writes, written = m.get("herald_ws_writes_total"), m["herald_deliveries_written_total"]
        self.assertIsNotNone(writes, "no herald_ws_writes_total in /metrics")
        # One event at a time, each read before the next: one write each.
        for i in range(3):
            self.d.publish_ok("chat.room1", f"one {i}")
            await a.recv_event()
        m = self.d.metrics()
        self.assertEqual(m["herald_ws_writes_total"] - writes, 3)
        self.assertEqual(m["herald_deliveries_written_total"] - written, 3)
        # A burst may share writes (frames coalesced): never more writes than events.
        writes, written = m["herald_ws_writes_total"], m["herald_deliveries_written_total"]
        for i in range(20):
            self.d.publish_ok("chat.room1", f"burst {i}")
        await a.recv_events(20)
        m = self.d.metrics()
        self.assertEqual(m["herald_deliveries_written_total"] - written, 20)
        self.assertTrue(1 <= m["herald_ws_writes_total"] - writes <= 20, m)


class CorsTest(HeraldTestCase):
    ORIGIN = "http://app.example.com"

    def setUp(self):
        self.d = self.start_daemon()

    def check_allow_origin(self, r):
        self.assertIn(r.header("Access-Control-Allow-Origin"), ("*", self.ORIGIN),
                      f"{r.status} response without CORS header")

    def test_simple_responses_carry_cors(self):
        h = {"Origin": self.ORIGIN}
        with self.d.http() as c:
            r = c.publish_full("chat.room1", "hi", headers=h)
            self.assertEqual(r.status, 202)
            self.check_allow_origin(r)
            r = c.publish_full("chat..bad", "hi", headers=h)
            self.assertEqual(r.status, 400)
            self.check_allow_origin(r)
            r = c.get("/healthz", h)
            self.check_allow_origin(r)
            r = c.get("/nope", h)
            self.assertEqual(r.status, 404)
            self.check_allow_origin(r)

    def test_preflight(self):
        r = self.d.request("OPTIONS", "/v1/topics/chat.room1", headers={
            "Origin": self.ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        })
        self.assertIn(r.status, (200, 204), r)
        self.check_allow_origin(r)
        methods = {m.upper() for m in header_list(r.header("Access-Control-Allow-Methods"))}
        self.assertIn("POST", methods, r.header("Access-Control-Allow-Methods"))
        allowed = header_list(r.header("Access-Control-Allow-Headers"))
        self.assertIn("authorization", allowed, r.header("Access-Control-Allow-Headers"))
        self.assertIn("content-type", allowed, r.header("Access-Control-Allow-Headers"))
        # A preflight publishes nothing.
        self.assertEqual(self.d.metrics()["herald_events_published_total"], 0)

    def test_preflight_on_polling_path(self):
        r = self.d.request("OPTIONS", "/v1/topics/chat.*/events", headers={
            "Origin": self.ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization",
        })
        self.assertIn(r.status, (200, 204), r)
        self.check_allow_origin(r)
        methods = {m.upper() for m in header_list(r.header("Access-Control-Allow-Methods"))}
        self.assertIn("GET", methods)


if __name__ == "__main__":
    unittest.main()
