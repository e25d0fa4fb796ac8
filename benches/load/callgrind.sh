#!/usr/bin/env bash
# Instructions per request of a hookgate build, counted by callgrind: steadier than any
# wall-clock figure on a shared VM, so it tells a 1 % step from the noise. One worker, wrk
# at 8 connections on the 1 KiB bench webhook in front of the nginx sink; the counters are
# zeroed after a warm-up, so start-up is not in the figure. valgrind hides SHA-NI: the
# HMAC counts ~56.7k instructions in software, a constant between builds.
#
#   apt-get install -y nginx-light wrk valgrind
#   benches/load/callgrind.sh target/release/hookgate    # requests, instructions, per request
#   SECS=4 BODY=big.json benches/load/callgrind.sh BIN
#   H2=10 benches/load/callgrind.sh BIN    # HTTP/2 (h2c, h2load; nghttp2-client), 10 streams a connection
#   RUST_LOG=info benches/load/callgrind.sh BIN   # at the default log level (a line per request)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SECS=${SECS:-8}
BODY=${BODY:-$HERE/webhook.json}
# shellcheck source=benches/load/common.sh
source "$HERE/common.sh"
(($# == 1)) || usage
need_tools nginx wrk openssl valgrind callgrind_control
RUN_DIR=$(mktemp -d /tmp/hookgate-callgrind.XXXXXX)
GW=
trap stop_gateway_and_sink EXIT

start_nginx sink sink.conf 1
gateway_config "$HERE/bench.toml" 18090 > "$RUN_DIR/hookgate.toml"
RUST_LOG=${RUST_LOG:-warn} HOOKGATE_WORKERS=1 valgrind --tool=callgrind --callgrind-out-file="$RUN_DIR/cg.out" \
  "$1" run --config "$RUN_DIR/hookgate.toml" 2> "$RUN_DIR/valgrind.log" &
GW=$!
# Under valgrind the start takes a few seconds: wait for the port.
wait_listening 18090
signature_header "$BODY" bench-secret > "$RUN_DIR/headers"
load() {
  if [[ -n ${H2:-} ]]; then
    # h2load's summary, in the form post.lua prints it (what bench_field reads).
    h2load -c8 -m"$H2" -t1 -D"$1" -d "$BODY" -H "$(< "$RUN_DIR/headers")" \
      http://127.0.0.1:18090/webhook | awk '/^requests:/ {print "BENCH requests=" $8}'
  else
    BENCH_BODY_FILE=$BODY BENCH_HEADERS_FILE=$RUN_DIR/headers \
      wrk -t1 -c8 -d"$1s" -s "$HERE/post.lua" http://127.0.0.1:18090/webhook
  fi
}
load 2 > /dev/null
callgrind_control -z "$GW" > /dev/null 2>&1
load "$SECS" > "$RUN_DIR/wrk.out"
kill -INT "$GW"
wait "$GW" || true
GW=
n=$(bench_field requests "$(< "$RUN_DIR/wrk.out")")
# %.0f, not %d: mawk's %d stops at 2^31, which a 64 KiB body's run passes.
cat "$RUN_DIR"/cg.out* | awk -v n="$n" '/^summary:/ {s += $2}
  END {printf "requests=%d instructions=%.0f per_request=%.0f\n", n, s, s / n}'
