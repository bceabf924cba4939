#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# compare.sh: Herald side by side with nginx+nchan, Mosquitto (MQTT over WebSocket) and rawfan,
# a raw epoll fan-out server with no features (the reference of issue #7), in one run on this
# machine. Each server gets its own temporary config on a free loopback port and is pinned to
# one CPU, loadgen to another; every scenario runs RUNS times per server with a fresh server
# each time, and the medians go to results/compare.md and results/compare.png.
# It installs and builds nothing and never touches system services or system config files.
#
# usage: tests/bench/compare.sh [BUILD_DIR]      (default ./build: BUILD_DIR/heraldd,
#                                                  BUILD_DIR/tests/bench/loadgen and rawfan)
# environment:
#   QUICK=1        smoke run: small scenarios, one run each (about a minute)
#   RUNS=N         runs per scenario and server (3; QUICK=1: 1)
#   OUT=DIR        where compare.md, compare.png and compare.jsonl go (tests/bench/results)
#   SERVER_CPU=0 LOADGEN_CPU=1   the CPUs to pin to
#   HOLD=S         idle-memory hold in seconds (10; QUICK=1: 2)
#   NETNS=0        do not re-run inside a private network namespace (see below)
#   REPORT_ONLY=1  run nothing: rebuild compare.md and compare.png from OUT/compare.jsonl
#   SCENARIOS="fan1k topics10k"   run only these (of fan1k fan10k fan18k topics10k lat1k lat10k idle)
#   LABELS="herald-ws nchan"      and only these servers and publisher shapes (of herald-http
#                                 herald-ws nchan mosquitto raw, 8 publisher connections with
#                                 one request in flight each; herald-ws-pipe herald-http-pipe
#                                 nchan-pipe, one publisher connection with 8 in flight, run in
#                                 fan1k fan10k topics10k; herald-batch, one HTTP publisher
#                                 sending batches of 100, run in topics10k)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=${1:-./build}
quick=${QUICK:-0}
runs=${RUNS:-$([[ $quick == 1 ]] && echo 1 || echo 3)}
out=${OUT:-$here/results}
server_cpu=${SERVER_CPU:-0}
loadgen_cpu=${LOADGEN_CPU:-1}
hold=${HOLD:-$([[ $quick == 1 ]] && echo 2 || echo 10)}

say() { printf 'compare: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

# ---- what must be there (nothing is installed or built here) ----
missing=()
command -v nginx >/dev/null || missing+=(nginx)
[[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]] || missing+=(libnginx-mod-nchan)
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
command -v jq >/dev/null || missing+=(jq)
command -v taskset >/dev/null || missing+=(util-linux)
command -v ps >/dev/null || missing+=(procps)
if ((${#missing[@]})); then
    say "missing packages; install them with:"
    echo "apt-get install -y ${missing[*]}"
    exit 2
fi
heraldd=$(realpath -e "$build/heraldd" 2>/dev/null) ||
    die "no $build/heraldd: build first (cmake -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build)"
loadgen=$(realpath -e "$build/tests/bench/loadgen" 2>/dev/null) ||
    die "no $build/tests/bench/loadgen: build it (cmake --build $build --target loadgen)"
"$loadgen" --help | grep -q -- --target || die "$loadgen predates --target: rebuild it"
rawfan=$(realpath -e "$build/tests/bench/rawfan" 2>/dev/null) ||
    die "no $build/tests/bench/rawfan: build it (cmake --build $build --target rawfan)"

# ---- a private network namespace ----
# Mosquitto 2.0.11's websockets listener ignores its bind address and listens on every
# interface. As root, re-run this script in a new network namespace whose only interface is
# lo: every listener of the run is then unreachable from outside, whatever it binds.
report_only=${REPORT_ONLY:-0}
if [[ $report_only != 1 && ${NETNS:-1} == 1 && -z ${COMPARE_IN_NETNS:-} && $EUID == 0 ]] &&
    unshare -n true 2>/dev/null && command -v ip >/dev/null; then
    export COMPARE_IN_NETNS=1
    exec unshare -n -- bash -c 'ip link set lo up && exec bash "$@"' bash "$0" "$build"
fi
[[ -n ${COMPARE_IN_NETNS:-} || $report_only == 1 ]] ||
    say "warning: not in a private network namespace; mosquitto's websockets listener binds all interfaces"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
idle_subs=18000
if ((nofile < idle_subs + 200)); then
    idle_subs=$((nofile - 200))
    say "warning: file descriptor limit $nofile: idle scenario scaled down to $idle_subs connections"
fi
[[ $quick == 1 ]] && idle_subs=2000

# ---- scenarios and targets ----
thousands() { echo "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'; }
common=(--size 100 --timeout 300)
declare -A scen title short
add_scenario() { # name subs topics events title short-title [loadgen args]
    scen[$1]="--subs $2 --topics $3 --events $4 ${7:-}"
    title[$1]=$5
    short[$1]=$6
}
if [[ $quick == 1 ]]; then
    add_scenario fan1k 200 1 200 "1 topic, 200 subscribers, 200 events" "1 topic, 200 subs"
    add_scenario fan10k 1000 1 50 "1 topic, 1,000 subscribers, 50 events" "1 topic, 1k subs"
    add_scenario fan18k 2000 1 20 "1 topic, 2,000 subscribers, 20 events" "1 topic, 2k subs"
    add_scenario topics10k 1000 1000 2000 "1,000 subscribers on 1,000 topics, 2,000 events" \
        "1k topics, 1k subs"
    add_scenario lat1k 200 1 100 "1 topic, 200 subscribers, 100 events at 100/s" "" "--rate 100"
    add_scenario lat10k 1000 1000 1000 "1,000 subscribers on 1,000 topics, 1,000 events at 1,000/s" \
        "" "--rate 1000"
else
    add_scenario fan1k 1000 1 2000 "1 topic, 1,000 subscribers, 2,000 events" "1 topic, 1k subs"
    add_scenario fan10k 10000 1 200 "1 topic, 10,000 subscribers, 200 events" "1 topic, 10k subs"
    # As many as the descriptor limit allows (18,000 here): is CPU per delivery still flat?
    add_scenario fan18k "$idle_subs" 1 100 "1 topic, $(thousands "$idle_subs") subscribers, 100 events" \
        "1 topic, $((idle_subs / 1000))k subs"
    add_scenario topics10k 10000 10000 20000 "10,000 subscribers on 10,000 topics, 20,000 events" \
        "10k topics, 10k subs"
    # Below every server's ceiling but Mosquitto's: latency where nobody is saturated.
    add_scenario lat1k 1000 1 600 "1 topic, 1,000 subscribers, 600 events at a fixed 100/s" "" \
        "--rate 100"
    # Publishing to many topics at a rate every server but Mosquitto keeps up with: the
    # latency of one publish, not of a queue.
    add_scenario lat10k 10000 10000 20000 \
        "10,000 subscribers on 10,000 topics, 20,000 events at a fixed 10,000/s" "" "--rate 10000"
fi
scen[idle]="--subs $idle_subs --topics 100 --idle-hold $hold"
title[idle]="$idle_subs connections held ${hold} s"
read -r -a scenarios <<<"${SCENARIOS:-fan1k fan10k fan18k topics10k lat1k lat10k idle}"
for s in "${scenarios[@]}"; do [[ -v "scen[$s]" || $s == idle ]] || die "no scenario $s"; done
# label -> server and loadgen arguments; nchan publishes over HTTP, Mosquitto over MQTT/WS,
# rawfan (Herald's protocol, so loadgen drives it as herald) over HTTP like nchan.
# The publisher shapes of issue 18 (the -pipe and -batch labels) run only where they are
# compared: fan-out and many topics.
read -r -a labels <<<"${LABELS:-herald-http herald-ws nchan mosquitto raw herald-ws-pipe herald-http-pipe nchan-pipe herald-batch}"
for l in "${labels[@]}"; do
    case $l in
    herald-http | herald-ws | nchan | mosquitto | raw) ;;
    herald-ws-pipe | herald-http-pipe | nchan-pipe | herald-batch) ;;
    *) die "no server $l" ;;
    esac
done
declare -A server=([herald-http]=herald [herald-ws]=herald [nchan]=nchan [mosquitto]=mosquitto
    [raw]=raw [herald-ws-pipe]=herald [herald-http-pipe]=herald [nchan-pipe]=nchan
    [herald-batch]=herald)
# Placed after the scenario's arguments: a label may override them (the batch label publishes
# more events, so its CPU time is well above the 10 ms tick of /proc).
declare -A lgargs=(
    [herald-http]="--target herald --mode http --inflight 8"
    [herald-ws]="--target herald --mode ws --inflight 8"
    [nchan]="--target nchan --inflight 8" [mosquitto]="--target mosquitto --inflight 8"
    [raw]="--target herald --mode http --inflight 8"
    [herald-ws-pipe]="--target herald --mode ws --inflight 1 --pipeline 8"
    [herald-http-pipe]="--target herald --mode http --inflight 1 --pipeline 8"
    [nchan-pipe]="--target nchan --inflight 1 --pipeline 8"
    [herald-batch]="--target herald --mode http --inflight 1 --batch 100 --events 100000"
)
declare -A only=([herald-ws-pipe]="fan1k fan10k topics10k" [herald-http-pipe]="fan1k fan10k topics10k"
    [nchan-pipe]="fan1k fan10k topics10k" [herald-batch]="topics10k")

# ---- servers ----
work=$(mktemp -d /tmp/herald-compare.XXXXXX)
chmod 755 "$work" # nginx workers run as nobody
srv_pid='' measure_pid='' port=
cleanup() {
    stop_server
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Below the kernel's ephemeral range (32768 and up by default), where loadgen's own
# connections and their TIME_WAIT leftovers live. $1: a port not to return.
free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 12000))
        [[ $p != "${1:-}" ]] && ! port_open "$p" && { echo "$p"; return 0; }
    done
    die "no free loopback port found"
}

wait_port() { # port, pid, what
    for _ in $(seq 100); do
        port_open "$1" && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited at start: $(tail -c 600 "$4")"
        sleep 0.1
    done
    die "$3 is not listening on 127.0.0.1:$1 after 10 s (see $4)"
}

# Servers started on port 0 tell the port they got. $1 name, $2 the file it appears in, $3 the
# sed script that prints it from there, $4 the log to show if the server dies; sets port.
wait_told_port() {
    for _ in $(seq 100); do
        port=$(sed -n "$3" "$2" 2>/dev/null | head -1)
        [[ -n $port ]] && return 0
        kill -0 "$srv_pid" 2>/dev/null || die "$1 exited at start: $(cat "$4")"
        sleep 0.1
    done
    die "$1 told no listening port within 10 s"
}

start_server() { # herald | nchan | mosquitto | raw; sets srv_pid, measure_pid, port
    local d="$work/$1.$RANDOM"
    mkdir -p "$d"
    case $1 in
    herald)
        taskset -c "$server_cpu" "$heraldd" --listen 127.0.0.1:0 2>"$d/stderr" &
        srv_pid=$!
        wait_told_port heraldd "$d/stderr" 's/.*msg="listening".* port=\([0-9]*\).*/\1/p' "$d/stderr"
        measure_pid=$srv_pid
        ;;
    nchan)
        port=$(free_port)
        mkdir -p "$d/tmp" && chmod 777 "$d/tmp"
        sed -e "s#@DIR@#$d#g; s#@PORT@#$port#g; s#@NOFILE@#$nofile#g" \
            "$here/configs/nginx-nchan.conf.in" >"$d/nginx.conf"
        taskset -c "$server_cpu" nginx -p "$d/" -c "$d/nginx.conf" 2>"$d/stderr" &
        srv_pid=$!
        wait_port "$port" "$srv_pid" nginx "$d/error.log"
        measure_pid=$(ps -o pid= --ppid "$srv_pid" | head -1 | tr -d ' ')
        [[ -n $measure_pid ]] || die "no nginx worker process"
        ;;
    mosquitto)
        port=$(free_port)
        local mport
        mport=$(free_port "$port")
        sed -e "s#@PORT@#$port#g; s#@MQTT_PORT@#$mport#g" "$here/configs/mosquitto.conf.in" \
            >"$d/mosquitto.conf"
        taskset -c "$server_cpu" mosquitto -c "$d/mosquitto.conf" 2>"$d/stderr" &
        srv_pid=$!
        wait_port "$port" "$srv_pid" mosquitto "$d/stderr"
        measure_pid=$srv_pid
        ;;
    raw)
        # rawfan takes no config: it binds the address it is given and prints its port.
        taskset -c "$server_cpu" "$rawfan" 127.0.0.1 0 >"$d/port" 2>"$d/stderr" &
        srv_pid=$!
        wait_told_port rawfan "$d/port" '1p' "$d/stderr"
        measure_pid=$srv_pid
        ;;
    esac
}

stop_server() {
    [[ -n $srv_pid ]] || return 0
    kill -TERM "$srv_pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$srv_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$srv_pid" 2>/dev/null || true
    wait "$srv_pid" 2>/dev/null || true
    srv_pid=
}

# ---- the runs: run-major order, so slow drift of the machine hits every server alike ----
mkdir -p "$out"
jsonl="$out/compare.jsonl"
fails=0
src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
herald_id="$("$heraldd" --version 2>&1 | head -1) (source $(git -C "${src:-.}" describe --always \
    --dirty 2>/dev/null || echo "revision unknown"))"
# CPU busy (%) over one second before a measurement: other work on these two cores skews it.
busy_pct() {
    local a b
    read -ra a < <(head -1 /proc/stat)
    sleep 1
    read -ra b < <(head -1 /proc/stat)
    local tot=0 idle=$((b[4] + b[5] - a[4] - a[5]))
    for i in 1 2 3 4 5 6 7 8; do tot=$((tot + b[i] - a[i])); done
    echo $((tot > 0 ? 100 * (tot - idle) / tot : 0))
}
if [[ $report_only == 1 ]]; then
    [[ -s $jsonl ]] || die "REPORT_ONLY=1 but there is no $jsonl"
    runs=$(jq -s 'map(.run) | max' "$jsonl")
    idle_subs=$(jq -s 'map(select(.scenario == "idle") | .subs) | max // 0' "$jsonl")
    title[idle]="$idle_subs connections held $(jq -s 'map(select(.scenario == "idle") | .idle_hold_s) | max // 0' "$jsonl") s"
    fan18k_subs=$(jq -s 'map(select(.scenario == "fan18k") | .subs) | max // 0' "$jsonl")
    title[fan18k]="1 topic, $(thousands "$fan18k_subs") subscribers, 100 events"
    short[fan18k]="1 topic, $((fan18k_subs / 1000))k subs"
else
    : >"$jsonl"
fi
for run in $(seq "$runs"); do
    [[ $report_only == 1 ]] && break
    for s in "${scenarios[@]}"; do
        for l in "${labels[@]}"; do
            [[ $s == idle && $l == herald-ws ]] && continue # nothing is published
            [[ -v "only[$l]" && " ${only[$l]} " != *" $s "* ]] && continue
            busy=$(busy_pct)
            ((busy < 10)) || say "warning: machine ${busy}% busy before run $run $s $l: expect noise"
            start_server "${server[$l]}"
            err="$work/loadgen.err"
            set +e
            # shellcheck disable=SC2086 # the argument strings are ours, split on purpose
            line=$(taskset -c "$loadgen_cpu" "$loadgen" --port "$port" ${scen[$s]} ${lgargs[$l]} \
                "${common[@]}" --server-pid "$measure_pid" 2>"$err")
            rc=$?
            set -e
            stop_server
            if [[ -z $line ]]; then
                say "run $run $s $l: no result (exit $rc): $(head -c 300 "$err")"
                fails=$((fails + 1))
                continue
            fi
            echo "$line" | jq -c --arg s "$s" --arg l "$l" --argjson r "$run" --argjson rc "$rc" \
                --arg h "$herald_id" --argjson b "$busy" \
                '. + {scenario: $s, label: $l, run: $r, rc: $rc, heraldd: $h, busy_before_pct: $b}' \
                >>"$jsonl"
            say "run $run/$runs $s $l: $(echo "$line" | jq -r '"\(.deliveries_per_s | floor)/s p99 \(.lat_us.p99 | floor)us rss/conn \(.rss_per_conn_bytes)B missing \(.missing)"')"
        done
    done
done

# ---- medians, table, chart ----
summary="$work/summary.json"
jq -s '
  def median: sort | if length == 0 then null
              elif length % 2 == 1 then .[length / 2 | floor]
              else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  group_by([.scenario, .label]) | map({
    scenario: .[0].scenario, label: .[0].label, runs: length,
    ok: map(select(.rc == 0 and .missing == 0 and (.publish_errors // 0) == 0 and
        (.timed_out | not))) | length,
    dps: map(.deliveries_per_s) | median,
    p99_ms: map(.lat_us.p99 / 1000) | median,
    cpu_us: map(.server_cpu_us_per_delivery // empty) | median,
    pps: map(.publish_per_s) | median,
    cpu_ev: map(.server_cpu_us_per_event // empty) | median,
    resent: map(.resent // 0) | median,
    reconnects: map(.publisher_reconnects) | median,
    rss_conn: map(.rss_per_conn_bytes // empty) | median,
    connect_s: map(.connect_s) | median,
    client_cpu: map(.client_cpu_s / (if .elapsed_s > 0 then .elapsed_s else 1 end)) | median
  })' "$jsonl" >"$summary"

# One cell: jq over the summary for (scenario, label); empty when that cell has no runs.
cell() { jq -r --arg s "$1" --arg l "$2" ".[] | select(.scenario == \$s and .label == \$l) | $3" "$summary"; }
fmt() { [[ -z $1 || $1 == null ]] && echo "-" || printf "%.${2}f" "$1"; }
ratio() {
    if [[ -z $1 || -z $2 || $1 == null || $2 == null || $2 == 0 ]]; then
        echo "-"
    else
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'
    fi
}
declare -A name=([herald-http]="Herald (HTTP publish)" [herald-ws]="Herald (WebSocket publish)"
    [nchan]="nginx + nchan (HTTP publish)" [mosquitto]="Mosquitto (MQTT over WebSocket)"
    [raw]="raw epoll (reference)"
    [herald-ws-pipe]="Herald (1 WebSocket publisher, 8 in flight)"
    [herald-http-pipe]="Herald (1 HTTP publisher, 8 pipelined)"
    [nchan-pipe]="nginx + nchan (1 HTTP publisher, 8 pipelined)"
    [herald-batch]="Herald (1 HTTP publisher, batches of 100)")

md="$out/compare.md"
{
    echo "# Herald vs nginx+nchan vs Mosquitto, and a raw epoll reference"
    echo
    echo "$(date -u +%Y-%m-%d), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')):"
    # The build that ran, as recorded in the results (REPORT_ONLY may come later).
    herald_id=$(jq -r -s 'map(.heraldd // empty) | unique | join(", ") | if . == "" then "heraldd" else . end' "$jsonl")
    echo "$herald_id, $(nginx -v 2>&1 | sed 's/.*version: //')" \
        "+ nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null | sed 's/^1://; s/+.*//')," \
        "mosquitto $(mosquitto -h 2>/dev/null | head -1 | sed 's/.*version //')," \
        "rawfan (\`tests/bench/rawfan.c\`: one thread, epoll, one \`write()\` per event and subscriber)."
    echo "Server pinned to CPU $server_cpu, loadgen to CPU $loadgen_cpu; 100-byte events, 8 publishes in" \
        "flight (8 connections with one each unless the server column says otherwise), as fast as" \
        "the replies allow; median of $runs run(s), a fresh server for each."
    echo "Latency is publish-to-delivery: at that saturating rate, except in the fixed-rate rows." \
        "Reproduce: \`tests/bench/compare.sh build\`."
    jq -r -s 'map(.busy_before_pct // empty) | select(length > 0) |
        if max >= 10 then "**Noisy run**: other processes kept the machine up to \(max)% busy before" +
            " some measurements (median \(sort | .[length / 2 | floor])%)." else empty end' "$jsonl"
    jq -r -s 'map(.note // empty) | unique | .[] | "**Note**: \(.)"' "$jsonl"
    echo
    echo "| scenario | server | deliveries/s | vs nchan | vs raw | p99 latency | server CPU per delivery | server RSS per connection | loadgen CPU busy | runs ok |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for s in fan1k fan10k fan18k topics10k lat1k lat10k; do
        base=$(cell "$s" nchan .dps)
        raw=$(cell "$s" raw .dps)
        for l in "${labels[@]}"; do
            d=$(cell "$s" "$l" .dps)
            [[ -n $d ]] || continue
            echo "| ${title[$s]} | ${name[$l]} | $(fmt "$d" 0) | $(ratio "$d" "$base") | $(ratio "$d" "$raw") |" \
                "$(fmt "$(cell "$s" "$l" .p99_ms)" 1) ms | $(fmt "$(cell "$s" "$l" .cpu_us)" 2) µs |" \
                "$(fmt "$(cell "$s" "$l" '.rss_conn / 1024')" 1) KB |" \
                "$(fmt "$(cell "$s" "$l" '.client_cpu * 100')" 0)% | $(cell "$s" "$l" '"\(.ok)/\(.runs)"') |"
        done
    done
    echo
    echo "| idle connections | server | RSS per idle connection | vs nchan | vs raw | time to connect all | runs ok |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    base=$(cell idle nchan .rss_conn)
    raw=$(cell idle raw .rss_conn)
    for l in herald-http nchan mosquitto raw; do
        r=$(cell idle "$l" .rss_conn)
        [[ -n $r ]] || continue
        echo "| ${title[idle]} | ${name[$l]%% (*} | $(fmt "$(cell idle "$l" '.rss_conn / 1024')" 2) KB |" \
            "$(ratio "$r" "$base") | $(ratio "$r" "$raw") |" \
            "$(fmt "$(cell idle "$l" .connect_s)" 2) s | $(cell idle "$l" '"\(.ok)/\(.runs)"') |"
    done
    if [[ -n $(cell fan1k herald-ws-pipe .cpu_us)$(cell topics10k herald-batch .cpu_ev) ]]; then
        echo
        echo "Publisher shapes (issue 18): one connection with 8 publishes in flight, and batches." \
            "\"resent\" counts events sent again after the server answered with" \
            "\`Connection: close\` and left the requests behind it unanswered (RFC 9112 9.3.2)."
        echo
        echo "| scenario | server | events/s | server CPU per delivery | server CPU per event | vs nchan, 1 pipelining connection | vs the same server, 8 connections | resent | reconnects | runs ok |"
        echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        declare -A same=([herald-ws-pipe]=herald-ws [herald-http-pipe]=herald-http
            [nchan-pipe]=nchan [herald-batch]=herald-http)
        for s in fan1k fan10k topics10k; do
            for l in herald-ws-pipe herald-http-pipe nchan-pipe herald-batch; do
                [[ -n $(cell "$s" "$l" .runs) ]] || continue
                # Fan-out compares CPU per delivery; many topics compares CPU per event.
                k=.cpu_us
                [[ $s == topics10k ]] && k=.cpu_ev
                echo "| ${title[$s]} | ${name[$l]} | $(fmt "$(cell "$s" "$l" .pps)" 0) |" \
                    "$(fmt "$(cell "$s" "$l" .cpu_us)" 2) µs | $(fmt "$(cell "$s" "$l" .cpu_ev)" 2) µs |" \
                    "$(ratio "$(cell "$s" "$l" "$k")" "$(cell "$s" nchan-pipe "$k")") |" \
                    "$(ratio "$(cell "$s" "$l" "$k")" "$(cell "$s" "${same[$l]}" "$k")") |" \
                    "$(fmt "$(cell "$s" "$l" .resent)" 0) | $(fmt "$(cell "$s" "$l" .reconnects)" 0) |" \
                    "$(cell "$s" "$l" '"\(.ok)/\(.runs)"') |"
            done
        done
        echo
        echo "Ratios are of CPU per delivery (fan-out) or per event (many topics): below 1 is" \
            "cheaper. Batches against nchan's per-request rate: events/s $(ratio \
            "$(cell topics10k herald-batch .pps)" "$(cell topics10k nchan .pps)") of nchan with 8" \
            "connections and $(ratio "$(cell topics10k herald-batch .pps)" \
            "$(cell topics10k nchan-pipe .pps)") of nchan with one pipelining connection."
    fi
    echo
    echo "Raw results, one JSON line per run: \`$(basename "$jsonl")\`. \"runs ok\" counts runs with" \
        "every publish accepted, every expected delivery and no timeout."
} >"$md"

# Chart: deliveries/s per fan-out scenario (log scale), and memory per idle connection.
dat="$work/chart.dat"
{
    for s in fan1k fan10k fan18k topics10k; do
        row="\"${short[$s]}\""
        for l in herald-http herald-ws nchan mosquitto raw; do
            v=$(cell "$s" "$l" .dps)
            row+=" ${v:-0}"
        done
        echo "$row"
    done
} >"$dat"
mem="$work/mem.dat"
for l in herald-http nchan mosquitto raw; do
    v=$(cell idle "$l" '.rss_conn / 1024')
    echo "\"${name[$l]%% (*}\" ${v:-0}"
done >"$mem"
gnuplot <<EOF
set terminal pngcairo size 1400,560 font "sans,11"
set output "$out/compare.png"
set multiplot layout 1,2 title "Herald vs nginx+nchan vs Mosquitto vs raw epoll reference (server on one core, median of $runs)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set title "Fan-out deliveries per second (log scale, higher is better)"
set logscale y
set yrange [500:*]
set xrange [-0.6:3.6]
set format y "%.0s%c"
set size 0.60,0.95
set origin 0,0
plot "$dat" using 2:xtic(1) title "Herald (HTTP pub)" lc rgb "#1f77b4", \
     "" using 3 title "Herald (WS pub)" lc rgb "#6baed6", \
     "" using 4 title "nginx+nchan" lc rgb "#2ca02c", \
     "" using 5 title "Mosquitto" lc rgb "#d62728", \
     "" using 6 title "raw epoll (reference)" lc rgb "#404040"
unset logscale y
set autoscale x
set yrange [0:*]
set format y "%g"
set size 0.40,0.95
set origin 0.60,0
set title "Server memory per idle connection, KB (lower is better)"
unset key
set style histogram rowstacked
plot "$mem" using 2:xtic(1) lc rgb "#7f7f7f" notitle, \
     "" using 0:2:(sprintf("%.1f", \$2)) with labels offset 0,1 notitle
unset multiplot
EOF

say "wrote $md, $out/compare.png and $jsonl"
cat "$md"
((fails == 0)) || { say "$fails run(s) gave no result"; exit 1; }
