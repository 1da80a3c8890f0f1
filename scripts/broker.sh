#!/usr/bin/env bash
# Brings up a local RabbitMQ for Warren's development and tests.
#
# Idempotent: installs Debian's rabbitmq-server only when it is missing, starts
# the broker only when it is not running, then waits until it accepts work.
# Runs as root (CI and the dev machines are root); uses sudo otherwise.
set -euo pipefail

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v rabbitmq-server >/dev/null 2>&1 || ! command -v rabbitmqctl >/dev/null 2>&1; then
  echo "broker: installing rabbitmq-server" >&2
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi

# A package install may start the broker through the service manager (or try to
# and fail where there is none); either way, ask the broker itself.
if ! sudo_ rabbitmqctl -q status >/dev/null 2>&1; then
  echo "broker: starting rabbitmq-server" >&2
  sudo_ rabbitmq-server -detached
fi

# await_startup needs the node to be up already: give the Erlang VM time to boot.
for _ in $(seq 1 120); do
  sudo_ rabbitmqctl -q ping >/dev/null 2>&1 && break
  sleep 1
done
sudo_ rabbitmqctl -q await_startup --timeout 120 >/dev/null
# The app may have been left stopped by an interrupted fault-injection test.
sudo_ rabbitmqctl -q start_app >/dev/null 2>&1 || true
sudo_ rabbitmqctl -q await_startup --timeout 120 >/dev/null
echo "broker: RabbitMQ is ready on amqp://127.0.0.1:5672" >&2
