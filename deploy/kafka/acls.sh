#!/bin/sh
# Per-processor Kafka ACLs for graphwire, for any Apache Kafka with an authorizer (KRaft:
# authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer) and SASL users
# named as below (create them first, e.g. kafka-configs --alter --add-config
# 'SCRAM-SHA-512=[password=...]' --entity-type users --entity-name graphwire-runner).
# The same ACLs as the Strimzi KafkaUsers in deploy/k8s/overlays/prod/kafka-users.yaml.
#
#   BOOTSTRAP=kafka:9093 ADMIN_CONFIG=admin.properties sh deploy/kafka/acls.sh
#   PREFIX=graphwire (GRAPHWIRE_TOPIC_PREFIX)   DRY_RUN=1 prints the commands instead
#
# Write on ${PREFIX}.requests or ${PREFIX}.control is admin over every tenant (docs/security.md):
# only the gateway and the scheduler get it. Groups are the processors' default group ids.
set -eu
BOOTSTRAP=${BOOTSTRAP:-localhost:9092}
PREFIX=${PREFIX:-graphwire}
KAFKA_ACLS=${KAFKA_ACLS:-kafka-acls.sh}

# grant PRINCIPAL TYPE NAME PATTERN OPERATION...
grant() {
    principal=$1 kind=$2 name=$3 pattern=$4
    shift 4
    ops=""
    for op in "$@"; do ops="$ops --operation $op"; done
    # shellcheck disable=SC2086
    set -- $KAFKA_ACLS --bootstrap-server "$BOOTSTRAP" ${ADMIN_CONFIG:+--command-config "$ADMIN_CONFIG"} \
        --add --allow-principal "User:$principal" --"$kind" "$name" \
        --resource-pattern-type "$pattern" $ops
    if [ -n "${DRY_RUN:-}" ]; then echo "$@"; else "$@"; fi
}

# the HTTP gateway: submits runs and cancels, reads their results and events; replays a webhook dead letter onto results; reads the runners' and the sink's lag
grant graphwire-gateway topic ${PREFIX}.requests literal Write
grant graphwire-gateway topic ${PREFIX}.control literal Write
grant graphwire-gateway topic ${PREFIX}.results literal Read Write
grant graphwire-gateway topic ${PREFIX}.events literal Read
grant graphwire-gateway topic ${PREFIX}.dlq literal Describe
grant graphwire-gateway group graphwire-runners literal Describe
grant graphwire-gateway group graphwire-audit literal Describe

# the runners: read requests and control, write events, results and dead letters
grant graphwire-runner topic ${PREFIX}.requests literal Read
grant graphwire-runner topic ${PREFIX}.control literal Read
grant graphwire-runner topic ${PREFIX}.events literal Write
grant graphwire-runner topic ${PREFIX}.results literal Write
grant graphwire-runner topic ${PREFIX}.dlq literal Write
grant graphwire-runner group graphwire-runners literal Read

# the audit sink: reads the four data topics
grant graphwire-audit topic ${PREFIX}.requests literal Read
grant graphwire-audit topic ${PREFIX}.events literal Read
grant graphwire-audit topic ${PREFIX}.results literal Read
grant graphwire-audit topic ${PREFIX}.dlq literal Read
grant graphwire-audit group graphwire-audit literal Read

# the webhook dispatcher: reads results, dead-letters what it cannot deliver
grant graphwire-webhooks topic ${PREFIX}.results literal Read
grant graphwire-webhooks topic ${PREFIX}.dlq literal Write
grant graphwire-webhooks group graphwire-webhooks literal Read

# the scheduler: keeps delayed requests and cron firings, produces them when due
grant graphwire-scheduler topic ${PREFIX}.requests literal Read Write
grant graphwire-scheduler group graphwire-scheduler literal Read

# the topics-ensure Job (and `graphwire topics scale`): creates and grows the topics
grant graphwire-admin topic ${PREFIX}. prefix Create Describe DescribeConfigs Alter

# KEDA's Kafka scaler: the runners' lag
grant graphwire-keda topic ${PREFIX}.requests literal Describe
grant graphwire-keda group graphwire-runners literal Describe
