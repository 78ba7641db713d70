#!/usr/bin/env bash
# Instructions and heap allocations per request (first executions, then
# replays), counted by valgrind's
# callgrind: the plain proxy (examples/plain_proxy.rs) and the gateway with the
# layer and without it (`--bench-without-layer`),
# in front of the same upstream. Unlike wrk's throughput, these counts repeat to
# within a percent from run to run whatever else the machine is doing, so they
# show what a change to the layer costs or saves. See docs/BENCHMARKS.md.
#
# Usage: bench/instructions.sh [seconds=10] [only variants whose name contains this]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}; ONLY=${2:-}
command -v valgrind >/dev/null || { echo "valgrind not found: apt-get install valgrind" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p idem-gateway --bins --examples
cargo build --release -q -p idem-layer --example bench_axum
BIN=${IDEM_BIN:-target/release/idem}  # IDEM_BIN: measure another build
AXUM=${BENCH_AXUM:-target/release/examples/bench_axum}  # the same, for the axum app
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
UP=127.0.0.1:18300

wait_port() { # name port
  for _ in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/$2) 2>/dev/null && return; sleep 0.05; done
  echo "$1 did not start" >&2; cat "$WORK/$1.log" >&2; exit 1
}

target/release/examples/bench_upstream "$UP" >"$WORK/upstream.log" 2>&1 & wait_port upstream 18300

measure() { # name port script args... (args "plain": the plain proxy; "axum plain|layer": bench_axum)
  local name=$1 port=$2 script=$3; shift 3
  [[ $name == *"$ONLY"* ]] || return 0
  local cmd=("$BIN" gateway --upstream "http://$UP" --listen "127.0.0.1:$port" --admin-listen none --log "${LOG:-warn}" "$@")
  [ "${1:-}" = plain ] && cmd=(target/release/examples/plain_proxy "127.0.0.1:$port" "$UP")
  [ "${1:-}" = axum ] && cmd=("$AXUM" "127.0.0.1:$port" "$2" current)
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" "${cmd[@]}" \
    >"$WORK/$name.log" 2>&1 &
  local pid=$!
  wait_port "$name" "$port"
  # Warm up (connection pools, lazy statics), then count only the load.
  wrk -t1 -c4 -d2s -s "bench/$script" "http://127.0.0.1:$port/payments" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local reqs
  reqs=$(wrk -t1 -c4 -d"${SECS}s" -s "bench/$script" "http://127.0.0.1:$port/payments" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  # The counts are dumped above; the plain proxy has no shutdown of its own.
  kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
  # The dump after zeroing is the file with the highest part number.
  local dump
  dump=$(ls -v "$WORK/$name.out"* | grep -v "\.out$" | tail -1)
  python3 - "$name" "$reqs" "$dump" <<'EOF'
import re, subprocess, sys
name, reqs, dump = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# Valgrind runs SHA-256 in software (no SHA extensions), where it costs
# ten times what it does natively: reported apart, as the inclusive cost of
# the compression function.
flat = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump], capture_output=True, text=True).stdout
tree = subprocess.run(["callgrind_annotate", "--tree=caller", "--threshold=100", dump], capture_output=True, text=True).stdout
total = sha = 0
for line in flat.splitlines():
    m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*)", line)
    if not m:
        continue
    n = int(m.group(1).replace(",", ""))
    if "PROGRAM TOTALS" in line:
        total = n
    elif re.search(r":sha2::sha256::compress256( |$)", m.group(2)):
        sha = max(sha, n)
# Calls of glibc's malloc: the counts on the lines naming its callers.
mallocs, lines = 0, tree.splitlines()
for i, line in enumerate(lines):
    if re.search(r"\*\s+\S*malloc\.c:malloc \[", line):
        j = i - 1
        while j >= 0 and "<" in lines[j]:
            c = re.search(r"\((\d[\d,]*)x\)", lines[j])
            if c:
                mallocs += int(c.group(1).replace(",", ""))
            j -= 1
print(f"{name}\t{reqs}\t{total / reqs:.0f}\t{(total - sha) / reqs:.0f}\t{mallocs / reqs:.1f}")
EOF
}

printf 'variant\trequests\tinstructions/req\twithout SHA-256/req\tmallocs/req\n'
measure first-plain-proxy 18310 new-keys.lua plain
measure first-gateway-memory 18302 new-keys.lua --store memory:// --memory-capacity 10000000 --memory-max-bytes 8GiB
measure first-gateway-no-layer 18304 new-keys.lua --store memory:// --bench-without-layer
# The same with the access log written (one line per request to a file).
LOG=info measure first-gateway-logged 18320 new-keys.lua --store memory:// --memory-capacity 10000000 --memory-max-bytes 8GiB
# Replays: the warm-up executes the 16 keys of bench/replays.lua once.
measure replay-gateway-memory 18306 replays.lua --store memory://
measure replay-gateway-no-layer 18308 replays.lua --store memory:// --bench-without-layer
# The layer around a tiny axum handler (idem/examples/bench_axum.rs), on the
# current-thread runtime: what bench/layer.sh measures in time.
measure first-axum-plain 18312 new-keys.lua axum plain
measure first-axum-layer 18314 new-keys.lua axum layer
measure replay-axum-plain 18316 replays.lua axum plain
measure replay-axum-layer 18318 replays.lua axum layer
