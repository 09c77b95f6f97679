"""Helpers for tests against the real test broker: produce requests, collect outputs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tests.helpers.cli import ROOT
from tests.helpers.ops import metrics, ready, samples, wait_metric, wait_ready
from tests.helpers.waiting import describe, eventually

__all__ = [  # the ops-endpoint helpers moved to tests.helpers; old imports keep working
    "ROOT", "Collector", "WorkerProcess", "committed", "committed_total", "encode", "metrics",
    "produce", "ready", "request", "samples", "wait_for_members", "wait_metric", "wait_ready",
]


def request(request_id: str, graph: str = "pipeline", **fields: Any) -> dict[str, Any]:
    """A request body with defaults filled in."""
    body: dict[str, Any] = {
        "request_id": request_id,
        "graph": graph,
        "input": {"text": "Hello World"},
    }
    body.update(fields)
    return body


async def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[
        tuple[bytes | None, bytes | None]
        | tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
    ],
    **producer_kwargs: Any,
) -> None:
    """Produce ``(key, value[, headers])`` messages and wait for all acknowledgements."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1024 * 1024, **producer_kwargs
    )
    await producer.start()
    try:
        futures = []
        for message in messages:
            key, value, *rest = message
            headers = rest[0] if rest else []
            futures.append(await producer.send(topic, value, key=key, headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def encode(body: dict[str, Any]) -> bytes:
    """JSON bytes of a message body."""
    return orjson.dumps(body)


class Collector:
    """Reads topics from the beginning in the background and keeps every record."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.records: dict[str, list[ConsumerRecord[bytes, bytes]]] = {t: [] for t in topics}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Collector:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await self._consumer.start()
        await self._consumer.topics()
        partitions = []
        for topic in self.topics:
            found = self._consumer.partitions_for_topic(topic) or set()
            assert found, f"topic {topic} does not exist"
            partitions += [TopicPartition(topic, p) for p in found]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task and self._consumer
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    async def _read(self) -> None:
        assert self._consumer
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for tp, records in batches.items():
                self.records[tp.topic].extend(records)
            if batches:
                self._changed.set()

    def values(self, topic: str) -> list[Any]:
        """Decoded JSON values of a topic, in arrival order."""
        return [orjson.loads(r.value) for r in self.records[topic]]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds, checking whenever records arrive (at least every
        0.5 s); fail the test with what arrived otherwise."""
        await eventually(
            predicate, timeout, interval=0.5, wake=self._changed,
            what=lambda: f"{describe(predicate)}; records: {self._counts()}",
        )

    def _counts(self) -> dict[str, int]:
        return {t: len(r) for t, r in self.records.items()}

    async def wait_count(self, topic: str, count: int, timeout: float = 30.0) -> None:
        """Wait until ``topic`` has at least ``count`` records."""
        await self.wait_until(lambda: len(self.records[topic]) >= count, timeout)


class WorkerProcess:
    """``python -m graphwire worker`` (or another ``command``) as a child process with the
    given environment."""

    def __init__(
        self,
        env: dict[str, str],
        *args: str,
        log_path: Path | None = None,
        command: str = "worker",
    ) -> None:
        self.env = {**os.environ, **env}
        self.command = command
        self.args = args
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "graphwire", self.command, *self.args],
            env=self.env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        if self.log_path:
            out.close()  # type: ignore[union-attr]
        return self

    def kill(self) -> None:
        """SIGKILL: no drain, no commit, no leave-group."""
        assert self.process
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def committed(
    bootstrap: str, group: str, topic: str, partitions: int
) -> dict[int, int | None]:
    """The group's committed offset per partition of ``topic``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Sum of the group's committed offsets over ``topic`` (None counts as 0)."""
    offsets = await committed(bootstrap, group, topic, partitions)
    return sum(v or 0 for v in offsets.values())


async def wait_for_members(bootstrap: str, group: str, count: int, timeout: float = 30.0) -> None:
    """Wait until ``group`` is stable with ``count`` members (so work will be shared)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()

    async def state() -> tuple[str, int]:
        described = await admin.describe_consumer_groups([group])
        _code, _name, state, _ptype, _proto, members = described[0].groups[0]
        return state, len(members)

    try:
        await eventually(state, timeout, interval=0.2, what=f"group {group} stable",
                         until=lambda found: found == ("Stable", count))
    finally:
        await admin.close()
