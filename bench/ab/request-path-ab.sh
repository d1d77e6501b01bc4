#!/usr/bin/env bash
# A/B of two proxy builds on the request path: each as a plain reverse proxy (one worker
# thread, no access log, pinned to CPU 1) to a one-worker nginx (CPU 0), wrk -t1 -c32 -d8s
# after a 2 s warm-up, rounds interleaved. bench/RESULTS.md "Issue 16's error format, A/B".
#
#   cp OLD/outrigger-proxy /tmp/ab/proxy-before; cp NEW/outrigger-proxy /tmp/ab/proxy-after
#   sed 's#@RUN@#/tmp/ab#g; s#@UPSTREAM_PORT@#18080#g' \
#     ../shared/bench/proxybench/conf/upstream-nginx.conf > /tmp/ab/up.conf
#   bash bench/ab/request-path-ab.sh
set -u
taskset -c 0 nginx -c /tmp/ab/up.conf & NG=$!
sleep 1
for round in 1 2 3; do
  for which in before after; do
    bin=/tmp/ab/proxy-$which
    taskset -c 1 $bin --listen 127.0.0.1:18001 --upstream 127.0.0.1:18080 --threads 1 --no-access-log --admin 127.0.0.1:18002 >/dev/null 2>&1 & P=$!
    for i in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:18001/ && break; sleep 0.1; done
    taskset -c 0 wrk -t1 -c32 -d2s http://127.0.0.1:18001/ >/dev/null
    t0=$(awk '{print $14+$15}' /proc/$P/stat)
    rps=$(taskset -c 0 wrk -t1 -c32 -d8s http://127.0.0.1:18001/ | awk '/Requests\/sec/ {print $2}')
    t1=$(awk '{print $14+$15}' /proc/$P/stat)
    echo "round $round $which rps $rps cpu_ticks $((t1-t0))"
    kill $P; wait $P 2>/dev/null
  done
done
kill $NG; wait $NG 2>/dev/null
