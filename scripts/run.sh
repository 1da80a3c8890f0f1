#!/usr/bin/env bash
# Brings up a local RabbitMQ (installing it when missing) and runs Warren
# against it with config/warren.toml. Extra arguments go to warren.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/broker.sh
exec cargo run --release --locked --bin warren -- --config config/warren.toml "$@"
