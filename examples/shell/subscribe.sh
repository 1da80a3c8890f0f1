#!/usr/bin/env bash
# Consumes a queue as Server-Sent Events (GET /v1/subscribe/QUEUE): prints each
# delivery as one line of JSON and acks it with ack.sh (POST /v1/ack).
# Declares the queue and binds it to the exchange (key: the queue's name
# unless -k says otherwise).
#   ./subscribe.sh jobs
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
USAGE='subscribe.sh [-x EXCHANGE (amq.direct; "" for an existing queue)] [-k BINDING_KEY]... [-p PREFETCH (10)] [-n COUNT] [-t TIMEOUT_SECONDS] QUEUE'

exchange=amq.direct keys=() prefetch=10 count=0 timeout=0
while getopts 'x:k:p:n:t:h' opt; do
  case $opt in
    x) exchange=$OPTARG ;;
    k) keys+=("$OPTARG") ;;
    p) prefetch=$OPTARG ;;
    n) count=$OPTARG ;;
    t) timeout=$OPTARG ;;
    h) echo "usage: $USAGE"; exit 0 ;;
    *) die_usage ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -eq 1 ]] || die_usage
queue=$1
[[ ${#keys[@]} -gt 0 ]] || keys=("$queue")

url="$WARREN_URL/v1/subscribe/$(urlencode "$queue")?prefetch=$prefetch"
if [[ -n $exchange ]]; then
  url+="&exchange=$(urlencode "$exchange")&binding_keys=$(urlencode "$(IFS=,; echo "${keys[*]}")")"
fi

# -N: no buffering; -D -: the response head first on the same stream, so we
# know when Warren has the subscription and can show why it refused one.
exec 3< <(exec curl -sS -N -D - --max-time "$timeout" -H 'Accept: text/event-stream' "$url")
curl_pid=$!
trap 'kill "$curl_pid" 2>/dev/null || true' EXIT

IFS= read -r status <&3 || { echo "error: no answer from $WARREN_URL" >&2; exit 1; }
while IFS= read -r line <&3 && [[ -n ${line%$'\r'} ]]; do :; done # the other header lines
if [[ $status != "HTTP/"*" 200"* ]]; then
  problem=$(cat <&3)
  echo "error: ${status%$'\r'}: $(json_get detail <<<"$problem" 2>/dev/null || printf '%s' "$problem")" >&2
  exit 1
fi
echo "subscribed to $queue" >&2

seen=0 event=message
while IFS= read -r line <&3; do
  line=${line%$'\r'}
  case $line in
    event:*) event=${line#event:} event=${event# } ;;
    data:*)
      data=${line#data:} data=${data# }
      if [[ $event == error ]]; then # the broker ended the subscription
        echo "error: $(json_get detail <<<"$data")" >&2
        exit 1
      fi
      printf '%s\n' "$data"
      "$here/ack.sh" "$(json_get delivery_id <<<"$data")" >/dev/null
      seen=$((seen + 1))
      if [[ $count -gt 0 && $seen -ge $count ]]; then exit 0; fi
      ;;
    '') event=message ;; # end of one event; `:` lines are keep-alives
  esac
done
rc=0
wait "$curl_pid" || rc=$?
if [[ $rc -eq 28 ]]; then echo "error: timed out after ${timeout}s with $seen message(s)" >&2
else echo "error: the subscription ended" >&2; fi
exit 1
