#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# User-space instructions heraldd spends per publish, counted by callgrind (repeatable, unlike
# time on a shared machine): heraldd runs under callgrind twice, with E1 and E2 events from
# loadgen to 1,000 subscribers on 1,000 topics, and the difference of the two totals divided
# by E2 - E1 is the cost of one publish (start-up, connections and shutdown cancel out).
# Usage: tests/bench/callgrind_publish.sh BUILD_DIR [http|ws ...]   (loopback only)
# KEEP=DIR keeps the callgrind files as DIR/<mode>.<events>.out, for callgrind_annotate (per
# function: the same difference, e.g. tests/bench/callgrind_diff.py DIR/http.5000.out ...).
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR [http|ws ...]}
shift
modes=("${@:-http ws}")
[ $# -gt 0 ] || modes=(http ws)
heraldd=$build/heraldd
loadgen=$build/tests/bench/loadgen
E1=${E1:-5000} E2=${E2:-15000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -z "${KEEP:-}" ] || mkdir -p "$KEEP"

run_one() { # mode events -> total Ir
  local mode=$1 events=$2 log=$work/d.log out=$work/cg.out
  rm -f "$out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$heraldd" --listen 127.0.0.1:0 \
    >"$log" 2>&1 &
  local pid=$! port=
  for _ in $(seq 600); do
    port=$(sed -n 's/.*msg="listening".*port=\([0-9]*\).*/\1/p' "$log" | head -1)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "heraldd did not start" >&2; cat "$log" >&2; exit 1; }
  "$loadgen" --port "$port" --subs 1000 --topics 1000 --events "$events" --inflight 8 \
    --mode "$mode" --timeout 300 >/dev/null
  kill -TERM "$pid"
  wait "$pid" || true
  sed -n 's/^summary: \([0-9]*\).*/\1/p' "$out"
  [ -z "${KEEP:-}" ] || cp "$out" "$KEEP/$mode.$events.out"
}

for mode in "${modes[@]}"; do
  a=$(run_one "$mode" "$E1")
  b=$(run_one "$mode" "$E2")
  echo "$mode: $(( (b - a) / (E2 - E1) )) instructions per publish ($E1 -> $E2 events)"
done
