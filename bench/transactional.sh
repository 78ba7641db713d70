#!/usr/bin/env bash
# What closing the crash window costs: `idem demo` paying with the payment
# and its answer in one transaction (the default on SQLite and PostgreSQL)
# vs. the payment then the layer's own completion (IDEM_DEMO_TRANSACTIONAL=0,
# two writes, the window open), and transfers run as two phases with
# recovery points plus the final commit. The demo pinned to core 0, wrk to
# core 1 with one thread, alternating runs, medians; requests/s, p99 and the
# demo's CPU time per request. PostgreSQL (DATABASE_URL's server, a fresh
# database) runs wherever the system puts it. See docs/BENCHMARKS.md.
#
# Usage: bench/transactional.sh [runs=3] [seconds=8] [connections=16] [stores="sqlite postgres"]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; SECS=${2:-8}; CONNS=${3:-16}; STORES=${4:-sqlite postgres}
SERVER_CPU=${SERVER_CPU:-0}; WRK_CPU=${WRK_CPU:-1}
PG=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p idem-gateway --bin idem
BIN=${IDEM_BIN:-target/release/idem}
WORK=$(mktemp -d)
DB="idem_bench_tx_$$"
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  if [[ " $STORES " == *" postgres "* ]]; then
    for v in ordinary transactional; do psql "$PG" -qc "DROP DATABASE IF EXISTS ${DB}_$v" >/dev/null 2>&1 || true; done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
OUT="$WORK/results.tsv"
source bench/pinned-lib.sh

store_url() { # store variant
  case $1 in
    sqlite) echo "sqlite://$WORK/$2.db" ;;
    postgres) echo "${PG%/*}/${DB}_$2" ;;
  esac
}

declare -A PID PORT
port=18600
if [[ " $STORES " == *" postgres "* ]]; then
  for v in ordinary transactional; do psql "$PG" -qc "CREATE DATABASE ${DB}_$v" >/dev/null; done
fi
for store in $STORES; do
  for v in ordinary transactional; do
    port=$((port + 1))
    url=$(store_url "$store" "$v")
    env IDEM_DEMO_TRANSACTIONAL=$([[ $v == ordinary ]] && echo 0 || echo 1) \
      taskset -c "$SERVER_CPU" "$BIN" demo --listen "127.0.0.1:$port" --log warn --store "$url" \
      >"$WORK/$store-$v.log" 2>&1 &
    PID[$store/$v]=$!; PORT[$store/$v]=$port
    for _ in $(seq 100); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.05; done
    taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d2s -s bench/new-keys.lua "http://127.0.0.1:$port/payments" >/dev/null
  done
done

run() { # scenario variant pid port path script
  pinned_run "$1" "$2" "$3" "http://127.0.0.1:$4$5" "$6"
}

printf 'scenario\tvariant\treq/s\tp99\tcpu-us/req\tnon-2xx\n'
for i in $(seq "$RUNS"); do
  for store in $STORES; do
    for v in ordinary transactional; do
      run "$store/payments" "$v" "${PID[$store/$v]}" "${PORT[$store/$v]}" /payments new-keys.lua
    done
    WRK_BODY='{"from": "acct_a", "to": "acct_b", "amount": 500, "currency": "EUR"}' \
      run "$store/transfers" phases "${PID[$store/transactional]}" "${PORT[$store/transactional]}" /transfers new-keys.lua
  done
done

python3 bench/pinned_summary.py "$OUT" '{s0}/payments:ordinary'
