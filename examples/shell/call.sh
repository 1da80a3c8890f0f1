#!/usr/bin/env bash
# Calls a service over the bus with POST /v1/call and prints the reply message
# as JSON (504 when no reply came in time).
#   ./call.sh -k upper 'hello'
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
USAGE='call.sh [-x EXCHANGE (amq.direct)] -k ROUTING_KEY [-H NAME=STRING | -H NAME:=JSON]... [-t TIMEOUT_MS (5000)] BODY'

exchange=amq.direct routing_key='' timeout_ms=5000 headers=()
while getopts 'x:k:H:t:h' opt; do
  case $opt in
    x) exchange=$OPTARG ;;
    k) routing_key=$OPTARG ;;
    H) headers+=("$OPTARG") ;;
    t) timeout_ms=$OPTARG ;;
    h) echo "usage: $USAGE"; exit 0 ;;
    *) die_usage ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -eq 1 && -n $routing_key ]] || die_usage

to_json "exchange=$exchange" "routing_key=$routing_key" "content_type=text/plain" \
  "body=$1" "headers:=$(to_json ${headers[@]+"${headers[@]}"})" "timeout_ms:=$timeout_ms" | post /v1/call
