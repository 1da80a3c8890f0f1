#!/usr/bin/env bash
# The whole test suite against a real local RabbitMQ: brings the broker up
# (installing it when missing), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/broker.sh
cargo test --workspace --locked "$@"
