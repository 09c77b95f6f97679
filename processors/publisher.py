"""Publishing a request's outputs and waiting until the broker has acknowledged all of them."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from processors.metrics import RunnerMetrics
from topics.errors import DependencyUnavailable

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


class Outbox:
    """The messages one request publishes; ``confirm()`` returns once all are acknowledged.

    Sends are pipelined (nothing waits for the broker until ``confirm``); a message whose
    delivery failed is sent again with backoff until it is acknowledged or the worker stops,
    in which case ``DependencyUnavailable`` leaves the request uncommitted for redelivery.
    """

    __slots__ = ("_metrics", "_producer", "_sent", "_stopping")

    def __init__(
        self,
        producer: AIOKafkaProducer,
        metrics: RunnerMetrics,
        stopping: Callable[[], bool],
    ) -> None:
        self._producer = producer
        self._metrics = metrics
        self._stopping = stopping
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
                if not getattr(exc, "retriable", False) and not _is_connection_error(exc):
                    raise
                self._backoff_or_give_up(exc)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)

    def _backoff_or_give_up(self, exc: BaseException) -> None:
        self._metrics.publish_retries.inc()
        if self._stopping():
            raise DependencyUnavailable(
                f"Kafka did not acknowledge an output before shutdown ({exc}); the request stays "
                "uncommitted and will be redelivered"
            ) from exc
        log.warning("publish failed, retrying: %s", exc)

    async def confirm(self) -> None:
        """Wait until the broker acknowledged every message sent so far."""
        delay = 0.1
        while self._sent:
            outcomes = await asyncio.gather(*(s[4] for s in self._sent), return_exceptions=True)
            failed = [
                s for s, o in zip(self._sent, outcomes, strict=True) if isinstance(o, BaseException)
            ]
            self._sent = []
            if not failed:
                return
            self._backoff_or_give_up(failed[0][4].exception() or RuntimeError("delivery failed"))
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)
            for topic, value, key, headers, _ in failed:
                await self.send(topic, value, key, headers)


def _is_connection_error(exc: KafkaError) -> bool:
    return type(exc).__name__ in {"KafkaConnectionError", "KafkaTimeoutError", "NodeNotReadyError"}
