"""Reading dead letters back and re-producing them to the requests topic (``graphwire dlq``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from graphwire.topics.codec import HEADER_ERROR, HEADER_SOURCE, HEADER_VALUE_DROPPED
from graphwire.topics.errors import GraphwireError
from graphwire.topics.specs import TopicNames

_OURS = (HEADER_ERROR, HEADER_SOURCE, HEADER_VALUE_DROPPED)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter as found on ``<prefix>.dlq``."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> str:
        """A header's value as text ('' when absent)."""
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return ""

    @property
    def reason(self) -> str:
        """Why it was dead-lettered."""
        return self.header(HEADER_ERROR)

    @property
    def source(self) -> str:
        """``topic/partition/offset`` of the original message."""
        return self.header(HEADER_SOURCE)

    @property
    def request_id(self) -> str | None:
        """The request_id of the original message, where it has one."""
        try:
            body = orjson.loads(self.value or b"")
        except orjson.JSONDecodeError:
            return None
        rid = body.get("request_id") if isinstance(body, dict) else None
        return rid if isinstance(rid, str) else None

    @property
    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers the producer sent (graphwire's own removed)."""
        return [(k, v) for k, v in self.headers if k not in _OURS]


def is_webhook_letter(letter: DeadLetter, topics: TopicNames) -> bool:
    """True for the dead letter of a webhook delivery (its value is a result, not a request)."""
    return letter.source.startswith(f"{topics.results}/")


async def read_dead_letters(
    bootstrap_servers: str, topics: TopicNames, **client_kwargs: Any
) -> list[DeadLetter]:
    """Every dead letter currently on the topic, in partition then offset order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **client_kwargs
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = sorted(consumer.partitions_for_topic(topics.dlq) or ())
        if not partitions:
            raise GraphwireError(
                f"topic {topics.dlq} does not exist: run `graphwire topics ensure`"
            )
        tps = [TopicPartition(topics.dlq, p) for p in partitions]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        letters: list[DeadLetter] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                for r in records:
                    if r.offset < ends[tp]:
                        letters.append(
                            DeadLetter(tp.partition, r.offset, r.key, r.value, list(r.headers))
                        )
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return sorted(letters, key=lambda d: (d.partition, d.offset))
    finally:
        await consumer.stop()


async def replay(
    bootstrap_servers: str,
    topics: TopicNames,
    letters: list[DeadLetter],
    **client_kwargs: Any,
) -> int:
    """Re-produce ``letters`` with their original key, bytes and headers: a request's to the
    requests topic (run again), a webhook's (a result) to the results topic (delivered again)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        max_request_size=16 * 1024 * 1024,
        **client_kwargs,
    )
    await producer.start()
    try:
        for letter in letters:
            if letter.value is None:
                raise GraphwireError(
                    f"dead letter {letter.partition}/{letter.offset} does not carry its value "
                    f"(too large); replay it from its source {letter.source}"
                )
            target = topics.results if is_webhook_letter(letter, topics) else topics.requests
            await producer.send_and_wait(
                target, letter.value, key=letter.key, headers=letter.original_headers
            )
        return len(letters)
    finally:
        await producer.stop()
