#!/usr/bin/env bash
# bench/proxybench.sh -- Outrigger through the shared loopback comparison kit (proxybench):
# the same wrk / oha / h2load steps as Envoy, nginx and HAProxy, on one pinned core each.
#
#   bench/proxybench.sh                                # 3 rounds: direct envoy nginx haproxy outrigger
#   ROUNDS=5 bench/proxybench.sh                       # steadier medians (see the kit's README)
#   TARGETS="direct" ROUNDS=1 bench/proxybench.sh      # quick look: baseline + outrigger only
#   OUT=bench/proxybench-results.md bench/proxybench.sh
#   OUTRIGGER_NAME=outrigger-traced OUTRIGGER_ARGS="--otlp-endpoint http://127.0.0.1:9 --trace-sampling 1" \
#     TARGETS=direct bench/proxybench.sh               # a variant: extra proxy flags, own row name
#
# Environment: PROXYBENCH_KIT (default: <repo>/../shared/bench/proxybench), ROUNDS, TARGETS,
# OUT and every other setting of the kit (they pass through); OUTRIGGER_ARGS (extra proxy flags)
# and OUTRIGGER_NAME (the row name, default outrigger); BIN (a prebuilt proxy, with BIN_REV naming its commit); OUTRIGGER_PORT (18090) and
# OUTRIGGER_ADMIN_PORT (18099) if those ports are taken. Needs a quiet machine: the kit waits
# for other processes to go quiet and flags rows measured while they were not.
set -euo pipefail

ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
KIT=${PROXYBENCH_KIT:-$ROOT/../shared/bench/proxybench}
if [ ! -f "$KIT/run.sh" ] || [ ! -f "$KIT/setup.sh" ]; then
  echo "proxybench kit not found at $KIT (set PROXYBENCH_KIT)" >&2
  exit 1
fi
KIT=$(cd "$KIT" && pwd)
PORT=${OUTRIGGER_PORT:-18090}
ADMIN_PORT=${OUTRIGGER_ADMIN_PORT:-18099}

# The kit runs from its own folder: a relative OUT is made relative to where we were called.
if [ -n "${OUT:-}" ]; then
  OUT=$(realpath -m -- "$OUT")
  export OUT
fi
REPORT=${OUT:-${PROXYBENCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/proxybench}/RESULTS.md}

echo "== setup (idempotent): $KIT/setup.sh"
bash "$KIT/setup.sh"

echo "== build: cargo build --release -p outrigger-proxy"
cd "$ROOT"
if [ -n "${BIN:-}" ]; then
  # A binary built elsewhere (e.g. from a clean worktree while this tree is being edited).
  REV=${BIN_REV:-$(basename "$BIN")}
else
  cargo build --release -p outrigger-proxy
  TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  BIN=$TARGET_DIR/release/outrigger-proxy
  REV=$(git rev-parse --short HEAD)
  git diff --quiet HEAD -- proxy config Cargo.toml Cargo.lock || REV="$REV+dirty"
fi
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 1; }

# One worker thread, no access log, quiet logs: what the kit asks of every proxy. The listener
# speaks HTTP/1.1 and h2c (prior knowledge) on the same port. `$UPSTREAM_PORT` stays literal
# here; the kit expands it when it starts the target.
TARGET_CMD="$(printf '%q' "$BIN") --listen 127.0.0.1:$PORT --upstream 127.0.0.1:\$UPSTREAM_PORT --threads 1 --no-access-log --admin 127.0.0.1:$ADMIN_PORT --log warn ${OUTRIGGER_ARGS:-}"
export TARGET_NAME=${OUTRIGGER_NAME:-outrigger} TARGET_CMD
export TARGET_PORT=$PORT
export TARGET_H2_PORT=$PORT

echo "== run: outrigger $REV"
echo "   TARGET_CMD=$TARGET_CMD"
echo "   ROUNDS=${ROUNDS:-3 (kit default)} TARGETS=${TARGETS:-direct envoy nginx haproxy (kit default)}"
bash "$KIT/run.sh" "$@"

echo "== report: $REPORT"
echo "   (outrigger $REV; copy its summary into bench/RESULTS.md, 'Loopback comparison')"
