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

run() { # scenario variant port script
  local res
  res=$(wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "bench/$4" "http://127.0.0.1:$3/payments")
  local rps p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
  p99=$(awk '$1=="99%" {print $2}' <<<"$res")
  non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$res"); non2xx=${non2xx:-0}
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rps" "$p99" "$non2xx" | tee -a "$OUT"
}

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

python3 - "$OUT" <<'PY'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
def ms(s):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if s.endswith(unit): return float(s[:-len(unit)]) * f
    return float(s)
rps = collections.defaultdict(list); p99 = collections.defaultdict(list)
for sc, var, r, p, _ in rows:
    rps[(sc, var)].append(float(r)); p99[(sc, var)].append(ms(p))
print("\nmedians of %d runs" % len(rps[("first", "plain")]))
print("| scenario | variant | req/s | p99 ms | req/s vs plain | p99 vs plain |")
print("|---|---|---|---|---|---|")
for sc in ("first", "replay"):
    base_r = statistics.median(rps[(sc, "plain")]); base_p = statistics.median(p99[(sc, "plain")])
    for var in ("plain", "memory", "sqlite"):
        r = statistics.median(rps[(sc, var)]); p = statistics.median(p99[(sc, var)])
        print(f"| {sc} | {var} | {r:,.0f} | {p:.2f} | {r/base_r:.2f}x | {p/base_p:.2f}x |")
PY
