# Shared by bench/http.sh and bench/gateway.sh (sourced): one wrk run, one
# result line. Needs CONNS, SECS and OUT set.

run() { # scenario variant port script
  local res rps p99 non2xx
  res=$(wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "bench/$4" "http://127.0.0.1:$3/payments")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
  p99=$(awk '$1=="99%" {print $2}' <<<"$res")
  non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$res"); non2xx=${non2xx:-0}
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rps" "$p99" "$non2xx" | tee -a "$OUT"
}
