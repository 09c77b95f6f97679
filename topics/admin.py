"""Create graphwire's topics idempotently."""

from __future__ import annotations

from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from topics.errors import DependencyUnavailable, GraphwireError
from topics.specs import TopicSpec

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
