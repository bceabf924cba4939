# SPDX-License-Identifier: MIT
"""Chunked request bodies (RFC 9112 7.1) with libwebsockets 4.3 (Debian 13, issue 17): lws 4.3
hands the raw chunked bytes to heraldd, which decodes them, so a chunked publish is delivered
like one with Content-Length, then the connection closes. With lws 4.1 (Debian 12) these tests
are skipped: a chunked publish is answered 411 there (test_http). Sent on raw sockets, split
across reads where the split matters.
"""

import unittest

from herald_testlib import HeraldTestCase, WSClient, async_test, lws_version, raw_http

HOST = b"Host: 127.0.0.1\r\n"


def chunked_post(topic, body, extra=b""):
    return (b"POST /v1/topics/" + topic + b" HTTP/1.1\r\n" + HOST + extra +
            b"Transfer-Encoding: chunked\r\n\r\n" + body)


class ChunkedTest(HeraldTestCase):
    def setUp(self):
        v = lws_version()
        if v < (4, 3, 0):
            self.skipTest(f"libwebsockets {'.'.join(map(str, v))}: chunked request bodies are "
                          f"answered 411 (only lws 4.3 hands them to heraldd)")
        self.d = self.start_daemon()

    def events(self, topic):
        r = self.d.get(f"/v1/topics/{topic}/events?since=all")
        self.assertEqual(r.status, 200, r)
        return [e["data"] for e in r.json["events"]]

    def test_chunked_publish_is_delivered(self):
        rs, closed = raw_http(self.d.port, chunked_post(
            b"c.one", b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"))
        self.assertEqual([r.status for r in rs], [202], rs)
        self.assertEqual(rs[0].json["topic"], "c.one")
        self.assertEqual(rs[0].headers.get("connection"), "close", rs[0])
        self.assertTrue(closed)
        self.assertEqual(self.events("c.one"), ["hello world"])

    @async_test(30)
    async def test_chunked_json_reaches_a_subscriber(self):
        c = await WSClient.connect(self.d)
        await c.subscribe("c.ws")
        body = b'{"user":"alice","n":1}'
        data = chunked_post(b"c.ws", b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
                            b"Content-Type: application/json\r\n")
        rs, _ = raw_http(self.d.port, data)
        self.assertEqual([r.status for r in rs], [202], rs)
        e = await c.recv_event()
        self.assertEqual(e["data"], {"user": "alice", "n": 1})

    def test_split_across_reads_with_extensions_and_trailer(self):
        parts = [chunked_post(b"c.split", b"3;name=x\r\nab"), b"c\r\n", b"6\r", b"\n4567",
                 b"89\r\n0\r\nX-Trailer: 1\r\n", b"\r\n"]
        rs, _ = raw_http(self.d.port, parts)
        self.assertEqual([r.status for r in rs], [202], rs)
        self.assertEqual(self.events("c.split"), ["abc456789"])

    def test_a_request_inside_a_chunk_is_only_data(self):
        inner = b"GET /healthz HTTP/1.1\r\n\r\n"
        rs, closed = raw_http(self.d.port, chunked_post(
            b"c.inner", b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)))
        self.assertEqual([r.status for r in rs], [202], rs)
        self.assertTrue(closed)
        self.assertEqual(self.events("c.inner"), [inner.decode()])

    def test_empty_chunked_body(self):
        rs, _ = raw_http(self.d.port, chunked_post(b"c.empty", b"0\r\n\r\n"))
        self.assertEqual([r.status for r in rs], [202], rs)
        self.assertEqual(self.events("c.empty"), [""])

    def test_malformed_chunked_body_is_refused(self):
        for body in (b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"5\nhello\r\n"):
            with self.subTest(body=body):
                rs, closed = raw_http(self.d.port, chunked_post(b"c.bad", body))
                self.assertEqual([r.status for r in rs], [400], rs)
                self.assertErrorBody(rs[0].json, "bad_request")
                self.assertTrue(closed)
        self.assertEqual(self.events("c.bad"), [])

    def test_chunked_body_over_the_limit_is_413(self):
        # The body limit is max_event_bytes plus 16 KB of slack: 17 KB here; 20 KB are sent.
        d = self.start_daemon({"limits": {"max_event_bytes": 1024}})
        chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
        rs, closed = raw_http(d.port, chunked_post(b"c.big", chunk * 20 + b"0\r\n\r\n"))
        self.assertEqual([r.status for r in rs], [413], rs)
        self.assertTrue(closed)
        self.assertEqual(d.get("/v1/topics/c.big/events?since=all").json["events"], [])

    def test_other_transfer_codings_still_411(self):
        rs, _ = raw_http(self.d.port, b"POST /v1/topics/c.gz HTTP/1.1\r\n" + HOST +
                         b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
        self.assertEqual([r.status for r in rs], [411], rs)


class ChunkedRefusedTest(HeraldTestCase):
    """lws 4.1 re-parses a body it does not frame: a chunked publish is answered 411 at once."""

    def test_chunked_publish_gets_411_and_close(self):
        v = lws_version()
        if v >= (4, 3, 0):
            self.skipTest(f"libwebsockets {'.'.join(map(str, v))} decodes chunked bodies "
                          f"(ChunkedTest)")
        d = self.start_daemon()
        rs, closed = raw_http(d.port, chunked_post(b"c.old", b"5\r\nhello\r\n0\r\n\r\n"))
        self.assertEqual([r.status for r in rs], [411], rs)
        self.assertTrue(closed)
        self.assertEqual(d.get("/v1/topics/c.old/events?since=all").json["events"], [])


if __name__ == "__main__":
    unittest.main()
