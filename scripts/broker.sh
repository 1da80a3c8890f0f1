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
# The node runs as the rabbitmq user through su, whose PAM session sets its
# open-files limit (often 1024, which caps the node near 900 file handles:
# recovering a few thousand queues after a restart then takes minutes). Give
# that user more.
raise_nofile() {
  local f=/etc/security/limits.d/rabbitmq-warren.conf n
  n=$(ulimit -Hn)
  if [ "$n" = unlimited ] || [ "$n" -gt 65536 ]; then n=65536; fi
  printf 'rabbitmq soft nofile %s\nrabbitmq hard nofile %s\n' "$n" "$n" | sudo_ tee "$f" >/dev/null
}

start_node() {
  echo "broker: starting rabbitmq-server" >&2
  raise_nofile
  sudo_ rabbitmq-server -detached
}

# await_startup needs the node to be up already: give the Erlang VM time to boot.
# The app may have been left stopped by an interrupted fault-injection test.
ready() {
  for _ in $(seq 1 120); do
    sudo_ rabbitmqctl -q ping >/dev/null 2>&1 && break
    sleep 1
  done
  sudo_ rabbitmqctl -q start_app >/dev/null 2>&1 || true
  sudo_ rabbitmqctl -q await_startup --timeout 180 >/dev/null
}

if ! sudo_ rabbitmqctl -q status >/dev/null 2>&1; then
  start_node
fi

# A first boot on a slow machine has been seen to hang (CI once timed out in
# await_startup): show why, then stop the node and boot it once more.
if ! ready; then
  echo "broker: not ready; the node's log ends with:" >&2
  sudo_ sh -c 'tail -n 40 /var/log/rabbitmq/rabbit@*.log' >&2 || true
  sudo_ rabbitmqctl -q stop >/dev/null 2>&1 || true
  sudo_ pkill -f 'beam.*rabbit' >/dev/null 2>&1 || true
  sleep 3
  start_node
  ready
fi
echo "broker: RabbitMQ is ready on amqp://127.0.0.1:5672" >&2
