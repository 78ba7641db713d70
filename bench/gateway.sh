#!/usr/bin/env bash
# HTTP load test of `idem gateway`: the same upstream behind a plain hyper
# reverse proxy (no idempotency) and behind the gateway, side by side,
# alternating runs, medians reported. See docs/BENCHMARKS.md.
#
# Usage: bench/gateway.sh [runs=3] [seconds=8] [connections=64]
# WORKERS=N in the environment gives every proxy N worker threads (the plain
# proxy through TOKIO_WORKER_THREADS, the gateways through --workers); unset,
# each has its default, one per core. The gateways run with --runtime per-core
# (the default), except gateway-memory-shared (--runtime shared).
# WRK_THREADS=N sets wrk's threads (default one per core; bench/wrk-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; SECS=${2:-8}; CONNS=${3:-64}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p idem-gateway --bins --examples
BIN=target/release/idem
EX=target/release/examples
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
OUT="$WORK/results.tsv"
UP=127.0.0.1:18200

wait_port() { # name port
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$2) 2>/dev/null && return; sleep 0.05; done
  echo "$1 did not start" >&2; cat "$WORK/$1.log" >&2; exit 1
}

"$EX/bench_upstream" "$UP" >"$WORK/upstream.log" 2>&1 & wait_port upstream 18200
WORKER_ARGS=()
if [ -n "${WORKERS:-}" ]; then WORKER_ARGS=(--workers "$WORKERS"); export TOKIO_WORKER_THREADS=$WORKERS; fi
"$EX/plain_proxy" 127.0.0.1:18201 "$UP" >"$WORK/plain.log" 2>&1 & wait_port plain 18201
unset TOKIO_WORKER_THREADS
gw() { # name port args...
  local name=$1 port=$2; shift 2
  "$BIN" gateway --upstream "http://$UP" --listen "127.0.0.1:$port" --admin-listen none --log warn \
    ${WORKER_ARGS[@]+"${WORKER_ARGS[@]}"} "$@" >"$WORK/$name.log" 2>&1 &
  wait_port "$name" "$port"
}
# Room for every record the runs create (about 1.2 M at 25k/s): at the
# defaults (1 M records, 1 GiB) the last runs would measure 503 refusals.
gw memory 18202 --store memory:// --memory-capacity 10000000 --memory-max-bytes 8GiB
gw sqlite 18203 --store "sqlite://$WORK/bench.db"
gw nolayer 18204 --store memory:// --bench-without-layer
# The same memory gateway on the work-stealing runtime, for a side-by-side
# comparison of the two --runtime settings.
gw shared 18205 --store memory:// --memory-capacity 10000000 --memory-max-bytes 8GiB --runtime shared

source bench/wrk-lib.sh

# Warm-up (also executes the 16 replay keys once on each gateway).
for p in 18201 18202 18203 18204 18205; do wrk -t1 -c8 -d2s -s bench/replays.lua "http://127.0.0.1:$p/payments" >/dev/null; done

printf 'scenario\tvariant\treq/s\tp99\tnon-2xx\n'
# The SQLite gateway's runs come after the others: each of its first-execution
# runs leaves its checkpointer writing the WAL back for seconds afterwards,
# which slowed whichever run came next (measured: the no-layer gateway ran at
# 0.86x the plain proxy right after it, 1.04-1.22x in rounds without it).
for i in $(seq "$RUNS"); do
  run first plain 18201 new-keys.lua
  run first gateway-memory 18202 new-keys.lua
  run first gateway-no-layer 18204 new-keys.lua
  run first gateway-memory-shared 18205 new-keys.lua
  run replay plain 18201 replays.lua
  run replay gateway-memory 18202 replays.lua
  run replay gateway-memory-shared 18205 replays.lua
done
for i in $(seq "$RUNS"); do
  run replay gateway-sqlite 18203 replays.lua
  run first gateway-sqlite 18203 new-keys.lua
  sleep 5 # let the checkpointer finish before the next run
done

python3 bench/summary.py "$OUT" plain gateway-memory gateway-sqlite gateway-no-layer gateway-memory-shared
echo "workers per proxy: ${WORKERS:-one per core}; wrk threads: $WRK_THREADS"
