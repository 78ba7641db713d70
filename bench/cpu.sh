#!/usr/bin/env bash
# CPU time per request of each server process (perf's task-clock of the
# process, user and kernel, divided by the requests wrk completed), for the
# plain proxy, the gateway with and without the layer, and the gateway on the
# work-stealing runtime (--runtime shared), alternating, new
# keys. Less noisy than req/s on a shared machine: another tenant's load slows
# every variant's throughput, but changes its CPU per request much less.
# See docs/BENCHMARKS.md.
#
# Usage: bench/cpu.sh [runs=3] [seconds=8] [connections=64]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; SECS=${2:-8}; CONNS=${3:-64}
WRK_THREADS=${WRK_THREADS:-$(nproc)} # as in bench/wrk-lib.sh
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 1; }
cargo build --release -q -p idem-gateway --bins --examples
BIN=target/release/idem
EX=target/release/examples
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
UP=127.0.0.1:18400

wait_port() { # port
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done
  echo "port $1 did not open" >&2; exit 1
}

"$EX/bench_upstream" "$UP" >/dev/null 2>&1 & wait_port 18400
"$EX/plain_proxy" 127.0.0.1:18401 "$UP" >/dev/null 2>&1 & PLAIN=$!; wait_port 18401
"$BIN" gateway --upstream "http://$UP" --listen 127.0.0.1:18402 --admin-listen none --log warn \
  --store memory:// --memory-capacity 10000000 --memory-max-bytes 8GiB >/dev/null 2>&1 & MEMORY=$!
wait_port 18402
"$BIN" gateway --upstream "http://$UP" --listen 127.0.0.1:18404 --admin-listen none --log warn \
  --store memory:// --bench-without-layer >/dev/null 2>&1 & NOLAYER=$!
wait_port 18404
"$BIN" gateway --upstream "http://$UP" --listen 127.0.0.1:18405 --admin-listen none --log warn \
  --store memory:// --memory-capacity 10000000 --memory-max-bytes 8GiB --runtime shared >/dev/null 2>&1 & SHARED=$!
wait_port 18405
for p in 18401 18402 18404 18405; do wrk -t1 -c8 -d2s -s bench/new-keys.lua "http://127.0.0.1:$p/payments" >/dev/null; done

printf 'run\tvariant\treq/s\tcpu µs/req\n'
for i in $(seq "$RUNS"); do
  for v in "plain 18401 $PLAIN" "gateway-memory 18402 $MEMORY" "gateway-no-layer 18404 $NOLAYER" "gateway-memory-shared 18405 $SHARED"; do
    set -- $v
    perf stat -x, -e task-clock -p "$3" -o "$WORK/perf.txt" -- sleep "$SECS" &
    out=$(wrk -t"$WRK_THREADS" -c"$CONNS" -d"${SECS}s" -s bench/new-keys.lua "http://127.0.0.1:$2/payments")
    wait $!
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    ms=$(grep task-clock "$WORK/perf.txt" | cut -d, -f1)
    printf '%s\t%s\t%s\t%s\n' "$i" "$1" "$rps" "$(python3 -c "print(round($ms * 1000 / $reqs, 1))")"
  done
done
