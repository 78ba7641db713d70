#!/usr/bin/env bash
# `idem gateway --store redis://…` pinned: the gateway and Redis on core 0
# (what one request costs the server side: idem's CPU and Redis's), wrk with
# one thread and the upstream on core 1; alternating runs of this build and,
# when BASE_BIN names one, another build of `idem`. Reports requests/s, p99,
# and the gateway's and Redis's CPU per request (user + system from
# /proc/PID/stat). See docs/BENCHMARKS.md.
#
# Usage: REDIS_URL=redis://127.0.0.1:6379/2 bench/redis-gateway.sh [runs=3] [seconds=8] [connections=16]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; SECS=${2:-8}; CONNS=${3:-16}
: "${REDIS_URL:=redis://127.0.0.1:6379/2}"
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p idem-gateway --bins --examples
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
port=$(sed -E 's#redis://[^:/]+:?([0-9]*).*#\1#' <<<"$REDIS_URL")
rpid=$(pgrep -f "redis-server.*:${port:-6379}" | head -1)
[ -n "$rpid" ] || { echo "no redis-server on port ${port:-6379} on this machine" >&2; exit 1; }
taskset -cp 0 "$rpid" >/dev/null
TICK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "port $1 did not open" >&2; exit 1; }

UP=127.0.0.1:18600
taskset -c 1 target/release/examples/bench_upstream "$UP" >"$WORK/upstream.log" 2>&1 & wait_port 18600
declare -A PID PORT
p=18600
for build in ${BASE_BIN:+base} new; do
  bin=target/release/idem; [ "$build" = base ] && bin=$BASE_BIN
  p=$((p + 1))
  taskset -c 0 "$bin" gateway --upstream "http://$UP" --listen "127.0.0.1:$p" --admin-listen none \
    --log warn --store "$REDIS_URL" >"$WORK/$build.log" 2>&1 &
  PID[$build]=$!; PORT[$build]=$p
  wait_port "$p"
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s -s bench/replays.lua "http://127.0.0.1:$p/payments" >/dev/null
done
printf 'scenario\tbuild\treq/s\tp99\tidem-us/req\tredis-us/req\n'
for i in $(seq "$RUNS"); do
  for s in first:new-keys.lua replay:replays.lua; do
    for build in ${BASE_BIN:+base} new; do
      g0=$(ticks "${PID[$build]}"); r0=$(ticks "$rpid")
      res=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "bench/${s#*:}" "http://127.0.0.1:${PORT[$build]}/payments")
      g1=$(ticks "${PID[$build]}"); r1=$(ticks "$rpid")
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$res"); p99=$(awk '$1=="99%" {print $2}' <<<"$res")
      reqs=$(awk '/requests in/ {print $1}' <<<"$res")
      python3 -c "print(f'${s%%:*}\t$build\t$rps\t$p99\t{($g1-$g0)/$TICK*1e6/$reqs:.2f}\t{($r1-$r0)/$TICK*1e6/$reqs:.2f}')"
    done
  done
done
