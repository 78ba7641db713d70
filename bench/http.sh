#!/usr/bin/env bash
# HTTP load test: `idem demo` with the layer vs. the same handlers without it,
# side by side, alternating runs, medians reported. See docs/BENCHMARKS.md.
#
# Usage: bench/http.sh [runs=3] [seconds=8] [connections=32]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; SECS=${2:-8}; CONNS=${3:-32}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p idem-gateway
BIN=target/release/idem
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
OUT="$WORK/results.tsv"

serve() { # name port args...
  local name=$1 port=$2; shift 2
  "$BIN" demo --listen "127.0.0.1:$port" --log warn "$@" >"$WORK/$name.log" 2>&1 &
  for _ in $(seq 100); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.05; done
  echo "server $name did not start" >&2; cat "$WORK/$name.log" >&2; exit 1
}

source bench/wrk-lib.sh

serve plain 18101 --store memory:// --bench-without-layer
serve memory 18102 --store memory://
serve sqlite 18103 --store "sqlite://$WORK/bench.db"
# Warm-up (also executes the 16 replay keys once on each server).
for p in 18101 18102 18103; do wrk -t1 -c8 -d2s -s bench/replays.lua "http://127.0.0.1:$p/payments" >/dev/null; done

printf 'scenario\tvariant\treq/s\tp99\tnon-2xx\n'
for i in $(seq "$RUNS"); do
  run first plain 18101 new-keys.lua
  run first memory 18102 new-keys.lua
  run first sqlite 18103 new-keys.lua
  run replay plain 18101 replays.lua
  run replay memory 18102 replays.lua
  run replay sqlite 18103 replays.lua
done

python3 bench/summary.py "$OUT" plain memory sqlite
echo "wrk threads: $WRK_THREADS"
