#!/usr/bin/env bash
# Memory under stalled bodies: CONNS connections each declare a 1 MiB body, send most of it
# (unsigned, so it could never be forwarded) and stall; the gateway's peak RSS is printed
# before and after, and a whole signed webhook is sent meanwhile, which must still be
# forwarded at once. What `server.max_buffered_bytes` bounds (README, "Memory").
#
#   apt-get install -y nginx-light openssl curl python3
#   benches/load/stall.sh target/release/hookgate          # CONNS=300 SENT=1000000
#   benches/load/stall.sh target/release/hookgate@CONFIG   # another config (listen 18080)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONNS=${CONNS:-300}
SENT=${SENT:-1000000}
# shellcheck source=benches/load/common.sh
source "$HERE/common.sh"
(($# == 1)) || { sed -n '2,9p' "$0" >&2; exit 2; }
need_tools nginx openssl curl python3
RUN_DIR=$(mktemp -d /tmp/hookgate-stall.XXXXXX)
GW=
trap stop_gateway_and_sink EXIT

BIN=${1%@*}
CONFIG=$HERE/bench.toml
[[ $1 == *@* ]] && CONFIG=${1#*@}
start_nginx sink sink.conf 1
RUST_LOG=warn "$BIN" --config "$CONFIG" 2>"$RUN_DIR/gateway.log" &
GW=$!
wait_listening 18080

python3 - "$GW" "$CONNS" "$SENT" "$HERE/webhook.json" <<'PY'
import hashlib, hmac, socket, sys, time
pid, conns, sent, body = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), open(sys.argv[4], "rb").read()
def rss_mib():
    kb = next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
    return int(kb) / 1024
print(f"peak RSS before: {rss_mib():.1f} MiB")
head = (b"POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 1048576\r\n\r\n")
held = []
for _ in range(conns):
    s = socket.create_connection(("127.0.0.1", 18080))
    s.setblocking(False)
    try:
        s.sendall(head + b"x" * sent)
    except BlockingIOError:
        pass  # the socket buffers are full: the gateway stopped reading this one
    held.append(s)
time.sleep(2)
print(f"peak RSS with {conns} stalled bodies of {sent} bytes: {rss_mib():.1f} MiB")
sig = hmac.new(b"bench-secret", body, hashlib.sha256).hexdigest()
started = time.monotonic()
w = socket.create_connection(("127.0.0.1", 18080))
w.settimeout(10)
w.sendall(b"POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
          b"x-protocol-signature: " + sig.encode() + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
try:
    answer = w.recv(65536).split(b"\r\n", 1)[0].decode()
except socket.timeout:
    answer = "no answer within 10 s"
print(f"a whole signed webhook meanwhile: {answer} in {(time.monotonic() - started) * 1000:.1f} ms")
PY
