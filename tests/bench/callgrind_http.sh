#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# User-space instructions per HTTP publish, by shared object: heraldd (BUILD/heraldd) under
# callgrind, 1,000 WebSocket subscribers on 1,000 topics, loadgen publishing over HTTP (4 in
# flight, 100-byte events). Two runs, SMALL and LARGE events; the difference divided by
# LARGE - SMALL cancels start-up, connecting and stopping. Needs valgrind. Loopback only.
#   tests/bench/callgrind_http.sh build [SMALL LARGE]
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR [SMALL LARGE]}
small=${2:-2000}
large=${3:-12000}
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

run() { # events -> $tmp/cg.<events>
  local n=$1 pid port i
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$n" "$build/heraldd" \
    --listen 127.0.0.1:0 2>"$tmp/log.$n" &
  pid=$!
  for i in $(seq 1200); do
    grep -q 'msg="listening"' "$tmp/log.$n" 2>/dev/null && break
    sleep 0.1
  done
  port=$(grep -m1 -o 'msg="listening".*port=[0-9]*' "$tmp/log.$n" | grep -o '[0-9]*$')
  "$build/tests/bench/loadgen" --port "$port" --subs 1000 --topics 1000 --events "$n" \
    --mode http --timeout 600 >"$tmp/loadgen.$n"
  kill -TERM "$pid"
  wait "$pid" || true
  grep -q '"missing":0' "$tmp/loadgen.$n" || { cat "$tmp/loadgen.$n" >&2; exit 1; }
}
run "$small"
run "$large"
python3 - "$tmp/cg.$small" "$tmp/cg.$large" $((large - small)) <<'PY'
import collections, re, sys

def self_cost_by_object(path):
    lines = open(path, errors="replace").read().splitlines()
    names = {}
    for line in lines:  # "ob=(3) /path" and "cob=(3) /path" name an id once
        m = re.match(r"c?ob=\((\d+)\) (.+)", line)
        if m:
            names[m.group(1)] = m.group(2)
    cost, cur, after_call = collections.Counter(), "?", False
    for line in lines:
        if line.startswith("ob="):
            m = re.match(r"ob=\((\d+)\)", line)
            cur = names.get(m.group(1), m.group(1)) if m else line[3:]
        elif line.startswith("calls="):
            after_call = True  # the next cost line is the call's inclusive cost
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_call:
                after_call = False
                continue
            parts = line.split()
            if len(parts) >= 2:
                cost[cur] += int(parts[1])
    return cost

a, b, n = self_cost_by_object(sys.argv[1]), self_cost_by_object(sys.argv[2]), int(sys.argv[3])
total = sum(b.values()) - sum(a.values())
print(f"instructions per HTTP publish: {total / n:,.0f}")
for obj in sorted(set(a) | set(b), key=lambda o: a[o] - b[o]):
    d = (b[obj] - a[obj]) / n
    if abs(d) >= 100:
        print(f"  {d:10,.0f}  {obj.rsplit('/', 1)[-1]}")
PY
