#!/usr/bin/env bash
# The console's browser tests: playwright-core drives Debian's chromium
# (headless) against a real Warren (the debug binary, started by the tests
# with their own config) and the local RabbitMQ (scripts/broker.sh). Installs
# chromium, Node.js and the npm packages when missing, builds Warren, and
# fails on any failure. Prints the page-weight and time-to-interactive
# figures (BENCHMARKS.md, "Console"). With --screenshots the pictures of
# each page are written to docs/console/ (the README shows them), else to a
# temp dir.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
command -v "${CHROMIUM:-chromium}" >/dev/null || apt_install chromium
export CHROMIUM="$(command -v "${CHROMIUM:-chromium}")"
cd "$here"
if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/amqplib ]; then
  npm ci --no-audit --no-fund --silent
fi
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
(cd "$root" && cargo build --locked --bin warren)
export WARREN_BIN="${WARREN_BIN:-$target/debug/warren}"
if [ "${1:-}" = "--screenshots" ]; then export CONSOLE_SHOTS="$root/docs/console"; fi
"$root/scripts/broker.sh" >/dev/null
node --test --test-reporter=spec console.test.mjs
