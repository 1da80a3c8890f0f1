#!/usr/bin/env bash
# Property-based tests of the HTTP API against its own OpenAPI document:
# starts a Warren (the built binary, a configuration of its own in a temp
# directory: a queue with its dead-letter queue, an ordered group, the
# spool, auth on with an admin client) against the local broker, fetches its
# /openapi.json and runs schemathesis on it with every check (as
# `--checks all`, set in its config file) and a bounded number of examples
# per operation. Fails on any failure: a
# 5xx, or a response (status, content type, headers, body) that contradicts
# the document, or a request the document calls invalid that Warren accepts.
#
# Schemathesis comes from PyPI into a venv ($WARREN_SCHEMATHESIS_VENV, by
# default ~/.cache/warren/schemathesis-venv), installed when missing.
# Environment: SCHEMATHESIS_EXAMPLES (30), SCHEMATHESIS_TIMEOUT (seconds, 900).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/broker.sh >/dev/null

venv="${WARREN_SCHEMATHESIS_VENV:-$HOME/.cache/warren/schemathesis-venv}"
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet schemathesis
fi

cargo build --locked --bin warren
warren="${CARGO_TARGET_DIR:-target}/debug/warren"

dir="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port="$(free_port)"
grpc_port="$(free_port)"
suffix="$(python3 -c 'import uuid; print(uuid.uuid4().hex[:12])')"
queue="schemathesis.work.$suffix"
group="schemathesis.ordered.$suffix"
token="schemathesis-$suffix"
token_sha="$(printf %s "$token" | sha256sum | cut -d' ' -f1)"

cat >"$dir/warren.toml" <<EOF
[http]
listen = "127.0.0.1:$http_port"
[grpc]
listen = "127.0.0.1:$grpc_port"
[log]
level = "warn,lapin=off"

[[topology.queues]]
name = "$queue"
type = "classic"
arguments = { "x-expires" = 600000 }

[[ordered]]
name = "$group"
partitions = 1

[spool]
enabled = true
dir = "$dir/spool"

[auth]
enabled = true

[[auth.clients]]
name = "schemathesis"
token_sha256 = "$token_sha"
publish = ["*"]
consume = ["*"]
call = ["*"]
admin = true
EOF

# What the document cannot say, per operation (each a reason, not a mute):
# - publish, publishRaw, call: positive_data_acceptance expects every
#   schema-valid request to succeed, but a valid message can still be
#   refused for what the broker's state says of it: unroutable (422), an
#   ordering key on an exchange that is not an ordered group, or a
#   deliver_at_ms past the longest delay (400), none of which a schema of
#   the request can know.
# - publishRaw: its headers are parameters, and schemathesis takes an
#   unknown header for a violation; HTTP has unknown headers ignored
#   (RFC 9110, 5.1), so extra parameters are not generated for it (its body
#   is bytes, so nothing else is lost).
# - call: its 504 (no reply within timeout_ms: no responder in this run) is
#   the contract's answer to the client's own deadline, not a server fault.
# - publishBatch: its entries fail alone by contract (200 with a code per
#   entry), so a schema-violating entry is not the request's rejection
#   (negative_data_rejection), and valid entries meet the same state as
#   publish (positive_data_acceptance).
# Path parameters name this run's queue, dead-letter queue and group (and
# a console file), so that operations reach real resources and not only
# 404s.
cat >"$dir/schemathesis.toml" <<EOF
# Every check (as --checks all; given here, for the operations' own
# settings below to hold).
[checks]
enabled = true

[parameters]
"path.dlq" = "$queue.dlq"
"path.queue" = "$queue"
"path.group" = "$group"
"path.exchange" = "amq.default"
"path.routing_key" = "$queue"
"path.file" = "app.js"

[[operations]]
include-operation-id = ["publish", "publishRaw", "call"]
checks.positive_data_acceptance.enabled = false

[[operations]]
include-operation-id = "publishRaw"
generation.allow-extra-parameters = false

[[operations]]
include-operation-id = "call"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "504"]

[[operations]]
include-operation-id = "publishBatch"
checks.positive_data_acceptance.enabled = false
checks.negative_data_rejection.enabled = false
EOF

"$warren" --config "$dir/warren.toml" >"$dir/warren.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$http_port/readyz" >/dev/null || { cat "$dir/warren.log"; exit 1; }

# Excluded: GET /v1/subscribe/{queue}, a Server-Sent Events stream that does
# not end while the queue exists (schemathesis would wait on it forever).
# One worker: with two, hypothesis parses lambdas' source from two threads
# at once, and CPython 3.11's ast.parse then fails now and then with
# "AST constructor recursion depth mismatch" (a runtime error of the tool,
# not a finding).
status=0
# (The document needs the credential too, with auth on.)
curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$http_port/openapi.json" >"$dir/openapi.json"
timeout "${SCHEMATHESIS_TIMEOUT:-900}" "$venv/bin/schemathesis" --config-file "$dir/schemathesis.toml" run \
  "$dir/openapi.json" --url "http://127.0.0.1:$http_port" \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-30}" \
  --exclude-operation-id subscribe \
  --header "Authorization: Bearer $token" \
  --request-timeout 20 \
  --workers 1 \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --no-color || status=$?

if ! kill -0 "$pid" 2>/dev/null; then
  echo "Warren exited during the run:" >&2
  cat "$dir/warren.log" >&2
  status=1
fi
if [ "$status" -ne 0 ]; then
  echo "schemathesis failed ($status); Warren's log:" >&2
  tail -n 50 "$dir/warren.log" >&2
fi
exit "$status"
