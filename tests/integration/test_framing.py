# SPDX-License-Identifier: MIT
"""HTTP/1.1 framing against a hostile client (issue 16): request smuggling constructs are
refused with 400 and a close, a request that arrives before the previous one is answered is
never parsed out of step (the first is answered with `Connection: close`, so the client sends
the rest again, RFC 9112 9.3.2), and heads libwebsockets cannot parse get an answer (431, 414,
400, 405) instead of a silent drop or lws's own 403 page. Each is sent on a raw socket, since
an HTTP library would refuse to send it.
"""

import unittest

from herald_testlib import HeraldTestCase, WSClient, async_test, lws_version, raw_http

HOST = b"Host: 127.0.0.1\r\n"


def post(topic, body, extra=b""):
    return (b"POST /v1/topics/" + topic + b" HTTP/1.1\r\n" + HOST + extra +
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class FramingTest(HeraldTestCase):
    def setUp(self):
        self.d = self.start_daemon()

    def exchange(self, data, **kw):
        return raw_http(self.d.port, data, **kw)

    def assertRefused(self, data, status, code, closed=True):
        rs, was_closed = self.exchange(data)
        self.assertEqual(len(rs), 1, f"expected exactly one answer, got {rs}")
        self.assertEqual(rs[0].status, status, rs[0])
        self.assertErrorBody(rs[0].json, code)
        if closed:
            self.assertTrue(was_closed, "the connection stayed open after a framing error")
            self.assertEqual(rs[0].headers.get("connection"), "close", rs[0])
        return rs[0]

    def assertNothingPublished(self, topic):
        r = self.d.get(f"/v1/topics/{topic}/events?since=all")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["events"], [], "a refused request published an event")

    def assertAlive(self):
        self.assertEqual(self.d.get("/healthz").status, 200)

    # -- smuggling constructs --------------------------------------------------------------

    def test_content_length_and_transfer_encoding_is_refused(self):
        data = (b"POST /v1/topics/f.te HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        self.assertRefused(data, 400, "bad_request")
        self.assertNothingPublished("f.te")

    def test_chunked_body_gets_411_and_is_not_parsed(self):
        """lws 4.1 does not decode chunked bodies: 411, close, and the chunk bytes (here a
        whole request) are never answered as a request of their own."""
        v = lws_version()
        if v >= (4, 3, 0):
            self.skipTest(f"libwebsockets {'.'.join(map(str, v))}: heraldd decodes chunked "
                          f"bodies (test_chunked covers a chunk that holds a request)")
        inner = b"GET /healthz HTTP/1.1\r\n\r\n"
        data = (b"POST /v1/topics/f.chunked HTTP/1.1\r\n" + HOST +
                b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(inner) + inner +
                b"\r\n0\r\n\r\n")
        rs, closed = self.exchange(data)
        self.assertEqual([r.status for r in rs], [411], rs)
        self.assertTrue(closed)
        self.assertNothingPublished("f.chunked")

    def test_two_different_content_lengths_are_refused(self):
        data = (b"POST /v1/topics/f.cl HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n"
                b"Content-Length: 11\r\n\r\nabcGET / HTTP/1.1\r\n\r\n")
        self.assertRefused(data, 400, "bad_request")
        self.assertNothingPublished("f.cl")

    def test_two_equal_content_lengths_are_one(self):
        data = (b"POST /v1/topics/f.cl2 HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n"
                b"Content-Length: 3\r\n\r\nabc")
        rs, _ = self.exchange(data)
        self.assertEqual([r.status for r in rs], [202], rs)

    def test_content_length_must_be_digits(self):
        for value in (b"-1", b"+3", b"3 3", b"0x3", b"", b"3a", b"99999999999999999999"):
            with self.subTest(value=value):
                data = (b"POST /v1/topics/f.neg HTTP/1.1\r\n" + HOST + b"Content-Length: " +
                        value + b"\r\n\r\nabc")
                r = self.assertRefused(data, 413 if len(value) > 15 else 400,
                                       "too_large" if len(value) > 15 else "bad_request")
        self.assertNothingPublished("f.neg")

    def test_bytes_after_a_body_are_not_a_second_request(self):
        """The issue's desync: the bytes after a 3-byte body were answered as a request."""
        self.d.publish_ok("f.pipe", "earlier")
        smuggled = b"GET /v1/topics/f.pipe/events?since=all HTTP/1.1\r\n" + HOST + b"\r\n"
        rs, closed = self.exchange(post(b"f.pipe", b"abc") + smuggled)
        self.assertEqual([r.status for r in rs], [202], f"answers: {rs}")
        self.assertEqual(rs[0].headers.get("connection"), "close", rs[0])
        self.assertTrue(closed, "the connection stayed open after an unanswered second request")
        r = self.d.get("/v1/topics/f.pipe/events?since=all")
        self.assertEqual([e["data"] for e in r.json["events"]], ["earlier", "abc"])

    def test_pipelined_gets_answer_the_first_and_close(self):
        get = b"GET /healthz HTTP/1.1\r\n" + HOST + b"\r\n"
        rs, closed = self.exchange(get + get + get)
        self.assertEqual([r.status for r in rs], [200], rs)
        self.assertEqual(rs[0].headers.get("connection"), "close", rs[0])
        self.assertTrue(closed)
        self.assertAlive()

    def test_keep_alive_requests_one_after_another_still_work(self):
        """Not pipelined: each request is sent after the previous answer arrived."""
        import socket
        sock = socket.create_connection(("127.0.0.1", self.d.port), timeout=5)
        try:
            for i in range(3):
                sock.sendall(post(b"f.keep", str(i).encode()))
                buf = b""
                while b"\r\n\r\n" not in buf or not buf.rstrip().endswith(b"}"):
                    got = sock.recv(4096)
                    self.assertTrue(got, f"closed after request {i}: {buf!r}")
                    buf += got
                self.assertIn(b" 202 ", buf.split(b"\r\n")[0])
                self.assertNotIn(b"connection: close", buf.lower())
        finally:
            sock.close()

    def test_a_body_split_across_reads_is_read_whole(self):
        head = (b"POST /v1/topics/f.split HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n"
                b"\r\n")
        rs, _ = self.exchange([head[:7], head[7:], b"01234", b"56789"])
        self.assertEqual([r.status for r in rs], [202], rs)
        r = self.d.get("/v1/topics/f.split/events?since=all")
        self.assertEqual([e["data"] for e in r.json["events"]], ["0123456789"])

    # -- heads lws cannot parse -------------------------------------------------------------

    def test_headers_over_max_header_bytes_get_431(self):
        data = (b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 5000 + b"\r\n\r\n")
        r = self.assertRefused(data, 431, "too_large")
        self.assertIn("max_header_bytes", r.json["message"])
        self.assertAlive()

    def test_a_thousand_headers_get_431(self):
        data = (b"GET /healthz HTTP/1.1\r\n" + HOST +
                b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\n")
        self.assertRefused(data, 431, "too_large")
        self.assertAlive()

    def test_a_long_request_line_gets_414(self):
        data = b"GET /healthz?x=" + b"a" * 8000 + b" HTTP/1.1\r\n" + HOST + b"\r\n"
        self.assertRefused(data, 414, "too_large")
        self.assertAlive()

    def test_nul_in_path_header_or_query_gets_400(self):
        for data in (b"GET /heal\x00thz HTTP/1.1\r\n" + HOST + b"\r\n",
                     b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n",
                     b"GET /v1/topics/a/events?since=a%00b HTTP/1.1\r\n" + HOST + b"\r\n",
                     b"GET /v1/topics/a/events?since=%ZZ HTTP/1.1\r\n" + HOST + b"\r\n"):
            with self.subTest(data=data):
                self.assertRefused(data, 400, "bad_request")
        self.assertAlive()

    def test_connect_and_unknown_methods_get_405(self):
        for data in (b"CONNECT 127.0.0.1:7070 HTTP/1.1\r\n" + HOST + b"\r\n",
                     b"TRACE /healthz HTTP/1.1\r\n" + HOST + b"\r\n",
                     b"BREW /healthz HTTP/1.1\r\n" + HOST + b"\r\n"):
            with self.subTest(data=data):
                r = self.assertRefused(data, 405, "method_not_allowed")
                self.assertIn("GET", r.headers.get("allow", ""))
        self.assertAlive()

    def test_absolute_form_is_served_as_its_path(self):
        for target in (b"http://127.0.0.1/healthz", b"HTTP://example.com:7070/healthz"):
            with self.subTest(target=target):
                rs, _ = self.exchange(b"GET " + target + b" HTTP/1.1\r\n" + HOST + b"\r\n")
                self.assertEqual([r.status for r in rs], [200], rs)
                self.assertEqual(rs[0].body, b"ok\n")
        rs, _ = self.exchange(b"GET http://h?x=1 HTTP/1.1\r\n" + HOST + b"\r\n")
        self.assertEqual([r.status for r in rs], [404], rs)
        self.assertErrorBody(rs[0].json, "not_found")
        self.assertRefused(b"GET ftp://h/healthz HTTP/1.1\r\n" + HOST + b"\r\n", 400,
                           "bad_request")

    def test_absolute_form_publish_reaches_subscribers(self):
        data = (b"POST http://127.0.0.1:1/v1/topics/f.abs HTTP/1.1\r\n" + HOST +
                b"Content-Length: 2\r\n\r\nhi")
        rs, _ = self.exchange(data)
        self.assertEqual([r.status for r in rs], [202], rs)
        r = self.d.get("/v1/topics/f.abs/events?since=all")
        self.assertEqual([e["data"] for e in r.json["events"]], ["hi"])

    def test_obsolete_line_folding_is_refused(self):
        data = b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-A: a\r\n  folded\r\n\r\n"
        self.assertRefused(data, 400, "bad_request")

    @async_test()
    async def test_websocket_upgrade_still_works(self):
        ws = await WSClient.connect(self.d)
        await ws.subscribe("f.ws")
        self.d.publish_ok("f.ws", "x")
        ev = await ws.recv_event()
        self.assertEqual(ev["data"], "x")


if __name__ == "__main__":
    unittest.main()
