#!/usr/bin/env bash
# Side-by-side load benchmark: hookgate next to nginx, measured in ONE run on one box, so
# the ratio holds even on a noisy machine. All traffic stays on 127.0.0.1.
#
#   direct       wrk -> nginx sink (:18081)                      the box's physical limit
#   nginx-proxy  wrk -> nginx proxy_pass (:18082) -> sink        the ratio's denominator
#   hookgate     wrk -> hookgate (:18080) -> sink                verify + normalize + forward
#   hookgate-bare wrk -> hookgate (:18083) -> sink               no proof, raw forward (the
#                                                                body still parsed for its id)
#   hookgate-pgo wrk -> hookgate (:18084) -> sink                as hookgate, the build of
#                                                                HOOKGATE_PGO_BIN (pgo.sh), if set
#   nginx-proxy-ka wrk -> nginx proxy_pass (:18085) -> sink      nginx-proxy with an upstream
#                                                                keep-alive pool as large as
#                                                                hookgate's; only past 128 conns
#
# Every request POSTs the same signed Protocol message.created webhook (~1 KiB, webhook.json)
# with x-protocol-signature = hex(HMAC-SHA256("bench-secret", body)). Cases: wrk -c 64 (the
# bar), -c 1, -c 512, -c 64 with a 64 KiB body, and -c 64 with a new connection for every
# request (c64-close: `Connection: close`, as senders that do not keep connections alive).
#
#   apt-get install -y nginx-light wrk curl openssl
#   benches/load/run.sh                       # builds the release binary, ~3 min
#   CASES="c64" ROUNDS=3 benches/load/run.sh  # the bar's case only, medians of 3 rounds
#
# Knobs: DURATION=10 WARMUP=2 THREADS=2 ROUNDS=1 CASES="c64 c1 c512 c64-64k c64-close"
#        HOOKGATE_BIN (default: target/release/hookgate, built here) RESULTS_DIR
#        HOOKGATE_PGO_BIN (a profile-guided build, benches/load/pgo.sh: adds hookgate-pgo)
#        STEAL_MAX=3 (rounds where a unit lost more of the machine to the VM's host, in %,
#        are left out of the per-round ratios printed under the table)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-1}
STEAL_MAX=${STEAL_MAX:-3}
CASES=${CASES:-"c64 c1 c512 c64-64k c64-close"}
SECRET=bench-secret
RESULTS_DIR=${RESULTS_DIR:-$HERE/results/$(date +%Y%m%d-%H%M%S)}
# shellcheck source=benches/load/common.sh
source "$HERE/common.sh"

for tool in nginx wrk openssl curl ps; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool (apt-get install -y nginx-light wrk openssl curl procps)" >&2; exit 1; }
done
if [[ -z ${HOOKGATE_BIN:-} ]]; then
  (cd "$ROOT" && cargo build --release --locked --bin hookgate >&2)
  HOOKGATE_BIN=$ROOT/target/release/hookgate
fi

RUN_DIR=$(mktemp -d /tmp/hookgate-bench.XXXXXX)
mkdir -p "$RESULTS_DIR"
PIDS=()
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

start_bg() { # name logfile cmd... -> LAST_PID (own process group)
  local name=$1 logf=$2; shift 2
  setsid "$@" >"$logf" 2>&1 </dev/null &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  log "started $name pid=$LAST_PID"
}

cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  set +e
  for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  cp "$RUN_DIR"/*.log "$RESULTS_DIR/" 2>/dev/null
  rm -rf "$RUN_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port pid
  local deadline=$((SECONDS + 30))
  until port_open "$1"; do
    kill -0 "$2" 2>/dev/null || { log "process $2 exited before listening on :$1"; return 1; }
    ((SECONDS < deadline)) || { log "timeout waiting for :$1"; return 1; }
    sleep 0.1
  done
}

start_nginx() { # name conf (under nginx/, or a path) workers port
  local prefix=$RUN_DIR/$1 conf=$2
  [[ $conf == /* ]] || conf=$HERE/nginx/$conf
  mkdir -p "$prefix"
  port_open "$4" && { log "port $4 already in use"; exit 1; }
  start_bg "$1" "$RUN_DIR/$1.log" nginx -p "$prefix/" -e "$prefix/error.log" -c "$conf" \
    -g "daemon off; master_process on; worker_processes $3;"
  wait_port "$4" "$LAST_PID"
}

# ------------------------------------------------------------- request bodies
BODY_1K=$HERE/webhook.json
BODY_64K=$RUN_DIR/webhook-64k.json
python3 - "$BODY_1K" "$BODY_64K" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["payload"]["message"] = "x" * (64 * 1024 - len(open(sys.argv[1]).read()) - 10)
open(sys.argv[2], "w").write(json.dumps(d, separators=(",", ":")))
PY
headers_for() { # body -> headers file
  local f=$RUN_DIR/$(basename "$1").headers
  signature_header "$1" "$SECRET" > "$f"
  echo "$f"
}

# ------------------------------------------------------------------ servers
start_nginx sink sink.conf 1 18081; SINK_PID=$LAST_PID
start_nginx nginx-proxy proxy.conf 2 18082; PROXY_PID=$LAST_PID
# The reference proxy (nginx/proxy.conf, as the shared bench has it) keeps 64 idle
# upstream connections per worker; hookgate keeps up to 1024 (src/upstream/pool.rs). Past
# 128 client connections nginx-proxy then closes and reopens upstream connections all the
# time, and the c512 ratio would flatter hookgate: nginx-proxy-ka is the same proxy with a
# pool as large as hookgate's.
sed 's/keepalive 64; /keepalive 1024;/; s/127\.0\.0\.1:18082/127.0.0.1:18085/' "$HERE/nginx/proxy.conf" > "$RUN_DIR/proxy-ka.conf"
grep -q 'keepalive 1024;' "$RUN_DIR/proxy-ka.conf" && grep -q ':18085' "$RUN_DIR/proxy-ka.conf" \
  || { log "proxy-ka.conf: the keepalive or listen line of nginx/proxy.conf has changed"; exit 1; }
start_nginx nginx-proxy-ka "$RUN_DIR/proxy-ka.conf" 2 18085; PROXY_KA_PID=$LAST_PID
port_open 18080 && { log "port 18080 already in use"; exit 1; }
start_bg hookgate "$RUN_DIR/hookgate.log" env RUST_LOG=warn "$HOOKGATE_BIN" run --config "$HERE/bench.toml"
GW_PID=$LAST_PID
wait_port 18080 "$GW_PID"
port_open 18083 && { log "port 18083 already in use"; exit 1; }
start_bg hookgate-bare "$RUN_DIR/hookgate-bare.log" env RUST_LOG=warn "$HOOKGATE_BIN" run --config "$HERE/bench-bare.toml"
BARE_PID=$LAST_PID
wait_port 18083 "$BARE_PID"

declare -A URL=([direct]=http://127.0.0.1:18081/webhook [nginx-proxy]=http://127.0.0.1:18082/webhook [nginx-proxy-ka]=http://127.0.0.1:18085/webhook [hookgate]=http://127.0.0.1:18080/webhook [hookgate-bare]=http://127.0.0.1:18083/webhook)
declare -A UNIT=([direct]=$SINK_PID [nginx-proxy]=$PROXY_PID [nginx-proxy-ka]=$PROXY_KA_PID [hookgate]=$GW_PID [hookgate-bare]=$BARE_PID)
SCENARIOS=(direct nginx-proxy nginx-proxy-ka hookgate hookgate-bare)
if [[ -n ${HOOKGATE_PGO_BIN:-} ]]; then
  port_open 18084 && { log "port 18084 already in use"; exit 1; }
  gateway_config "$HERE/bench.toml" 18084 > "$RUN_DIR/bench-pgo.toml"
  start_bg hookgate-pgo "$RUN_DIR/hookgate-pgo.log" env RUST_LOG=warn "$HOOKGATE_PGO_BIN" run --config "$RUN_DIR/bench-pgo.toml"
  wait_port 18084 "$LAST_PID"
  URL[hookgate-pgo]=http://127.0.0.1:18084/webhook UNIT[hookgate-pgo]=$LAST_PID
  SCENARIOS+=(hookgate-pgo)
fi

# One signed request each, so a 401/502 shows before the load.
for s in "${SCENARIOS[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
    -H "@$(headers_for "$BODY_1K")" --data-binary "@$BODY_1K" "${URL[$s]}") || code=000
  log "probe $s -> HTTP $code"
  [[ $code == 2* ]] || { log "$s does not answer 2xx: aborting"; exit 1; }
done

RAW=$RESULTS_DIR/raw.tsv
printf 'case\tscenario\tround\trps\tp50_us\tp99_us\tnon2xx\tsockerr\trequests\tpeak_rss_kb\tcpu_us_per_req\tsteal_pct\tbox_us_per_req\n' > "$RAW"
run_wrk() { # scenario conns body seconds out headers
  BENCH_BODY_FILE=$3 BENCH_HEADERS_FILE=$6 \
    wrk -t"$THREADS" -c"$2" -d"${4}s" --latency -s "$HERE/post.lua" "${URL[$1]}" > "$5" 2>&1 || true
}

for case in $CASES; do
  conns=${case#c}; conns=${conns%%-*}
  body=$BODY_1K; [[ $case == *-64k ]] && body=$BODY_64K
  threads=$THREADS; ((conns < threads)) && threads=$conns
  headers=$(headers_for "$body")
  if [[ $case == *-close ]]; then
    cp "$headers" "$RUN_DIR/close.headers" && echo 'Connection: close' >> "$RUN_DIR/close.headers"
    headers=$RUN_DIR/close.headers
  fi
  for ((r = 1; r <= ROUNDS; r++)); do
    for s in "${SCENARIOS[@]}"; do
      # Up to 128 connections the two pools hold every upstream connection: the same proxy.
      [[ $s == nginx-proxy-ka ]] && ((conns <= 128)) && continue
      log "$case round $r/$ROUNDS: $s (${WARMUP}s warm-up + ${DURATION}s, -c$conns, $(wc -c < "$body") B)"
      THREADS=$threads run_wrk "$s" "$conns" "$body" "$WARMUP" /dev/null "$headers"
      c0=$(cpu_ticks "${UNIT[$s]}"); st0=$(machine_ticks)
      out=$RESULTS_DIR/$case.$s.r$r.txt
      THREADS=$threads run_wrk "$s" "$conns" "$body" "$DURATION" "$out" "$headers"
      c1=$(cpu_ticks "${UNIT[$s]}"); st1=$(machine_ticks)
      line=$(grep '^BENCH ' "$out" || true)
      [[ -n $line ]] || { log "no result for $s:"; cat "$out" >&2; continue; }
      declare -A m=()
      for kv in ${line#BENCH }; do m[${kv%%=*}]=${kv#*=}; done
      cpu=$(us_per_req $((c1 - c0)) "${m[requests]}")
      printf '%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case" "$s" "$r" "${m[rps]}" "${m[p50_us]}" "${m[p99_us]}" \
        "${m[non2xx]}" "${m[sockerr]}" "${m[requests]}" "$(peak_rss_kb "${UNIT[$s]}")" "$cpu" "$(steal_pct "$st0" "$st1")" \
        "$(us_per_req "$(busy_ticks "$st0" "$st1")" "${m[requests]}")" >> "$RAW"
      unset m
      sleep 1
    done
  done
done

col() { awk -F'\t' -v c="$1" -v s="$2" -v k="$3" 'NR>1 && $1==c && $2==s {print $k}' "$RAW" | median; }
sumcol() { awk -F'\t' -v c="$1" -v s="$2" -v k="$3" 'NR>1 && $1==c && $2==s {t+=$k} END {print t+0}' "$RAW"; }
{
  echo "date $(date -Is)  host $(hostname)  cores $(nproc)  cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "wrk -t$THREADS -d${DURATION}s x$ROUNDS round(s); hookgate $("$HOOKGATE_BIN" --version 2>/dev/null || echo '?')"
  printf '%-8s %-14s %9s %8s %8s %9s %7s %7s %8s %10s %7s\n' case scenario 'req/s' 'p50 ms' 'p99 ms' 'vs proxy' non2xx sockerr 'RSS MiB' 'CPU us/req' 'steal %'
  for case in $CASES; do
    base=$(col "$case" nginx-proxy 4)
    for s in "${SCENARIOS[@]}"; do
      rps=$(col "$case" "$s" 4); [[ $rps == nan ]] && continue
      awk -v c="$case" -v s="$s" -v rps="$rps" -v p50="$(col "$case" "$s" 5)" -v p99="$(col "$case" "$s" 6)" -v base="$base" \
          -v n2="$(sumcol "$case" "$s" 7)" -v se="$(sumcol "$case" "$s" 8)" -v rss="$(col "$case" "$s" 10)" -v cpu="$(col "$case" "$s" 11)" \
          -v steal="$(col "$case" "$s" 12)" \
        'BEGIN { printf "%-8s %-14s %9.0f %8.2f %8.2f %8.2fx %7d %7d %8.1f %10.1f %7.1f\n", c, s, rps, p50/1000, p99/1000, (base > 0 ? rps/base : 0), n2, se, rss/1024, cpu, steal }'
    done
  done
  for case in $CASES; do
    ka=$(col "$case" nginx-proxy-ka 4); [[ $ka == nan ]] && continue
    for s in "${SCENARIOS[@]}"; do
      [[ $s == hookgate* ]] || continue
      awk -v c="$case" -v s="$s" -v rps="$(col "$case" "$s" 4)" -v ka="$ka" \
        'BEGIN { printf "%s: %s against nginx-proxy-ka %.2fx\n", c, s, (ka > 0 ? rps/ka : 0) }'
    done
  done
  # Round by round, each hookgate build against the nginx it is compared with (nginx-proxy-ka
  # where it ran), in the rounds where neither lost over STEAL_MAX % to the host: a median
  # over rounds can pair a starved nginx round with a clean hookgate one.
  for case in $CASES; do
    ref=nginx-proxy; [[ $(col "$case" nginx-proxy-ka 4) != nan ]] && ref=nginx-proxy-ka
    for s in "${SCENARIOS[@]}"; do
      [[ $s == hookgate* ]] || continue
      awk -F'\t' -v c="$case" -v s="$s" -v ref="$ref" -v max="$STEAL_MAX" '
        NR > 1 && $1 == c && $2 == ref { rps[$3] = $4; st[$3] = $12 }
        NR > 1 && $1 == c && $2 == s { hg[$3] = $4; hst[$3] = $12; n++ }
        END {
          k = 0; list = ""
          for (r = 1; r <= n; r++) if ((r in rps) && st[r] <= max && hst[r] <= max && rps[r] > 0) {
            x[++k] = hg[r] / rps[r]; list = list sprintf(" %.2f", x[k])
          }
          if (k == 0) { printf "%s: %s against %s: no round with steal <= %s %% on both\n", c, s, ref, max; exit }
          for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
          med = (k % 2) ? x[(k + 1) / 2] : (x[k / 2] + x[k / 2 + 1]) / 2
          printf "%s: %s against %s, rounds with steal <= %s %% on both:%s (median %.2fx, %d of %d rounds)\n", c, s, ref, max, list, med, k, n
        }' "$RAW"
    done
  done
  # The whole machine's CPU per request: with the two cores saturated (not at one connection),
  # throughput follows it, so the reference's figure over a build's predicts the build's ratio,
  # and what the build adds can be set against what SPEC makes it do (benches/load/sink.sh,
  # criterion's pipeline::process).
  for case in $CASES; do
    ref=nginx-proxy; [[ $(col "$case" nginx-proxy-ka 4) != nan ]] && ref=nginx-proxy-ka
    refbox=$(col "$case" "$ref" 13)
    line="$case: box CPU us/req:"
    for s in "${SCENARIOS[@]}"; do
      b=$(col "$case" "$s" 13); [[ $b == nan ]] && continue
      line+=$(awk -v s="$s" -v b="$b" -v r="$refbox" 'BEGIN { printf " %s %.1f", s, b; if (s ~ /^hookgate/ && b > 0) printf " (%.2fx)", r / b; printf "," }')
    done
    echo "${line%,}"
  done
  echo "(medians over rounds; RSS = peak VmHWM of the unit's processes so far, nginx = master + workers;"
  echo " CPU us/req = CPU time of the unit under test only: the sink for direct, not wrk;"
  echo " box CPU = the machine's busy time per request (unit, sink, wrk, the kernel's packet work);"
  echo " (Nx) = the reference's box CPU over the build's: the req/s ratio a saturated box predicts;"
  echo " steal % = the machine's time the VM's host took while the round ran: above a few %, rounds"
  echo " are not comparable; worst round $(awk -F'\t' 'NR > 1 && $12 > m {m = $12} END {print m + 0}' "$RAW") %)"
} | tee "$RESULTS_DIR/table.txt"
