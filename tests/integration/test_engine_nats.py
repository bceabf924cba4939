# SPDX-License-Identifier: MIT
"""The NATS engine on its own (tests/nats_probe.c drives it, no broker) against a real
three-server JetStream cluster with replicas 3: same ids in the same order on every node, acks
only for what the stream holds, nothing acknowledged lost when the stream leader or a follower
is killed during a storm, retried keys giving one event, 503 while NATS is away and a resumed
feed after, a recreated stream as a new epoch, replays from the stream, and status gathered
from the other nodes. One cluster for the whole suite; storms are small and bounded."""

import collections
import glob
import json
import re
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import unittest

from nats_testlib import HERE, REPO, SLOW, NatsCluster

TIMEOUT = 30.0 * SLOW
SANITIZER_RE = re.compile(r"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|"
                          r"runtime error:|Segmentation fault", re.M)


def probe_path():
    path = os.environ.get("HERALD_NATS_PROBE")
    if path:
        return path
    build = os.environ.get("HERALD_BUILD_DIR")
    cands = [os.path.join(build, "tests", "nats_probe")] if build else []
    cands += sorted(glob.glob(os.path.join(REPO, "build*", "tests", "nats_probe")))
    for c in cands:
        if os.access(c, os.X_OK):
            return c
    raise AssertionError("nats_probe not found: build the tests (ctest sets HERALD_BUILD_DIR)")


class Probe:
    """One engine (a "node") in a nats_probe process; its JSON lines are read by a thread."""

    def __init__(self, urls, stream="HERALD", replicas=3, node="a"):
        self.node = node
        self.proc = subprocess.Popen([probe_path(), urls, stream, str(replicas), node],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines = queue.Queue()
        self.delivered = []  # ids in delivery order
        self.recovered = []
        self.gaps = []
        self.acks = []  # (n, id, dup, err)
        self.ack_times = {}  # id -> time of the latest ack naming it
        self.expect_exit = 0
        self.ready = None
        self.log = []
        self.metrics_at = []  # when each "metrics" answer arrived (the loop answers them)
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()
        self.threads = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self._read_err, daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                if "deliver" in msg:
                    self.delivered.append(msg["deliver"])
                elif "recovered" in msg:
                    self.recovered.append(msg["recovered"])
                elif "gap" in msg:
                    self.gaps.append(msg["gap"])
                elif "ack" in msg:
                    self.acks.append((msg["n"], msg["ack"], msg["dup"], msg["err"]))
                    self.ack_times[msg["ack"]] = msg.get("time")
                elif "ready" in msg:
                    self.ready = msg["ready"]
                elif "connected" in msg:
                    self.metrics_at.append(time.monotonic())
            self.lines.put(msg)

    def _read_err(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def send(self, cmd):
        with self.send_lock:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()

    def expect(self, pred, timeout=TIMEOUT, what="a line"):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.node}: no {what} in {timeout:.0f}s; log tail: "
                                     f"{''.join(self.log[-15:])}")
            try:
                msg = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if pred(msg):
                return msg

    def wait_until(self, cond, timeout=TIMEOUT, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if cond(self):
                    return
            time.sleep(0.02)
        raise AssertionError(f"{self.node}: {what} not reached in {timeout:.0f}s; log tail: "
                             f"{''.join(self.log[-15:])}")

    def wait_ready(self, ready=True, timeout=TIMEOUT):
        self.wait_until(lambda p: p.ready is ready, timeout, f"ready={ready}")

    def publish(self, n, topic="probe.t", key=None):
        """Publishes n events and waits for every answer; returns the acks of this batch."""
        with self.lock:
            before = len(self.acks)
        self.send(f"pub {n} {topic}" + (f" {key}" if key else ""))
        self.send("wait-acks")
        done = self.expect(lambda m: "acked" in m, what="acks")
        with self.lock:
            acks = self.acks[before:]
        return acks, done

    def close(self):
        if self.proc.stdin.closed:
            return
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=10 * SLOW)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for t in self.threads:  # everything the probe wrote, before judging it
            t.join(5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        # A sanitizer build reports leaks and errors at exit: they fail the test.
        log = "".join(self.log)
        if self.proc.returncode not in (0, self.expect_exit, None) or SANITIZER_RE.search(log):
            raise AssertionError(f"nats_probe {self.node} exited {self.proc.returncode}: "
                                 f"{log[-3000:]}")


class EngineNatsTest(unittest.TestCase):
    cluster = None

    @classmethod
    def setUpClass(cls):
        cls.cluster = NatsCluster(3).start()

    @classmethod
    def tearDownClass(cls):
        if cls.cluster:
            cls.cluster.stop()

    def setUp(self):
        self.probes = []
        # Every test starts from an empty stream, created by the first probe.
        self.cluster.reset_stream()

    def tearDown(self):
        # Every probe is stopped even when one fails, so none answers in the next test.
        failures = []
        for p in self.probes:
            try:
                p.close()
            except AssertionError as e:
                failures.append(e)
        for s in self.cluster.servers:
            if not s.running():
                s.start()
        self.cluster.wait_jetstream()
        if failures:
            raise failures[0]

    def probe(self, node, **kw):
        p = Probe(self.cluster.urls, node=node, **kw)
        self.probes.append(p)
        p.wait_ready()
        return p

    def test_same_ids_same_order_on_every_node(self):
        a, b = self.probe("a"), self.probe("b")
        acks_a, _ = a.publish(150, "chat.a")
        acks_b, _ = b.publish(150, "chat.b")
        self.assertTrue(all(err == 0 for _, _, _, err in acks_a + acks_b))
        ids = sorted(i for _, i, _, _ in acks_a + acks_b)
        self.assertEqual(len(set(ids)), 300)
        for p in (a, b):
            p.wait_until(lambda q: len(q.delivered) >= 300, what="300 deliveries")
        # Both nodes delivered exactly the acknowledged ids, in the same increasing order.
        self.assertEqual(a.delivered, b.delivered)
        self.assertEqual(a.delivered, ids)
        self.assertEqual(a.gaps, [])

    def test_retried_key_on_another_node_is_one_event(self):
        a, b = self.probe("a"), self.probe("b")
        acks_a, _ = a.publish(1, "orders.1", key="order-77")
        time.sleep(0.01)  # a later clock on node b, so that a wrong time would show
        acks_b, _ = b.publish(1, "orders.1", key="order-77")
        (_, id_a, dup_a, err_a), (_, id_b, dup_b, err_b) = acks_a[0], acks_b[0]
        self.assertEqual((err_a, err_b), (0, 0))
        self.assertFalse(dup_a)
        self.assertTrue(dup_b)
        self.assertEqual(id_a, id_b)
        self.assertEqual(a.ack_times[id_a], b.ack_times[id_b])  # the first publish's time
        a.wait_until(lambda q: id_a in q.delivered, what="the event")
        acks, _ = a.publish(1, "orders.1", key="order-78")  # a later event proves the feed moved
        a.wait_until(lambda q: acks[0][1] in q.delivered, what="the next event")
        self.assertEqual(a.delivered.count(id_a), 1)

    def storm_with_kill(self, pick_victim):
        a, b = self.probe("a"), self.probe("b")
        # The kill is the test, not a stream still forming: its replicas must have a quorum
        # first (after the suite's whole-cluster restarts a slow follower may take a while).
        self.cluster.wait_stream_quorum()
        victim = pick_victim()
        total, batch, killed = 20000, 1000, False
        acked = []
        for i in range(0, total, batch):
            a.send(f"pub {batch} storm.x")
            if not killed and i >= total // 4:
                victim.kill()
                killed = True
        a.send("wait-acks")
        done = a.expect(lambda m: "acked" in m, timeout=120 * SLOW, what="storm acks")
        with a.lock:
            acked = [i for _, i, _, err in a.acks if err == 0]
            errors = collections.Counter(err for *_, err in a.acks if err)
        self.assertGreater(len(acked), total * 0.9,
                           f"{done}, errors {dict(errors)}, log: {''.join(a.log[-20:])}\n"
                           f"{self.cluster.tails()}")
        # Every acknowledged event reaches the other node exactly once, in order.
        want = set(acked)
        b.wait_until(lambda q: want <= set(q.delivered), timeout=120 * SLOW,
                     what="every acknowledged event on node b")
        with b.lock:
            seen = list(b.delivered)
        self.assertEqual(len(seen), len(set(seen)), "an event delivered twice")
        self.assertEqual(seen, sorted(seen))
        victim.start()
        return a, b, acked

    def test_storm_survives_stream_leader_kill(self):
        self.probe("c")  # creates the stream so that it has a leader to kill
        self.storm_with_kill(lambda: self.cluster.stream_leader())

    def test_storm_survives_follower_kill(self):
        self.probe("c")
        def follower():
            leader = self.cluster.stream_leader()
            return next(s for s in self.cluster.servers if s is not leader)
        self.storm_with_kill(follower)

    def refused_until_servers_return(self, a, topic):
        """With every server down: a publish is refused; the servers start again and five
        publishes are acknowledged. Returns their acks."""
        a.send(f"pub 1 {topic}")
        refused = a.expect(lambda m: "publish_refused" in m, what="a refused publish")
        self.assertEqual(refused["publish_refused"], -11)  # -EAGAIN: the broker answers 503
        for s in self.cluster.servers:
            s.start()
        a.wait_ready(True, timeout=60 * SLOW)
        acks, _ = a.publish(5, topic)
        self.assertTrue(all(err == 0 for *_, err in acks), acks)
        return acks

    def test_all_servers_down_then_back(self):
        a = self.probe("a")
        acks, _ = a.publish(20, "keep.me")
        for s in self.cluster.servers:
            s.kill()
        a.wait_ready(False)
        more = self.refused_until_servers_return(a, "keep.me")
        ids = [i for _, i, _, _ in acks + more]
        a.wait_until(lambda q: set(ids) <= set(q.delivered), what="feed resumed")
        # A node starting now recovers everything published before the stop.
        c = self.probe("c")
        c.wait_until(lambda q: set(i for _, i, _, _ in acks) <= set(q.recovered),
                     what="recovery of the events from before the stop")

    def test_starts_before_nats(self):
        # libnats' libuv adapter can attach a first connection only on the loop thread, so the
        # engine connects there itself once its worker sees a server answer: it must still
        # come up when every server starts after it.
        for s in self.cluster.servers:
            s.kill()
        a = Probe(self.cluster.urls, node="a")
        self.probes.append(a)
        a.expect(lambda m: m.get("started"), what="start without NATS")
        acks = self.refused_until_servers_return(a, "early.x")
        ids = [i for _, i, _, _ in acks]
        a.wait_until(lambda q: set(ids) <= set(q.delivered), what="the feed")

    def test_a_server_that_swallows_connections_does_not_stall_the_loop(self):
        # A listener whose accept queue is full drops every SYN, as a dead host or a firewall
        # does: connecting to it takes libnats' whole connect timeout (2 s). The engine
        # connects on its loop (libuv adapter), so it must go first to the server its probe
        # heard answer, not to one in libnats' random order.
        holes, fills = [], []
        for _ in range(2):
            h = socket.socket()
            h.bind(("127.0.0.1", 0))
            h.listen(0)
            f = socket.create_connection(h.getsockname())  # fills the queue of one
            holes.append(h)
            fills.append(f)
        try:
            for s in self.cluster.servers:
                s.kill()
            live = self.cluster.servers[0]
            urls = ",".join([f"nats://127.0.0.1:{h.getsockname()[1]}" for h in holes]
                            + [live.url])
            a = Probe(urls, node="a")
            self.probes.append(a)
            a.expect(lambda m: m.get("started"), timeout=TIMEOUT + 10, what="start without NATS")
            # The loop answers "metrics" within milliseconds unless something blocks it.
            stop = threading.Event()
            def ask():
                while not stop.is_set():
                    a.send("metrics")
                    stop.wait(0.05)
            asker = threading.Thread(target=ask, daemon=True)
            asker.start()
            try:
                for s in self.cluster.servers:
                    s.start()
                a.wait_ready(True, timeout=60 * SLOW)
            finally:
                stop.set()
                asker.join()
            with a.lock:
                at = list(a.metrics_at)
            self.assertGreater(len(at), 2, "the loop answered no metrics")
            stall = max(later - t for t, later in zip(at, at[1:]))
            self.assertLess(stall, 1.5 * SLOW, "the loop stalled while connecting")
        finally:
            for x in fills + holes:
                x.close()

    def test_recreated_stream_is_a_new_epoch(self):
        a = self.probe("a")
        old, _ = a.publish(10, "ep.x")
        old_ids = [i for _, i, _, _ in old]
        a.wait_until(lambda q: set(old_ids) <= set(q.delivered), what="old events")
        self.cluster.delete_stream()
        # The node notices, creates the stream again and reports a gap at the new epoch.
        a.wait_until(lambda q: q.gaps, timeout=30 * SLOW, what="a gap")
        a.wait_ready(True)
        new, _ = a.publish(3, "ep.x")
        new_ids = [i for _, i, _, err in new if err == 0]
        self.assertEqual(len(new_ids), 3)
        self.assertGreater(min(new_ids), max(old_ids))
        self.assertGreater(a.gaps[-1], max(old_ids))
        a.wait_until(lambda q: set(new_ids) <= set(q.delivered), what="new events")
        # An old cursor replays with a gap and never names a new event wrongly.
        a.send(f"replay ep.> {old_ids[4]} {new_ids[-1]}")
        r = a.expect(lambda m: "replay" in m, what="replay")
        self.assertEqual(r["err"], 0)
        self.assertTrue(r["gap"])
        self.assertEqual(r["replay"], new_ids)

    def test_replay_from_the_stream(self):
        a = self.probe("a")
        acks, _ = a.publish(30, "rp.one")
        other, _ = a.publish(30, "rp.two")
        ids = [i for _, i, _, _ in acks]
        a.send(f"replay rp.one {ids[9]} {other[-1][1]}")
        r = a.expect(lambda m: "replay" in m, what="replay")
        self.assertEqual((r["err"], r["gap"]), (0, False))
        self.assertEqual(r["replay"], ids[10:])
        a.send(f"replay rp.* {ids[27]} {other[1][1]}")
        r = a.expect(lambda m: "replay" in m, what="replay")
        self.assertEqual(r["replay"], ids[28:] + [other[0][1], other[1][1]])
        a.send("metrics")
        m = a.expect(lambda m: "replays" in m, what="metrics")
        self.assertEqual(m["connected"], 1)
        self.assertEqual(m["pending"], 0)

    def test_a_stream_that_does_not_fit_is_refused(self):
        self.probe("a")  # creates the stream with 3 replicas
        b = Probe(self.cluster.urls, node="b", replicas=1)
        self.probes.append(b)
        why = "has 3 replicas but engine.replicas is 1"
        # Start waits a bounded time for the stream check. When JetStream answers within it
        # (the usual case) start fails and the process exits 2; when it does not (a loaded
        # machine), the node starts unready and refuses the stream as soon as the check
        # answers: it says why, at error level, and never becomes ready.
        m = b.expect(lambda m: "start_failed" in m or "started" in m, what="a refusal",
                     timeout=60 * SLOW)
        if "start_failed" in m:
            self.assertIn(why, m["start_failed"])
            b.expect_exit = 2
            b.proc.wait(10 * SLOW)
            self.assertEqual(b.proc.returncode, 2)
            return
        deadline = time.monotonic() + 60 * SLOW
        while not any("stream does not fit" in l and why in l for l in b.log):
            self.assertLess(time.monotonic(), deadline, "no refusal logged: " + "".join(b.log[-5:]))
            time.sleep(0.1)
        self.assertFalse(b.ready)  # None: it never said it was ready

    def test_status_from_other_nodes(self):
        a, _b, _c = self.probe("a"), self.probe("b"), self.probe("c")
        acks, _ = a.publish(1, "st.x")
        a.send(f"status {acks[0][1]}")
        r = a.expect(lambda m: "status_nodes" in m, what="status")
        # b and c answer (each claims one queued, one written); a does not ask itself.
        self.assertEqual(r["err"], 0)
        self.assertEqual(r["status_nodes"], 2)
        self.assertEqual((r["queued"], r["written"]), (2, 2))


if __name__ == "__main__":
    unittest.main()
