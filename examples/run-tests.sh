#!/usr/bin/env bash
# Cross-language tests of the examples against a real Warren and RabbitMQ:
# Python publishes and Node consumes, Node publishes and Python consumes, RPC
# both ways, the curl scripts, and push delivery to the Python and Node HTTP
# handlers. Builds nothing: expects a built warren
# (WARREN_BIN, else the newer of target/debug/warren and target/release/warren).
# Sets up its own Python venv (examples/.venv) and node_modules (npm ci).
# Ends with a line "N passed, M failed"; exits non-zero when a check failed.
set -euo pipefail

examples="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$examples")"
started=$SECONDS
say() { printf 'run-tests: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- Set-up: Python venv and stubs, Node modules, the warren binary, the broker.
venv="$examples/.venv"
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r "$examples/python/requirements.txt"
"$examples/python/gen.sh" "$venv/bin/python"
(cd "$examples/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

if [[ -n ${WARREN_BIN:-} ]]; then
  bin=$WARREN_BIN
else
  debug=$root/target/debug/warren release=$root/target/release/warren
  if [[ -x $debug && (! -x $release || $debug -nt $release) ]]; then bin=$debug
  elif [[ -x $release ]]; then bin=$release
  else die "no warren binary: cargo build --bin warren, or set WARREN_BIN"; fi
fi
[[ -x $bin ]] || die "WARREN_BIN=$bin is not an executable"
say "warren: $bin"

"$root/scripts/broker.sh"

# --- Warren on free ports, in a scratch directory. Its config is the defaults
# plus config/examples/push.toml once per push handler (see the push checks).
run=$(mktemp -d "${TMPDIR:-/tmp}/warren-examples.XXXXXX")
suffix=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
queue() { # queue NAME: a fresh queue name (deleted at the end)
  echo "warren-examples.$1.$suffix"
}
warren_pid=''
ok=false

cleanup() {
  # Whatever a check left running (its processes' ids are in $run/pids).
  if [[ -f $run/pids ]]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$run/pids"
  fi
  if [[ -n $warren_pid ]]; then
    kill -TERM "$warren_pid" 2>/dev/null || true
    wait "$warren_pid" 2>/dev/null || true
  fi
  # This run's queues, with what Warren declared for them (.dlq, .retry.<ms>).
  if command -v rabbitmqctl >/dev/null 2>&1; then
    { rabbitmqctl -q list_queues name </dev/null 2>/dev/null || true; } |
      { grep -E "^warren-examples\..+\.$suffix(\.|\$)" || true; } |
      xargs -r -P 8 -I{} rabbitmqctl -q delete_queue {} >/dev/null 2>&1 || true
  fi
  if $ok; then rm -rf "$run"; else say "logs kept in $run"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The push example's queue "jobs" and handler port 8080, made this run's: one
# queue and one port per handler language.
declare -A push_port
for lang in python node; do
  push_port[$lang]=$(free_port)
  sed -e "s/\bjobs\b/$(queue "push-$lang")/g" -e "s/\b8080\b/${push_port[$lang]}/g" \
    "$root/config/examples/push.toml"
done >"$run/warren.toml"

for try in 1 2 3; do
  http_port=$(free_port) grpc_port=$(free_port)
  (cd "$run" && WARREN__HTTP__LISTEN=127.0.0.1:$http_port WARREN__GRPC__LISTEN=127.0.0.1:$grpc_port \
    exec "$bin" --config "$run/warren.toml") >"$run/warren.log" 2>&1 &
  warren_pid=$!
  for _ in $(seq 1 150); do
    curl -sf "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break 2
    kill -0 "$warren_pid" 2>/dev/null || break
    sleep 0.2
  done
  kill "$warren_pid" 2>/dev/null || true
  wait "$warren_pid" 2>/dev/null || true
  warren_pid=''
  say "warren did not get ready (try $try):"
  tail -5 "$run/warren.log" >&2
done
[[ -n $warren_pid ]] || die "warren would not start"
export WARREN_GRPC_ADDR=127.0.0.1:$grpc_port WARREN_URL=http://127.0.0.1:$http_port
say "warren ready: http $WARREN_URL, grpc $WARREN_GRPC_ADDR"

# --- Helpers for the checks. Each check runs in a subshell with `set -e`: its
# first failing command fails it. Output of example NAME goes to
# $run/NAME.out (stdout) and $run/NAME.err (stderr).
py="$venv/bin/python"

ex() { # ex LANG SCRIPT ARGS...: runs examples/LANG/SCRIPT (python or node)
  local lang=$1 script=$2 exec=${EX_EXEC:+exec}; shift 2
  case $lang in
    python) $exec "$py" "$examples/python/$script.py" "$@" ;;
    node) $exec node "$examples/node/$script.js" "$@" ;;
  esac
}

start() { # start NAME CMD...: runs an example in the background
  local name=$1; shift
  # (EX_EXEC: ex execs the interpreter, so that $! is the example's own pid)
  EX_EXEC=1 "$@" >"$run/$name.out" 2>"$run/$name.err" &
  echo $! >"$run/$name.pid"
  echo $! >>"$run/pids"
}

ready() { # ready NAME TEXT: waits until the example says TEXT on stderr
  local name=$1 text=$2 pid
  pid=$(cat "$run/$name.pid")
  for _ in $(seq 1 100); do
    grep -qF -- "$text" "$run/$name.err" && return 0
    kill -0 "$pid" 2>/dev/null || { echo "$name exited early:"; cat "$run/$name.err"; return 1; }
    sleep 0.1
  done
  echo "$name never said '$text'"; return 1
}

finish() { # finish NAME: waits for the example to exit; fails unless it exited 0
  local name=$1 rc=0
  wait "$(cat "$run/$name.pid")" || rc=$?
  [[ $rc -eq 0 ]] || { echo "$name exited $rc:"; cat "$run/$name.err"; return 1; }
}

run_ex() { # run_ex NAME CMD...: runs an example in the foreground; fails unless it exits 0
  local name=$1 rc=0; shift
  "$@" >"$run/$name.out" 2>"$run/$name.err" || rc=$?
  [[ $rc -eq 0 ]] || { echo "$name exited $rc:"; cat "$run/$name.err"; return 1; }
}

assert_py() { # assert_py CODE ARGS...: Python assertions; sys.argv[1:] are ARGS
  "$py" -c "import json, sys
def lines(path):
    return [json.loads(l) for l in open(path) if l.strip()]
$1" "${@:2}"
}

passed=0 failed=0
check() { # check DESCRIPTION FUNCTION ARGS...
  local what=$1 rc=0; shift
  ( set -e; "$@" ) >"$run/check.log" 2>&1 &
  wait $! || rc=$?
  if [[ $rc -eq 0 ]]; then
    passed=$((passed + 1)); say "ok   $what"
  else
    failed=$((failed + 1)); say "FAIL $what"; sed 's/^/       /' "$run/check.log" >&2
  fi
}

# --- The checks.

# A worker in one language receives exactly what a publisher in the other sent:
# bodies, headers and order; "retry" comes back once, "poison" is dead-lettered.
pubsub() { # pubsub PUB SUB [--streaming]
  local pub=$1 sub=$2 mode=${3:-} q
  q=$(queue "$pub-to-$sub${mode:+-streaming}")
  start "worker-$sub" ex "$sub" worker --queue "$q" --count 4 --timeout 30 --retry-delay-ms 100 ${mode:+$mode}
  ready "worker-$sub" "subscribed to $q"
  run_ex "publish-$pub" ex "$pub" publish --routing-key "$q" \
    -H trace=t-123 -H attempt-limit=3 -H urgent=true -H 'route={"hops":[1,"b"]}' hello
  run_ex "publish-$pub" ex "$pub" publish --routing-key "$q" retry poison bye
  finish "worker-$sub"
  assert_py '
got = lines(sys.argv[1])
print("\n".join(map(json.dumps, got)))
seen = [(d["body"], d["attempt"], d["action"]) for d in got]
assert sorted(seen) == sorted([("hello", 1, "acked"), ("retry", 1, "requeued"), ("retry", 2, "acked"),
                               ("poison", 1, "dead-lettered"), ("bye", 1, "acked")]), seen
order = [b for b, _, _ in seen]
assert order.index("hello") < order.index("retry") < order.index("poison") < order.index("bye"), order
sent = {"hello": {"trace": "t-123", "attempt-limit": 3, "urgent": True, "route": {"hops": [1, "b"]}}}
for d in got:
    assert d["routing_key"] == sys.argv[2] and d["content_type"] == "text/plain", d
    headers = d["headers"]
    if d["attempt"] > 1:  # a retried copy also carries x- headers (x-death, x-warren-attempt...)
        headers = {k: v for k, v in headers.items() if not k.startswith("x-")}
    assert headers == sent.get(d["body"], {}), d
' "$run/worker-$sub.out" "$q"
}

# A caller in one language gets the answer of a responder in the other.
rpc() {
  local caller=$1 responder=$2 q body
  q=$(queue "rpc-$caller-to-$responder")
  start "responder-$responder" ex "$responder" rpc_responder --queue "$q" --count 2 --timeout 30
  ready "responder-$responder" "answering requests on $q"
  for body in "hello from $caller" "héllo again"; do
    run_ex "caller-$caller" ex "$caller" rpc_caller --routing-key "$q" --timeout-ms 10000 "$body"
    assert_py '
reply = lines(sys.argv[1])
print(reply)
assert len(reply) == 1 and reply[0]["body"] == sys.argv[2].upper(), reply
assert reply[0]["headers"] == {"responder": sys.argv[3]} and reply[0]["correlation_id"], reply
' "$run/caller-$caller.out" "$body" "$responder"
  done
  finish "responder-$responder"
}

# publish.sh's messages (headers as strings and JSON) reach a Python worker.
shell_publish() {
  local q
  q=$(queue shell-publish)
  start worker-py ex python worker --queue "$q" --count 2 --timeout 30
  ready worker-py "subscribed to $q"
  run_ex publish-sh "$examples/shell/publish.sh" -k "$q" -H trace=sh-1 -H 'n:=7' -H 'meta:={"ok":true}' 'from shell'
  grep -q '"message_id"' "$run/publish-sh.out"
  # The same without jq: lib.sh falls back on python3.
  NO_JQ=1 run_ex publish-sh-nojq "$examples/shell/publish.sh" -k "$q" -H trace=sh-2 'no jq'
  finish worker-py
  assert_py '
got = lines(sys.argv[1])
print(got)
assert [(d["body"], d["headers"], d["action"]) for d in got] == [
    ("from shell", {"trace": "sh-1", "n": 7, "meta": {"ok": True}}, "acked"),
    ("no jq", {"trace": "sh-2"}, "acked")], got
' "$run/worker-py.out"
}

# call.sh gets the answer of a Node responder.
shell_call() {
  local q
  q=$(queue shell-call)
  start responder-node ex node rpc_responder --queue "$q" --count 1 --timeout 30
  ready responder-node "answering requests on $q"
  run_ex call-sh "$examples/shell/call.sh" -k "$q" -t 10000 'called from curl'
  finish responder-node
  assert_py '
reply = lines(sys.argv[1])
print(reply)
assert reply[0]["body"] == "CALLED FROM CURL" and reply[0]["headers"] == {"responder": "node"}, reply
' "$run/call-sh.out"
}

# subscribe.sh prints deliveries and acks them: they are not delivered again.
shell_subscribe() {
  local q
  q=$(queue shell-subscribe)
  start subscribe-sh "$examples/shell/subscribe.sh" -n 2 -t 30 "$q"
  ready subscribe-sh "subscribed to $q"
  run_ex publish-sh "$examples/shell/publish.sh" -k "$q" -H 'seq:=1' first
  run_ex publish-sh "$examples/shell/publish.sh" -k "$q" -H 'seq:=2' second
  finish subscribe-sh
  assert_py '
got = lines(sys.argv[1])
print(got)
assert [(d["message"]["body"], d["message"]["headers"], d["queue"], d["attempt"]) for d in got] == [
    ("first", {"seq": 1}, sys.argv[2], 1), ("second", {"seq": 2}, sys.argv[2], 1)], got
' "$run/subscribe-sh.out" "$q"
  # Had they not been acked, closing the stream would have put them back first.
  run_ex publish-sh "$examples/shell/publish.sh" -k "$q" third
  NO_JQ=1 run_ex subscribe-sh-2 "$examples/shell/subscribe.sh" -n 1 -t 30 "$q"
  assert_py '
got = lines(sys.argv[1])
print(got)
assert [d["message"]["body"] for d in got] == ["third"], got
' "$run/subscribe-sh-2.out"
}

# Warren pushes its queue to the handler in LANG (config/examples/push.toml):
# bodies, Content-Type and CloudEvents headers arrive; "retry" is answered 503
# and comes back as attempt 2 once its Retry-After (1s) is over; "poison" is
# answered 400 and ends in the queue's dead-letter queue.
push() { # push LANG
  local lang=$1 q
  q=$(queue "push-$lang")
  start "push-$lang" ex "$lang" push_handler --port "${push_port[$lang]}" --count 4 --timeout 30
  ready "push-$lang" "listening on"
  publish_http "$q" "$lang-1-$suffix" '"body": "hello", "content_type": "text/plain", "type": "example.greeting", "headers": {"trace": "t-1"}'
  publish_http "$q" "$lang-2-$suffix" '"body": {"n": 2}'
  publish_http "$q" "$lang-3-$suffix" '"body": "retry"'
  publish_http "$q" "$lang-4-$suffix" '"body": "poison"'
  finish "push-$lang"
  assert_py '
got = lines(sys.argv[1])
q, lang, suffix = sys.argv[2:]
print("\n".join(map(json.dumps, got)))
mid = lambda n: f"{lang}-{n}-{suffix}"
seen = sorted((d["id"], d["body"], d["attempt"], d["status"]) for d in got)
assert seen == [(mid(1), "hello", 1, 200), (mid(2), "{\"n\":2}", 1, 200), (mid(3), "retry", 1, 503),
                (mid(3), "retry", 2, 200), (mid(4), "poison", 1, 400)], seen
for d in got:
    ce = d["ce"]
    assert ce["ce-specversion"] == "1.0" and ce["ce-source"] == f"/warren/queues/{q}", d
    assert ce["ce-type"] == ("example.greeting" if d["body"] == "hello" else "warren.delivery"), d
    # (a retried copy also carries x- headers from the broker: x-first-death-queue...)
    headers = {k: v for k, v in d["headers"].items() if not k.startswith("x-")}
    assert headers == ({"trace": "t-1"} if d["body"] == "hello" else {}), d
by = {(d["body"], d["attempt"]): d for d in got}
assert by["hello", 1]["content_type"] == "text/plain", by["hello", 1]
assert by["{\"n\":2}", 1]["content_type"] == "application/json", by["{\"n\":2}", 1]
gap = by["retry", 2]["at"] - by["retry", 1]["at"]
assert 0.85 < gap < 10, f"attempt 2 came {gap:.2f}s after the 503 with Retry-After: 1"
' "$run/push-$lang.out" "$q" "$lang" "$suffix"
  # The broker moves a rejected message to the dead-letter queue on its own
  # time: give it a moment.
  for _ in $(seq 1 50); do
    curl -sS --fail-with-body "$WARREN_URL/v1/dead-letters/$q.dlq" >"$run/dlq-$lang.json"
    grep -qF "$lang-4-$suffix" "$run/dlq-$lang.json" && break
    sleep 0.1
  done
  assert_py '
listing = json.load(open(sys.argv[1]))
print(listing)
assert [(m["id"], m["original_queue"], m["reason"]) for m in listing["messages"]] == [
    (sys.argv[3], sys.argv[2], "rejected")], listing
' "$run/dlq-$lang.json" "$q" "$lang-4-$suffix"
}

publish_http() { # publish_http QUEUE ID FIELDS: POST /v1/publish to amq.direct, routed by QUEUE
  curl -sS --fail-with-body "$WARREN_URL/v1/publish" -H 'content-type: application/json' \
    -d "{\"exchange\": \"amq.direct\", \"routing_key\": \"$1\", \"message_id\": \"$2\", $3}"
  echo
}

# Mistakes end the examples non-zero with Warren's reason.
fails() { # fails PATTERN CMD...: CMD must exit non-zero, saying PATTERN on stderr
  local pattern=$1 rc=0; shift
  "$@" >/dev/null 2>"$run/err.txt" || rc=$?
  [[ $rc -ne 0 ]] || { echo "unexpected success: $*"; return 1; }
  grep -qE -- "$pattern" "$run/err.txt" || { echo "$* did not say /$pattern/:"; cat "$run/err.txt"; return 1; }
}

errors() {
  local nobody
  nobody=$(queue nobody) # (a refused subscription may still declare its queue)
  fails 'HTTP 422: .*unroutable' "$examples/shell/call.sh" -k "$nobody" x
  fails 'HTTP 404: ' "$examples/shell/publish.sh" -x no-such-exchange -k x x
  fails 'FAILED_PRECONDITION' ex python rpc_caller --routing-key "$nobody" x
  fails 'NOT_FOUND' ex node publish --exchange no-such-exchange --routing-key x x
  fails 'NOT_FOUND' ex node worker --queue "$nobody" --exchange no-such-exchange --timeout 10
  fails 'NOT_FOUND' ex python worker --queue "$nobody" --exchange no-such-exchange --timeout 10
}

check "(a) Python publish.py -> Node worker.js: bodies, headers, order, retry, poison" pubsub python node
check "(b) Node publish.js -> Python worker.py: bodies, headers, order, retry, poison" pubsub node python
check "(e) Python publish.py -> Node worker.js --streaming (StreamingSubscribe, settled in the stream)" pubsub python node --streaming
check "(e) Node publish.js -> Python worker.py --streaming (StreamingSubscribe, settled in the stream)" pubsub node python --streaming
check "(c) Python rpc_caller.py -> Node rpc_responder.js" rpc python node
check "(c) Node rpc_caller.js -> Python rpc_responder.py" rpc node python
check "(d) shell publish.sh -> Python worker.py (with and without jq)" shell_publish
check "(d) shell call.sh -> Node rpc_responder.js" shell_call
check "(d) shell subscribe.sh + ack.sh" shell_subscribe
check "(f) Warren push -> Python push_handler.py: CloudEvents headers, 503 + Retry-After, 400 dead-lettered" push python
check "(f) Warren push -> Node push_handler.js: CloudEvents headers, 503 + Retry-After, 400 dead-lettered" push node
check "errors: unroutable, missing exchange reported with a non-zero exit" errors

kill -0 "$warren_pid" 2>/dev/null || { failed=$((failed + 1)); say "FAIL warren is no longer running"; }
say "took $((SECONDS - started))s"
[[ $failed -eq 0 ]] && ok=true
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
