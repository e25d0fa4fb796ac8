#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 600), one after another,
# seeded with the vectors' bodies. Needs cargo-fuzz (cargo install cargo-fuzz); on a stable
# toolchain RUSTC_BOOTSTRAP=1 lets it pass its sanitizer flags.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SECONDS_EACH=${SECONDS_EACH:-600}
export RUSTC_BOOTSTRAP=1
python3 - <<'PY'
import json, glob, os, hashlib
for f in glob.glob('../tests/vectors/*.json'):
    v = json.load(open(f))
    target = 'normalize_' + v['source']['platform']
    os.makedirs(f'corpus/{target}', exist_ok=True)
    body = v['request']['body'].encode()
    open(f'corpus/{target}/' + hashlib.sha1(body).hexdigest(), 'wb').write(body)
    os.makedirs('corpus/json_object', exist_ok=True)
    open('corpus/json_object/' + hashlib.sha1(body).hexdigest(), 'wb').write(body)
for f in glob.glob('../tests/vectors/replies/*.json'):
    v = json.load(open(f))
    os.makedirs('corpus/reply', exist_ok=True)
    body = bytes([0]) + v['upstream_body'].encode()
    open('corpus/reply/' + hashlib.sha1(body).hexdigest(), 'wb').write(body)
# Upstream answers: a piece size byte, a limit byte, then the answer.
answers = [b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}',
           b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n'
           b'3;x=y\r\nabc\r\n0\r\ntrailer: 1\r\n\r\n',
           b'HTTP/1.0 502 Bad Gateway\r\nretry-after: 3\r\n\r\nuntil the end',
           b'HTTP/1.1 204 No Content\r\ncontent-length: 9\r\nconnection: close\r\n\r\n']
os.makedirs('corpus/upstream_answer', exist_ok=True)
for a in answers:
    body = bytes([7, 16]) + a
    open('corpus/upstream_answer/' + hashlib.sha1(body).hexdigest(), 'wb').write(body)
# A mode byte, a query string, then X-Forwarded-For lines (the last also X-Forwarded-Proto).
os.makedirs('corpus/forwarded', exist_ok=True)
for seed in [b'\x02token=a&b=c\n1.2.3.4, 10.0.0.1\n[::1]:80',
             b'\x05x%20y=%74oken&token=%2B\n::ffff:192.168.1.1\nunknown, 8.8.8.8\nhttps']:
    open('corpus/forwarded/' + hashlib.sha1(seed).hexdigest(), 'wb').write(seed)
# PROXY headers: version 1 (TCP4, TCP6, UNKNOWN) and version 2 (IPv4 with a TLV, with the
# client-TLS TLV, LOCAL).
os.makedirs('corpus/proxy_header', exist_ok=True)
v2 = b'\r\n\r\n\0\r\nQUIT\n'
for seed in [b'PROXY TCP4 203.0.113.7 10.0.0.5 51234 443\r\nPOST / HTTP/1.1\r\n',
             b'PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n', b'PROXY UNKNOWN\r\n',
             v2 + b'\x21\x11\x00\x13' + bytes([203, 0, 113, 7, 10, 0, 0, 5, 0, 1, 1, 187]) + b'\xea\x00\x04\x01vpc',
             v2 + b'\x21\x11\x00\x14' + bytes([203, 0, 113, 7, 10, 0, 0, 5, 0, 1, 1, 187]) + b'\x20\x00\x05\x01\x00\x00\x00\x00',
             v2 + b'\x20\x00\x00\x00\x16\x03\x01']:
    open('corpus/proxy_header/' + hashlib.sha1(seed).hexdigest(), 'wb').write(seed)
# Plain HTTP on the TLS listener: a whole head with a request id, one cut short.
os.makedirs('corpus/plain_http', exist_ok=True)
for seed in [b'POST /hooks/p?token=x HTTP/1.1\r\nhost: x\r\nx-request-id: abc\r\ncontent-length: 2\r\n\r\n{}',
             b'GET / HTTP/1.1\r\nX-Request-Id: \xff\t\r\nhost']:
    open('corpus/plain_http/' + hashlib.sha1(seed).hexdigest(), 'wb').write(seed)
os.makedirs('corpus/config', exist_ok=True)
open('corpus/config/example', 'wb').write(open('../config/hookgate.toml', 'rb').read())
PY
targets=${TARGETS:-"json_object normalize_protocol normalize_spika normalize_barertc normalize_funtek reply config upstream_answer forwarded proxy_header plain_http"}
for t in $targets; do cargo fuzz build --release "$t" 2>&1 | tail -1; done
for t in $targets; do
  echo "== $t (${SECONDS_EACH}s)"
  cargo fuzz run --release "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" -print_final_stats=1 2>&1 | tail -25 ||
    echo "!! $t stopped with a finding: see artifacts/$t/"
done
