# Shared by the pinned benchmarks (bench/layer.sh, bench/layer-ab.sh, bench/transactional.sh;
# sourced): one wrk run against a server pinned to its own core, one result
# line with the server's CPU time per request. Needs CONNS, SECS, WRK_CPU
# and OUT set (start_pinned: SERVER_CPU too).
TICK=$(getconf CLK_TCK)

cpu_ticks() { # pid: user + system clock ticks, all threads
  awk '{print $14 + $15}' "/proc/$1/stat"
}

pinned_run() { # scenario variant pid url script
  local before after res rps p99 reqs non2xx us
  before=$(cpu_ticks "$3")
  res=$(taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "bench/$5" "$4")
  after=$(cpu_ticks "$3")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
  p99=$(awk '$1=="99%" {print $2}' <<<"$res")
  reqs=$(awk '/requests in/ {print $1}' <<<"$res")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$res"); non2xx=${non2xx:-0}
  us=$(python3 -c "print(f'{($after-$before)/$TICK*1e6/max($reqs,1):.2f}')")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rps" "$p99" "$us" "$non2xx" | tee -a "$OUT"
}

wait_port() { # port
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done
  echo "port $1 did not open" >&2; exit 1
}

start_pinned() { # port log command...: the server pinned to SERVER_CPU, up and warmed; its pid in PINNED_PID
  local port=$1 log=$2; shift 2
  taskset -c "$SERVER_CPU" "$@" >"$log" 2>&1 &
  PINNED_PID=$!
  wait_port "$port"
  # Warm-up; also executes the 16 replay keys once.
  taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d2s -s bench/replays.lua "http://127.0.0.1:$port/payments" >/dev/null
}
