#!/usr/bin/env bash
# The moderate full run behind BENCHMARKS.md: every scenario on classic
# queues, then publish-stream and subscribe on quorum queues, at 64 B and
# 4 KiB, 20k measured messages per scenario and target (30 s at most each).
#
# Run from the repository root with the broker up (scripts/broker.sh). For the
# mgmt-api peer of publish-http, enable the management plugin first:
#   rabbitmq-plugins enable rabbitmq_management
# Results (tables, JSON, SVG, Warren's log) go to loadtest/results/.
#
# --quick: a short report instead (under 3 minutes on a 2-core machine):
# publish-stream, publish-unary, publish-http, subscribe and rpc at 256 B on
# classic queues, Warren and the direct client, 3000 measured messages each
# (10 s at most), then publish-unary and subscribe paced at 1000 msg/s for
# 5 s; one combined table with Warren's CPU per message and the ratio to
# direct. It exits 0 whatever the figures (a report, not a gate), and
# non-zero only when the load test itself fails to run. With
# WARREN_RELEASE_DIR set to a directory holding release builds of warren and
# warren-loadtest it builds nothing; else it builds them (into
# $CARGO_TARGET_DIR when set). Results go to $QUICK_OUT (default
# loadtest/results/quick/).
set -euo pipefail
cd "$(dirname "$0")/.."

quick() {
  local bin
  if [ -n "${WARREN_RELEASE_DIR:-}" ]; then
    bin=$WARREN_RELEASE_DIR
  else
    cargo build --release -p warren -p warren-loadtest
    bin=${CARGO_TARGET_DIR:-target}/release
  fi
  for b in warren warren-loadtest; do
    if [ ! -x "$bin/$b" ]; then
      echo "bench.sh --quick: no $bin/$b (build it, or set WARREN_RELEASE_DIR)" >&2
      return 1
    fi
  done
  local out=${QUICK_OUT:-loadtest/results/quick}
  mkdir -p "$out"
  rm -f "$out/scenarios.json" "$out/paced.json"
  # Exit 1 with the JSON written means some run had errors (shown in the
  # table); no JSON means the load test did not run through.
  run() {
    local json=$1
    shift
    local rc=0
    "$bin/warren-loadtest" --warren-bin "$bin/warren" --json "$json" "$@" || rc=$?
    if [ "$rc" -ne 0 ] && [ ! -s "$json" ]; then
      echo "bench.sh --quick: warren-loadtest failed (exit $rc)" >&2
      exit "$rc"
    fi
  }
  run "$out/scenarios.json" \
    --scenario publish-stream --scenario publish-unary --scenario publish-http \
    --scenario subscribe --scenario rpc --target direct,warren \
    --queue-type classic --size 256 --messages 3000 --duration 10 \
    --quiet-wait 5 --retries 0 --warren-log "$out/warren-scenarios.log" \
    > "$out/scenarios.md"
  run "$out/paced.json" \
    --paced 1000 --scenario publish-unary --scenario subscribe \
    --size 256 --duration 5 --warren-log "$out/warren-paced.log" \
    > "$out/paced.md"
  if ! command -v jq > /dev/null; then
    echo "(no jq: the two tables as they are)"
    cat "$out/scenarios.md" "$out/paced.md"
    return 0
  fi
  jq -r -s '
    def ms: if . == null then "-" else (. / 1000 | tostring) end;
    def num($d): if . == null then "-" else (. * pow(10; $d) | round / pow(10; $d) | tostring) end;
    def errs: if .error == null then (.errors | tostring) else "\(.errors): \(.error)" end;
    "| run | scenario | target | msgs | msg/s | p50 ms | p99 ms | ratio | W µs/msg | W csw/msg | errors |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
    (.[0].results[] | "| closed loop | \(.scenario) | \(.target) | \(.messages) | \(.rate | num(0)) | \(.p50_us | ms) | \(.p99_us | ms) | \(.ratio | num(2)) | \(.warren_cpu_us_per_msg | num(0)) | - | \(errs) |"),
    (.[1].paced[] | "| paced \(.paced | num(0))/s | \(.scenario) | \(.target) | \(.messages) | \(.rate | num(0)) | \(.p50_us | ms) | \(.p99_us | ms) | - | \(.warren_cpu_us_per_msg | num(0)) | \(.warren_ctx_switches_per_msg | num(2)) | \(errs) |")
  ' "$out/scenarios.json" "$out/paced.json" | tee "$out/quick.md"
  echo "(tables and JSON in $out/)"
}

case "${1:-}" in
  --quick)
    quick
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: $0 [--quick]" >&2
    exit 2
    ;;
esac

cargo build --release -p warren -p warren-loadtest
mkdir -p loadtest/results
MESSAGES=${MESSAGES:-20000}
DURATION=${DURATION:-30}

./target/release/warren-loadtest \
  --scenario all --queue-type classic --size 64,4096 \
  --messages "$MESSAGES" --duration "$DURATION" \
  --warren-log loadtest/results/warren-classic.log \
  --json loadtest/results/classic.json --plot loadtest/results/classic.svg \
  | tee loadtest/results/classic.md

./target/release/warren-loadtest \
  --scenario publish-stream --scenario subscribe --queue-type quorum --size 64,4096 \
  --messages "$MESSAGES" --duration "$DURATION" \
  --warren-log loadtest/results/warren-quorum.log \
  --json loadtest/results/quorum.json --plot loadtest/results/quorum.svg \
  | tee loadtest/results/quorum.md

# The transport floor: warren-floor answers every publish at once, without a
# broker, on Warren's gRPC and HTTP interface. Its rows show what the gRPC or
# HTTP hop alone costs on this machine (see "The transport floor" in
# BENCHMARKS.md).
./target/release/warren-loadtest \
  --scenario publish-stream --scenario publish-unary --scenario publish-http --scenario latency-1 \
  --target warren --queue-type classic --size 64,4096 \
  --messages "$MESSAGES" --duration "$DURATION" \
  --warren-bin target/release/warren-floor \
  --warren-log loadtest/results/floor.log \
  --json loadtest/results/floor.json \
  | tee loadtest/results/floor.md
