#!/usr/bin/env bash
# The whole test suite against a real local RabbitMQ: brings the broker up
# (installing it when missing), checks formatting and lints, runs every Rust
# test of the workspace (tests/faults.rs, which stops and starts the broker,
# is a test binary of its own: cargo runs test binaries one after another),
# the console's browser tests (tests/console/run.sh: headless Chromium,
# installed when missing), the deploy files' checks, and the cross-language
# examples. The auth tests make their JWT keys with the openssl command
# (installed when missing). After the Rust tests, scripts/schemathesis.sh
# checks the HTTP API against its OpenAPI document. Last, a report and not a
# gate: `loadtest/bench.sh --quick` prints Warren's CPU per message and its
# ratio to a direct client on this machine (a release build and about a
# minute and a half), so every change shows its cost; it never fails the run. Extra arguments go to `cargo test`.
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
timeout 1200 loadtest/bench.sh --quick || echo "warning: loadtest/bench.sh --quick did not run through (a report only)" >&2
