#!/usr/bin/env bash
# bench/ab.sh BIN_A BIN_B [ROUNDS] -- CPU µs per request of two proxy binaries, alternated
# A B A B … so that the VM's drift hits both alike: the proxy pinned to CPU 1 (one thread, no
# access log), nginx upstream and wrk -t1 -c32 on CPU 0, 8 s per run after a 2 s warm-up.
# H2=1 loads with h2load -t1 -c4 -m16 over h2c instead. Prints each run and the medians. Needs wrk and nginx (the proxybench kit's setup.sh).
set -euo pipefail
A=$1 B=$2 ROUNDS=${3:-5}
RUN=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -f "$RUN/upstream.pid" ] && kill "$(cat "$RUN/upstream.pid")" 2>/dev/null; rm -rf "$RUN"' EXIT
cat > "$RUN/upstream.conf" <<CONF
worker_processes 1; daemon off; user root; pid $RUN/upstream.pid; error_log $RUN/err.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:18280 backlog=4096; location / { return 200 "ok\n"; } } }
CONF
taskset -c 0 nginx -p "$RUN" -e "$RUN/err.log" -c "$RUN/upstream.conf" &
sleep 0.5
HZ=$(getconf CLK_TCK)
one() {  # one BIN -> "rps us_per_req"
  taskset -c 1 "$1" --listen 127.0.0.1:18290 --upstream 127.0.0.1:18280 --threads 1 \
    --no-access-log --admin 127.0.0.1:18299 --log warn &
  local pid=$!
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18290/ && break; sleep 0.1; done
  taskset -c 0 wrk -t1 -c32 -d2s http://127.0.0.1:18290/ >/dev/null
  local c0 c1 rps
  c0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  if [ "${H2:-0}" = 1 ]; then
    rps=$(taskset -c 0 h2load -t1 -c4 -m16 -D 8 http://127.0.0.1:18290/ | awk '/^finished/ {print $4}')
  else
    rps=$(taskset -c 0 wrk -t1 -c32 -d8s http://127.0.0.1:18290/ | awk '/Requests\/sec/ {print $2}')
  fi
  c1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "print(f'{$rps:.0f} {($c1 - $c0) / $HZ * 1e6 / ($rps * 8):.2f}')"
}
: > "$RUN/a"; : > "$RUN/b"
for r in $(seq "$ROUNDS"); do
  a=$(one "$A"); echo "round $r A: $a req/s, µs/req" ; echo "$a" >> "$RUN/a"
  b=$(one "$B"); echo "round $r B: $b req/s, µs/req" ; echo "$b" >> "$RUN/b"
done
python3 - "$RUN/a" "$RUN/b" <<'PY'
import statistics, sys
def med(p, i): return statistics.median(float(l.split()[i]) for l in open(p))
a, b = med(sys.argv[1], 1), med(sys.argv[2], 1)
print(f"median µs/req: A {a:.2f}, B {b:.2f}, B/A {b / a:.3f}; req/s: A {med(sys.argv[1], 0):.0f}, B {med(sys.argv[2], 0):.0f}")
PY
