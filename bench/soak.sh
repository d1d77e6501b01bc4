#!/usr/bin/env bash
# bench/soak.sh DURATION [WARMUP]: the whole mesh under load for DURATION (`outrigger up` with its
# storefront load: orders, browsing, logins through every sidecar with mTLS), sampling every
# process's RSS and open file descriptors every 10 s.
#
#   bench/soak.sh 30m          # what bench/RESULTS.md quotes ("Soak")
#   bench/soak.sh 2m 30s       # a quick check; WARMUP defaults to 5m, or a sixth of a shorter run
#
# Uses the release binaries in $BIN (default target/release; build them with
# `cargo build --release --bins`). Writes into $OUT (default /tmp/outrigger-soak-<time>):
#   samples.csv   time_s,pid,role,rss_kib,fds   (roles: control, sidecar:<service>-<version>,
#                 shop:<service>-<version>, up)
#   summary.json  up's own summary (requests, failures, per service)
#   up.log        up's output; work/ holds the mesh's logs and data
# and prints, per process, RSS after warm-up and at the end, the least-squares RSS slope after
# warm-up in KiB per 10 minutes (goal: under 1 MiB), and fd min and max. It exits non-zero if up
# fails, if any process dies during the soak, or if any order or browse request failed.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:?usage: bench/soak.sh DURATION [WARMUP]}
WARMUP=${2:-}
BIN=${BIN:-target/release}
OUT=${OUT:-/tmp/outrigger-soak-$(date +%Y%m%dT%H%M%S)}
for b in outrigger outrigger-control outrigger-proxy shop; do
  [[ -x "$BIN/$b" ]] || { echo "soak: $BIN/$b is missing: cargo build --release --bins" >&2; exit 2; }
done
mkdir -p "$OUT"
echo "time_s,pid,role,rss_kib,fds" > "$OUT/samples.csv"

"$BIN/outrigger" up --duration "$DURATION" --workdir "$OUT/work" \
  --summary-json "$OUT/summary.json" > "$OUT/up.log" 2>&1 &
UP=$!
trap 'kill "$UP" 2>/dev/null || true' INT TERM

# Every process of up's tree, by walking children from /proc.
tree() {
  local queue=("$1") pid
  while ((${#queue[@]})); do
    pid=${queue[0]}; queue=("${queue[@]:1}")
    echo "$pid"
    for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do queue+=("$c"); done
  done
}

# A process's role from its command line.
role() {
  local args
  mapfile -d '' -t args < /proc/"$1"/cmdline 2>/dev/null || return 1
  local exe=${args[0]##*/} service="" version="v1" i
  for ((i = 1; i < ${#args[@]}; i++)); do
    case ${args[i]} in
      --service) service=${args[i+1]} ;;
      --service-version|--version) version=${args[i+1]} ;;
    esac
  done
  case $exe in
    outrigger-control) echo control ;;
    outrigger-proxy) echo "sidecar:${service:-edge}-$version" ;;
    shop) echo "shop:${args[1]}-$version" ;;
    outrigger) echo up ;;
    *) echo "$exe" ;;
  esac
}

START=$SECONDS
while kill -0 "$UP" 2>/dev/null; do
  now=$((SECONDS - START))
  for pid in $(tree "$UP"); do
    r=$(role "$pid") || continue
    rss=$(awk '/^VmRSS:/ {print $2}' /proc/"$pid"/status 2>/dev/null) || continue
    fds=$(ls /proc/"$pid"/fd 2>/dev/null | wc -l)
    [[ -n $rss ]] && echo "$now,$pid,$r,$rss,$fds" >> "$OUT/samples.csv"
  done
  # The measurement cadence, not synchronisation: nothing waits on this.
  sleep 10
done
rc=0
wait "$UP" || rc=$?
tail -n 30 "$OUT/up.log"
echo
echo "soak: $DURATION, output in $OUT"
python3 bench/soak-slope.py "$OUT/samples.csv" "$OUT/summary.json" ${WARMUP:+--warmup "$WARMUP"} || rc=$?
exit "$rc"
