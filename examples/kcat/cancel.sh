#!/bin/sh
# Cancel a request with kcat, then print its result (JSON) when it arrives.
#   GRAPHWIRE_BOOTSTRAP_SERVERS=host:port sh examples/kcat/cancel.sh REQUEST_ID [interrupt|rollback]
# A running request stops at its next step boundary (interrupt keeps its progress, rollback
# deletes it); one not started yet runs nothing. Its result says "status": "cancelled". A cancel
# of a finished request goes to the dead-letter topic with the reason.
set -eu
BROKERS=${GRAPHWIRE_BOOTSTRAP_SERVERS:-localhost:9092}
PREFIX=${GRAPHWIRE_TOPIC_PREFIX:-graphwire}
RID=${1:?usage: cancel.sh REQUEST_ID [interrupt|rollback]}
ACTION=${2:-interrupt}

# key|value: control messages are keyed by the request_id they act on
printf '%s|{"type": "cancel", "request_id": "%s", "action": "%s"}\n' \
    "$RID" "$RID" "$ACTION" | kcat -P -b "$BROKERS" -t "$PREFIX.control" -K '|'
echo "cancel ($ACTION) of $RID sent" >&2

i=0
while [ $i -lt 60 ]; do
    FOUND=$(kcat -C -b "$BROKERS" -t "$PREFIX.results" -o beginning -e -q -f '%k\t%s\n' \
        | awk -F '\t' -v rid="$RID" '$1 == rid { print $2; exit }')
    if [ -n "$FOUND" ]; then
        echo "$FOUND"
        exit 0
    fi
    i=$((i + 1))
    sleep 0.5
done
echo "no result for $RID after 30 s: is a worker running?" >&2
exit 1
