#!/usr/bin/env bash
# A/B of hookgate builds against nginx-proxy, for one change at a time: each build and
# nginx-proxy take turns for ROUNDS rounds (wrk -t2 -c64, the 1 KiB bench webhook), and
# the medians show where each request's CPU went on the whole box (the proxy, the sink and
# wrk), since on 2 shared cores throughput follows their sum. Taking turns is what makes a
# few per cent visible on a VM whose phases swing ±20 % (run.sh's table is for reporting).
#
#   benches/load/ab.sh BIN_A BIN_B                  # two builds, bench.toml each (one
#                                                   # file name twice: the second row is
#                                                   # named by its path)
#   SECS=4 ROUNDS=10 benches/load/ab.sh BIN@CONFIG  # a build on another config
#   BODY=big.json benches/load/ab.sh BIN_A BIN_B    # another protocol webhook body
#   CLOSE=1 benches/load/ab.sh BIN_A BIN_B          # a new connection for every request
#   CONNS=512 benches/load/ab.sh BIN_A BIN_B        # wrk's connections (64; 1 runs one wrk
#                                                   # thread); nginx-proxy keeps 64 idle
#                                                   # upstream ones, too few past 128
#   UNIQUE=700000 benches/load/ab.sh BIN@bench-dedupe.toml  # every request a new event id
#                                                   # (unique.lua), for dedupe on; the ids
#                                                   # are shared by all units in turn, so N
#                                                   # must be > 2 x 100,000 (dedupe's capacity)
#                                                   # x the units, or ids come back as duplicates
#   TLS=1 benches/load/ab.sh BIN_A BIN_B            # HTTPS to the proxies (a P-256 certificate
#                                                   # made here; TLS 1.3, else each one's
#                                                   # defaults); with CLOSE=1 a handshake
#                                                   # per request
#   STEAL_MAX=3 (the second table's rounds), ROUNDS_OUT=FILE (keeps the per-round figures)
#
# Columns: req/s, proxy/sink/wrk CPU µs per request, the proxy's user-space part of it (the
# rest is its kernel time), the proxy's voluntary context switches per request (how often
# its threads went to sleep), p99 µs; then every round's req/s.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SECS=${SECS:-4}
ROUNDS=${ROUNDS:-8}
CONNS=${CONNS:-64}
THREADS=$((CONNS < 2 ? 1 : 2))
BODY=${BODY:-$HERE/webhook.json}
# shellcheck source=benches/load/common.sh
source "$HERE/common.sh"
(($# > 0)) || usage
need_tools nginx wrk openssl

RUN_DIR=$(mktemp -d /tmp/hookgate-ab.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_nginx sink proxy
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT

PROXY_CONF=proxy.conf SCHEME=http
if [[ -n ${TLS:-} ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$RUN_DIR/tls.key" -out "$RUN_DIR/tls.crt" 2> /dev/null
  PROXY_CONF=$RUN_DIR/proxy-tls.conf SCHEME=https
  # TLS 1.3 as hookgate (rustls) speaks it: nginx 1.22's default stops at 1.2, whose resumed
  # handshakes skip the key exchange that 1.3's still make.
  sed "s|listen 127.0.0.1:18082 backlog=4096;|listen 127.0.0.1:18082 ssl backlog=4096;\n        ssl_certificate $RUN_DIR/tls.crt;\n        ssl_certificate_key $RUN_DIR/tls.key;\n        ssl_protocols TLSv1.2 TLSv1.3;|" \
    "$HERE/nginx/proxy.conf" > "$PROXY_CONF"
  grep -q ssl_certificate "$PROXY_CONF"
fi
start_nginx sink sink.conf 1
start_nginx proxy "$PROXY_CONF" 2
sleep 0.5
# An nginx unit is its master's process tree (the master itself is idle under load).
SINK=$(cat "$RUN_DIR/sink/nginx.pid")

NAMES=(nginx-proxy) PORTS=(18082) UNITS=("$(cat "$RUN_DIR/proxy/nginx.pid")")
port=18090
for spec in "$@"; do
  bin=${spec%%@*} config=$HERE/bench.toml
  [[ $spec == *@* ]] && config=${spec#*@}
  gateway_config "$config" "$port" > "$RUN_DIR/$port.toml"
  [[ -n ${TLS:-} ]] && sed -i "s|^\\[server\\]|[server]\ntls = { cert = \"$RUN_DIR/tls.crt\", key = \"$RUN_DIR/tls.key\" }|" "$RUN_DIR/$port.toml"
  # A session of its own, as nginx (a daemon) and run.sh's units have: with the kernel's
  # autogroup scheduling on, a unit left in this script's session shares one scheduling
  # group with wrk, and competes with the sink as one.
  RUST_LOG=warn setsid "$bin" run --config "$RUN_DIR/$port.toml" > "$RUN_DIR/$port.log" 2>&1 < /dev/null &
  PIDS+=($!)
  name=$(basename "$bin")
  [[ $spec == *@* ]] && name+="@$(basename "$config" .toml)"
  # Two builds of one file name (target/release/hookgate, target/pgo/release/hookgate)
  # would share one row: the later one is named by its path as given.
  for taken in "${NAMES[@]}"; do [[ $taken == "$name" ]] && name=$spec && break; done
  NAMES+=("$name") PORTS+=($port) UNITS+=($!)
  port=$((port + 1))
done
sleep 1

signature_header "$BODY" bench-secret > "$RUN_DIR/headers"
[[ -n ${CLOSE:-} ]] && echo 'Connection: close' >> "$RUN_DIR/headers"
SCRIPT=$HERE/post.lua
if [[ -n ${UNIQUE:-} ]]; then
  unique_signatures "$BODY" bench-secret "$UNIQUE" > "$RUN_DIR/sigs"
  SCRIPT=$HERE/unique.lua
fi
# Voluntary context switches of every thread of a process tree.
sleeps() { local p f t=0; for p in $(tree_pids "$1"); do for f in /proc/$p/task/*/status; do t=$((t + $(awk '/^voluntary_ctxt/ {print $2}' "$f"))); done; done; echo $t; }
load() { # port seconds
  BENCH_BODY_FILE=$BODY BENCH_HEADERS_FILE=$RUN_DIR/headers BENCH_SIGS_FILE=$RUN_DIR/sigs BENCH_STATE_FILE=$RUN_DIR/ids BENCH_THREADS=$THREADS \
    wrk -t"$THREADS" -c"$CONNS" -d"$2s" --latency -s "$SCRIPT" "$SCHEME://127.0.0.1:$1/webhook"
}

HZ=$(getconf CLK_TCK)
OUT=$RUN_DIR/rounds.tsv
TIMEFORMAT='%U %S'
N=${#NAMES[@]}
for ((r = 1; r <= ROUNDS; r++)); do
  # The order rotates every round, so that no unit always runs right after the same one.
  for ((k = 0; k < N; k++)); do
    i=$(((k + r - 1) % N))
    unit=${UNITS[$i]}
    load "${PORTS[$i]}" 1 > /dev/null
    p0=$(cpu_ticks "$unit") u0=$(cpu_ticks "$unit" user) s0=$(cpu_ticks "$SINK") v0=$(sleeps "$unit") st0=$(machine_ticks)
    { time load "${PORTS[$i]}" "$SECS" > "$RUN_DIR/wrk.out"; } 2> "$RUN_DIR/wrk.time"
    p1=$(cpu_ticks "$unit") u1=$(cpu_ticks "$unit" user) s1=$(cpu_ticks "$SINK") v1=$(sleeps "$unit") st1=$(machine_ticks)
    line=$(grep '^BENCH ' "$RUN_DIR/wrk.out")
    n=$(bench_field requests "$line")
    p99=$(bench_field p99_us "$line")
    read -r wu ws < "$RUN_DIR/wrk.time"
    awk -v nm="${NAMES[$i]}" -v n="$n" -v secs="$SECS" -v hz="$HZ" -v p=$((p1 - p0)) -v s=$((s1 - s0)) \
      -v u=$((u1 - u0)) \
      -v w="$wu $ws" -v v=$((v1 - v0)) -v p99="$p99" -v steal="$(steal_pct "$st0" "$st1")" 'BEGIN {
        split(w, t, " ")
        printf "%s\t%.0f\t%.1f\t%.1f\t%.1f\t%.1f\t%.3f\t%d\t%s\n", nm, n / secs, p * 1e6 / hz / n, s * 1e6 / hz / n,
          (t[1] + t[2]) * 1e6 / n, u * 1e6 / hz / n, v / n, p99, steal }' >> "$OUT"
  done
done

printf '%-28s %8s %6s %6s %6s %6s %7s %7s %7s  %s\n' build 'req/s' proxy sink wrk user sleeps 'p99 us' 'steal %' 'req/s per round'
# col COLUMN [MAX_STEAL]: the median of a column over $nm's rounds (those with at most
# MAX_STEAL % steal, when given).
col() { awk -F'\t' -v n="$nm" -v c="$1" -v max="${2:-101}" '$1 == n && $9 <= max {print $c}' "$OUT" | median; }
for nm in "${NAMES[@]}"; do
  printf '%-28s %8s %6s %6s %6s %6s %7s %7s %7s  %s\n' "$nm" "$(col 2)" "$(col 3)" "$(col 4)" "$(col 5)" "$(col 6)" "$(col 7)" "$(col 8)" "$(col 9)" \
    "$(awk -F'\t' -v n="$nm" '$1 == n {printf "%s ", $2}' "$OUT")"
done
# The same medians over the rounds that lost at most STEAL_MAX % to the VM's host.
STEAL_MAX=${STEAL_MAX:-3}
for nm in "${NAMES[@]}"; do
  k=$(awk -F'\t' -v n="$nm" -v max="$STEAL_MAX" '$1 == n && $9 <= max' "$OUT" | wc -l)
  m=$STEAL_MAX
  printf '%-28s %8s %6s %6s %6s %6s %7s %7s  (%d of %d rounds with steal <= %s %%)\n' "$nm" "$(col 2 $m)" "$(col 3 $m)" "$(col 4 $m)" "$(col 5 $m)" "$(col 6 $m)" "$(col 7 $m)" "$(col 8 $m)" \
    "$k" "$ROUNDS" "$STEAL_MAX"
done
[[ -n ${ROUNDS_OUT:-} ]] && cp "$OUT" "$ROUNDS_OUT"
echo "(medians of $ROUNDS rounds of ${SECS}s; CPU in µs per request; user = the proxy's user-space part; sleeps = the proxy's voluntary context switches per request;"
echo " steal % = the machine's time the VM's host took during the round, worst $(awk -F'\t' '$9 > m {m = $9} END {print m + 0}' "$OUT") %: above a few %, rounds are not comparable)"
