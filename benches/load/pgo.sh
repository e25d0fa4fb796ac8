#!/usr/bin/env bash
# A profile-guided build of hookgate (PGO): an instrumented build serves a training load in
# front of the nginx sink, and the release build is made again with that profile, so the
# compiler lays out and inlines the code by what a delivery actually runs. The training is
# the bench's protocol webhook (64 and 1 connections, 1 KiB and 64 KiB) and one forwarded
# test vector or two per platform, plus some refused ones, so no platform's path is left
# cold; then, at the default log level, a source on the defaults (dedupe on) with a new id
# per request, which is what operators run. Semantics do not change (the same source and flags; only optimization decisions
# differ); measure the result with ab.sh against the plain build. At the end the built binary
# must forward the bench webhook (every answer a 2xx), since the container image ships it.
#
#   apt-get install -y nginx-light wrk openssl python3 && rustup component add llvm-tools
#   benches/load/pgo.sh     # -> target/pgo/release/hookgate (profile: target/pgo/hookgate.profdata)
#
# Knobs: SECS=4 (each training load's length). Two full builds: 2–3 minutes on a 2-core Zen 5, ~7 on slower 2-core machines.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SECS=${SECS:-4}
# shellcheck source=benches/load/common.sh
source "$HERE/common.sh"
need_tools nginx wrk openssl python3 cargo rustc
# The profile must be merged by the llvm-profdata of rustc's own LLVM.
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata
[[ -x $PROFDATA ]] || { echo "missing $PROFDATA: rustup component add llvm-tools" >&2; exit 1; }

RUN_DIR=$(mktemp -d /tmp/hookgate-pgo.XXXXXX)
GW=
trap stop_gateway_and_sink EXIT

# Their own target directories: other RUSTFLAGS would otherwise rebuild target/release. The
# flags name fixed paths, so that a second run rebuilds only what changed.
PROFILES=$ROOT/target/pgo-generate/profiles
echo "== instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$PROFILES" \
  cargo build --release --locked --bin hookgate --target-dir "$ROOT/target/pgo-generate" --manifest-path "$ROOT/Cargo.toml"
rm -rf "$PROFILES"

# The training bodies: the bench webhook, its 64 KiB form, and test vectors by name.
python3 - "$HERE/webhook.json" "$ROOT/tests/vectors" "$RUN_DIR" <<'PY'
import json, sys
bench, vectors, out = sys.argv[1:]
d = json.load(open(bench))
d["payload"]["message"] = "x" * (64 * 1024 - len(open(bench).read()) - 10)
open(f"{out}/webhook-64k.json", "w").write(json.dumps(d, separators=(",", ":")))
for name in ["protocol-message-updated", "protocol-contact-created", "protocol-bad-signature",
             "spika-message", "spika-wrong-token", "barertc-report", "barertc-profile",
             "funtek-message", "funtek-add-members", "funtek-no-token"]:
    r = json.load(open(f"{vectors}/{name}.json"))["request"]
    open(f"{out}/{name}.body", "w").write(r["body"])
    open(f"{out}/{name}.headers", "w").write("".join(f"{k}: {v}\n" for k, v in r["headers"].items()))
    open(f"{out}/{name}.url", "w").write(r["path"] + ("?" + r["query"] if r["query"] else ""))
PY
signature_header "$HERE/webhook.json" bench-secret > "$RUN_DIR/bench.headers"
signature_header "$RUN_DIR/webhook-64k.json" bench-secret > "$RUN_DIR/bench-64k.headers"

start_nginx sink sink.conf 1
gateway_config "$HERE/pgo.toml" 18085 > "$RUN_DIR/hookgate.toml"
serve() { # BIN [LEVEL]: runs it on the training config (RUST_LOG=LEVEL, warn), GW its pid
  RUST_LOG=${2:-warn} setsid "$1" run --config "$RUN_DIR/hookgate.toml" > "$RUN_DIR/hookgate.log" 2>&1 < /dev/null &
  GW=$!
  wait_listening 18085
}
# SIGINT: a graceful stop (at whose exit the instrumented build writes its profile).
stop_serving() { kill -INT "$GW"; wait "$GW" || true; GW=; }
serve "$ROOT/target/pgo-generate/release/hookgate"
load() { # BODY HEADERS PATH CONNECTIONS SECONDS: prints "requests=N non2xx=M"
  local t=2; (($4 < 2)) && t=1
  BENCH_BODY_FILE=$1 BENCH_HEADERS_FILE=$2 BENCH_SIGS_FILE=$RUN_DIR/sigs BENCH_THREADS=$t \
    wrk -t$t -c"$4" -d"$5s" -s "${SCRIPT:-$HERE/post.lua}" "http://127.0.0.1:18085$3" |
    awk '/^BENCH/ {print $2, $9}'
}
train() { printf '%-40s c%-3s ' "$3" "$4" >&2; load "$@" >&2; }
echo "== training" >&2
train "$HERE/webhook.json" "$RUN_DIR/bench.headers" /webhook 64 "$SECS"
train "$HERE/webhook.json" "$RUN_DIR/bench.headers" /webhook 1 "$SECS"
train "$RUN_DIR/webhook-64k.json" "$RUN_DIR/bench-64k.headers" /webhook 64 "$SECS"
for v in "$RUN_DIR"/*.url; do
  v=${v%.url} secs=$(((SECS + 1) / 2))
  # Refusals are on the profile, but briefly: most of what a gateway sees is deliveries.
  case $v in *-bad-* | *-wrong-* | *-no-*) secs=1 ;; esac
  train "$v.body" "$v.headers" "$(cat "$v.url")" 64 "$secs"
done
stop_serving
# The defaults: a line logged per request, and dedupe's check and remember of new ids.
serve "$ROOT/target/pgo-generate/release/hookgate" info
unique_signatures "$HERE/webhook.json" bench-secret 300000 > "$RUN_DIR/sigs"
SCRIPT=$HERE/unique.lua train "$HERE/webhook.json" "$RUN_DIR/bench.headers" /defaults 64 "$SECS"
stop_serving
mkdir -p "$ROOT/target/pgo"
"$PROFDATA" merge -o "$ROOT/target/pgo/hookgate.profdata" "$PROFILES"

echo "== build with the profile" >&2
RUSTFLAGS="-Cprofile-use=$ROOT/target/pgo/hookgate.profdata" \
  cargo build --release --locked --bin hookgate --target-dir "$ROOT/target/pgo" --manifest-path "$ROOT/Cargo.toml"
BUILT=$ROOT/target/pgo/release/hookgate

# The image ships this binary: it must forward the bench webhook, every request a 2xx.
echo "== the built binary forwards" >&2
serve "$BUILT"
got=$(load "$HERE/webhook.json" "$RUN_DIR/bench.headers" /webhook 4 1)
stop_serving
printf '%-40s c%-3s %s\n' /webhook 4 "$got" >&2
[[ $got =~ ^requests=([0-9]+)\ non2xx=0$ ]] && ((BASH_REMATCH[1] > 0)) ||
  { echo "the profile-guided build did not forward the bench webhook: $got" >&2; exit 1; }
echo "$BUILT"
