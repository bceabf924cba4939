#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# User-space instructions heraldd spends per delivery (fan-out shapes) or per event (many
# topics, one subscriber each), counted by callgrind for the publisher shapes of issue 18.
# Instruction counts repeat to within a few percent where CPU time on a shared 2-core machine
# swings by 30-50%, so A/B comparisons of code changes use these.
#
# Method (as callgrind_publish.sh): heraldd runs under callgrind twice per shape, with E1 and
# E2 events from loadgen; the difference of the two totals divided by the difference in
# deliveries (or events) is the cost of one, start-up, connections and shutdown cancelling out.
#
# usage: tests/bench/callgrind_shapes.sh BUILD_DIR [SHAPE ...]   (loopback only)
# shapes (default: all):
#   ws8       fan-out, 8 WebSocket publisher connections, one publish in flight each
#   ws1x8     fan-out, one WebSocket publisher with 8 publishes in flight (--pipeline 8)
#   http8     fan-out, 8 HTTP publisher connections, one request in flight each
#   http1     1,000 topics x 1 subscriber, one HTTP publisher, one request at a time
#   batch100  1,000 topics x 1 subscriber, one HTTP publisher, POST /v1/publish of 100 events
# environment: SUBS (fan-out subscribers, 1000), E1/E2 (events of the fan-out shapes, 200/600;
# of the many-topics shapes 10x as many)
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR [ws8 ws1x8 http8 http1 batch100 ...]}
shift
shapes=("$@")
[ $# -gt 0 ] || shapes=(ws8 ws1x8 http8 http1 batch100)
heraldd=$build/heraldd
loadgen=$build/tests/bench/loadgen
subs=${SUBS:-1000}
E1=${E1:-200} E2=${E2:-600}
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

run_one() { # events loadgen-args... -> total Ir
  local events=$1 log=$work/d.log out=$work/cg.out port=
  shift
  rm -f "$out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$heraldd" --listen 127.0.0.1:0 \
    >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    port=$(sed -n 's/.*msg="listening".*port=\([0-9]*\).*/\1/p' "$log" | head -1)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "heraldd did not start" >&2; cat "$log" >&2; exit 1; }
  "$loadgen" --port "$port" --events "$events" --timeout 600 "$@" >"$work/lg.json" ||
    { echo "loadgen failed: $(cat "$work/lg.json")" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" || true
  pid=
  sed -n 's/^summary: \([0-9]*\).*/\1/p' "$out"
}

for shape in "${shapes[@]}"; do
  per=delivery mult=$subs e1=$E1 e2=$E2
  case $shape in
  ws8) args=(--subs "$subs" --topics 1 --inflight 8 --mode ws) ;;
  ws1x8) args=(--subs "$subs" --topics 1 --inflight 1 --pipeline 8 --mode ws) ;;
  http8) args=(--subs "$subs" --topics 1 --inflight 8 --mode http) ;;
  http1 | batch100)
    per=event mult=1 e1=$((E1 * 10)) e2=$((E2 * 10))
    args=(--subs 1000 --topics 1000 --inflight 1 --mode http)
    [ "$shape" = batch100 ] && args+=(--batch 100)
    ;;
  *) echo "no shape $shape" >&2; exit 2 ;;
  esac
  a=$(run_one "$e1" "${args[@]}")
  b=$(run_one "$e2" "${args[@]}")
  echo "$shape: $(( (b - a) / ((e2 - e1) * mult) )) instructions per $per ($e1 -> $e2 events; ${args[*]})"
done
