#!/usr/bin/env bash
# Memory under stalled bodies: CONNS connections each declare a 1 MiB body, send most of it
# (unsigned, so it could never be forwarded) and stall; the gateway's peak RSS is printed
# before and after, and a whole signed webhook is sent meanwhile, which must still be
# forwarded at once. What `server.max_buffered_bytes` bounds (README, "Memory").
#
#   apt-get install -y nginx-light openssl python3
#   benches/load/stall.sh target/release/hookgate          # CONNS=300 SENT=1000000
#   benches/load/stall.sh target/release/hookgate@CONFIG   # another config (listen 18080)
#   H2=1 benches/load/stall.sh BIN   # HTTP/2 (pip install h2): CONNS=20 connections of
#                                    # STREAMS=50 streams, sending for SECS=15 s as flow
#                                    # control lets them
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
H2=${H2:-}
CONNS=${CONNS:-$([[ -n $H2 ]] && echo 20 || echo 300)}
STREAMS=${STREAMS:-50}
SECS=${SECS:-15}
SENT=${SENT:-1000000}
# shellcheck source=benches/load/common.sh
source "$HERE/common.sh"
(($# == 1)) || usage
need_tools nginx openssl python3
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

if [[ -n $H2 ]]; then
  python3 - "$GW" "$CONNS" "$STREAMS" "$SENT" "$SECS" <<'PY'
import select, socket, sys, time
import h2.config, h2.connection
pid, conns, streams, sent, secs = sys.argv[1], *map(int, sys.argv[2:6])
def rss_mib():
    kb = next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
    return int(kb) / 1024
print(f"peak RSS before: {rss_mib():.1f} MiB")
chunk = b"x" * 16384
units = []  # (socket, h2 connection, bytes left per stream, bytes not yet sent)
for _ in range(conns):
    s = socket.create_connection(("127.0.0.1", 18080))
    s.setblocking(False)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    left = {}
    for _ in range(streams):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "POST"), (":path", "/webhook"), (":scheme", "http"),
                             (":authority", "x"), ("content-length", "1048576")])
        left[sid] = sent
    units.append([s, c, left, b""])
end = time.time() + secs
while time.time() < end:
    for u in units:
        s, c, left, _ = u
        for sid, n in left.items():
            while n > 0:
                w = min(c.local_flow_control_window(sid), c.max_outbound_frame_size, n, len(chunk))
                if w <= 0:
                    break
                c.send_data(sid, chunk[:w])
                n -= w
            left[sid] = n
        u[3] += c.data_to_send()
        try:
            u[3] = u[3][s.send(u[3]):] if u[3] else u[3]
        except BlockingIOError:
            pass
    for s in select.select([u[0] for u in units], [], [], 0.05)[0]:
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        next(u for u in units if u[0] is s)[1].receive_data(data)
done = sum(sent - n for u in units for n in u[2].values())
print(f"peak RSS with {conns} x {streams} HTTP/2 bodies, {done / 2**20:.0f} MiB sent in {secs} s: {rss_mib():.1f} MiB")
PY
  exit 0
fi
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
