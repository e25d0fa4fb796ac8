#!/usr/bin/env bash
# A soak: one hookgate build in front of the nginx sink for DURATION seconds under four mixed
# streams at once, with its memory, open files and threads read every INTERVAL seconds, to
# show that nothing grows with the requests served (dedupe's table, the client table, the
# upstream pool, connections and their buffers are all bounded) and that every stream keeps
# getting its answer. The config is the operator's default (bench-dedupe.toml: dedupe on).
#
#   apt-get install -y nginx-light wrk openssl python3 curl
#   benches/load/soak.sh target/release/hookgate      # DURATION=600 INTERVAL=30
#
# Streams (wrk, one thread each):
#   fresh     32 connections, kept alive: every request a new event id (unique.lua), forwarded
#   close      8 connections, a new one per request: one body over and over, so after the
#              first a duplicate (200 with x-hookgate-duplicate, not forwarded)
#   forged     8 connections: a wrong signature, 401 every time
#   unrouted   4 connections: a path no source has, 404 every time
# Exits 1 if a stream got an answer it should not, or if RSS grew by more than GROW_MAX_MIB
# (default 2) from the sample a quarter into the run to the last one under load.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DURATION=${DURATION:-600}
INTERVAL=${INTERVAL:-30}
GROW_MAX_MIB=${GROW_MAX_MIB:-2}
# Twice dedupe's capacity or more: an id comes back only once it has been forgotten.
IDS=${IDS:-300000}
# shellcheck source=benches/load/common.sh
source "$HERE/common.sh"
(($# == 1)) || usage
need_tools nginx wrk openssl python3 curl
RUN_DIR=$(mktemp -d /tmp/hookgate-soak.XXXXXX)
GW=
trap stop_gateway_and_sink EXIT

start_nginx sink sink.conf 1
{ gateway_config "$HERE/bench-dedupe.toml" 18098; printf '\n[admin]\nlisten = "127.0.0.1:18099"\n'; } > "$RUN_DIR/hookgate.toml"
RUST_LOG=warn setsid "$1" run --config "$RUN_DIR/hookgate.toml" > "$RUN_DIR/hookgate.log" 2>&1 < /dev/null &
GW=$!
wait_listening 18081
wait_listening 18098

BODY=$HERE/webhook.json
unique_signatures "$BODY" bench-secret "$IDS" > "$RUN_DIR/sigs"
signature_header "$BODY" bench-secret > "$RUN_DIR/signed"
{ cat "$RUN_DIR/signed"; echo 'Connection: close'; } > "$RUN_DIR/close"
signature_header "$BODY" not-the-secret > "$RUN_DIR/forged"

# stream NAME CONNECTIONS SCRIPT HEADERS PATH: one wrk for the whole run, its summary in NAME.out.
stream() {
  BENCH_BODY_FILE=$BODY BENCH_HEADERS_FILE=$4 BENCH_SIGS_FILE=$RUN_DIR/sigs BENCH_THREADS=1 \
    wrk -t1 -c"$2" -d"${DURATION}s" -s "$HERE/$3" "http://127.0.0.1:18098$5" > "$RUN_DIR/$1.out" 2>&1 &
  WRKS+=($!)
}
# sample SECONDS: one row of the table.
sample() {
  local served
  served=$(curl -sf http://127.0.0.1:18099/metrics | awk '/^hookgate_requests_total/ {s += $NF} END {printf "%d", s}')
  printf '%6s %12s %8.1f %6s %8s\n' "$1" "$served" "$(awk '/^VmRSS:/ {print $2 / 1024}' "/proc/$GW/status")" \
    "$(ls "/proc/$GW/fd" | wc -l)" "$(ls "/proc/$GW/task" | wc -l)"
}

printf '%6s %12s %8s %6s %8s\n' 's' 'requests' 'RSS MiB' 'fds' 'threads'
sample 0 | tee "$RUN_DIR/idle"
WRKS=()
start=$(date +%s)
stream fresh 32 unique.lua "$RUN_DIR/signed" /webhook
stream close 8 post.lua "$RUN_DIR/close" /webhook
stream forged 8 post.lua "$RUN_DIR/forged" /webhook
stream unrouted 4 post.lua "$RUN_DIR/signed" /nope
while (($(date +%s) - start + INTERVAL <= DURATION)); do
  sleep "$INTERVAL"
  sample $(($(date +%s) - start))
done | tee "$RUN_DIR/samples"
wait "${WRKS[@]}"
sleep 2
echo "after the load:"
sample $(($(date +%s) - start))

failed=0
# check NAME WANT: WANT is "2xx" (no other answer) or "none" (no 2xx answer).
check() {
  local line n bad
  line=$(grep '^BENCH ' "$RUN_DIR/$1.out") || { echo "$1: no summary from wrk"; failed=1; return; }
  n=$(bench_field requests "$line")
  bad=$(bench_field non2xx "$line")
  [[ $2 == none ]] && bad=$((n - bad))
  printf '%-9s %10d requests, %s answers not as they should be (want %s), p99 %s µs, socket errors %s\n' \
    "$1" "$n" "$bad" "$2" "$(bench_field p99_us "$line")" "$(bench_field sockerr "$line")"
  ((bad == 0)) || failed=1
}
check fresh 2xx
check close 2xx
check forged none
check unrouted none
rows=$(wc -l < "$RUN_DIR/samples")
if ((rows >= 2)); then
  from=$(sed -n "$(((rows + 3) / 4))p" "$RUN_DIR/samples" | awk '{print $3}')
  to=$(tail -1 "$RUN_DIR/samples" | awk '{print $3}')
  peak=$(awk '$3 > m {m = $3} END {print m}' "$RUN_DIR/samples")
  grew=$(awk -v a="$from" -v b="$to" 'BEGIN {printf "%.1f", b - a}')
  echo "RSS: ${from} MiB a quarter in, ${to} MiB at the end (${grew} MiB), peak ${peak} MiB; idle before the load $(awk '{print $3}' "$RUN_DIR/idle") MiB"
  awk -v g="$grew" -v max="$GROW_MAX_MIB" 'BEGIN {exit !(g > max)}' && { echo "RSS grew by more than $GROW_MAX_MIB MiB"; failed=1; }
fi
exit "$failed"
