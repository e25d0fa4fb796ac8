# Helpers shared by run.sh, ab.sh, sched.sh, callgrind.sh and pgo.sh (sourced, not run).

# A pid and all its descendants (nginx: the master and its workers).
tree_pids() { local c; echo "$1"; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree_pids "$c"; done; }
# CPU ticks of a process tree: cpu_ticks PID [user], user + system unless "user" is given.
# Fields are counted after the ")" of the name, which may hold spaces.
cpu_ticks() { local p t=0 v; for p in $(tree_pids "$1"); do v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk -v only="${2:-}" '{print $12 + (only == "user" ? 0 : $13)}' || true); t=$((t + ${v:-0})); done; echo "$t"; }
# The machine's CPU ticks from /proc/stat: "STEAL ALL BUSY". On a VM, steal is time the host
# gave to someone else while this guest wanted the CPU; between two readings, 100 * dSTEAL /
# dALL is the share of the machine's time lost that way (a noisy host shows here first).
# BUSY is the time the guest's CPUs worked (user, nice, system, irq, softirq): between two
# readings, what the whole box (proxy, sink, wrk, the kernel's packet work) spent.
# (Fields 2-9, user to steal: guest time is already counted in user.)
machine_ticks() { awk 'NR == 1 { t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t, $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# steal_pct "STEAL0 ALL0 …" "STEAL1 ALL1 …": the share of steal between two machine_ticks readings.
steal_pct() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.1f", (d > 0 ? 100 * (y[1] - x[1]) / d : 0) }'; }
# busy_ticks "… BUSY0" "… BUSY1": the machine's busy ticks between two machine_ticks readings.
busy_ticks() { echo $((${2##* } - ${1##* })); }
# One figure of post.lua's "BENCH ..." summary line: bench_field NAME LINE (requests, p99_us, …).
bench_field() { grep -o "$1=[0-9]*" <<< "$2" | cut -d= -f2; }
# CPU µs per request: us_per_req TICKS REQUESTS.
us_per_req() { awk -v d="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (n > 0 ? d * 1e6 / hz / n : 0) }'; }
# Peak RSS (VmHWM) of a process tree, in KiB.
peak_rss_kb() { local p t=0 v; for p in $(tree_pids "$1"); do v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || true); t=$((t + ${v:-0})); done; echo "$t"; }
# The median of the numbers on stdin, "nan" for none.
median() { sort -g | awk '{a[NR]=$1} END { if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
# The protocol signature header line for a body file: signature_header BODY SECRET.
signature_header() { printf 'x-protocol-signature: %s\n' "$(openssl dgst -sha256 -hmac "$2" -r < "$1" | cut -d' ' -f1)"; }
# The signatures unique.lua sends, one per line: BODY with its first "id" value (16
# characters) replaced by 0…N-1, zero-padded to 16 digits: unique_signatures BODY SECRET N > OUT.
unique_signatures() {
  python3 - "$@" <<'PY'
import hashlib, hmac, sys
body, secret, n = open(sys.argv[1], "rb").read(), sys.argv[2].encode(), int(sys.argv[3])
at = body.index(b'"id":"') + 6
assert body[at + 16:at + 17] == b'"', "the body's first id is not 16 characters"
head, tail = body[:at], body[at + 16:]
out = sys.stdout
for i in range(n):
    out.write(hmac.new(secret, head + b"%016d" % i + tail, hashlib.sha256).hexdigest() + "\n")
PY
}
# An nginx unit (the sink or the proxy) as a daemon under RUN_DIR/NAME, and its stop:
# start_nginx NAME CONF WORKERS (CONF under nginx/, or an absolute path); stop_nginx NAME...
# (RUN_DIR is the caller's).
start_nginx() {
  mkdir -p "$RUN_DIR/$1"
  local conf=$HERE/nginx/$2
  [[ $2 == /* ]] && conf=$2
  nginx -p "$RUN_DIR/$1/" -e "$RUN_DIR/$1/error.log" -c "$conf" \
    -g "daemon on; master_process on; worker_processes $3;"
}
stop_nginx() { local n; for n in "$@"; do [[ -f $RUN_DIR/$n/nginx.pid ]] && kill "$(cat "$RUN_DIR/$n/nginx.pid")" 2>/dev/null; done; return 0; }
# Prints the calling script's header comment (its usage) and exits 2: usage. Read from the
# file itself, so no line range has to be kept in step with the header.
usage() { awk 'NR == 1 { next } /^#/ { print; next } { exit }' "$0" >&2; exit 2; }
# Exits naming the first tool that is not on PATH: need_tools TOOL...
need_tools() { local t; for t in "$@"; do command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }; done; }
# A bench config moved to another listen port: gateway_config CONFIG PORT > OUT.
gateway_config() { sed "s/127.0.0.1:1808[03]/127.0.0.1:$2/" "$1"; }
# Waits up to 10 s for 127.0.0.1:PORT to take connections: wait_listening PORT.
wait_listening() { local _; for _ in $(seq 100); do (exec 3<> "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on :$1" >&2; return 1; }
# The EXIT trap of a script with one gateway (pid in GW, if started) in front of the sink.
stop_gateway_and_sink() { [[ -n ${GW:-} ]] && kill "$GW" 2>/dev/null; stop_nginx sink; rm -rf "$RUN_DIR"; }
