# Shared by bench/http.sh and bench/gateway.sh (sourced): one wrk run, one
# result line. Needs CONNS, SECS and OUT set.
# WRK_THREADS (default: one per core, as wrk's README advises) sets wrk's
# threads. One thread tops out near 2x the plain proxy's rate on a 2-core
# machine (measured: 98% of a core at 116k replays/s), so a faster server
# would measure wrk instead (docs/BENCHMARKS.md).
WRK_THREADS=${WRK_THREADS:-$(nproc)}

run() { # scenario variant port script
  local res rps p99 non2xx
  res=$(wrk -t"$WRK_THREADS" -c"$CONNS" -d"${SECS}s" --latency -s "bench/$4" "http://127.0.0.1:$3/payments")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
  p99=$(awk '$1=="99%" {print $2}' <<<"$res")
  non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$res"); non2xx=${non2xx:-0}
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rps" "$p99" "$non2xx" | tee -a "$OUT"
}
