#!/usr/bin/env bash
# Publishes one message with POST /v1/publish; prints {"message_id": ...} once
# the broker confirmed it.
#   ./publish.sh -k jobs -H trace=abc -H n:=3 'hello'
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
USAGE='publish.sh [-x EXCHANGE (amq.direct)] -k ROUTING_KEY [-H NAME=STRING | -H NAME:=JSON]... [-t CONTENT_TYPE (text/plain)] BODY'

exchange=amq.direct routing_key='' content_type=text/plain headers=()
while getopts 'x:k:H:t:h' opt; do
  case $opt in
    x) exchange=$OPTARG ;;
    k) routing_key=$OPTARG ;;
    H) headers+=("$OPTARG") ;;
    t) content_type=$OPTARG ;;
    h) echo "usage: $USAGE"; exit 0 ;;
    *) die_usage ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -eq 1 && -n $routing_key ]] || die_usage

# 422 (unroutable) means no queue is bound for the routing key (yet).
to_json "exchange=$exchange" "routing_key=$routing_key" "content_type=$content_type" \
  "body=$1" "headers:=$(to_json ${headers[@]+"${headers[@]}"})" | post /v1/publish
