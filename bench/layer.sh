#!/usr/bin/env bash
# The layer's own cost, measured so that the numbers cannot flatter it: a
# tiny axum payments handler (idem/examples/bench_axum.rs) with and without
# `IdempotencyLayer` + `MemoryStore`, the server pinned to core 0, wrk pinned
# to core 1 with one thread, alternating runs, medians. Reports requests/s,
# p99 and the server's CPU time per request (user + system, from
# /proc/PID/stat) for first executions (a new key each) and replays, on the
# multi-thread and current-thread runtimes. See docs/BENCHMARKS.md.
#
# Usage: bench/layer.sh [runs=3] [seconds=10] [connections=16] [runtimes="multi current"]
# VARIANTS="plain layer-redis" measures the layer over RedisStore (REDIS_URL;
# pin Redis to core 0 too, `taskset -cp 0 PID`, so its CPU counts as the
# server side's).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; SECS=${2:-10}; CONNS=${3:-16}; RUNTIMES=${4:-multi current}
VARIANTS=${VARIANTS:-plain layer}
SERVER_CPU=${SERVER_CPU:-0}; WRK_CPU=${WRK_CPU:-1}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p idem-layer --example bench_axum
EX=${BENCH_AXUM:-target/release/examples/bench_axum}  # BENCH_AXUM: measure another build
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
OUT="$WORK/results.tsv"
source bench/pinned-lib.sh

run() { # scenario variant runtime port pid script
  pinned_run "$1" "$2/$3" "$5" "http://127.0.0.1:$4/payments" "$6"
}

port=18500
declare -A PID PORT
for rt in $RUNTIMES; do
  for v in $VARIANTS; do
    port=$((port + 1))
    start_pinned "$port" "$WORK/$v-$rt.log" "$EX" "127.0.0.1:$port" "$v" "$rt"
    PID[$v/$rt]=$PINNED_PID; PORT[$v/$rt]=$port
  done
done

printf 'scenario\tvariant\treq/s\tp99\tcpu-us/req\tnon-2xx\n'
for i in $(seq "$RUNS"); do
  for rt in $RUNTIMES; do
    for s in first:new-keys.lua replay:replays.lua; do
      for v in $VARIANTS; do
        run "${s%%:*}" "$v" "$rt" "${PORT[$v/$rt]}" "${PID[$v/$rt]}" "${s#*:}"
      done
    done
  done
done

python3 bench/pinned_summary.py "$OUT" '{s}:plain/{v1}'
