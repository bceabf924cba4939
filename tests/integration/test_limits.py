# SPDX-License-Identifier: MIT
"""Publish rate limits (CONFIG.md limits.publish_rate / publish_burst): over HTTP a publisher
past its bucket gets 429 rate_limited with Retry-After and nothing is stored; over WebSocket
an error frame with code rate_limited and the connection stays usable; the bucket refills.
Connections per source address (limits.max_connections_per_ip): the next one is refused at
accept with a 429 while other addresses are served, and closed or reset connections give
their slot back.
"""

import json
import signal
import socket
import struct
import time
import unittest

import websockets

from herald_testlib import (HeraldTestCase, WSClient, WSInvalidStatus, async_test, metric_sum,
                            parse_metrics, ws_connect, ws_refused_status)
from history_testlib import wait_until

RATE = {"limits": {"publish_rate": 2, "publish_burst": 3}}


class HttpRateLimitTest(HeraldTestCase):
    def test_burst_then_429_then_refill(self):
        d = self.start_daemon(RATE)
        statuses = [d.publish("rl.a", f"m{i}")[0] for i in range(3)]
        self.assertEqual(statuses, [202, 202, 202])
        status, headers, body = d.publish("rl.a", "over")
        self.assertEqual(status, 429, body)
        self.assertEqual(body["code"], "rate_limited")
        self.assertGreaterEqual(int(headers["Retry-After"]), 1)
        # The refused publish changed nothing: only the three accepted events are there.
        page = d.get("/v1/topics/rl.a/events?since=all").json
        self.assertEqual([e["data"] for e in page["events"]], ["m0", "m1", "m2"])
        # Two tokens per second: one is back within a second (a refusal takes none).
        self.assertTrue(wait_until(lambda: d.publish("rl.a", "later")[0] == 202, timeout=3),
                        "the bucket did not refill")
        page = d.get("/v1/topics/rl.a/events?since=all").json
        self.assertEqual([e["data"] for e in page["events"]], ["m0", "m1", "m2", "later"])

    def test_rate_zero_is_unlimited(self):
        d = self.start_daemon()
        self.assertTrue(all(d.publish("rl.b", str(i))[0] == 202 for i in range(50)))


class WsRateLimitTest(HeraldTestCase):
    @async_test(timeout=30)
    async def test_ws_publish_limited_and_connection_stays(self):
        d = self.start_daemon(RATE)
        c = await WSClient.connect(d)
        replies = [await c.publish("rl.ws", i) for i in range(4)]
        self.assertEqual([r["type"] for r in replies[:3]], ["ok", "ok", "ok"])
        self.assertEqual(replies[3]["type"], "error")
        self.assertEqual(replies[3]["code"], "rate_limited")
        await c.ping()  # still open and served
        page = d.get("/v1/topics/rl.ws/events?since=all").json
        self.assertEqual([e["data"] for e in page["events"]], [0, 1, 2])


def connect_from(port, source="127.0.0.1"):
    s = socket.socket()
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_all(s, limit=65536):
    data = b""
    while len(data) < limit:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def get_over(s, path="/healthz"):
    """One keep-alive request on s; returns the status, 0 when the server closed instead."""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return 0
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:  # the whole body, so the next request starts clean
        chunk = s.recv(4096)
        if not chunk:
            return 0
        body += chunk
    return int(head.split(b" ", 2)[1])


def reset_close(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


class PerAddressLimitTest(HeraldTestCase):
    LIMIT = 3

    def setUp(self):
        self.retried = 0  # connections refused while waiting for a slot to come back

    def served(self, d):
        """A new connection that the server serves, once it has taken back a closed one's
        slot (it notices closes a moment later); refusals while waiting are counted."""
        def attempt():
            s = connect_from(d.port)
            if get_over(s) == 200:
                return s
            s.close()
            self.retried += 1
            return None
        s = wait_until(attempt, timeout=5)
        self.assertIsNotNone(s, "no slot came back")
        return s

    def assertRefused(self, s):
        raw = read_all(s)
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 429 "), raw[:200])
        self.assertIn(b"retry-after: 1", head.lower())
        err = json.loads(body)
        self.assertEqual(err["code"], "rate_limited")
        self.assertIn("127.0.0.1", err["message"])

    def test_limit_per_address_and_slots_come_back(self):
        d = self.start_daemon({"limits": {"max_connections_per_ip": self.LIMIT}})
        held = [connect_from(d.port) for _ in range(self.LIMIT)]
        self.assertEqual(get_over(held[0]), 200)  # held connections are really served
        over = connect_from(d.port)
        self.assertRefused(over)
        over.close()
        # Another address is counted on its own.
        other = connect_from(d.port, "127.0.0.2")
        self.assertEqual(get_over(other), 200)
        other.close()

        # A clean close and a reset each give one slot back.
        held.pop().close()
        reset_close(held.pop())
        held += [self.served(d), self.served(d)]
        self.assertEqual([get_over(s) for s in held], [200] * self.LIMIT)
        extra = connect_from(d.port)
        self.assertRefused(extra)
        for s in held:
            s.close()
        # Refusals are counted at accept, before the refusal is sent. Asked from another
        # address: this one's slots come back only once the server has seen the closes.
        s = connect_from(d.port, "127.0.0.2")
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        text = read_all(s, 1 << 20).partition(b"\r\n\r\n")[2].decode()
        s.close()
        self.assertEqual(metric_sum(parse_metrics(text), "herald_connections_refused_total"),
                         2 + self.retried)

    def test_storm_of_resets_leaks_no_slots(self):
        d = self.start_daemon({"limits": {"max_connections_per_ip": self.LIMIT}})
        # 300 connections, each reset mid-request or mid-upgrade while under the limit.
        for i in range(300):
            s = connect_from(d.port)
            if i % 2:
                s.sendall(b"GET /v1/ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n")
            else:
                s.sendall(b"POST /v1/topics/x HTTP/1.1\r\nContent-Length: 100\r\n\r\nab")
            reset_close(s)
        held = [self.served(d) for _ in range(self.LIMIT)]
        self.assertEqual([get_over(s) for s in held], [200] * self.LIMIT)
        over = connect_from(d.port)
        self.assertRefused(over)
        for s in held + [over]:
            s.close()

    @async_test(timeout=30)
    async def test_websocket_upgrades_count_and_reload_lowers_limit(self):
        d = self.start_daemon({"limits": {"max_connections_per_ip": self.LIMIT}})
        conns = [await WSClient.connect(d) for _ in range(self.LIMIT)]
        with self.assertRaises(WSInvalidStatus) as cm:
            await ws_connect(d.ws_url, subprotocols=["herald.v1"], open_timeout=5)
        self.assertEqual(ws_refused_status(cm.exception), 429)

        # SIGHUP to a limit of 1: the three open connections stay, new ones are refused.
        d.rewrite_config({"limits": {"max_connections_per_ip": 1}})
        mark = d.log_mark()
        d.send_signal(signal.SIGHUP)
        d.wait_for_log("configuration reloaded", start=mark)
        for c in conns:
            await c.ping()
        await conns[0].close()
        await conns[1].close()
        s = connect_from(d.port)
        self.assertRefused(s)  # still two open: over the new limit of one
        s.close()
        await conns[2].close()
        self.served(d).close()  # the server sees the closes a moment later


def upgrade(port, source="127.0.0.1"):
    """Sends a WebSocket upgrade; returns (socket, status line, head, body read so far)."""
    s = connect_from(port, source)
    s.sendall(b"GET /v1/ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: herald.v1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return s, head.split(b"\r\n", 1)[0], head, body


class MaxConnectionsTest(HeraldTestCase):
    """limits.max_connections is held exactly: the connections past it are answered 503 with
    Retry-After (not closed unanswered), and loopback can still read /healthz and /metrics."""
    LIMIT = 50

    def test_limit_is_exact_and_refusals_are_answered(self):
        d = self.start_daemon({"limits": {"max_connections": self.LIMIT}})
        held, refused = [], []
        for _ in range(self.LIMIT + 20):
            s, status, head, body = upgrade(d.port)
            if b" 101 " in status:
                held.append(s)
                continue
            refused.append(s)
            self.assertTrue(status.startswith(b"HTTP/1.1 503 "), head)
            self.assertIn(b"retry-after: 1", head.lower())
            body += read_all(s)
            err = json.loads(body)
            self.assertEqual(err["code"], "unavailable", err)
            self.assertIn("max_connections", err["message"])
        self.assertEqual((len(held), len(refused)), (self.LIMIT, 20))
        # At the limit, from loopback: health and metrics answer; nothing else does.
        self.assertEqual(d.get("/healthz").status, 200)
        self.assertEqual(d.metric("herald_connections"), self.LIMIT)
        self.assertGreaterEqual(d.metric("herald_connections_refused_total"), 20)
        r = d.publish("c.limit", "x")
        self.assertEqual(r[0], 503, r)
        # With the loopback reserve taken too (idle connections), the refusal comes at
        # accept, and is answered all the same.
        idle = [connect_from(d.port) for _ in range(8)]
        s, status, head, body = upgrade(d.port)
        self.assertTrue(status.startswith(b"HTTP/1.1 503 "), head)
        self.assertIn(b"retry-after: 1", head.lower())
        self.assertEqual(json.loads(body + read_all(s))["code"], "unavailable")
        for x in idle + [s]:
            x.close()
        # A slot comes back when a connection closes.
        held.pop().close()
        for _ in range(50):
            s, status, _, _ = upgrade(d.port)
            if b" 101 " in status:
                held.append(s)
                break
            s.close()
            time.sleep(0.1)
        else:
            self.fail("the slot never came back")
        for s in held + refused:
            s.close()


if __name__ == "__main__":
    unittest.main()
