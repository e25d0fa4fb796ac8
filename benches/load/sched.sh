#!/usr/bin/env bash
# Kernel events per request, for every process on the path: the proxy (nginx-proxy or a
# hookgate build), the nginx sink behind it and wrk in front of it. On 2 shared cores
# throughput follows the whole box's CPU per request, so how often each of the three makes
# a syscall, waits in epoll, is switched out or wakes another shows where a proxy costs its
# neighbours something (ab.sh gives their CPU; this gives the reasons).
#
#   apt-get install -y nginx-light wrk linux-perf
#   benches/load/sched.sh target/release/hookgate       # wrk -t2 -c64, 4 s per proxy
#   SECS=8 CONNS=512 benches/load/sched.sh BIN
#
# Needs perf with the syscalls/sched/net tracepoints (root, tracefs mounted). Counting
# costs the processes a few per cent of their speed: compare the counts, not the req/s.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SECS=${SECS:-4}
CONNS=${CONNS:-64}
BODY=${BODY:-$HERE/webhook.json}
# shellcheck source=benches/load/common.sh
source "$HERE/common.sh"
(($# == 1)) || usage
need_tools nginx wrk openssl perf
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true

EVENTS=task-clock,raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,sched:sched_switch,sched:sched_wakeup,net:net_dev_queue
RUN_DIR=$(mktemp -d /tmp/hookgate-sched.XXXXXX)
GW=
cleanup() {
  [[ -n $GW ]] && kill "$GW" 2>/dev/null
  stop_nginx sink proxy
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT

start_nginx sink sink.conf 1
start_nginx proxy proxy.conf 2
gateway_config "$HERE/bench.toml" 18090 > "$RUN_DIR/hookgate.toml"
# A session of its own, as in ab.sh and run.sh (autogroup scheduling).
RUST_LOG=warn setsid "$1" run --config "$RUN_DIR/hookgate.toml" > "$RUN_DIR/hookgate.log" 2>&1 < /dev/null &
GW=$!
sleep 1
signature_header "$BODY" bench-secret > "$RUN_DIR/headers"
SINK=$(cat "$RUN_DIR/sink/nginx.pid")
comma_pids() { tree_pids "$1" | paste -sd, -; }
load() { # port seconds [perf output]
  local cmd=(wrk -t"$((CONNS < 2 ? 1 : 2))" -c"$CONNS" -d"$2s" --latency -s "$HERE/post.lua" "http://127.0.0.1:$1/webhook")
  [[ -n ${3:-} ]] && cmd=(perf stat -x, -e "$EVENTS" -o "$3" "${cmd[@]}")
  BENCH_BODY_FILE=$BODY BENCH_HEADERS_FILE=$RUN_DIR/headers "${cmd[@]}"
}

printf '%-12s %-6s %8s %8s %8s %8s %8s %8s\n' proxy process 'cpu µs' syscalls epoll switches wakeups packets
for proxy in "nginx-proxy:18082:$(cat "$RUN_DIR/proxy/nginx.pid")" "$(basename "$1"):18090:$GW"; do
  IFS=: read -r name port unit <<< "$proxy"
  load "$port" 1 > /dev/null
  perf stat -x, -e "$EVENTS" -p "$(comma_pids "$unit")" -o "$RUN_DIR/proxy.stat" & p1=$!
  perf stat -x, -e "$EVENTS" -p "$(comma_pids "$SINK")" -o "$RUN_DIR/sink.stat" & p2=$!
  sleep 0.3
  load "$port" "$SECS" "$RUN_DIR/wrk.stat" > "$RUN_DIR/wrk.out"
  kill -INT "$p1" "$p2"; wait "$p1" "$p2" || true
  n=$(bench_field requests "$(< "$RUN_DIR/wrk.out")")
  for process in proxy sink wrk; do
    # perf -x, lines: value,unit,event,...; task-clock is in ms.
    awk -F, -v n="$n" -v nm="$name" -v pr="$process" '
      /^[0-9]/ { v[$3] = $1 }
      END { printf "%-12s %-6s %8.2f %8.3f %8.3f %8.3f %8.3f %8.3f\n", nm, pr, v["task-clock"] * 1000 / n,
              v["raw_syscalls:sys_enter"] / n, v["syscalls:sys_enter_epoll_wait"] / n,
              v["sched:sched_switch"] / n, v["sched:sched_wakeup"] / n, v["net:net_dev_queue"] / n }' \
      "$RUN_DIR/$process.stat"
  done
  echo "$name: $(grep -o 'rps=[0-9.]*' "$RUN_DIR/wrk.out") (counted, so a little slower than ab.sh's)"
done
echo "(per request; cpu = task-clock; epoll = epoll_wait calls; switches = times switched out; wakeups = other tasks it woke; packets = loopback segments it sent)"
