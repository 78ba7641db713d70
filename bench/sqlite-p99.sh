#!/usr/bin/env bash
# SQLite's tail under sustained first executions at a fixed rate: `idem demo`
# on a fresh SQLite file pinned to core 0, the open-loop generator
# (idem-testkit/examples/open_loop.rs: latency from each request's scheduled
# time, as wrk2 counts it) pinned to core 1. Issue 18's target: p99 <= 10 ms
# at 10,000 requests/s. See docs/BENCHMARKS.md.
#
# Usage: bench/sqlite-p99.sh [runs=3] [rate=10000] [seconds=12] [connections=64]
# IDEM_BIN measures another build of `idem`.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; RATE=${2:-10000}; SECS=${3:-12}; CONNS=${4:-64}
SERVER_CPU=${SERVER_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
cargo build --release -q -p idem-gateway --bin idem
cargo build --release -q -p idem-testkit --example open_loop
BIN=${IDEM_BIN:-target/release/idem}
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
for i in $(seq "$RUNS"); do
  rm -rf "$WORK/db"; mkdir -p "$WORK/db"
  taskset -c "$SERVER_CPU" "$BIN" demo --listen 127.0.0.1:18801 --log warn \
    --store "sqlite://$WORK/db/bench.db" >"$WORK/demo.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:18801/healthz >/dev/null && break; sleep 0.05; done
  echo "run $i: $(taskset -c "$LOAD_CPU" target/release/examples/open_loop \
    http://127.0.0.1:18801/payments "$RATE" "$SECS" "$CONNS")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
