# shellcheck shell=bash
# Sourced by the scripts beside it: Warren's address, JSON without surprises
# (jq when installed, else python3), and POSTs that turn problems into errors.

WARREN_URL="${WARREN_URL:-http://127.0.0.1:5680}"

# NO_JQ=1 uses python3 even where jq is installed.
have_jq() { [[ -z ${NO_JQ:-} ]] && command -v jq >/dev/null 2>&1; }

# to_json KEY=VALUE... KEY:=JSON...: a JSON object (httpie's notation): `=` gives
# a string, `:=` a raw JSON value (a number, true, an object...).
to_json() {
  if have_jq; then
    local args=() filter='{}' i=0 kv key
    for kv in "$@"; do
      key=${kv%%=*}
      if [[ $key == *: ]]; then
        args+=(--arg "k$i" "${key%:}" --argjson "v$i" "${kv#*=}")
      else
        args+=(--arg "k$i" "$key" --arg "v$i" "${kv#*=}")
      fi
      filter+=" | .[\$k$i] = \$v$i"
      i=$((i + 1))
    done
    jq -cn "${args[@]}" "$filter"
  else
    python3 -c '
import json, sys
out = {}
for kv in sys.argv[1:]:
    key, _, value = kv.partition("=")
    if key.endswith(":"):
        out[key[:-1]] = json.loads(value)
    else:
        out[key] = value
print(json.dumps(out, separators=(",", ":")))' "$@"
  fi
}

# json_array STRING...: a JSON array of strings.
json_array() {
  if have_jq; then jq -cn '$ARGS.positional' --args "$@"
  else python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"; fi
}

# json_get FIELD < JSON: a top-level field, strings raw, nothing when absent.
json_get() {
  if have_jq; then jq -r --arg f "$1" '.[$f] // empty | if type == "string" then . else tojson end'
  else python3 -c '
import json, sys
v = json.load(sys.stdin).get(sys.argv[1])
if v is not None:
    print(v if isinstance(v, str) else json.dumps(v))' "$1"; fi
}

# urlencode STRING: for a path segment or query value.
urlencode() {
  if have_jq; then jq -rn --arg s "$1" '$s | @uri'
  else python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; fi
}

# post PATH < JSON (CURL_MAX_TIME: seconds, past the longest Call): prints the response; on an error status prints Warren's
# problem detail (application/problem+json) to stderr and fails.
post() {
  local out status
  out=$(curl -sS --max-time "${CURL_MAX_TIME:-330}" -w '\n%{http_code}' -H 'Content-Type: application/json' --data-binary @- "$WARREN_URL$1") || return 1
  status=${out##*$'\n'}
  out=${out%$'\n'*}
  if [[ $status != 2* ]]; then
    echo "error: HTTP $status: $(json_get detail <<<"$out" 2>/dev/null || printf '%s' "$out")" >&2
    return 1
  fi
  printf '%s\n' "$out"
}

die_usage() { echo "usage: $USAGE" >&2; exit 2; }
