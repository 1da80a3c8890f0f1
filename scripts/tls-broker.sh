#!/usr/bin/env bash
# A RabbitMQ node of its own that speaks TLS, beside the default node that
# scripts/broker.sh runs (which it never touches), for tests/broker_tls.rs.
#
#   scripts/tls-broker.sh up DIR     starts warren-tls@localhost with the certificates in
#                                    DIR (ca.pem, server.pem, server-key.pem); prints the URIs
#   scripts/tls-broker.sh down       stops it, kills leftovers, removes its data (idempotent)
#   scripts/tls-broker.sh status     one line; exits 0 only when the node runs
#   scripts/tls-broker.sh user NAME [PASSWORD]
#                                    adds a user with full permissions on "/": with the
#                                    password, or with none (it can only log in with
#                                    SASL EXTERNAL, by a client certificate whose CN is NAME)
#   scripts/tls-broker.sh ctl ARGS...  rabbitmqctl -n warren-tls@localhost ARGS...
#
# The node: AMQPS on 127.0.0.1:5712 (verify_peer against DIR/ca.pem, a client
# certificate optional: fail_if_no_peer_cert = false), plain AMQP on
# 127.0.0.1:5711, Erlang distribution on port 25711 (loopback only); data,
# logs, certificates and configuration under $WARREN_TLS_BROKER_DIR (default
# /tmp/warren-tls-broker). Its only plugin is rabbitmq_auth_mechanism_ssl
# (its own enabled_plugins file): SASL EXTERNAL, the user being the client
# certificate's subject CN (ssl_cert_login_from = common_name), beside PLAIN
# and AMQPLAIN. It runs, like the default node, as the rabbitmq user with its
# home, so it shares the Erlang cookie that root's rabbitmqctl uses; the user
# guest/guest may log in over loopback.
#
# Needs rabbitmq-server installed (scripts/broker.sh installs it). Runs as root
# (CI and the dev machines are root); uses sudo otherwise.
set -euo pipefail

BASE=${WARREN_TLS_BROKER_DIR:-/tmp/warren-tls-broker}
NODE=warren-tls@localhost
AMQP_PORT=5711
AMQPS_PORT=5712
DIST_PORT=25711
PATH=$PATH:/usr/sbin:/sbin

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
log() { echo "tls-broker: $*" >&2; }

ctl() { sudo_ rabbitmqctl -n "$NODE" "$@"; }

# The environment the node is started with: everything of its own, nothing
# read from /etc/rabbitmq (that is the default node's).
node_env() {
  echo "RABBITMQ_NODENAME=$NODE"
  echo "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
  echo "RABBITMQ_NODE_PORT=$AMQP_PORT"
  echo "RABBITMQ_DIST_PORT=$DIST_PORT"
  echo "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
  echo "RABBITMQ_CONF_ENV_FILE=$BASE/rabbitmq-env.conf"
  echo "RABBITMQ_CONFIG_FILE=$BASE/rabbitmq.conf"
  echo "RABBITMQ_ADVANCED_CONFIG_FILE=$BASE/advanced.config"
  echo "RABBITMQ_ENABLED_PLUGINS_FILE=$BASE/enabled_plugins"
  echo "RABBITMQ_MNESIA_BASE=$BASE/mnesia"
  echo "RABBITMQ_LOG_BASE=$BASE/log"
  echo "RABBITMQ_PID_FILE=$BASE/pid"
}

# The pids of the node's processes (its Erlang VM and the VM's helpers),
# known by the node name in their environment.
node_pids() {
  # A process may end between the glob and the read: ignore such errors.
  sudo_ grep -l -s -z -x -F -e "RABBITMQ_NODENAME=$NODE" /proc/[0-9]*/environ 2>/dev/null |
    sed -e 's|^/proc/||' -e 's|/environ$||' | grep -v -x -e "$$" || true
}

beam_pid() {
  local pid
  for pid in $(node_pids); do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = beam.smp ]; then
      echo "$pid"
      return
    fi
  done
}

running() { ctl -q ping >/dev/null 2>&1; }

print_uris() {
  echo "amqps://127.0.0.1:$AMQPS_PORT/%2f"
  echo "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
}

# Waits until the node has booted. await_startup fails at once until the
# node has registered with epmd, hence the loop.
await_node() {
  local start=$SECONDS
  until ctl -q await_startup --timeout 60 >/dev/null 2>&1; do
    # Given up after 120 s, or after 15 s without an Erlang VM at all.
    if [ "$SECONDS" -ge $((start + 120)) ] ||
      { [ "$SECONDS" -ge $((start + 15)) ] && [ -z "$(beam_pid)" ]; }; then
      log "$NODE did not start; its log:"
      sudo_ tail -n 40 "$BASE/log/$NODE.log" >&2 2>/dev/null || sudo_ cat "$BASE/node.out" >&2 || true
      return 1
    fi
    sleep 1
  done
}

up() {
  local certs=${1:-}
  if [ -z "$certs" ]; then
    log "usage: $0 up DIR (with ca.pem, server.pem, server-key.pem)"
    exit 2
  fi
  local f
  for f in ca.pem server.pem server-key.pem; do
    [ -r "$certs/$f" ] || { log "no readable $certs/$f"; exit 1; }
  done
  if ! command -v rabbitmq-server >/dev/null 2>&1 || ! id rabbitmq >/dev/null 2>&1; then
    log "rabbitmq-server is not installed: run scripts/broker.sh first"
    exit 1
  fi
  # Whatever is left of an earlier run (an interrupted test) goes first: the
  # certificates are new on every start.
  down
  local port
  for port in "$AMQP_PORT" "$AMQPS_PORT" "$DIST_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      log "port $port is taken by something else; not starting"
      exit 1
    fi
  done
  sudo_ mkdir -p "$BASE/certs" "$BASE/mnesia" "$BASE/log"
  # Copies of the node's own, readable by the rabbitmq user whatever the
  # source directory's permissions.
  for f in ca.pem server.pem server-key.pem; do
    sudo_ cp "$certs/$f" "$BASE/certs/$f"
  done
  sudo_ sh -c "cat >'$BASE/rabbitmq-env.conf' </dev/null"
  sudo_ sh -c "echo '[rabbitmq_auth_mechanism_ssl].' >'$BASE/enabled_plugins'"
  sudo_ sh -c "cat >'$BASE/rabbitmq.conf'" <<EOF
# warren-tls: a TLS node beside the default node (scripts/tls-broker.sh)
loopback_users.guest = true
log.console = false
log.file.level = info
listeners.ssl.default = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $BASE/certs/ca.pem
ssl_options.certfile = $BASE/certs/server.pem
ssl_options.keyfile = $BASE/certs/server-key.pem
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
EOF
  sudo_ chown -R rabbitmq:rabbitmq "$BASE"
  sudo_ chmod 600 "$BASE/certs/server-key.pem"
  log "starting $NODE"
  local -a env_args
  mapfile -t env_args < <(node_env)
  # -detached: the VM goes to the background; its output goes to the log dir.
  sudo_ env "${env_args[@]}" rabbitmq-server -detached >"$BASE/node.out" 2>&1
  await_node
  log "up: AMQPS on 127.0.0.1:$AMQPS_PORT, AMQP on 127.0.0.1:$AMQP_PORT"
  print_uris
}

add_user() {
  local name=${1:-} password=${2:-}
  [ -n "$name" ] || { log "usage: $0 user NAME [PASSWORD]"; exit 2; }
  if [ -n "$password" ]; then
    ctl -q add_user "$name" "$password" >/dev/null
  else
    # rabbitmqctl wants a password: a random one, cleared at once.
    ctl -q add_user "$name" "$(head -c 24 /dev/urandom | base64)" >/dev/null
    ctl -q clear_password "$name" >/dev/null
  fi
  ctl -q set_permissions -p / "$name" '.*' '.*' '.*' >/dev/null
}

down() {
  local pids
  # A graceful stop first, bounded in time: given the pid file, `stop` waits
  # until the VM has exited.
  if [ -n "$(beam_pid)" ]; then
    sudo_ timeout 30 rabbitmqctl -n "$NODE" -q stop "$BASE/pid" >/dev/null 2>&1 || true
  fi
  # Then whatever is left of the node, by the node name in its environment.
  pids=$(node_pids)
  if [ -n "$pids" ]; then
    log "killing leftovers of $NODE: $(tr "\n" " " <<<"$pids")"
    # shellcheck disable=SC2086
    sudo_ kill -KILL $pids 2>/dev/null || true
  fi
  for _ in $(seq 1 50); do
    [ -z "$(node_pids)" ] && break
    sleep 0.1
  done
  # Only ever a directory of ours: refuse anything that does not look like one.
  case "$BASE" in
    /tmp/?* | /var/tmp/?*) sudo_ rm -rf -- "$BASE" ;;
    *) [ -d "$BASE" ] && log "not removing $BASE (not under /tmp or /var/tmp)" ;;
  esac
  log "down"
}

status() {
  if running; then
    echo "$NODE amqps://127.0.0.1:$AMQPS_PORT running (pid $(beam_pid))"
  else
    echo "$NODE amqps://127.0.0.1:$AMQPS_PORT not running"
    return 1
  fi
}

case "${1:-}" in
  up) up "${2:-}" ;;
  down) down ;;
  status) status ;;
  user)
    shift
    add_user "$@"
    ;;
  ctl)
    shift
    ctl "$@"
    ;;
  *)
    echo "usage: $0 up DIR|down|status|user NAME [PASSWORD]|ctl ARGS..." >&2
    exit 2
    ;;
esac
