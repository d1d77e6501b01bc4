#!/usr/bin/env bash
# bench/peer.sh nginx|haproxy --listen ADDR --upstream ADDR [sidecar flags...]
# Runs a peer proxy with the proxybench kit's own config (one worker or thread, pooled
# keep-alive upstream connections, no logging), taking the sidecar's flags, so that
# `bench/ab.sh` can measure it in the same alternation as the sidecar. It execs the peer in
# the foreground, so the pid ab.sh measures is the peer's. With H2=1 the --listen port
# speaks h2c with prior knowledge (nginx needs its own `http2` listener for that).
set -euo pipefail
PEER=$1; shift
KIT=${PROXYBENCH_KIT:-$(dirname "$0")/../../shared/bench/proxybench}
[ -d "$KIT/conf" ] || KIT=/work/shared/bench/proxybench
LISTEN= UPSTREAM=
while [ $# -gt 0 ]; do
  case $1 in
    --listen) LISTEN=$2; shift 2 ;;
    --upstream) UPSTREAM=$2; shift 2 ;;
    --threads|--admin|--log) shift 2 ;;
    *) shift ;;
  esac
done
PORT=${LISTEN##*:} UP_PORT=${UPSTREAM##*:}
SPARE=$((PORT + 1000))   # the listener ab.sh does not load
if [ "${H2:-0}" = 1 ]; then H1_PORT=$SPARE H2_PORT=$PORT; else H1_PORT=$PORT H2_PORT=$SPARE; fi
RUN=$(mktemp -d /tmp/peer.XXXXXX)
mkdir -p "$RUN/nginx-tmp"
sed -e "s|@RUN@|$RUN|g" -e "s|@PORT@|$H1_PORT|g" -e "s|@H2_PORT@|$H2_PORT|g" \
    -e "s|@UPSTREAM_PORT@|$UP_PORT|g" "$KIT/conf/$PEER.$( [ "$PEER" = haproxy ] && echo cfg || echo conf)" > "$RUN/conf"
case $PEER in
  # master_process off: one process, so the pid ab.sh watches is the one doing the work.
  nginx) exec nginx -p "$RUN" -e "$RUN/nginx-proxy-error.log" -c "$RUN/conf" -g 'master_process off;' ;;
  haproxy) exec haproxy -db -f "$RUN/conf" ;;
  *) echo "unknown peer $PEER" >&2; exit 2 ;;
esac
