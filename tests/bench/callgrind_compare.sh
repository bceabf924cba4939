#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# callgrind_publish.sh for several builds in one run, interleaved (build 1, build 2, ..., then
# again) so that what else the machine does falls on all of them alike, REPEAT times each;
# prints every figure and the median per build and mode. WebSocket figures move by +-1,500
# between runs of the same binary (how many publishes share a turn of the loop), so compare
# medians. Loopback only.
#   MODES="http ws" REPEAT=3 tests/bench/callgrind_compare.sh BUILD_DIR...
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 BUILD_DIR..." >&2; exit 2; }
here=$(dirname "$0")
read -r -a modes <<<"${MODES:-http ws}"
repeat=${REPEAT:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for ((r = 1; r <= repeat; r++)); do
  for mode in "${modes[@]}"; do
    for build in "$@"; do
      n=$("$here/callgrind_publish.sh" "$build" "$mode" | sed -n 's/^[a-z]*: \([0-9]*\) .*/\1/p')
      echo "$build $mode $n" | tee -a "$out"
    done
  done
done
echo
printf '%-40s %-5s %s\n' build mode "median (runs)"
for mode in "${modes[@]}"; do
  for build in "$@"; do
    runs=$(awk -v b="$build" -v m="$mode" '$1 == b && $2 == m {print $3}' "$out" | sort -n)
    median=$(echo "$runs" | awk '{a[NR] = $1} END {print NR % 2 ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)}')
    printf '%-40s %-5s %s (%s)\n' "$build" "$mode" "$median" "$(echo $runs | tr ' ' ',')"
  done
done
