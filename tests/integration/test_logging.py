# SPDX-License-Identifier: MIT
"""What heraldd tells its operator (issue 16): a listener that cannot be bound is reported in
heraldd's own error line with the address and the reason ("Address already in use"), SSE
streams do not log libwebsockets' "not h2 substream" complaint, and `--log-level debug` shows
heraldd's own records of connections, subscriptions, publishes and closes (with the close code)
rather than libwebsockets internals.
"""

import re
import socket
import unittest

from herald_testlib import Daemon, HeraldTestCase, WSClient, async_test
from history_testlib import raw_get


class LoggingTest(HeraldTestCase):
    def test_address_in_use_is_said_by_heraldd(self):
        a = self.start_daemon()
        b = Daemon(listen=False, args=["--listen", f"127.0.0.1:{a.port}"])
        b.start()
        self.addCleanup(b.kill)
        rc = b.wait(10)
        self.assertNotEqual(rc, 0)
        own = [line for line in b.log.splitlines()
               if "level=error" in line and "libwebsockets" not in line]
        self.assertTrue(any(f"127.0.0.1:{a.port}" in line and "Address already in use" in line
                            for line in own), f"heraldd's own error lines: {own}")

    @async_test()
    async def test_debug_shows_heralds_own_records(self):
        d = self.start_daemon(log_level="debug")
        mark = d.log_mark()
        ws = await WSClient.connect(d)
        await ws.subscribe("log.a")
        d.publish_ok("log.a", "x")
        await ws.recv_event()
        await ws.close()
        for pattern in (r'msg="connect" conn=\d+ kind=ws', r'msg="subscribe" conn=\d+ pattern=log.a',
                        r'msg="publish" topic=log.a', r'msg="peer closed" conn=\d+ code=1000',
                        r'msg="disconnect" conn=\d+'):
            self.assertIsNotNone(d.wait_for_log(pattern, start=mark),
                                 f"no {pattern} record at debug:\n{d.log_tail()}")
        lws_lines = [line for line in d.log.splitlines() if "libwebsockets" in line]
        self.assertLess(len(lws_lines), 10, f"libwebsockets internals at debug: {lws_lines[:10]}")

    def test_sse_stream_logs_no_h2_complaint(self):
        d = self.start_daemon(log_level="debug")
        s = raw_get(d.port, "/v1/topics/log.sse/sse")
        self.addCleanup(s.close)
        buf = b""
        d.publish_ok("log.sse", "x")
        while b"event: message" not in buf:  # the stream is set up and delivering
            chunk = s.recv(4096)
            self.assertTrue(chunk, buf)
            buf += chunk
        self.assertIn(b" 200 ", buf.split(b"\r\n")[0])
        # The complaint came (on the old daemon) right after the head went out.
        self.assertIsNone(d.wait_for_log(r"not h2 substream", timeout=1.0), d.log_tail())


if __name__ == "__main__":
    unittest.main()
