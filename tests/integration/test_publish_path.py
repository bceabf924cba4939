# SPDX-License-Identifier: MIT
"""The one publish path (PROTOCOL.md sections 3 and 7) against the real daemon: idempotency keys
over HTTP and WebSocket (the same answer again with "duplicate": true, one event, also across a
restart with the SQLite store), `next` in the subscribe ok resuming a subscription that has
received nothing, `unsubscribed` when a reload takes a right away (WebSocket frame, SSE event
and the end of the stream, a 403 for a waiting long poll), NDJSON batches (order, ascending ids,
one bad line refusing the whole batch with its line number, keys making a resend safe), and one
rate limiter shared by a token's HTTP requests and WebSocket connections.
"""

import asyncio
import json
import os
import shutil
import signal
import tempfile
import threading
import unittest

from herald_testlib import HeraldTestCase, HTTPClient, WSClient, async_test, publish_path
from history_testlib import SSEStream, wait_until

TOKEN = "tok-publisher-0123456789"
READER = "tok-reader-0123456789"


def sha(s):
    import hashlib
    return hashlib.sha256(s.encode()).hexdigest()


def auth_config(reader_news=True, rate=0):
    sub = ["news.>", "public.>"] if reader_news else ["public.>"]
    cfg = {"auth": {"anonymous": {"publish": [], "subscribe": []},
                    "tokens": [{"name": "pub", "sha256": sha(TOKEN),
                                "publish": [">"], "subscribe": [">"]},
                               {"name": "reader", "sha256": sha(READER),
                                "publish": [], "subscribe": sub}]}}
    if rate:
        cfg["limits"] = {"publish_rate": rate, "publish_burst": rate}
    return cfg


def bearer(t):
    return {"Authorization": f"Bearer {t}"}


def post(d, topic, body, headers=None):
    """POST /v1/topics/{topic} with a text body; the whole Response."""
    return d.request("POST", publish_path(topic), body.encode(), headers)


class IdempotencyTest(HeraldTestCase):
    def post(self, d, topic, body, key=None, headers=None):
        h = dict(headers or {})
        if key is not None:
            h["Idempotency-Key"] = key
        return post(d, topic, body, h)

    def test_http_repeat_gets_the_first_answer(self):
        d = self.start_daemon()
        first = self.post(d, "k.a", "one", key="order-17")
        self.assertEqual(first.status, 202, first)
        self.assertNotIn("duplicate", first.json)
        again = self.post(d, "k.a", "one", key="order-17")
        self.assertEqual(again.status, 202, again)
        self.assertEqual(again.json["id"], first.json["id"])
        self.assertEqual(again.json["time"], first.json["time"])
        self.assertIs(again.json["duplicate"], True)
        events = d.get("/v1/topics/k.a/events?since=all").json["events"]
        self.assertEqual([e["id"] for e in events], [first.json["id"]])
        # Another key is another event.
        other = self.post(d, "k.a", "one", key="order-18")
        self.assertNotEqual(other.json["id"], first.json["id"])
        self.assertEqual(d.metric("herald_publish_duplicates_total"), 1)

    def test_invalid_key_is_refused(self):
        d = self.start_daemon()
        for key in ("with space", "x" * 129):
            with self.subTest(key=key[:20]):
                r = self.post(d, "k.b", "x", key=key)
                self.assertEqual(r.status, 400, r)
                self.assertErrorBody(r.json, "bad_request")
        self.assertEqual(d.get("/v1/topics/k.b/events?since=all").json["events"], [])

    def test_window_zero_ignores_keys(self):
        d = self.start_daemon({"history": {"dedupe_window_s": 0}})
        a = self.post(d, "k.c", "x", key="same")
        b = self.post(d, "k.c", "x", key="same")
        self.assertNotEqual(a.json["id"], b.json["id"])

    def test_keys_are_per_identity(self):
        d = self.start_daemon({"auth": {"anonymous": {"publish": [">"], "subscribe": [">"]},
                                        "tokens": [{"name": "pub", "sha256": sha(TOKEN),
                                                    "publish": [">"], "subscribe": []}]}})
        a = self.post(d, "k.d", "x", key="k1", headers=bearer(TOKEN))
        b = self.post(d, "k.d", "x", key="k1")  # anonymous: another identity
        self.assertEqual((a.status, b.status), (202, 202))
        self.assertNotEqual(a.json["id"], b.json["id"])
        self.assertNotIn("duplicate", b.json)

    @async_test()
    async def test_websocket_key_and_cross_transport(self):
        d = self.start_daemon()
        c = await WSClient.connect(d)
        r1 = await c.send_cmd({"op": "publish", "topic": "k.w", "data": 1, "key": "ws-1"})
        self.assertEqual(r1["type"], "ok", r1)
        self.assertNotIn("duplicate", r1)
        r2 = await c.send_cmd({"op": "publish", "topic": "k.w", "data": 1, "key": "ws-1"})
        self.assertEqual((r2["event_id"], r2.get("duplicate")), (r1["event_id"], True))
        # The same identity (anonymous) over HTTP with the same key: the same event.
        h = self.post(d, "k.w", "1", key="ws-1")
        self.assertEqual((h.json["id"], h.json.get("duplicate")), (r1["event_id"], True))
        bad = await c.send_cmd({"op": "publish", "topic": "k.w", "data": 1, "key": ""})
        self.assertEqual((bad["type"], bad["code"]), ("error", "bad_request"), bad)
        events = d.get("/v1/topics/k.w/events?since=all").json["events"]
        self.assertEqual(len(events), 1)

    def test_key_survives_restart_with_sqlite(self):
        data = tempfile.mkdtemp(prefix="herald-it-keys-")
        self.addCleanup(shutil.rmtree, data, True)
        cfg = {"data_dir": data, "history": {"store": "sqlite"}}
        d = self.start_daemon(cfg)
        first = self.post(d, "k.s", "persisted", key="restart-1")
        self.assertEqual(first.status, 202, first)
        d.stop()
        d2 = self.start_daemon(cfg)
        again = self.post(d2, "k.s", "persisted", key="restart-1")
        self.assertEqual(again.status, 202, again)
        self.assertEqual((again.json["id"], again.json["time"], again.json.get("duplicate")),
                         (first.json["id"], first.json["time"], True))
        events = d2.get("/v1/topics/k.s/events?since=all").json["events"]
        self.assertEqual([e["id"] for e in events], [first.json["id"]])
        # Also after a kill -9 (the key is committed with the event).
        second = self.post(d2, "k.s", "two", key="restart-2")
        d2.kill()
        d3 = self.start_daemon(cfg)
        r = self.post(d3, "k.s", "two", key="restart-2")
        self.assertEqual((r.json["id"], r.json.get("duplicate")), (second.json["id"], True))


class NextTest(HeraldTestCase):
    @async_test()
    async def test_next_resumes_a_quiet_subscription(self):
        d = self.start_daemon()
        d.publish_ok("n.a", "before")
        c = await WSClient.connect(d)
        ok = await c.subscribe("n.a")
        self.assertRegex(ok["next"], r"^[0-9a-f]{16}$")
        await c.close()
        # Published while the client was away, after its subscription began.
        missed = [d.publish_ok("n.a", f"m{i}")["id"] for i in range(3)]
        c2 = await WSClient.connect(d)
        ok2 = await c2.subscribe("n.a", since=ok["next"])
        self.assertEqual((ok2["replayed"], ok2["gap"]), (3, False), ok2)
        self.assertEqual([e["id"] for e in await c2.recv_events(3)], missed)
        # next after a replay is where the live part begins: nothing twice.
        await c2.close()
        c3 = await WSClient.connect(d)
        ok3 = await c3.subscribe("n.a", since=ok2["next"])
        self.assertEqual((ok3["replayed"], ok3["gap"]), (0, False), ok3)
        live = d.publish_ok("n.a", "live")
        self.assertEqual((await c3.recv_event())["id"], live["id"])


class UnsubscribedTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon(auth_config(reader_news=True))

    def reload_without_news(self):
        self.d.rewrite_config(auth_config(reader_news=False))
        mark = self.d.log_mark()
        self.d.send_signal(signal.SIGHUP)
        self.d.wait_for_log(r"configuration reloaded", start=mark)

    @async_test(30)
    async def test_websocket_gets_unsubscribed(self):
        c = await WSClient.connect(self.d, headers=bearer(READER))
        await c.subscribe("news.>")
        await c.subscribe("public.>")
        self.reload_without_news()
        f = await c.recv_frame()
        self.assertEqual(f["type"], "unsubscribed", f)
        self.assertEqual((f["topic"], f["code"]), ("news.>", "forbidden"))
        self.assertTrue(f["message"])
        # The connection and its other subscription stay.
        r = post(self.d, "news.x", "after", headers=bearer(TOKEN))
        self.assertEqual(r.json["receivers"], 0, r)
        p = post(self.d, "public.x", "still", headers=bearer(TOKEN))
        ev = await c.recv_event()
        self.assertEqual(ev["id"], p.json["id"])

    def test_sse_gets_unsubscribed_and_ends(self):
        s = SSEStream(self.d.port, "news.>", headers=bearer(READER))
        self.addCleanup(s.close)
        self.assertEqual(s.status, 200)
        # The stream is live once an event published now arrives on it.
        first = post(self.d, "news.x", "first", headers=bearer(TOKEN)).json
        self.assertEqual(s.next_record().id, first["id"])
        self.reload_without_news()
        rec = s.next_record()
        self.assertEqual(rec.event, "unsubscribed", rec)
        self.assertEqual(rec.json()["code"], "forbidden")
        s.read_to_end()
        self.assertTrue(s.eof, "the stream must end after the notice")

    def test_long_poll_ends_with_403(self):
        result = {}

        def poll():
            with HTTPClient(self.d.port, timeout=30) as h:
                result["r"] = h.get("/v1/topics/news.%3E/events?since=latest&wait=20",
                                    headers=bearer(READER))

        t = threading.Thread(target=poll)
        t.start()
        self.assertTrue(wait_until(lambda: self.d.metric("herald_long_polls") == 1),
                        "the long poll never started waiting")
        self.reload_without_news()
        t.join(15)
        self.assertFalse(t.is_alive(), "the long poll did not end")
        self.assertEqual(result["r"].status, 403, result["r"])
        self.assertErrorBody(result["r"].json, "forbidden")


class BatchTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon({"limits": {"max_batch_events": 5}})

    def batch(self, lines, ctype="application/x-ndjson", headers=None, raw=None):
        body = raw if raw is not None else "".join(json.dumps(x) + "\n" for x in lines)
        h = {"Content-Type": ctype}
        h.update(headers or {})
        return self.d.request("POST", "/v1/publish", body.encode(), h)

    @async_test()
    async def test_batch_in_order_with_ascending_ids(self):
        c = await WSClient.connect(self.d)
        await c.subscribe("b.>")
        r = self.batch([{"topic": "b.1", "data": {"n": 1}},
                        {"topic": "b.2", "event": "login", "data": "two"},
                        {"topic": "b.1"}])
        self.assertEqual(r.status, 202, r)
        evs = r.json["events"]
        self.assertEqual([e["topic"] for e in evs], ["b.1", "b.2", "b.1"])
        self.assertIncreasing([e["id"] for e in evs])
        self.assertEqual([e["receivers"] for e in evs], [1, 1, 1])
        got = await c.recv_events(3)
        self.assertEqual([g["id"] for g in got], [e["id"] for e in evs])
        self.assertEqual([g["data"] for g in got], [{"n": 1}, "two", None])
        self.assertEqual(got[1]["event"], "login")

    def test_one_bad_line_refuses_everything(self):
        cases = [
            ('{"topic":"b.x","data":1}\n{"topic":"b x"}\n', 2, 400, "invalid_topic"),
            ('{"topic":"b.x"}\n\n{"topic":"$sys"}\n', 3, 403, "forbidden"),
            ('{"topic":"b.x"}\nnot json\n', 2, 400, "bad_request"),
            ('{"topic":"b.x","dat":1}\n', 1, 400, "bad_request"),
            ('{"topic":"b.x","key":""}\n', 1, 400, "bad_request"),
            ("".join('{"topic":"b.x"}\n' for _ in range(6)), 6, 413, "too_large"),
        ]
        for body, line, status, code in cases:
            with self.subTest(line=line, code=code):
                r = self.batch(None, raw=body)
                self.assertEqual(r.status, status, r)
                self.assertEqual((r.json["code"], r.json["line"]), (code, line), r)
        self.assertEqual(self.d.get("/v1/topics/b.x/events?since=all").json["events"], [])

    def test_keys_make_a_resend_safe(self):
        lines = [{"topic": "b.k", "data": i, "key": f"batch-{i}"} for i in range(3)]
        first = self.batch(lines)
        again = self.batch(lines)
        self.assertEqual([e["id"] for e in again.json["events"]],
                         [e["id"] for e in first.json["events"]])
        self.assertTrue(all(e.get("duplicate") for e in again.json["events"]))
        self.assertEqual(len(self.d.get("/v1/topics/b.k/events?since=all").json["events"]), 3)

    def test_wrong_content_type(self):
        r = self.batch([{"topic": "b.c"}], ctype="application/json")
        self.assertEqual(r.status, 400, r)
        self.assertErrorBody(r.json, "bad_request")


class OneLimiterTest(HeraldTestCase):
    @async_test()
    async def test_token_bucket_shared_by_http_and_websocket(self):
        d = self.start_daemon(auth_config(rate=3))
        c = await WSClient.connect(d, headers=bearer(TOKEN))
        for i in range(2):
            r = await c.send_cmd({"op": "publish", "topic": "r.a", "data": i})
            self.assertEqual(r["type"], "ok", r)
        self.assertEqual(post(d, "r.a", "x", headers=bearer(TOKEN)).status, 202)
        # Three taken from the one bucket: both transports are now refused.
        h = post(d, "r.a", "x", headers=bearer(TOKEN))
        self.assertEqual(h.status, 429, h)
        self.assertTrue(h.header("Retry-After"))
        w = await c.send_cmd({"op": "publish", "topic": "r.a", "data": 9})
        self.assertEqual((w["type"], w["code"]), ("error", "rate_limited"), w)


if __name__ == "__main__":
    unittest.main()
