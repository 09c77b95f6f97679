"""GraphwireClient: submit requests and read their events and results, from Python.

Importable without the processors. One consumer per client reads the results and events
topics from the positions they had when the client started and keeps only what belongs to
requests this client submitted or asked about.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from topics.codec import HEADER_REPLY_TO, HEADER_TRACEPARENT, dumps, loads
from topics.errors import DependencyUnavailable, GraphwireError
from topics.models import Event, Request, Result
from topics.specs import TopicNames


class GraphwireClient:
    """Async client for graphwire topics; use as ``async with GraphwireClient(...) as c``."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic_prefix: str = "graphwire",
        max_request_size: int = 8 * 1024 * 1024,
        **client_kwargs: Any,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = TopicNames(topic_prefix)
        self._kwargs = client_kwargs
        self._max_request_size = max_request_size
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watched: set[str] = set()
        self._results: dict[str, Result] = {}
        self._result_waiters: dict[str, asyncio.Future[Result]] = {}
        self._events: dict[str, list[Event]] = defaultdict(list)
        self._event_signal: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._thread_graphs: dict[str, str] = {}

    async def start(self) -> None:
        """Connect and start reading results and events from their current ends."""
        if self._producer is not None:
            return
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            max_request_size=self._max_request_size,
            **self._kwargs,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
            **self._kwargs,
        )
        try:
            await self._producer.start()
            await self._consumer.start()
        except KafkaConnectionError as exc:
            await self.stop()
            raise DependencyUnavailable(
                f"cannot reach Kafka at {self.bootstrap_servers}: is the broker running and "
                "is the address right?"
            ) from exc
        partitions = []
        await self._consumer.topics()  # refreshes metadata
        for topic in (self.topics.results, self.topics.events):
            found = self._consumer.partitions_for_topic(topic)
            if not found:
                await self.stop()
                raise GraphwireError(
                    f"topic {topic} does not exist: run `graphwire topics ensure` first"
                )
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        self._consumer.assign(partitions)
        ends = await self._consumer.end_offsets(partitions)
        for tp, offset in ends.items():
            self._consumer.seek(tp, offset)
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        """Disconnect. Idempotent."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()
        self._consumer = self._producer = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def submit(
        self,
        graph: str,
        input: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        thread_id: str | None = None,
        command: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        stream: Iterable[str] = ("updates",),
        metadata: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
        reply_to: str | None = None,
        traceparent: str | None = None,
    ) -> str:
        """Produce a request (validated against the contract); returns its request_id."""
        assert self._producer is not None, "call start() or use `async with` first"
        body: dict[str, Any] = {
            "request_id": request_id or uuid.uuid4().hex,
            "graph": graph,
            "input": dict(input) if input is not None else None,
            "thread_id": thread_id,
            "command": dict(command) if command is not None else None,
            "config": dict(config or {}),
            "stream": list(stream),
            "timeout_s": timeout_s,
            "metadata": dict(metadata or {}),
        }
        request = Request.model_validate(body)
        headers = []
        if reply_to:
            headers.append((HEADER_REPLY_TO, reply_to.encode()))
        if traceparent:
            headers.append((HEADER_TRACEPARENT, traceparent.encode()))
        self._watched.add(request.request_id)
        if request.thread_id:
            self._thread_graphs[request.thread_id] = request.graph
        await self._producer.send_and_wait(
            self.topics.requests,
            dumps(request.model_dump(mode="json")),
            key=request.key.encode(),
            headers=headers,
        )
        return request.request_id

    async def result(self, request_id: str, timeout: float | None = None) -> Result:
        """Wait for the result of ``request_id`` (raises ``TimeoutError`` after ``timeout``)."""
        self._watched.add(request_id)
        if request_id in self._results:
            return self._results[request_id]
        waiter = self._result_waiters.get(request_id)
        if waiter is None:
            waiter = self._result_waiters[request_id] = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(asyncio.shield(waiter), timeout)

    async def events(self, request_id: str) -> AsyncIterator[Event]:
        """Yield the events of ``request_id`` in seq order, ending after ``run_finished``."""
        self._watched.add(request_id)
        next_seq = 0
        while True:
            signal = self._event_signal[request_id]
            by_seq = {e.seq: e for e in self._events[request_id]}
            while next_seq in by_seq:
                event = by_seq[next_seq]
                next_seq += 1
                yield event
                if event.type == "run_finished":
                    return
            signal.clear()
            await signal.wait()

    async def resume(
        self, thread_id: str, value: Any, *, graph: str | None = None, **kwargs: Any
    ) -> str:
        """Resume an interrupted thread with ``value`` (what ``interrupt()`` returns); returns
        the new request's id. ``graph`` defaults to the graph this client last ran on the
        thread."""
        graph = graph or self._thread_graphs.get(thread_id)
        if graph is None:
            raise GraphwireError(
                f"which graph runs thread {thread_id!r}? pass graph=... (this client has not "
                "submitted to that thread)"
            )
        return await self.submit(graph, None, thread_id=thread_id, command={"resume": value},
                                 **kwargs)

    async def invoke(self, graph: str, input: Mapping[str, Any], **kwargs: Any) -> Result:
        """Submit and wait for the result."""
        timeout = kwargs.pop("wait_timeout", None)
        return await self.result(await self.submit(graph, input, **kwargs), timeout)

    async def _read(self) -> None:
        assert self._consumer is not None
        results_topic = self.topics.results
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    rid = record.key.decode("utf-8", "replace") if record.key else None
                    if rid not in self._watched or record.value is None:
                        continue
                    if tp.topic == results_topic:
                        result = Result.model_validate(loads(record.value))
                        self._results.setdefault(rid, result)
                        waiter = self._result_waiters.pop(rid, None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(self._results[rid])
                    else:
                        self._events[rid].append(Event.model_validate(loads(record.value)))
                        self._event_signal[rid].set()
