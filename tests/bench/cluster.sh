#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# cluster.sh: cluster mode (engine nats) beside the local engine, in one run on this machine.
# For the local engine, NATS with replicas 1 (one nats-server) and NATS with replicas 3 (three
# clustered nats-servers), each with fresh servers:
#   - acknowledged publishes/s: one subscriber, publishers over HTTP with 64 in flight;
#   - fan-out: subscribers split over two heraldd nodes (publishers on the first), 16 in flight;
#     deliveries/s, p99 publish-to-delivery, heraldd CPU per delivery summed over the nodes,
#     and nats-server CPU per publish summed over the servers; events per WebSocket write
#     (herald_deliveries_written_total over herald_ws_writes_total, summed over the nodes);
#   - the same fan-out at a fixed RATE publishes/s, below saturation: CPU per delivery at
#     saturation depends on how many events each write carries, at a steady rate less so;
#   - a control for that fixed rate without NATS ("pair"): two local-engine nodes with half the
#     subscribers each, each fed by a loadgen of its own at RATE, so that every node wakes for
#     every event as in cluster mode. What cluster mode costs beyond it is NATS's share.
# Everything listens on loopback; nothing is installed; nats-server comes from scripts/nats-server.
#
# usage: tests/bench/cluster.sh [BUILD_DIR]        (default ./build)
# environment: EVENTS (20000), SUBS (1000), TOPICS (10), RATE (300), OUT
#   (tests/bench/results/cluster.md), ENGINES ("local pair r1 r3": which scenarios run), RUNS (3:
#   the table shows medians over the runs), PIN ("": no pinning; "A:B" runs every heraldd on
#   CPUs A and loadgen and the nats-servers on CPUs B, taskset lists such as 0 or 0-1: the
#   nodes then get the same cores whichever engine runs, and stop competing with the load)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=$(realpath -e "${1:-./build}")
events=${EVENTS:-20000}
subs=${SUBS:-1000}
topics=${TOPICS:-10}
rate=${RATE:-300}
engines=${ENGINES:-local pair r1 r3}
runs=${RUNS:-3}
out=${OUT:-$here/results/cluster.md}
pin=${PIN:-}
pin_node=() pin_other=()
if [[ -n $pin ]]; then
    [[ $pin =~ ^[0-9,-]+:[0-9,-]+$ ]] || { echo "cluster.sh: PIN: expected A:B (CPU lists), got '$pin'" >&2; exit 2; }
    pin_node=(taskset -c "${pin%%:*}") pin_other=(taskset -c "${pin##*:}")
fi
heraldd=$build/heraldd
loadgen=$build/tests/bench/loadgen
[[ -x $heraldd && -x $loadgen ]] || { echo "cluster.sh: build heraldd and loadgen first" >&2; exit 2; }
command -v jq >/dev/null || { echo "cluster.sh: needs jq (apt-get install -y jq)" >&2; exit 2; }
nats=$("$repo/scripts/nats-server")
tmp=$(mktemp -d /tmp/herald-cluster-bench.XXXXXX)
pids=()
stop_all() { # every process this script started, and waits for them
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
cleanup() {
    stop_all
    rm -rf "$tmp"
}
trap cleanup EXIT

free_ports() { # N distinct free loopback ports
    python3 -c 'import socket,sys
s=[socket.socket() for _ in range(int(sys.argv[1]))]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}

# Starts heraldd with config $1 (a file) and waits until it takes publishes; sets node_pid and
# node_port. (Not in a command substitution: the subshell would wait for heraldd's end.)
start_node() {
    local log=$tmp/heraldd.$RANDOM.log i port=""
    "${pin_node[@]}" "$heraldd" -c "$1" --listen 127.0.0.1:0 >/dev/null 2>"$log" &
    node_pid=$!
    pids+=("$node_pid")
    for ((i = 0; i < 600; i++)); do
        port=$(grep -m1 -o 'msg="listening".*port=[0-9]*' "$log" | grep -o '[0-9]*$' || true)
        if [[ -n $port ]] && curl -sf -o /dev/null -d x "http://127.0.0.1:$port/v1/topics/warm.up"; then
            node_port=$port
            return
        fi
        sleep 0.1
    done
    echo "cluster.sh: heraldd did not become ready; log:" >&2
    tail -20 "$log" >&2
    exit 2
}

# Starts N nats-servers (clustered when N > 1); sets nats_urls and nats_pids.
start_nats() {
    local n=$1 ports i routes
    read -r -a ports <<<"$(free_ports $((2 * n)))"
    routes="nats://127.0.0.1:${ports[$n]}"
    nats_urls=""
    nats_pids=""
    for ((i = 0; i < n; i++)); do
        local args=(-a 127.0.0.1 -p "${ports[$i]}" -n "n$i" -js -sd "$tmp/nats-$n-$i")
        if ((n > 1)); then
            args+=(--cluster_name bench --cluster "nats://127.0.0.1:${ports[$((n + i))]}"
                   --routes "$routes")
        fi
        "${pin_other[@]}" "$nats" "${args[@]}" >/dev/null 2>"$tmp/nats-$n-$i.log" &
        pids+=($!)
        nats_pids+="${nats_pids:+,}$!"
        nats_urls+="${nats_urls:+,}nats://127.0.0.1:${ports[$i]}"
    done
    # Listening before the nodes start: a node's start-up is not what is measured.
    for ((i = 0; i < n; i++)); do
        local t
        for ((t = 0; t < 100; t++)); do
            (exec 3<>"/dev/tcp/127.0.0.1/${ports[$i]}") 2>/dev/null && break
            sleep 0.1
        done
    done
}

node_config() { # $1 node name, $2 urls ("" = local engine), $3 replicas
    local f=$tmp/$1.json
    if [[ -z $2 ]]; then
        printf '{"history":{"max_events_per_topic":1000},"limits":{"max_queue_bytes":67108864}}\n' >"$f"
    else
        local servers
        servers=$(jq -cn --arg u "$2" '$u | split(",")')
        printf '{"engine":{"type":"nats","servers":%s,"replicas":%s,"node":"%s"},"history":{"max_events_per_topic":1000},"limits":{"max_queue_bytes":67108864}}\n' \
            "$servers" "$3" "$1" >"$f"
    fi
    echo "$f"
}

# Sums a counter from /metrics over the nodes' ports.
metric_sum() { # name, port...
    local name=$1 p total=0 v
    shift
    for p in "$@"; do
        v=$(curl -sf "http://127.0.0.1:$p/metrics" | awk -v n="$name" '$1 == n { print $2 }')
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# The nodes' WebSocket writes and deliveries so far (over the caller's $ports), for record.
write_counts() {
    echo "$(metric_sum herald_ws_writes_total "${ports[@]}")" \
        "$(metric_sum herald_deliveries_written_total "${ports[@]}")"
}

# Appends a fan-out's figures to records.jsonl with its label, its scenario's acked publishes/s
# and the events per write since write_counts gave w0 and d0.
record() { # label, loadgen json, acked publishes/s (or null), w0, d0
    local w1 d1 epw
    read -r w1 d1 <<<"$(write_counts)"
    epw=$(awk -v w=$((w1 - $4)) -v d=$((d1 - $5)) 'BEGIN { printf "%.2f", w ? d / w : 0 }')
    jq -c --arg l "$1" --argjson epw "$epw" --argjson acked "$3" \
        '. + {label: $l, events_per_write: $epw, acked_per_s: $acked}' <<<"$2" >>"$tmp/records.jsonl"
}

# Runs one fan-out (extra loadgen options in $@ after the label) and records it, with the acked
# publishes/s of its scenario ($pub, then cleared).
fanout() { # label, loadgen options...
    local label=$1 fan w0 d0 acked=null
    shift
    read -r w0 d0 <<<"$(write_counts)"
    echo "cluster.sh: $label: fan-out to $subs subscribers" >&2
    fan=$("${pin_other[@]}" "$loadgen" --port "$a" "${split[@]}" --server-pid "$servers" "${other[@]}" \
        --subs "$subs" --topics "$topics" --events "$events" --inflight 16 --allow-reorder \
        --timeout 120 "$@")
    echo "$label fanout: $fan" >>"$tmp/raw.jsonl"
    [[ -n $pub ]] && acked=$(jq '.publish_per_s' <<<"$pub")
    record "$label" "$fan" "$acked" "$w0" "$d0"
    pub=""
}

run_scenario() { # label, nats servers (0 = local engine), replicas
    local label=$1 n=$2 r=$3 urls="" a b pa pb pub other=() split=() ports=()
    if ((n > 0)); then
        start_nats "$n"
        urls=$nats_urls
        other=(--other-pids "$nats_pids")
    fi
    start_node "$(node_config a "$urls" "$r")"
    pa=$node_pid a=$node_port
    ports=("$a")
    if ((n > 0)); then
        start_node "$(node_config b "$urls" "$r")"
        pb=$node_pid b=$node_port
        ports+=("$b")
        split=(--sub-port2 "$b")
        servers="$pa,$pb"
    else
        servers="$pa"
    fi
    echo "cluster.sh: $label: acknowledged publishes" >&2
    pub=$("${pin_other[@]}" "$loadgen" --port "$a" --subs 1 --topics 1 --events "$events" --inflight 64 \
        --server-pid "$servers" "${other[@]}" --timeout 120)
    echo "$label publish: $pub" >>"$tmp/raw.jsonl"
    fanout "$label"
    fanout "$label, $rate/s" --rate "$rate"
    stop_all
}

# The fixed-rate control: two local-engine nodes, no NATS, half the subscribers and a loadgen
# of its own each (publishing RATE/s: half the deliveries per event, as for a cluster node).
run_pair() {
    local label="two local nodes, no NATS, $rate/s each" a b pa pb w0 d0 lp fan
    local ports=()
    start_node "$(node_config a "" 1)"
    pa=$node_pid a=$node_port
    start_node "$(node_config b "" 1)"
    pb=$node_pid b=$node_port
    ports=("$a" "$b")
    read -r w0 d0 <<<"$(write_counts)"
    echo "cluster.sh: $label: fan-out to $subs subscribers" >&2
    local common=(--subs $((subs / 2)) --topics "$topics" --events "$events" --inflight 16
                  --allow-reorder --timeout 120 --rate "$rate")
    "${pin_other[@]}" "$loadgen" --port "$a" --server-pid "$pa" "${common[@]}" >"$tmp/pair-a.json" &
    lp=$!
    "${pin_other[@]}" "$loadgen" --port "$b" --server-pid "$pb" "${common[@]}" >"$tmp/pair-b.json"
    wait "$lp"
    echo "$label fanout (node a): $(cat "$tmp/pair-a.json")" >>"$tmp/raw.jsonl"
    echo "$label fanout (node b): $(cat "$tmp/pair-b.json")" >>"$tmp/raw.jsonl"
    # Summed over the two, CPU per delivery over both nodes; latencies: the worse node's.
    fan=$(jq -cs '{deliveries_per_s: (map(.deliveries_per_s) | add),
                   publish_per_s: (map(.publish_per_s) | add),
                   lat_us: {p50: (map(.lat_us.p50) | max), p99: (map(.lat_us.p99) | max)},
                   server_cpu_us_per_delivery:
                     ((map(.server_cpu_s) | add) / (map(.delivered) | add) * 1000000),
                   other_cpu_us_per_publish: null, missing: (map(.missing) | add)}' \
        "$tmp/pair-a.json" "$tmp/pair-b.json")
    record "$label" "$fan" null "$w0" "$d0"
    stop_all
}

# The engines take turns within each run, so a neighbour's load on this shared machine hits
# them alike; the table shows each figure's median over the runs.
for ((run = 1; run <= runs; run++)); do
    for e in $engines; do
        case $e in
        local) run_scenario "local engine (one node)" 0 1 ;;
        pair) run_pair ;;
        r1) run_scenario "nats, replicas 1 (two nodes)" 1 1 ;;
        r3) run_scenario "nats, replicas 3 (two nodes, three servers)" 3 3 ;;
        *) echo "cluster.sh: ENGINES: expected local, pair, r1 or r3, got '$e'" >&2; exit 2 ;;
        esac
    done
done

mkdir -p "$(dirname "$out")"
{
    echo "# Cluster mode beside the local engine"
    echo
    echo "$(date -u +%Y-%m-%d) at $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?'),"
    echo "$(nproc) CPUs, medians of $runs runs (the engines take turns within each run), $events events"
    echo "of 100 bytes; fan-out: $subs subscribers over $topics topics"
    echo "(split over the two nodes in cluster mode, publishers on the first), 16 publishes in flight,"
    echo "as fast as acknowledged, then at $rate publishes/s. The control \"two local nodes, no NATS\": two"
    echo "local-engine nodes with $((subs / 2)) subscribers each, each fed by a loadgen of its own at $rate/s"
    echo "(figures summed over the two; latencies the worse node's)."
    echo "CPU per delivery is summed over the heraldd processes, NATS CPU per publish over the"
    if [[ -n $pin ]]; then
        echo "nats-servers. Pinned (PIN=$pin): every heraldd on CPU list ${pin%%:*}, loadgen and the nats-servers"
        echo "on CPU list ${pin##*:}."
    else
        echo "nats-servers. Every process shares the same cores: read the figures as relative."
    fi
    echo
    echo "Events/write is herald_deliveries_written_total over herald_ws_writes_total (frames coalesced"
    echo "into one send). Missing is summed over the runs."
    echo
    echo "| engine | acked publishes/s (1 sub) | fan-out publishes/s | deliveries/s | p50 µs | p99 µs | heraldd CPU µs/delivery | events/write | NATS CPU µs/publish | missing |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    jq -rs '
        def median: map(select(. != null)) | sort | if length == 0 then null
            else (if length % 2 == 1 then .[length / 2 | floor]
                  else (.[length / 2 - 1] + .[length / 2]) / 2 end) end;
        def f($d): if . == null then "-" elif $d == 0 then floor | tostring
            else (. * pow(10; $d) | round) / pow(10; $d) | tostring end;
        (reduce .[] as $r ([]; if any(.[]; . == $r.label) then . else . + [$r.label] end)) as $labels
        | group_by(.label) as $groups
        | $labels[] as $l | ($groups[] | select(.[0].label == $l)) as $g
        | "| \($l) | \($g | map(.acked_per_s) | median | f(0)) | \($g | map(.publish_per_s) | median | f(0)) | \($g | map(.deliveries_per_s) | median | f(0)) | \($g | map(.lat_us.p50) | median | f(0)) | \($g | map(.lat_us.p99) | median | f(0)) | \($g | map(.server_cpu_us_per_delivery) | median | f(2)) | \($g | map(.events_per_write) | median | f(2)) | \($g | map(.other_cpu_us_per_publish) | median | f(0)) | \($g | map(.missing) | add) |"
    ' "$tmp/records.jsonl"
    echo
    echo "Raw loadgen output:"
    echo
    echo '```'
    cat "$tmp/raw.jsonl"
    echo '```'
} >"$out"
cat "$out"
