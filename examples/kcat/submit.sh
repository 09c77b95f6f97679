#!/bin/sh
# Submit one `pipeline` request with kcat and print its result (JSON) when it arrives.
#   GRAPHWIRE_BOOTSTRAP_SERVERS=host:port sh examples/kcat/submit.sh ["Some text"]
# kcat needs librdkafka >= 2.1 for some brokers; point LD_LIBRARY_PATH at a newer one if needed.
set -eu
BROKERS=${GRAPHWIRE_BOOTSTRAP_SERVERS:-localhost:9092}
PREFIX=${GRAPHWIRE_TOPIC_PREFIX:-graphwire}
TEXT=${1:-Hello from kcat}
RID="kcat-$(date +%s)-$$"

# key|value: the request is keyed by its request_id (no thread)
printf '%s|{"request_id": "%s", "graph": "pipeline", "input": {"text": "%s"}}\n' \
    "$RID" "$RID" "$TEXT" | kcat -P -b "$BROKERS" -t "$PREFIX.requests" -K '|'
echo "submitted $RID" >&2

# Results are keyed by request_id: read the results topic until ours is there (30 s at most).
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
