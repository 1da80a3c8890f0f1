#!/usr/bin/env bash
# The whole test suite against a real local RabbitMQ: brings the broker up
# (installing it when missing), checks formatting and lints, runs every Rust
# test of the workspace (tests/faults.rs, which stops and starts the broker,
# is a test binary of its own: cargo runs test binaries one after another),
# the console's browser tests (tests/console/run.sh: headless Chromium,
# installed when missing), the deploy files' checks, and the cross-language
# examples. The auth tests make their JWT keys with the openssl command
# (installed when missing). After the Rust tests, scripts/schemathesis.sh
# checks the HTTP API against its OpenAPI document. Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/broker.sh
if ! command -v openssl >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq openssl >/dev/null; else sudo apt-get install -y -qq openssl >/dev/null; fi
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
scripts/schemathesis.sh
tests/console/run.sh
deploy/check.sh
examples/run-tests.sh
