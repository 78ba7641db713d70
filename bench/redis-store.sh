#!/usr/bin/env bash
# RedisStore's first executions (`begin` on a new key, then `complete`) and
# replays, closed loop, with Redis pinned to core 0 and the load (the store's
# own client, idem-redis-store/benches/load.rs) pinned to core 1: operations
# per second, and the Redis server's CPU per operation (user + system from
# /proc/PID/stat), what a shared Redis pays for each request. Alternating
# runs of two builds when BASE_LOAD names another build's load binary.
# See docs/BENCHMARKS.md.
#
# Usage: REDIS_URL=redis://127.0.0.1:6379/ bench/redis-store.sh [runs=3] [seconds=8] [concurrency=16]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; SECS=${2:-8}; C=${3:-16}
: "${REDIS_URL:=redis://127.0.0.1:6379/}"
export REDIS_URL
cargo build --release -q --benches -p idem-redis-store
NEW=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
port=$(sed -E 's#.*:([0-9]+)/?.*#\1#' <<<"$REDIS_URL")
pid=$(pgrep -f "redis-server.*:${port:-6379}" | head -1)
[ -n "$pid" ] || { echo "no redis-server on port $port on this machine" >&2; exit 1; }
taskset -cp 0 "$pid" >/dev/null
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
tck=$(getconf CLK_TCK)
printf 'build\tscenario\tops/s\tredis-cpu-us/op\n'
for i in $(seq "$RUNS"); do
  for scenario in first replay; do
    for build in ${BASE_LOAD:+base} new; do
      bin=$NEW; [ "$build" = base ] && bin=$BASE_LOAD
      before=$(cpu)
      rate=$(taskset -c 1 "$bin" --concurrency "$C" --seconds "$SECS" --scenario "$scenario" 2>/dev/null | tail -1)
      after=$(cpu)
      python3 -c "import sys; r=float('$rate'); print(f'$build\t$scenario\t{r:.0f}\t{($after-$before)/$tck/(r*$SECS)*1e6:.2f}')"
    done
  done
done
