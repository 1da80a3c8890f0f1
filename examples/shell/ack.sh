#!/usr/bin/env bash
# Acknowledges deliveries by id with POST /v1/ack; with -n rejects them
# instead (POST /v1/nack): dead-lettered, or with -r retried.
#   ./ack.sh 1a2b-1-1-5
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
USAGE='ack.sh [-n [-r]] DELIVERY_ID...'

nack=false requeue=false
while getopts 'nrh' opt; do
  case $opt in
    n) nack=true ;;
    r) requeue=true ;;
    h) echo "usage: $USAGE"; exit 0 ;;
    *) die_usage ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -ge 1 ]] || die_usage

if $nack; then
  to_json "delivery_ids:=$(json_array "$@")" "requeue:=$requeue" | post /v1/nack
else
  to_json "delivery_ids:=$(json_array "$@")" | post /v1/ack
fi
