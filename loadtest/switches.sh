#!/usr/bin/env bash
# Voluntary context switches per message, by thread name, of a Warren (or
# warren-floor) at concurrency 1: the evidence behind "The transport floor" in
# BENCHMARKS.md. Starts BIN on 127.0.0.1:18080/18081, runs latency-1 for
# 10,000 messages against it, and prints the switches per message.
#
#   loadtest/switches.sh                                 # target/release/warren
#   loadtest/switches.sh target/release/warren-floor     # the transport alone
#   loadtest/switches.sh target/release/warren TOKIO_WORKER_THREADS=1
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/warren}
shift || true
MESSAGES=10000
log=$(mktemp)
env WARREN__HTTP__LISTEN=127.0.0.1:18080 WARREN__GRPC__LISTEN=127.0.0.1:18081 \
  WARREN__LOG__LEVEL=warn "$@" "$BIN" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
snapshot() {
  for task in /proc/"$pid"/task/*; do
    echo "$(tr ' ' '_' <"$task"/comm) $(awk '/^voluntary_ctxt_switches/ {print $2}' "$task"/status)"
  done | awk '{n[$1] += $2} END {for (k in n) print k, n[k]}' | sort
}
before=$(snapshot)
./target/release/warren-loadtest --scenario latency-1 --target warren --size 64 \
  --messages "$MESSAGES" --warmup 0 --duration 30 \
  --warren-url-http http://127.0.0.1:18080 --warren-url-grpc http://127.0.0.1:18081 \
  --warren-pid "$pid" 2>/dev/null | grep '^| latency-1'
after=$(snapshot)
join <(echo "$before") <(echo "$after") |
  awk -v m="$MESSAGES" '{printf "%-16s %.2f voluntary switches per message\n", $1, ($3 - $2) / m}'
