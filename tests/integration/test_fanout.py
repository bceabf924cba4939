# SPDX-License-Identifier: MIT
"""Fan-out at scale: the C load generator (tests/bench/loadgen) connects 1000 WebSocket
subscribers to one topic, publishes 1000 events and checks that every subscriber got every
event exactly once and in order. This suite only runs it against a fresh daemon and checks
its verdict; a missing load generator is a failure, not a skip, so CI cannot go green
without the test having run.
"""

import json
import os
import subprocess
import unittest

from herald_testlib import HeraldTestCase, build_dir, raise_nofile_limit

SUBS = 1000
EVENTS = 1000


def loadgen_path():
    return os.path.join(build_dir(), "tests", "bench", "loadgen")


def last_json_line(text, key):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if key in obj:
                return obj
    return None


class FanoutTest(HeraldTestCase):
    def test_1000_subscribers_1000_events_exactly_once_in_order(self):
        exe = loadgen_path()
        if not os.access(exe, os.X_OK):
            self.fail(f"load generator not found at {exe}: build target 'loadgen' "
                      f"(tests/bench) must exist for this suite")
        d = self.start_daemon()
        cmd = [exe, "--host", "127.0.0.1", "--port", str(d.port), "--subs", str(SUBS),
               "--topics", "1", "--events", str(EVENTS), "--check-exact", "--timeout", "120"]
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=180, preexec_fn=raise_nofile_limit)
        except subprocess.TimeoutExpired as e:
            self.fail(f"loadgen did not finish within 180 s: {(e.stdout or '')[-2000:]}")
        detail = f"cmd={' '.join(cmd)}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
        self.assertEqual(p.returncode, 0, f"loadgen failed (exit {p.returncode})\n{detail}")
        result = last_json_line(p.stdout, "delivered")
        self.assertIsNotNone(result, f"loadgen printed no JSON line with 'delivered'\n{detail}")
        self.assertEqual(result["delivered"], SUBS * EVENTS, detail)
        # The daemon agrees on how many events it accepted and is still serving.
        self.assertGreaterEqual(d.metric("herald_events_published_total"), EVENTS)
        self.assertEqual(d.get("/healthz").status, 200)


if __name__ == "__main__":
    unittest.main()
