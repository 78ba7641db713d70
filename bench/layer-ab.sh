#!/usr/bin/env bash
# Two builds of the layer side by side, pinned: `bench_axum layer` of an
# older commit (BEFORE) and of this checkout, each server pinned to core 0,
# wrk pinned to core 1 with one thread, alternating runs, first executions
# and replays, on the current-thread and multi-thread runtimes. Reports
# requests/s, p99 and the server's CPU time per request, per run (see
# bench/pinned-lib.sh) and as medians. See docs/BENCHMARKS.md.
#
# Usage: BEFORE=/path/to/old/bench_axum bench/layer-ab.sh [runs=3] [seconds=10] [connections=16] [runtimes="current multi"]
# Build the old one with `git worktree add /tmp/old REV && cargo build
# --release -p idem-layer --example bench_axum` there (or copy this
# checkout's target/release/examples/bench_axum before changing it).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; SECS=${2:-10}; CONNS=${3:-16}; RUNTIMES=${4:-current multi}
SERVER_CPU=${SERVER_CPU:-0}; WRK_CPU=${WRK_CPU:-1}
: "${BEFORE:?set BEFORE to the older build of bench_axum}"
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p idem-layer --example bench_axum
declare -A BIN=([before]="$BEFORE" [after]=target/release/examples/bench_axum)
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
OUT="$WORK/results.tsv"
source bench/pinned-lib.sh

port=18900
declare -A PID PORT
for rt in $RUNTIMES; do
  for b in before after; do
    port=$((port + 1))
    start_pinned "$port" "$WORK/$b-$rt.log" "${BIN[$b]}" "127.0.0.1:$port" layer "$rt"
    PID[$b/$rt]=$PINNED_PID; PORT[$b/$rt]=$port
  done
done

printf 'scenario\tvariant\treq/s\tp99\tcpu-us/req\tnon-2xx\n'
for i in $(seq "$RUNS"); do
  for rt in $RUNTIMES; do
    for s in first:new-keys.lua replay:replays.lua; do
      for b in before after; do
        pinned_run "${s%%:*}" "$b/$rt" "${PID[$b/$rt]}" "http://127.0.0.1:${PORT[$b/$rt]}/payments" "${s#*:}"
      done
    done
  done
done

python3 - "$OUT" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
keys = []
for r in rows:
    if (r[0], r[1]) not in keys:
        keys.append((r[0], r[1]))
print("\nmedians\nscenario\tvariant\treq/s\tcpu-us/req")
for s, v in keys:
    mine = [r for r in rows if r[0] == s and r[1] == v]
    rps = statistics.median(float(r[2]) for r in mine)
    us = statistics.median(float(r[4]) for r in mine)
    print(f"{s}\t{v}\t{rps:,.0f}\t{us:.2f}")
PY
