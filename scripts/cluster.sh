#!/usr/bin/env bash
# A three-node RabbitMQ cluster of its own on this machine, beside the default
# node that scripts/broker.sh runs (which it never touches), for the failover
# test (tests/cluster.rs).
#
#   scripts/cluster.sh up       starts warren-c1..3 and clusters them; prints the AMQP URIs
#   scripts/cluster.sh down     stops them, kills leftovers, removes their data (idempotent)
#   scripts/cluster.sh status   one line per node; exits 0 only when all three run
#   scripts/cluster.sh pid N    the OS pid of node N's Erlang VM (beam.smp)
#   scripts/cluster.sh kill N   kills node N's Erlang VM with SIGKILL; prints its pid
#   scripts/cluster.sh start N  starts node N again (after kill or stop) on its data: it rejoins
#   scripts/cluster.sh stop     stops all three nodes, keeping their data (the whole cluster down)
#   scripts/cluster.sh start    starts all three again on their data and waits for the cluster
#   scripts/cluster.sh ctl N ARGS...   rabbitmqctl -n <node N> ARGS...
#
# Node N (1..3) is warren-cN@localhost: AMQP on 127.0.0.1:570N, Erlang
# distribution on port 2570N (loopback only), data and logs under
# $WARREN_CLUSTER_DIR (default /tmp/warren-cluster), its own empty
# configuration and no plugins (so no plugin listener collides with the
# default node's). The nodes run, like the default node, as the rabbitmq user
# with its home, so they share the Erlang cookie that root's rabbitmqctl uses;
# the user guest/guest may log in over loopback.
#
# Needs rabbitmq-server installed (scripts/broker.sh installs it). Runs as root
# (CI and the dev machines are root); uses sudo otherwise.
set -euo pipefail

BASE=${WARREN_CLUSTER_DIR:-/tmp/warren-cluster}
NODES=(1 2 3)
PATH=$PATH:/usr/sbin:/sbin

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
log() { echo "cluster: $*" >&2; }

node() { echo "warren-c$1@localhost"; }
amqp_port() { echo $((5700 + $1)); }
dist_port() { echo $((25700 + $1)); }
uri() { echo "amqp://guest:guest@127.0.0.1:$(amqp_port "$1")/%2f"; }

check_index() {
  case "${1:-}" in
    1 | 2 | 3) ;;
    *) log "no node '${1:-}' (1, 2 or 3)"; exit 2 ;;
  esac
}

# rabbitmqctl against node N (as the rabbitmq user, by the Debian wrapper).
ctl() {
  local n=$1
  shift
  sudo_ rabbitmqctl -n "$(node "$n")" "$@"
}

# The environment node N is started with: everything of its own, nothing
# read from /etc/rabbitmq (that is the default node's).
node_env() {
  local n=$1 dir="$BASE/c$1"
  echo "RABBITMQ_NODENAME=$(node "$n")"
  echo "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
  echo "RABBITMQ_NODE_PORT=$(amqp_port "$n")"
  echo "RABBITMQ_DIST_PORT=$(dist_port "$n")"
  echo "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
  echo "RABBITMQ_CONF_ENV_FILE=$BASE/rabbitmq-env.conf"
  echo "RABBITMQ_CONFIG_FILE=$BASE/rabbitmq.conf"
  echo "RABBITMQ_ADVANCED_CONFIG_FILE=$BASE/advanced.config"
  echo "RABBITMQ_ENABLED_PLUGINS_FILE=$BASE/enabled_plugins"
  echo "RABBITMQ_MNESIA_BASE=$dir/mnesia"
  echo "RABBITMQ_LOG_BASE=$dir/log"
  echo "RABBITMQ_PID_FILE=$dir/pid"
}

# The pids of the processes of node N (its Erlang VM and the VM's helpers),
# known by the node name in their environment.
node_pids() {
  local marker
  marker="RABBITMQ_NODENAME=$(node "$1")"
  # A process may end between the glob and the read: ignore such errors.
  sudo_ grep -l -s -z -x -F -e "$marker" /proc/[0-9]*/environ 2>/dev/null |
    sed -e 's|^/proc/||' -e 's|/environ$||' | grep -v -x -e "$$" || true
}

# The pid of node N's Erlang VM, or nothing.
beam_pid() {
  local pid
  for pid in $(node_pids "$1"); do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = beam.smp ]; then
      echo "$pid"
      return
    fi
  done
}

running() { ctl "$1" -q ping >/dev/null 2>&1; }

# How many nodes of the cluster run, as node 1 sees it (0 when it does not).
running_members() {
  ctl 1 -q eval 'length(rabbit_nodes:all_running()).' 2>/dev/null || echo 0
}

# `in_parallel N... -- ARGS...`: rabbitmqctl ARGS on each node N at once;
# fails when one of them does.
in_parallel() {
  local -a nodes=() pids=()
  while [ "$1" != -- ]; do nodes+=("$1"); shift; done
  shift
  local n pid failed=0
  for n in "${nodes[@]}"; do
    ctl "$n" "$@" >/dev/null &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  return "$failed"
}

# Waits until node N has booted. await_startup fails at once until the node
# has registered with epmd, hence the loop.
await_node() {
  local n=$1 deadline=$((SECONDS + 120))
  until ctl "$n" -q await_startup --timeout 60 >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$(node "$n") did not start within 120 s; its log:"
      sudo_ tail -n 30 "$BASE/c$n/log/$(node "$n").log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 1
  done
}

start_node() {
  local n=$1 dir="$BASE/c$1"
  sudo_ mkdir -p "$dir/mnesia" "$dir/log"
  sudo_ chown -R rabbitmq:rabbitmq "$dir"
  local -a env_args
  mapfile -t env_args < <(node_env "$n")
  # -detached: the VM goes to the background; its output goes to the log dir.
  sudo_ env "${env_args[@]}" rabbitmq-server -detached >"$BASE/c$n.out" 2>&1
}

up() {
  if ! command -v rabbitmq-server >/dev/null 2>&1 || ! id rabbitmq >/dev/null 2>&1; then
    log "rabbitmq-server is not installed: run scripts/broker.sh first"
    exit 1
  fi
  if [ -n "$(beam_pid 1)" ] && [ -n "$(beam_pid 2)" ] && [ -n "$(beam_pid 3)" ] &&
    [ "$(running_members)" = 3 ]; then
    log "already up"
    print_uris
    return
  fi
  # Whatever is left of an earlier run (an interrupted test) goes first.
  down
  local port
  for n in "${NODES[@]}"; do
    for port in "$(amqp_port "$n")" "$(dist_port "$n")"; do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "port $port is taken by something else; not starting"
        exit 1
      fi
    done
  done
  sudo_ mkdir -p "$BASE"
  # Shared by the three nodes: no env file, no plugins, a minimal config.
  sudo_ sh -c "cat >'$BASE/rabbitmq-env.conf' </dev/null"
  sudo_ sh -c "echo '[].' >'$BASE/enabled_plugins'"
  sudo_ sh -c "cat >'$BASE/rabbitmq.conf'" <<'EOF'
# warren-cluster: a test cluster beside the default node (scripts/cluster.sh)
loopback_users.guest = true
log.console = false
log.file.level = info
EOF
  sudo_ chown rabbitmq:rabbitmq "$BASE" "$BASE/rabbitmq-env.conf" "$BASE/enabled_plugins" "$BASE/rabbitmq.conf"

  log "starting $(node 1), $(node 2), $(node 3)"
  for n in "${NODES[@]}"; do start_node "$n"; done
  for n in "${NODES[@]}"; do await_node "$n"; done
  log "$(node 2) and $(node 3) join $(node 1)"
  # Stopping and starting the app may go in parallel; joining one at a time.
  in_parallel 2 3 -- -q stop_app
  for n in 2 3; do ctl "$n" -q join_cluster "$(node 1)" >/dev/null; done
  in_parallel 2 3 -- -q start_app
  local members
  members=$(running_members)
  if [ "$members" != 3 ]; then
    log "the cluster has $members running nodes, not 3:"
    ctl 1 cluster_status >&2 || true
    exit 1
  fi
  log "up: three nodes running in one cluster"
  print_uris
}

print_uris() {
  for n in "${NODES[@]}"; do uri "$n"; done
}

down() {
  local n pids
  # A graceful stop first (in parallel), bounded in time: given the pid
  # file, `stop` waits until the VM has exited.
  for n in "${NODES[@]}"; do
    if [ -n "$(beam_pid "$n")" ]; then
      (sudo_ timeout 30 rabbitmqctl -n "$(node "$n")" -q stop "$BASE/c$n/pid" >/dev/null 2>&1 || true) &
    fi
  done
  wait
  # Then whatever is left of the nodes, by the node name in its environment.
  for n in "${NODES[@]}"; do
    pids=$(node_pids "$n")
    if [ -n "$pids" ]; then
      log "killing leftovers of $(node "$n"): $(tr "\n" " " <<<"$pids")"
      # shellcheck disable=SC2086
      sudo_ kill -KILL $pids 2>/dev/null || true
    fi
  done
  for n in "${NODES[@]}"; do
    for _ in $(seq 1 50); do
      [ -z "$(node_pids "$n")" ] && break
      sleep 0.1
    done
  done
  # Only ever a directory of ours: refuse anything that does not look like one.
  case "$BASE" in
    /tmp/?* | /var/tmp/?*) sudo_ rm -rf -- "$BASE" ;;
    *) [ -d "$BASE" ] && log "not removing $BASE (not under /tmp or /var/tmp)" ;;
  esac
  log "down"
}

# Starts node N again on its data; it rejoins the cluster it belonged to.
restart_node() {
  local n=$1
  if [ -n "$(beam_pid "$n")" ]; then
    log "$(node "$n") already runs"
    return
  fi
  start_node "$n"
  await_node "$n"
  log "$(node "$n") is back"
}

# Stops every node, keeping the data: the whole cluster down.
stop_all() {
  local n
  for n in "${NODES[@]}"; do
    if [ -n "$(beam_pid "$n")" ]; then
      (sudo_ timeout 60 rabbitmqctl -n "$(node "$n")" -q stop "$BASE/c$n/pid" >/dev/null 2>&1 || true) &
    fi
  done
  wait
  log "stopped (data kept)"
}

# Starts every node on its data at once (each waits for the others at
# boot), then waits for all three to run in one cluster.
start_all() {
  local n deadline=$((SECONDS + 180))
  for n in "${NODES[@]}"; do
    [ -n "$(beam_pid "$n")" ] || start_node "$n"
  done
  for n in "${NODES[@]}"; do await_node "$n"; done
  until [ "$(running_members)" = 3 ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "the cluster has $(running_members) running nodes, not 3"
      return 1
    fi
    sleep 1
  done
  log "up again: three nodes running"
}

status() {
  local n all=0
  for n in "${NODES[@]}"; do
    if running "$n"; then
      echo "$(node "$n") $(uri "$n") running (pid $(beam_pid "$n"))"
    else
      echo "$(node "$n") $(uri "$n") not running"
      all=1
    fi
  done
  return "$all"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  pid)
    check_index "${2:-}"
    pid=$(beam_pid "$2")
    [ -n "$pid" ] || { log "$(node "$2") is not running"; exit 1; }
    echo "$pid"
    ;;
  kill)
    check_index "${2:-}"
    pid=$(beam_pid "$2")
    [ -n "$pid" ] || { log "$(node "$2") is not running"; exit 1; }
    sudo_ kill -KILL "$pid"
    echo "$pid"
    ;;
  start)
    if [ -n "${2:-}" ]; then
      check_index "$2"
      restart_node "$2"
    else
      start_all
    fi
    ;;
  stop) stop_all ;;
  ctl)
    check_index "${2:-}"
    n=$2
    shift 2
    ctl "$n" "$@"
    ;;
  *)
    echo "usage: $0 up|down|status|pid N|kill N|start [N]|stop|ctl N ARGS..." >&2
    exit 2
    ;;
esac
