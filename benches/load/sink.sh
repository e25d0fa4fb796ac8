#!/usr/bin/env bash
# What the forwarded request itself costs the application behind the proxy: the nginx sink's
# CPU per request for the bench webhook as nginx-proxy passes it on (the body and wrk's
# headers) against the request a hookgate build forwards for it (the event of SPEC §7 and
# the headers of §5), both sent straight to the sink by wrk, in alternating rounds. The
# difference is the part of the sink's extra cost behind hookgate (ab.sh's sink column)
# that the event's bytes make, which no change to the proxy can take away.
#
#   apt-get install -y nginx-light wrk curl python3
#   benches/load/sink.sh target/release/hookgate     # ROUNDS=6 SECS=4
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SECS=${SECS:-4}
ROUNDS=${ROUNDS:-6}
# shellcheck source=benches/load/common.sh
source "$HERE/common.sh"
(($# == 1)) || usage
need_tools nginx wrk openssl curl python3
RUN_DIR=$(mktemp -d /tmp/hookgate-sink.XXXXXX)
GW= CAPTURE=
trap '[[ -n $CAPTURE ]] && kill "$CAPTURE" 2>/dev/null; stop_gateway_and_sink' EXIT

# The forwarded request, taken by a one-shot listener on the sink's port before the sink
# starts: hookgate forwards one signed bench webhook to it.
python3 - "$RUN_DIR" <<'PY' &
import re, socket, sys
out = sys.argv[1]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 18081))
s.listen(1)
# The first connection may be wait_listening's probe, which sends nothing.
data = b""
while b"\r\n\r\n" not in data:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data and (piece := c.recv(65536)):
        data += piece
head, _, body = data.partition(b"\r\n\r\n")
length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
while len(body) < length:
    body += c.recv(65536)
c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
open(f"{out}/event.body", "wb").write(body)
# wrk writes host, content-length and (post.lua) content-type itself.
with open(f"{out}/event.headers", "w") as f:
    for line in head.decode().split("\r\n")[1:]:
        name = line.split(":", 1)[0].lower()
        if name not in ("host", "content-length", "content-type"):
            f.write(line + "\n")
PY
CAPTURE=$!
wait_listening 18081
gateway_config "$HERE/bench.toml" 18097 > "$RUN_DIR/hookgate.toml"
RUST_LOG=warn "$1" run --config "$RUN_DIR/hookgate.toml" > "$RUN_DIR/hookgate.log" 2>&1 &
GW=$!
wait_listening 18097
signature_header "$HERE/webhook.json" bench-secret > "$RUN_DIR/webhook.headers"
curl -sf -H @"$RUN_DIR/webhook.headers" -H 'content-type: application/json' \
  --data-binary @"$HERE/webhook.json" http://127.0.0.1:18097/webhook > /dev/null
wait "$CAPTURE"
kill "$GW"
GW= CAPTURE=

start_nginx sink sink.conf 1
wait_listening 18081
SINK=$(cat "$RUN_DIR/sink/nginx.pid")
HZ=$(getconf CLK_TCK)
body_of() { if [[ $1 == event ]]; then echo "$RUN_DIR/event.body"; else echo "$HERE/webhook.json"; fi; }
for ((r = 1; r <= ROUNDS; r++)); do
  for kind in webhook event; do
    s0=$(cpu_ticks "$SINK")
    line=$(BENCH_BODY_FILE=$(body_of $kind) BENCH_HEADERS_FILE=$RUN_DIR/$kind.headers \
      wrk -t2 -c64 -d"${SECS}s" -s "$HERE/post.lua" http://127.0.0.1:18081/ | grep '^BENCH ')
    s1=$(cpu_ticks "$SINK")
    n=$(bench_field requests "$line")
    awk -v n="$n" -v d=$((s1 - s0)) -v hz="$HZ" -v secs="$SECS" \
      'BEGIN { printf "%.0f %.2f\n", n / secs, d * 1e6 / hz / n }' >> "$RUN_DIR/$kind.rounds"
  done
done
printf '%-8s %6s %8s %9s  %s\n' request bytes 'req/s' 'sink µs' 'sink µs per round'
for kind in webhook event; do
  # Its size as wrk sends it: the body, the header lines above and wrk's own (~90 bytes).
  bytes=$(($(wc -c < "$(body_of $kind)") + $(wc -c < "$RUN_DIR/$kind.headers") + 90))
  printf '%-8s %6s %8s %9s  %s\n' "$kind" "~$bytes" "$(cut -d' ' -f1 "$RUN_DIR/$kind.rounds" | median)" \
    "$(cut -d' ' -f2 "$RUN_DIR/$kind.rounds" | median)" "$(cut -d' ' -f2 "$RUN_DIR/$kind.rounds" | tr '\n' ' ')"
done
# The VM's speed drifts between rounds; a pair of rounds, one of each, run back to back.
paste -d' ' "$RUN_DIR/webhook.rounds" "$RUN_DIR/event.rounds" | awk '{ printf "%+.2f\n", $4 - $2 }' > "$RUN_DIR/pairs"
echo "event against webhook, sink µs per request by pair: $(tr '\n' ' ' < "$RUN_DIR/pairs")(median $(median < "$RUN_DIR/pairs"))"
echo "(medians of $ROUNDS alternating rounds of ${SECS}s, wrk -t2 -c64 straight to the nginx sink; sink µs = its CPU per request)"
