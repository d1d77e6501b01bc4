#!/usr/bin/env bash
# bench/scrape-stall/run.sh -- what a Prometheus scrape does to request latency.
#
#   bench/scrape-stall/run.sh BIN [BIN...]       # e.g. two builds of outrigger-proxy
#
# A single-worker sidecar (--threads 1) with 60 destinations x 2 versions x 2 routes (about
# 5,400 lines on /metrics) proxies a fixed 2000 req/s (oha, 16 connections, 10 s, latency
# corrected) to a local nginx, once without scraping and once while /metrics is scraped every
# 50 ms (far more often than Prometheus would: it makes the stall visible in p99). Rounds are
# interleaved across the binaries. PIN="taskset -c 1" pins the proxy to one core (the default
# leaves it unpinned, as in a pod with 2 CPUs); load and nginx run on CPU 0. Needs nginx, oha,
# curl, python3. Prints one line per run.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,13p "$0"; exit 1; }
W=$(mktemp -d)
trap 'kill $(cat "$W/nginx.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$W"' EXIT
cat > "$W/nginx.conf" <<NGINX
worker_processes 1;
daemon on;
error_log $W/nginx-error.log;
pid $W/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:18180; location / { return 200 "ok\n"; } }
}
NGINX
taskset -c 0 nginx -p "$W" -c "$W/nginx.conf"
python3 - "$W/sidecar.yaml" <<'PY'
import sys
lines = ["proxy:", "  outbound: 127.0.0.1:18190", "  inbound: null", "  admin: 127.0.0.1:18199",
         "  access_log: false", "snapshot:", "  service: bench", "  destinations:"]
for i in range(60):
    lines += [f"    - name: svc-{i}", f"      hosts: [svc-{i}]", "      endpoints:",
              "        - { address: 127.0.0.1:18180, version: v1 }",
              "        - { address: 127.0.0.1:18180, version: v2 }",
              "      routes:", "        - name: read", "          match: { methods: [GET] }",
              "        - name: write", "          match: { methods: [POST] }"]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY

one() { # BIN SCRAPE
  local bin=$1 scrape=$2 p s=""
  ${PIN:-} "$bin" --config "$W/sidecar.yaml" --threads 1 --log warn >/dev/null 2>&1 &
  p=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:18199/ready >/dev/null && break; sleep 0.1; done
  # Every destination, version and route gets series.
  for i in $(seq 0 59); do
    curl -s -H "Host: svc-$i" 127.0.0.1:18190/ >/dev/null
    curl -s -XPOST -H "Host: svc-$i" 127.0.0.1:18190/ >/dev/null
  done
  local lines; lines=$(curl -s 127.0.0.1:18199/metrics | wc -l)
  if [ "$scrape" = 1 ]; then
    ( while kill -0 "$p" 2>/dev/null; do taskset -c 0 curl -s 127.0.0.1:18199/metrics >/dev/null; sleep 0.05; done ) &
    s=$!
  fi
  taskset -c 0 oha --no-tui --output-format json --worker-threads 1 -q 2000 --latency-correction \
    -c 16 -z 10s -H "Host: svc-7" http://127.0.0.1:18190/ > "$W/oha.json"
  [ -n "$s" ] && kill "$s"
  kill "$p"; wait "$p" 2>/dev/null || true
  python3 - "$W/oha.json" "$bin" "$scrape" "$lines" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); p = d["latencyPercentiles"]
print(f"{sys.argv[2]} scrape={sys.argv[3]} metrics_lines={sys.argv[4]} "
      f"p50={p['p50']*1e3:.3f} p99={p['p99']*1e3:.3f} p99.9={p['p99.9']*1e3:.3f} ms "
      f"responses={d['statusCodeDistribution']}")
PY
}

for round in $(seq "${ROUNDS:-3}"); do
  for bin in "$@"; do
    for scrape in 0 1; do one "$bin" "$scrape"; done
  done
done
