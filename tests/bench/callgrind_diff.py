#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Per-function user-space instructions per publish, and their change between two builds.

From callgrind_publish.sh's KEEP files: each build's E1 and E2 runs, the difference divided by
E2 - E1 events (start-up, connections and shutdown cancel out), self cost per function.
  tests/bench/callgrind_diff.py EVENTS A.E1.out A.E2.out [B.E1.out B.E2.out] [--top N] [--only OBJ]
With two builds the functions are listed by how much more B spends than A.
"""
import collections
import re
import subprocess
import sys


ONLY = None  # --only OBJ: functions of that shared object or executable only (e.g. heraldd)


def self_costs(path):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", "--auto=no", path],
                         capture_output=True, text=True, check=True).stdout
    cost = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(\S.*)$", line)
        if m and ":" in m.group(2) and not m.group(2).startswith("PROGRAM TOTALS"):
            obj = re.search(r"\[([^\]]*)\]$", m.group(2))
            if ONLY and not (obj and obj.group(1).rsplit("/", 1)[-1].startswith(ONLY)):
                continue
            name = re.sub(r"\s*\[[^\]]*\]$", "", m.group(2))
            if name.startswith("???") and obj:
                name = name[4:] + " " + obj.group(1).rsplit("/", 1)[-1]
            else:
                name = name.split(":", 1)[1]
            cost[name] += int(m.group(1).replace(",", ""))
    return cost


def per_publish(e1, e2, events):
    a, b = self_costs(e1), self_costs(e2)
    return {k: (b.get(k, 0) - a.get(k, 0)) / events for k in set(a) | set(b)}


def main(argv):
    global ONLY
    top = 40
    if "--only" in argv:
        i = argv.index("--only")
        ONLY = argv[i + 1]
        del argv[i:i + 2]
    if "--top" in argv:
        i = argv.index("--top")
        top = int(argv[i + 1])
        del argv[i:i + 2]
    events = int(argv[0])
    a = per_publish(argv[1], argv[2], events)
    if len(argv) < 5:
        for k, v in sorted(a.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{v:10.1f}  {k}")
        print(f"{sum(a.values()):10.1f}  total")
        return
    b = per_publish(argv[3], argv[4], events)
    keys = set(a) | set(b)
    rows = sorted(keys, key=lambda k: -(b.get(k, 0) - a.get(k, 0)))
    print(f"{'A':>10} {'B':>10} {'B-A':>10}  function")
    for k in rows[:top] + rows[-10:]:
        print(f"{a.get(k, 0):10.1f} {b.get(k, 0):10.1f} {b.get(k, 0) - a.get(k, 0):10.1f}  {k}")
    ta, tb = sum(a.values()), sum(b.values())
    print(f"{ta:10.1f} {tb:10.1f} {tb - ta:10.1f}  total")


main(sys.argv[1:])
