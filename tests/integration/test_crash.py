# SPDX-License-Identifier: MIT
"""Crash safety of the sqlite store (PROTOCOL.md sections 2, 3 and 5; CONFIG.md history):
with `durability: sync` every publish that got 202 survives `kill -9` with the same id and
data, in order, and ids after the restart continue after the old ones; with `async`
acknowledged events may be lost in a crash but ids are never reused, never duplicated, and what
survives is in order without holes; a clean SIGTERM keeps everything in both modes.

Four publisher threads publish over keep-alive HTTP concurrently; the kill comes at a seeded
random moment (a random number of acknowledged events, then a random few milliseconds).
"""

import os
import random
import shutil
import tempfile
import time
import unittest

from herald_testlib import HeraldTestCase
from history_testlib import Publisher, poll_all, wait_until

SEED = 20251128
PUBLISHERS = 4


class CrashTest(HeraldTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="herald-crash-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def config(self, durability):
        return {"data_dir": self.dir,
                "history": {"store": "sqlite", "durability": durability,
                            "max_events_per_topic": 1000000, "max_age_s": 0}}

    def start(self, durability):
        return self.start_daemon(self.config(durability), start_timeout=20)

    def publishers(self, d, tag0):
        pubs = [Publisher(d.port, f"crash.p{k}", tag=tag0 + k, tolerate_errors=True, timeout=10)
                for k in range(PUBLISHERS)]
        for p in pubs:
            p.start()
            self.addCleanup(p.stop)
        return pubs

    def run_until(self, pubs, target, max_s=20.0):
        """Waits until the publishers together have `target` acknowledged events."""
        ok = wait_until(lambda: sum(len(p.acked) for p in pubs) >= target or
                        not any(p.is_alive() for p in pubs), max_s, 0.001)
        errors = [p.error for p in pubs if p.error]
        self.assertEqual(errors, [], "publisher failed before the kill")
        refused = [r for p in pubs for r in p.refused]
        self.assertEqual(refused[:3], [], "publishes refused before the kill")
        return ok

    def join(self, pubs):
        for p in pubs:
            p.stop()
            p.join(15)
            self.assertFalse(p.is_alive(), "publisher hung after the daemon died")

    def recovered(self, d):
        events, gap, _, _ = poll_all(self, d, "crash.>", since="all", limit=1000)
        self.assertFalse(gap)
        ids = [e["id"] for e in events]
        self.assertIncreasing(ids, "recovered ids")
        return events

    def check_sync(self, events, pubs_all):
        """Every acknowledged event is there, same id and data; the only extras are the one
        publish per publisher that was in flight at the kill."""
        by_key = {(e["data"]["p"], e["data"]["seq"]): e for e in events}
        self.assertEqual(len(by_key), len(events), "the same data recovered twice")
        missing, changed = [], []
        for p in pubs_all:
            for seq, reply in p.acked:
                e = by_key.get((p.tag, seq))
                if e is None:
                    missing.append((p.tag, seq, reply["id"]))
                elif (e["id"], e["topic"], e["time"]) != (reply["id"], reply["topic"],
                                                          reply["time"]):
                    changed.append((reply, e))
                elif e["data"] != p.data(seq):
                    changed.append((p.data(seq), e))
        total = sum(len(p.acked) for p in pubs_all)
        self.assertEqual(missing[:5], [], f"{len(missing)} of {total} acknowledged events lost")
        self.assertEqual(changed[:3], [], f"{len(changed)} events changed id, time or data")
        known = {p.tag: p for p in pubs_all}
        for key, e in by_key.items():
            p = known.get(key[0])
            self.assertIsNotNone(p, f"an event nobody published: {e}")
            if key[1] >= len(p.acked):
                # Not acknowledged: only the single publish in flight at the kill may be there.
                self.assertEqual(key[1], len(p.acked), f"unexpected unacknowledged event {e}")
        self.check_order(events)

    def check_order(self, events):
        """In id order, each publisher's events are in its publish order."""
        last = {}
        for e in events:
            p, seq = e["data"]["p"], e["data"]["seq"]
            if p in last:
                self.assertGreater(seq, last[p], f"publisher {p} reordered at {e['id']}")
            last[p] = seq

    def test_sync_kill_9_loses_nothing_acknowledged(self):
        rng = random.Random(SEED)
        d = self.start("sync")
        pubs_all = []
        probes = []
        for rnd in range(3):
            target = rng.randint(800, 2500)
            extra_ms = rng.uniform(0, 30)
            pubs = self.publishers(d, tag0=10 * (rnd + 1))
            pubs_all += pubs
            self.run_until(pubs, target)
            time.sleep(extra_ms / 1000)
            d.kill()  # SIGKILL
            self.join(pubs)
            acked = sum(len(p.acked) for p in pubs)
            max_acked = max(i for p in pubs_all for i in p.ids)
            self.assertGreaterEqual(acked, min(target, 200), f"round {rnd}: too few publishes")

            d = self.start("sync")
            events = self.recovered(d)
            self.check_sync([e for e in events if e["topic"] != "crash.probe"], pubs_all)
            self.assertEqual([e["id"] for e in events if e["topic"] == "crash.probe"],
                             probes, f"round {rnd}: probe events after restarts")
            # New ids continue after every id the previous lives handed out.
            probe = d.publish_ok("crash.probe", {"round": rnd}, "application/json")
            self.assertGreater(probe["id"], max_acked, f"round {rnd}: id reused after restart")
            self.assertGreater(probe["id"], events[-1]["id"])
            probes.append(probe["id"])
            # A client resuming with an id from before the crash sees no gap.
            body_events, gap, _, _ = poll_all(self, d, "crash.>", since=events[-1]["id"])
            self.assertFalse(gap, f"round {rnd}: resuming across the restart reported a gap")
            self.assertEqual([e["id"] for e in body_events], [probe["id"]])
            print(f"\nround {rnd}: killed after {acked} acknowledged publishes "
                  f"(target {target}), {len(events)} events recovered")

    def test_async_kill_9_never_reuses_or_duplicates_ids(self):
        rng = random.Random(SEED + 1)
        d = self.start("async")
        pubs_all, max_id = [], ""
        for rnd in range(2):
            target = rng.randint(2000, 6000)
            pubs = self.publishers(d, tag0=10 * (rnd + 1))
            pubs_all += pubs
            self.run_until(pubs, target)
            time.sleep(rng.uniform(0, 0.01))
            d.kill()
            self.join(pubs)
            max_id = max([max_id] + [i for p in pubs for i in p.ids])

            d = self.start("async")
            events = self.recovered(d)
            ids = [e["id"] for e in events]
            self.assertEqual(len(ids), len(set(ids)), "duplicate ids after the crash")
            events = [e for e in events if e["topic"] != "crash.probe"]
            known = {p.tag: p for p in pubs_all}
            lost = 0
            for p in pubs_all:
                mine = [e for e in events if e["data"]["p"] == p.tag]
                seqs = [e["data"]["seq"] for e in mine]
                # What survives is a prefix of what this publisher sent: no holes, in order.
                self.assertEqual(seqs, list(range(len(seqs))), f"publisher {p.tag} has holes")
                self.assertLessEqual(len(seqs), p.attempted)
                for e in mine:
                    if e["data"]["seq"] < len(p.acked):
                        reply = p.acked[e["data"]["seq"]][1]
                        self.assertEqual(e["id"], reply["id"], "acknowledged id changed")
                        self.assertEqual(e["data"], p.data(e["data"]["seq"]))
                lost += max(0, len(p.acked) - len(seqs))
            self.assertTrue(all(e["data"]["p"] in known for e in events))
            self.check_order(events)
            probe = d.publish_ok("crash.probe", {"round": rnd}, "application/json")
            self.assertGreater(probe["id"], max_id, "an id acknowledged before the crash was "
                                                    "handed out again")
            max_id = probe["id"]
            print(f"\nasync round {rnd}: {sum(len(p.acked) for p in pubs)} acknowledged, "
                  f"{lost} lost in the crash")

    def sigterm_keeps_everything(self, durability):
        d = self.start(durability)
        pubs = self.publishers(d, tag0=1)
        self.run_until(pubs, 1500)
        t0 = time.monotonic()
        self.assertEqual(d.stop(), 0, "SIGTERM exit status")
        self.join(pubs)
        stop_s = time.monotonic() - t0
        d = self.start(durability)
        events = self.recovered(d)
        self.check_sync(events, pubs)
        self.assertLess(stop_s, 10)

    def test_sigterm_sync_keeps_everything(self):
        self.sigterm_keeps_everything("sync")

    def test_sigterm_async_keeps_everything(self):
        self.sigterm_keeps_everything("async")


class EmptyStoreFileTest(HeraldTestCase):
    """A zero-length herald.db (truncated, or a bad copy) is not taken silently for a new
    store: the daemon says so, with the path, and still starts."""

    def test_zero_length_database_is_logged(self):
        d_dir = tempfile.mkdtemp(prefix="herald-empty-")
        self.addCleanup(shutil.rmtree, d_dir, True)
        path = os.path.join(d_dir, "herald.db")
        open(path, "wb").close()
        d = self.start_daemon({"data_dir": d_dir, "history": {"store": "sqlite"}})
        m = d.wait_for_log(r'level=warn msg="the store file is empty.*path=(\S+)')
        self.assertIsNotNone(m, f"no warning for an empty herald.db:\n{d.log_tail()}")
        self.assertEqual(m.group(1), path)
        d.publish_ok("empty.a", "x")  # and the store works

    def test_a_fresh_data_dir_is_not_warned_about(self):
        d_dir = tempfile.mkdtemp(prefix="herald-fresh-")
        self.addCleanup(shutil.rmtree, d_dir, True)
        d = self.start_daemon({"data_dir": d_dir, "history": {"store": "sqlite"}})
        d.publish_ok("fresh.a", "x")
        self.assertNotIn("store file is empty", d.log)


if __name__ == "__main__":
    unittest.main()
