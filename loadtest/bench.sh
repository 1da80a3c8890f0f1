#!/usr/bin/env bash
# The moderate full run behind BENCHMARKS.md: every scenario on classic
# queues, then publish-stream and subscribe on quorum queues, at 64 B and
# 4 KiB, 20k measured messages per scenario and target (30 s at most each).
#
# Run from the repository root with the broker up (scripts/broker.sh). For the
# mgmt-api peer of publish-http, enable the management plugin first:
#   rabbitmq-plugins enable rabbitmq_management
# Results (tables, JSON, SVG, Warren's log) go to loadtest/results/.
set -euo pipefail
cd "$(dirname "$0")/.."

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
