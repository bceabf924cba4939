# SPDX-License-Identifier: MIT
"""Publish rate limits (CONFIG.md limits.publish_rate / publish_burst): over HTTP a publisher
past its bucket gets 429 rate_limited with Retry-After and nothing is stored; over WebSocket
an error frame with code rate_limited and the connection stays usable; the bucket refills.
"""

import time
import unittest

from herald_testlib import HeraldTestCase, WSClient, async_test

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
        time.sleep(1.1)  # two tokens per second: at least one is back
        self.assertEqual(d.publish("rl.a", "later")[0], 202)

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


if __name__ == "__main__":
    unittest.main()
