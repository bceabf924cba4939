# SPDX-License-Identifier: MIT
"""Cluster mode with every NATS server stopped at once and started again (PROTOCOL.md section
10, README "Cluster"): while NATS is away the node answers publishes 503, keeps its connections
and says 503 on /healthz; once the cluster is back it is ready again, nothing published before
the stop is lost and a live subscriber gets exactly what was published after, in order, once.

A suite of its own, with a NATS cluster of its own: what a restart of the whole cluster leaves
behind (leaders still being elected, replicas catching up) must not reach the other cluster
tests, and ctest gives it its own time bound (tests/CMakeLists.txt)."""

import asyncio
import signal
import time
import unittest

import test_cluster
from herald_testlib import DAEMON_SLOW, WSClient, async_test, sanitized_build

# Under ASan and UBSan every heraldd is several times slower, and under ctest -j2 the two cores
# are shared with the sanitized daemons of the suites running beside this one, nats-servers
# included. DAEMON_SLOW (and nats_testlib's SLOW, which scales its own waits) cover valgrind only.
SAN = 2.5 if sanitized_build() else 1.0
T = 30.0 * DAEMON_SLOW * SAN
# A whole-cluster restart elects the meta leader, then the stream's leader, and the followers
# catch up from their files: about ten seconds on an idle machine, much longer on a loaded one.
SETTLE = 120.0 * SAN  # seconds before DAEMON_SLOW (nats_testlib applies its own)


class ClusterRestartTest(test_cluster.ClusterTestCase):
    """Its cluster (started by ClusterTestCase.setUpClass) is stopped and thrown away after
    the one test."""
    ready_timeout = T

    def tearDown(self):
        # Nothing to bring back: tearDownClass discards this cluster, whatever state it is in.
        pass

    async def blocking(self, fn, *args, **kw):
        # Long waits run off the event loop: the live subscriber must keep answering the node's
        # heartbeat pings (silent for two heartbeats, 50 s, the node closes it) while NATS is
        # away and while it settles.
        return await asyncio.to_thread(fn, *args, **kw)

    # While every NATS server is down the node's HTTP clients take the file descriptor numbers
    # libnats closed; its reconnect then gets one of them back. This test once failed there:
    # heraldd's recv() (the HTTP framing guard) read libnats' sockets too, and a guard left on
    # a reused number threw the server's INFO away, so the connection never came back.
    # It once ran in test_cluster's shared cluster and was left out of the sanitizer builds:
    # on Debian 13 under ASan (ctest -j2) the restarted cluster had not settled within the
    # test's 300 s and the tests after it found the shared cluster unhealthy. Now the cluster
    # is its own, the waits for it run beside the subscriber instead of blocking it, and every
    # bound scales with the build (the whole test must stay inside ctest's 900 s).
    @async_test(timeout=300 * DAEMON_SLOW * SAN)
    async def test_all_nats_servers_stopped(self):
        a = self.node("A")
        before = [a.publish_ok("keep.x", {"n": i})["id"] for i in range(10)]
        s = await WSClient.connect(a)
        await s.subscribe("keep.>")
        live = [a.publish_ok("keep.x", {"n": f"live {i}"})["id"] for i in range(3)]
        self.assertEqual([e["id"] for e in await s.recv_events(3, T)], live)
        mark = a.log_mark()
        for srv in self.cluster.servers:
            srv.kill(signal.SIGTERM)
        self.assertTrue(await self.blocking(a.wait_for_log, "cluster engine not ready", T,
                                            start=mark))
        # Several HTTP requests while NATS is away (each takes a descriptor number).
        for i in range(3):
            status, _, body = a.publish("keep.x", {"n": "while down"})
            self.assertEqual(status, 503, body)
            self.assertErrorBody(body, "unavailable")
        # Connections stay: the subscriber still answers pings.
        await s.ping(T)
        # /healthz says this node cannot serve publishes (README "Cluster").
        self.assertEqual(a.get("/healthz").status, 503)
        mark = a.log_mark()
        for srv in self.cluster.servers:
            srv.start(wait=False)
        for srv in self.cluster.servers:
            await self.blocking(srv.wait_listening)
        # The node is ready once JetStream is, not once the ports open: first the meta group
        # (it places a new stream), then the events' stream itself (a leader, and a quorum
        # current: what a publish needs).
        await self.blocking(self.cluster.wait_jetstream, timeout=SETTLE)
        await self.blocking(self.cluster.wait_stream_quorum, "HERALD", timeout=SETTLE)
        self.assertTrue(await self.blocking(a.wait_for_log, "cluster engine ready",
                                            SETTLE * DAEMON_SLOW, start=mark),
                        "the node never became ready again after NATS came back")
        # While the restarted cluster settles the node may lose its consumer or connection
        # again for a moment (and answer 503 meanwhile): what counts is that it comes back.
        after = [(await self.publish_when_ready(a, "keep.x", {"n": f"after {i}"},
                                                timeout=SETTLE * DAEMON_SLOW))["id"]
                 for i in range(5)]
        self.assertIncreasing(before + live + after, "ids across the restart")
        deadline = time.monotonic() + T
        while a.get("/healthz").status != 200:  # ready again: 200 (README "Cluster")
            self.assertLess(time.monotonic(), deadline, "/healthz never 200 again")
            await asyncio.sleep(0.2)
        # The live subscriber gets exactly what was published since, once, in order.
        self.assertEqual([e["id"] for e in await s.recv_events(5, T)], after)
        await s.expect_no_event(0.5)
        # Everything published before the stop is still there, also for a node that starts now.
        b = await self.blocking(self.node, "B")
        events, gap = self.poll_all(b, "keep.x")
        self.assertEqual([e["id"] for e in events], before + live + after)
        self.assertFalse(gap)


if __name__ == "__main__":
    unittest.main()
