#!/usr/bin/env bash
# bench/ab.sh CMD_A CMD_B [CMD_C ...] [ROUNDS] -- CPU µs per request of two or more proxies,
# alternated A B C A B C … so that the VM's drift hits all alike: the proxy pinned to CPU 1
# (one thread, no access log), nginx upstream and wrk -t1 -c32 on CPU 0, 8 s per run after a
# 2 s warm-up. H2=1 loads with h2load -t1 -c4 -m16 over h2c instead. A CMD is a binary, or a
# command of several words that ends by exec'ing the proxy (`bench/peer.sh nginx`,
# `env FLOOR_CLIENT=conn target/release/hyper-floor`): the sidecar's flags are appended.
# Prints each run, the medians and each one's ratio to A. Needs wrk, nginx and h2load (the
# proxybench kit's setup.sh).
set -euo pipefail
ROUNDS=5
CMDS=("$@")
if [[ ${CMDS[-1]} =~ ^[0-9]+$ ]]; then ROUNDS=${CMDS[-1]}; unset 'CMDS[-1]'; fi
[ ${#CMDS[@]} -ge 2 ] || { echo "usage: $0 CMD_A CMD_B [CMD_C ...] [ROUNDS]" >&2; exit 2; }
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
one() {  # one CMD -> "rps us_per_req"
  # shellcheck disable=SC2086 # a CMD is words on purpose
  taskset -c 1 $1 --listen 127.0.0.1:18290 --upstream 127.0.0.1:18280 --threads 1 \
    --no-access-log --admin 127.0.0.1:18299 --log warn &
  local pid=$!
  local h2=(); [ "${H2:-0}" = 1 ] && h2=(--http2-prior-knowledge)
  for _ in $(seq 100); do curl -sf "${h2[@]}" -o /dev/null http://127.0.0.1:18290/ && break; sleep 0.1; done
  if [ "${H2:-0}" = 1 ]; then
    taskset -c 0 h2load -t1 -c4 -m16 -D 2 http://127.0.0.1:18290/ >/dev/null
  else
    taskset -c 0 wrk -t1 -c32 -d2s http://127.0.0.1:18290/ >/dev/null
  fi
  local c0 c1 rps
  c0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  # A run that got anything but 2xx measured an error path, not the proxy: it stops the run.
  local out
  if [ "${H2:-0}" = 1 ]; then
    out=$(taskset -c 0 h2load -t1 -c4 -m16 -D 8 http://127.0.0.1:18290/)
    rps=$(awk '/^finished/ {print $4}' <<<"$out")
    awk '/^status codes:/ && ($5 + $7 + $9) > 0 {bad = 1} END {exit bad}' <<<"$out" ||
      { echo "$1: non-2xx answers under h2load:" >&2; grep -E "status codes|failed" <<<"$out" >&2; exit 1; }
  else
    out=$(taskset -c 0 wrk -t1 -c32 -d8s http://127.0.0.1:18290/)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    ! grep -qE "Non-2xx|Socket errors" <<<"$out" ||
      { echo "$1: errors under wrk:" >&2; grep -E "Non-2xx|Socket errors" <<<"$out" >&2; exit 1; }
  fi
  c1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "print(f'{$rps:.0f} {($c1 - $c0) / $HZ * 1e6 / ($rps * 8):.2f}')"
}
LABELS=(A B C D E F G H)
for i in "${!CMDS[@]}"; do : > "$RUN/${LABELS[$i]}"; done
for r in $(seq "$ROUNDS"); do
  for i in "${!CMDS[@]}"; do
    l=${LABELS[$i]}
    x=$(one "${CMDS[$i]}"); echo "round $r $l: $x req/s, µs/req"; echo "$x" >> "$RUN/$l"
  done
done
for i in "${!CMDS[@]}"; do echo "${LABELS[$i]} = ${CMDS[$i]}"; done
python3 - "$RUN" "${LABELS[@]:0:${#CMDS[@]}}" <<'PY'
import statistics, sys
run, labels = sys.argv[1], sys.argv[2:]
def med(l, i): return statistics.median(float(x.split()[i]) for x in open(f"{run}/{l}"))
a = med(labels[0], 1)
for l in labels:
    print(f"{l}: median {med(l, 1):.2f} µs/req ({med(l, 1) / a:.3f}× A), {med(l, 0):.0f} req/s")
PY
