"""Publishing a request's outputs (events, result, reply-to copy, dead letter) and waiting
until the broker has acknowledged all of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any, TypeAlias

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from graphwire.processors.metrics import RunnerMetrics
from graphwire.topics.codec import (
    HEADER_ERROR,
    HEADER_REPLY_TO,
    HEADER_SOURCE,
    HEADER_TRACEPARENT,
    HEADER_VALUE_DROPPED,
    dumps,
    result_dict,
)
from graphwire.topics.errors import DependencyUnavailable, GraphwireError
from graphwire.topics.specs import TopicNames

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
Record: TypeAlias = ConsumerRecord[bytes, bytes]
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class PublishFailed(GraphwireError):
    """The broker refused an output for good (not authorised, too large, no such topic)."""


class Outbox:
    """The messages one request publishes; ``confirm()`` returns once all are acknowledged.

    Sends are pipelined (nothing waits for the broker until ``confirm``); a message whose
    delivery failed is sent again with backoff until it is acknowledged or the worker stops,
    in which case ``DependencyUnavailable`` leaves the request uncommitted for redelivery.
    """

    __slots__ = ("_metrics", "_producer", "_sent", "_stopping", "acked")

    def __init__(
        self,
        producer: AIOKafkaProducer,
        metrics: RunnerMetrics,
        stopping: Callable[[], bool],
    ) -> None:
        self._producer = producer
        self._metrics = metrics
        self._stopping = stopping
        self.acked: dict[str, str] = {}
        """``topic -> "topic/partition/offset"`` of the last acknowledged message per topic."""
        self._sent: list[tuple[str, bytes | None, bytes | None, Headers, asyncio.Future[Any]]] = []

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> None:
        """Hand one message to the producer (returns before the broker acknowledges it)."""
        future = await self._send_with_retry(topic, value, key, headers)
        self._sent.append((topic, value, key, headers, future))

    async def _send_with_retry(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> asyncio.Future[Any]:
        delay = 0.1
        while True:
            try:
                future: asyncio.Future[Any] = await self._producer.send(
                    topic, value, key=key, headers=headers
                )
                return future
            except KafkaError as exc:
                if not _can_succeed_later(exc):
                    raise PublishFailed(
                        f"the producer refused a message for {topic} ({type(exc).__name__}: "
                        f"{exc}); check the topic and the message size limits"
                    ) from exc
                self._backoff_or_give_up(exc, topic)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)

    def _backoff_or_give_up(self, exc: BaseException, topic: str) -> None:
        self._metrics.publish_retries.inc()
        if self._stopping():
            raise DependencyUnavailable(
                f"Kafka did not acknowledge an output before shutdown ({exc}); the request stays "
                "uncommitted and will be redelivered"
            ) from exc
        known: Any = None
        with contextlib.suppress(Exception):  # diagnostics only: what the producer believes
            known = sorted(self._producer.client.cluster.partitions_for_topic(topic) or ())
        log.warning("publish to %s failed, retrying: %r (partitions in metadata: %s)", topic, exc,
                    known)

    async def confirm(self) -> None:
        """Wait until the broker acknowledged every message sent so far."""
        delay = 0.1
        while self._sent:
            outcomes = await asyncio.gather(*(s[4] for s in self._sent), return_exceptions=True)
            failed = []
            for sent, outcome in zip(self._sent, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failed.append((sent, outcome))
                else:
                    self.acked[sent[0]] = f"{sent[0]}/{outcome.partition}/{outcome.offset}"
            self._sent = []
            if not failed:
                return
            for (topic, *_), error in failed:
                if isinstance(error, KafkaError) and not _can_succeed_later(error):
                    raise PublishFailed(
                        f"the broker refused a message for {topic} ({type(error).__name__}); "
                        "check that the topic exists and this worker may write to it"
                    ) from error
            self._backoff_or_give_up(failed[0][1], failed[0][0][0])
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)
            for (topic, value, key, headers, _), _error in failed:
                await self.send(topic, value, key, headers)


def _can_succeed_later(exc: KafkaError) -> bool:
    """Retriable errors and lost connections; not authorisation or size errors."""
    return bool(getattr(exc, "retriable", False)) or type(exc).__name__ in {
        "KafkaConnectionError",
        "KafkaTimeoutError",
        "NodeNotReadyError",
    }


def header(record: Record, name: str) -> bytes | None:
    """The value of header ``name`` of ``record``, if present."""
    for key, value in record.headers:
        if key == name:
            return bytes(value)
    return None


def trace_headers(record: Record) -> Headers:
    """The headers every output of ``record`` carries (W3C ``traceparent``)."""
    trace = header(record, HEADER_TRACEPARENT)
    return [(HEADER_TRACEPARENT, trace)] if trace else []


class OutputPublisher:
    """Writes a request's outputs to the contract's topics: results, reply-to, dead letters."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topics: TopicNames,
        metrics: RunnerMetrics,
        *,
        max_message_bytes: int,
        stopping: Callable[[], bool],
    ) -> None:
        self._producer = producer
        self._topics = topics
        self._metrics = metrics
        self._limit = max_message_bytes - 64 * 1024  # room for key, headers, batch overhead
        self._stopping = stopping

    @property
    def results_topic(self) -> str:
        """Where results go."""
        return self._topics.results

    def outbox(self) -> Outbox:
        """A fresh outbox for one request."""
        return Outbox(self._producer, self._metrics, self._stopping)

    def encode(self, message: dict[str, Any], big_field: str) -> bytes:
        """Encode an output; one too large for Kafka gets ``big_field`` replaced by a notice."""
        value = dumps(message)
        if len(value) > self._limit:
            notice = {"truncated": True, "bytes": len(value), "limit": self._limit}
            value = dumps({**message, big_field: notice})
        return value

    async def send_result(
        self, outbox: Outbox, record: Record, key: bytes, result: dict[str, Any], headers: Headers
    ) -> None:
        """The result to the results topic and, when the request asked, to its reply-to."""
        value = self.encode(result, "output")
        await outbox.send(self._topics.results, value, key, headers)
        reply_to = header(record, HEADER_REPLY_TO)
        if reply_to:
            topic = reply_to.decode("utf-8", "replace")
            if topic == self._topics.results:
                return
            if _TOPIC_NAME.match(topic):
                await outbox.send(topic, value, key, headers)
            else:
                log.warning("ignoring reply-to %r: not a valid topic name", topic)

    async def send_dead_letter(self, outbox: Outbox, record: Record, reason: str) -> None:
        """The original key, bytes and headers, plus the reason and where it came from."""
        headers = [
            *record.headers,
            (HEADER_ERROR, reason.encode()),
            (HEADER_SOURCE, f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        value = record.value
        if value is not None and len(value) > self._limit:
            # Larger than this worker may produce: keep the reason and the pointer to the
            # original (still on the source topic) rather than stall the partition.
            headers.append((HEADER_VALUE_DROPPED, str(len(value)).encode()))
            value = None
        await outbox.send(self._topics.dlq, value, record.key, headers)

    async def dead_letter_only(self, record: Record, reason: str, label: str) -> None:
        """Dead-letter a message that has no request to answer, and wait for the ack."""
        outbox = self.outbox()
        await self.send_dead_letter(outbox, record, reason)
        await outbox.confirm()
        self._metrics.dead_letters.labels(label).inc()
        log.warning(
            "dead-lettered %s/%d/%d: %s", record.topic, record.partition, record.offset, reason
        )

    async def reject(
        self,
        record: Record,
        request_id: str,
        graph: str,
        error: Exception,
        label: str,
        started: float,
        *,
        metadata: dict[str, Any] | None = None,
        thread_id: str | None = None,
    ) -> None:
        """A ``rejected`` result and a dead letter for a request that cannot run."""
        outbox = self.outbox()
        result = result_dict(
            request_id,
            graph,
            "rejected",
            error=(type(error).__name__, str(error)),
            thread_id=thread_id,
            duration_ms=(time.perf_counter() - started) * 1000,
            metadata=metadata,
        )
        await self.send_result(outbox, record, request_id.encode(), result, trace_headers(record))
        await self.send_dead_letter(outbox, record, str(error))
        await outbox.confirm()
        self._metrics.executions.labels(self._metrics.graph_label(graph), "rejected").inc()
        self._metrics.dead_letters.labels(label).inc()
        log.warning("rejected %s: %s", request_id, error)
