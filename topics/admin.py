"""Create graphwire's topics idempotently."""

from __future__ import annotations

from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from graphwire.topics.errors import DependencyUnavailable, GraphwireError
from graphwire.topics.specs import TopicSpec

_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(
    bootstrap_servers: str,
    specs: list[TopicSpec],
    *,
    replication_factor: int = 1,
    **client_kwargs: Any,
) -> dict[str, str]:
    """Create each topic that does not exist; returns ``{name: "created" | "exists"}``.

    Existing topics are left as they are (their partition count is reported by
    ``graphwire topics ensure``, never changed here).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_kwargs)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise DependencyUnavailable(
            f"cannot reach Kafka at {bootstrap_servers}: check GRAPHWIRE_BOOTSTRAP_SERVERS and "
            "that the broker is running"
        ) from exc
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        outcome = {s.name: "exists" for s in specs if s.name in existing}
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, replication_factor, topic_configs=s.configs)
                    for s in missing
                ]
            )
            for name, code, *rest in response.topic_errors:
                if code == 0:
                    outcome[name] = "created"
                elif code == _TOPIC_ALREADY_EXISTS:
                    outcome[name] = "exists"
                else:
                    message = rest[0] if rest and rest[0] else f"error code {code}"
                    raise GraphwireError(f"could not create topic {name!r}: {message}")
        return outcome
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka admin request failed: {exc}") from exc
    finally:
        await admin.close()


async def partition_counts(
    bootstrap_servers: str, names: list[str], **client_kwargs: Any
) -> dict[str, int]:
    """Number of partitions of each named topic that exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_kwargs)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}
    finally:
        await admin.close()


async def scale_partitions(
    bootstrap_servers: str, topic: str, partitions: int, **client_kwargs: Any
) -> int:
    """Raise ``topic``'s partition count to ``partitions`` (Kafka ``CreatePartitions``);
    returns the count it had. Refuses to decrease, which Kafka cannot do."""
    from aiokafka.admin import NewPartitions

    have = (await partition_counts(bootstrap_servers, [topic], **client_kwargs)).get(topic)
    if have is None:
        raise GraphwireError(f"topic {topic} does not exist: run `graphwire topics ensure`")
    if partitions < have:
        raise GraphwireError(
            f"{topic} has {have} partitions; Kafka cannot decrease a topic's partitions. "
            "To have fewer, create a new topic prefix and move producers to it."
        )
    if partitions == have:
        return have
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_kwargs)
    try:
        await admin.start()
        response = await admin.create_partitions({topic: NewPartitions(total_count=partitions)})
    except KafkaConnectionError as exc:
        raise DependencyUnavailable(f"cannot reach Kafka at {bootstrap_servers}") from exc
    except KafkaError as exc:
        raise GraphwireError(
            f"the broker refused to add partitions to {topic} ({type(exc).__name__}); it may "
            "not support CreatePartitions (the bundled test broker does not)"
        ) from None
    finally:
        await admin.close()
    for name, code, message in getattr(response, "topic_errors", []):
        if code:
            raise GraphwireError(
                f"the broker refused to add partitions to {name} (error {code}: {message}); it "
                "may not support CreatePartitions (the bundled test broker does not)"
            )
    return have


async def message_limits(
    bootstrap_servers: str, names: list[str], **client_kwargs: Any
) -> dict[str, int]:
    """The largest message each named topic accepts, in bytes, as the cluster reports it.

    A topic's own ``max.message.bytes`` when it is set, else the broker's
    ``message.max.bytes``; a topic neither names is left out (the caller keeps its own limit).
    All configs are asked for and filtered here: the test broker (Tansu 0.6) drops the
    connection on a DescribeConfigs that names config keys.
    """
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_kwargs)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise DependencyUnavailable(
            f"cannot reach Kafka at {bootstrap_servers}: check GRAPHWIRE_BOOTSTRAP_SERVERS"
        ) from exc
    try:
        topic_configs = await _described(
            admin, [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
        limits = {
            name: int(configs["max.message.bytes"])
            for name, configs in topic_configs.items()
            if configs.get("max.message.bytes", "").isdigit()
        }
        if len(limits) < len(names):
            brokers = sorted(b["node_id"] for b in (await admin.describe_cluster())["brokers"])
            if brokers:
                broker = ConfigResource(ConfigResourceType.BROKER, str(brokers[0]))
                configs = (await _described(admin, [broker])).get(str(brokers[0]), {})
                default = configs.get("message.max.bytes", "")
                if default.isdigit():
                    limits = {name: limits.get(name, int(default)) for name in names}
        return limits
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka admin request failed: {exc}") from exc
    finally:
        await admin.close()


async def _described(admin: AIOKafkaAdminClient, resources: list[Any]) -> dict[str, dict[str, str]]:
    """``{resource name: {config name: value}}`` of the resources the broker described."""
    described: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for error_code, _message, _type, name, entries in response.resources:
            if error_code == 0:
                described[name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
    return described
