#!/usr/bin/env bash
# bench/profile.sh -- where the proxy's CPU goes per request: the release proxy pinned to CPU 1
# (one thread, no access log, as in proxybench), an nginx upstream and wrk on CPU 0, sampled
# by `perf record` (software cpu-clock: this VM has no hardware counters) and drawn as a
# flame graph with inferno. Writes bench/profiles/<name>.{svg,folded,top.txt}.
#
#   bench/profile.sh before          # name of the output files
#   H2=1 bench/profile.sh before-h2  # h2load over h2c instead of wrk over HTTP/1.1
#   BIN=/tmp/outrigger-proxy bench/profile.sh old   # a given binary, no build
#
# Needs: perf (Debian's linux-perf), wrk, nginx, h2load (the proxybench kit's setup.sh installs
# them), inferno (`cargo install inferno`).
set -euo pipefail
NAME=${1:-profile}
ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
OUT=$ROOT/bench/profiles
SECS=${SECS:-10}
mkdir -p "$OUT"
RUN=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -f "$RUN/upstream.pid" ] && kill "$(cat "$RUN/upstream.pid")" 2>/dev/null; rm -rf "$RUN"' EXIT

cat > "$RUN/upstream.conf" <<CONF
worker_processes 1; daemon off; user root; pid $RUN/upstream.pid; error_log $RUN/err.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:18180 backlog=4096; location / { return 200 "ok\n"; } } }
CONF
taskset -c 0 nginx -p "$RUN" -e "$RUN/err.log" -c "$RUN/upstream.conf" &

cd "$ROOT"
# BIN=path profiles that binary instead of building this tree's release proxy.
if [ -z "${BIN:-}" ]; then
  cargo build --release -p outrigger-proxy
  BIN=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release/outrigger-proxy
fi
taskset -c 1 "$BIN" --listen 127.0.0.1:18190 --upstream 127.0.0.1:18180 --threads 1 \
  --no-access-log --admin 127.0.0.1:18199 --log warn &
PROXY=$!
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18190/ && break; sleep 0.1; done

load() {
  if [ "${H2:-0}" = 1 ]; then
    taskset -c 0 h2load -t1 -c4 -m16 -D "$1" http://127.0.0.1:18190/ | grep -E "^finished|requests:"
  else
    taskset -c 0 wrk -t1 -c32 -d"$1"s http://127.0.0.1:18190/ | grep -E "Requests/sec"
  fi
}
load 2 >/dev/null   # warm-up
cpu() { awk '{print $14 + $15}' "/proc/$PROXY/stat"; }   # utime + stime, in ticks
# First a run without the profiler: CPU µs per request, as proxybench counts it.
C0=$(cpu)
load "$SECS" > "$OUT/$NAME.load.txt"
C1=$(cpu)
python3 - "$OUT/$NAME.load.txt" "$C0" "$C1" "$SECS" "$(getconf CLK_TCK)" >> "$OUT/$NAME.load.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"Requests/sec:\s*([\d.]+)", text) or re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text)
rps = float(m.group(1)) if m else float("nan")
ticks = int(sys.argv[3]) - int(sys.argv[2])
secs, hz = float(sys.argv[4]), int(sys.argv[5])
print(f"proxy CPU: {ticks / hz:.2f} s over {secs:.0f} s; {ticks / hz * 1e6 / (rps * secs):.1f} µs per request")
PY
# Then the same load again, sampled.
load "$SECS" > /dev/null &
LOADER=$!
perf record -F 999 -g --call-graph dwarf,16384 -p "$PROXY" -o "$RUN/perf.data" -- sleep $((SECS - 2)) 2>/dev/null
wait $LOADER
perf script -i "$RUN/perf.data" 2>/dev/null | inferno-collapse-perf > "$OUT/$NAME.folded"
inferno-flamegraph --title "outrigger-proxy: $NAME" < "$OUT/$NAME.folded" > "$OUT/$NAME.svg"
# Self time by function, and inclusive time of the proxy's own pieces.
perf report -i "$RUN/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
  grep -E '^ +[0-9]' | head -40 > "$OUT/$NAME.top.txt"
cat "$OUT/$NAME.load.txt"
echo "wrote $OUT/$NAME.{svg,folded,top.txt}"
