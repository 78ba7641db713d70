#!/usr/bin/env bash
# `idem gateway --store redis://…|postgres://…` pinned: the gateway and the
# store's server on core 0 (what one request costs the server side: idem's
# CPU and the store's), wrk with one thread and the upstream on core 1;
# alternating runs of this build and, when BASE_BIN names one, another build
# of `idem`. Reports requests/s, p99, and the gateway's and the store's CPU
# per request (user + system from /proc/PID/stat). See docs/BENCHMARKS.md.
#
# redis: the server at REDIS_URL (it must run on this machine; it is pinned).
# postgres: a private cluster made for the run (PG_PORT, default 5499), with
# fsync off unless PG_FSYNC=on, its postmaster pinned before any backend
# starts so every backend runs on core 0. GATEWAY_ARGS adds flags to both
# gateways (e.g. "--postgres-statements prepared --postgres-pool-size 32").
#
# Usage: bench/store-gateway.sh redis|postgres [runs=3] [seconds=8] [connections=16]
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${1:?usage: bench/store-gateway.sh redis|postgres [runs] [seconds] [connections]}
RUNS=${2:-3}; SECS=${3:-8}; CONNS=${4:-16}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p idem-gateway --bins --examples
WORK=$(mktemp -d)
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  [ -d "$WORK/pg" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
TICK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "port $1 did not open" >&2; exit 1; }

case $STORE in
  redis)
    : "${REDIS_URL:=redis://127.0.0.1:6379/2}"
    URL=$REDIS_URL
    port=$(sed -E 's#redis://[^:/]+:?([0-9]*).*#\1#' <<<"$REDIS_URL")
    spid=$(pgrep -f "redis-server.*:${port:-6379}" | head -1)
    [ -n "$spid" ] || { echo "no redis-server on port ${port:-6379} on this machine" >&2; exit 1; }
    taskset -cp 0 "$spid" >/dev/null
    store_ticks() { ticks "$spid"; }
    ;;
  postgres)
    PG_PORT=${PG_PORT:-5499}
    mkdir "$WORK/pg" && chown postgres "$WORK" "$WORK/pg"
    runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
    taskset -c 0 runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
      -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=${PG_FSYNC:-off} -c max_connections=200" \
      start >/dev/null
    spid=$(head -1 "$WORK/pg/postmaster.pid")
    URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    # The postmaster and every process it forked (backends, WAL writer, …).
    store_ticks() {
      local t=0 p
      for p in "$spid" $(pgrep -P "$spid"); do t=$((t + $(ticks "$p"))); done
      echo "$t"
    }
    ;;
  *) echo "unknown store $STORE: redis or postgres" >&2; exit 1 ;;
esac

UP=127.0.0.1:18600
taskset -c 1 target/release/examples/bench_upstream "$UP" >"$WORK/upstream.log" 2>&1 & wait_port 18600
declare -A PID PORT
p=18600
for build in ${BASE_BIN:+base} new; do
  bin=target/release/idem; [ "$build" = base ] && bin=$BASE_BIN
  p=$((p + 1))
  # shellcheck disable=SC2086 # GATEWAY_ARGS is a list of flags
  taskset -c 0 "$bin" gateway --upstream "http://$UP" --listen "127.0.0.1:$p" --admin-listen none \
    --log warn --store "$URL" ${GATEWAY_ARGS:-} >"$WORK/$build.log" 2>&1 &
  PID[$build]=$!; PORT[$build]=$p
  wait_port "$p"
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s -s bench/replays.lua "http://127.0.0.1:$p/payments" >/dev/null
done
printf 'scenario\tbuild\treq/s\tp99\tidem-us/req\t%s-us/req\tnon-2xx\n' "$STORE"
for i in $(seq "$RUNS"); do
  for s in first:new-keys.lua replay:replays.lua; do
    for build in ${BASE_BIN:+base} new; do
      g0=$(ticks "${PID[$build]}"); r0=$(store_ticks)
      res=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "bench/${s#*:}" "http://127.0.0.1:${PORT[$build]}/payments")
      g1=$(ticks "${PID[$build]}"); r1=$(store_ticks)
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$res"); p99=$(awk '$1=="99%" {print $2}' <<<"$res")
      reqs=$(awk '/requests in/ {print $1}' <<<"$res")
      bad=$(awk '/Non-2xx/ {print $5}' <<<"$res")
      python3 -c "print(f'${s%%:*}\t$build\t$rps\t$p99\t{($g1-$g0)/$TICK*1e6/$reqs:.2f}\t{($r1-$r0)/$TICK*1e6/$reqs:.2f}\t${bad:-0}')"
    done
  done
done
