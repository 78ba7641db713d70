#!/usr/bin/env bash
# Store throughput next to each server's own benchmark tool, at the same
# concurrency, alternating runs, medians reported. See docs/BENCHMARKS.md.
#
# Usage: REDIS_URL=… DATABASE_URL=… bench/stores.sh [runs=3] [seconds=8] [concurrency=64]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; SECS=${2:-8}; C=${3:-64}
: "${REDIS_URL:=redis://127.0.0.1:6379/}"
: "${DATABASE_URL:=postgres://postgres@127.0.0.1:5432/idem_test}"
export REDIS_URL DATABASE_URL
cargo build --release -q --benches -p idem-core -p idem-redis-store -p idem-postgres-store
OUT=$(mktemp)
load() { # crate args...
  local crate=$1; shift
  cargo bench -q -p "$crate" --bench load -- --concurrency "$C" --seconds "$SECS" "$@" 2>/dev/null | tail -n 1
}
redis_host=$(sed -E 's#redis://([^:/]+):?([0-9]*)/?.*#\1#' <<<"$REDIS_URL")
redis_port=$(sed -E 's#redis://([^:/]+):?([0-9]*)/?.*#\2#' <<<"$REDIS_URL"); redis_port=${redis_port:-6379}
# pgbench: one INSERT per transaction into a table like idem's (bytea key).
psql "$DATABASE_URL" -qc "DROP TABLE IF EXISTS pgbench_idem_insert; CREATE TABLE pgbench_idem_insert (key bytea PRIMARY KEY, v bytea)" >/dev/null
cat > "$OUT.sql" <<'SQL'
INSERT INTO pgbench_idem_insert VALUES (gen_random_bytes(32), '\x00');
SQL
psql "$DATABASE_URL" -qc "CREATE EXTENSION IF NOT EXISTS pgcrypto" >/dev/null
for i in $(seq "$RUNS"); do
  set_rps=$(redis-benchmark -h "$redis_host" -p "$redis_port" -t set -c "$C" -n 400000 -q --csv | awk -F'"' '/SET/ {print $4}')
  get_rps=$(redis-benchmark -h "$redis_host" -p "$redis_port" -t get -c "$C" -n 400000 -q --csv | awk -F'"' '/GET/ {print $4}')
  echo -e "redis-benchmark SET\t$set_rps" | tee -a "$OUT"
  echo -e "redis-benchmark GET\t$get_rps" | tee -a "$OUT"
  echo -e "redis first\t$(load idem-redis-store --scenario first)" | tee -a "$OUT"
  echo -e "redis replay\t$(load idem-redis-store --scenario replay)" | tee -a "$OUT"
  echo -e "redis replay cached\t$(load idem-redis-store --scenario replay --local-cache 1000)" | tee -a "$OUT"
  echo -e "memory replay\t$(load idem-core --scenario replay)" | tee -a "$OUT"
  tps=$(pgbench -n -c "$C" -j 2 -T "$SECS" -f "$OUT.sql" "$DATABASE_URL" 2>/dev/null | awk '/^tps/ {print $3}')
  echo -e "pgbench INSERT\t$tps" | tee -a "$OUT"
  echo -e "postgres first\t$(load idem-postgres-store --scenario first)" | tee -a "$OUT"
done
python3 - "$OUT" <<'PY'
import sys, statistics, collections
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    k, x = line.rstrip("\n").split("\t"); v[k].append(float(x))
m = {k: statistics.median(x) for k, x in v.items()}
print("\nmedians of %d runs (ops/s)" % len(v["redis first"]))
for k in v: print(f"| {k} | {m[k]:,.0f} |")
print()
print(f"redis first executions / redis-benchmark SET = {m['redis first']/m['redis-benchmark SET']:.2f} (target >= 0.30)")
print(f"redis replays with local cache / MemoryStore replays = {m['redis replay cached']/m['memory replay']:.2f} (target >= 0.90)")
print(f"postgres first executions / pgbench INSERT = {m['postgres first']/m['pgbench INSERT']:.2f} (target >= 0.40)")
PY
