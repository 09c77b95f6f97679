"""GraphwireClient: submit requests and read their events and results, from Python.

Importable without the processors. Two consumers per client read the results and the events
topics from the positions they had when the client started, and keep only what belongs to
requests this client submitted or asked about: results and events of many concurrent requests
are demultiplexed from them. The results consumer lets the broker hold a fetch longer
(``fetch_max_wait_ms``, fewer idle polls), the events one shorter (``events_fetch_max_wait_ms``:
a streamed token waits for no poll).

The events topic is read only while a request of this client wants its events (``submit`` with
``keep_events``, ``events()``, ``watch(..., events=True)``), until ``EVENTS_AFTER_RESULT_S`` after
that request's result: a client (a gateway) answering only results does not fetch every event
of every run. Its partitions are paused, not skipped: reading resumes where it paused, so a
request watched later still gets every event published since.

A result that was published before this client started (a request submitted by another
process) is found through Redis when ``redis_url`` is given: the runner's done marker for the
request names the result's topic/partition/offset, and the client reads that one record.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from graphwire.topics.codec import HEADER_REPLY_TO, HEADER_TRACEPARENT, dumps, loads
from graphwire.topics.crons import Crons
from graphwire.topics.errors import (
    DependencyUnavailable,
    GraphwireError,
    RunError,
    RunFailed,
    RunRejected,
    RunTimedOut,
)
from graphwire.topics.history import CheckpointInfo, read_history
from graphwire.topics.models import CancelAction, Control, Event, MultitaskStrategy, Request, Result
from graphwire.topics.positions import KeptEvents, next_event
from graphwire.topics.runstatus import read_done_marker, read_run_state, was_queued
from graphwire.topics.specs import TopicNames

log = logging.getLogger(__name__)


EVENTS_AFTER_RESULT_S = 30.0
"""How long after its result a request still wants its events (they may be fetched after the
result: the two topics are fetched independently)."""
EVENTS_WANTED_MAX_S = 24 * 3600.0
"""How long a request whose result never comes keeps the events topic read."""
WANTS_CHECK_S = 1.0
"""How often the reader looks whether any request still wants events."""

_NONE_KEPT = KeptEvents()
"""What a reader sees of a request none of whose events arrived yet (never added to)."""


class GraphwireClient:
    """Async client for graphwire topics; use as ``async with GraphwireClient(...) as c``."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic_prefix: str = "graphwire",
        max_request_size: int = 8 * 1024 * 1024,
        redis_url: str | None = None,
        max_kept_results: int = 10_000,
        max_events_per_run: int = 10_000,
        max_kept_events: int = 100_000,
        max_kept_bytes: int = 256 * 1024 * 1024,
        database_url: str | None = None,
        database_schema: str | None = None,
        fetch_max_wait_ms: int = 50,
        events_fetch_max_wait_ms: int = 10,
        **client_kwargs: Any,
    ) -> None:
        """``client_kwargs`` go to aiokafka (``security_protocol``, ``sasl_mechanism``,
        ``sasl_plain_username``, ``sasl_plain_password``, ``ssl_context``, ...).

        Memory is bounded (see ``dropped_events``): the results of the last
        ``max_kept_results`` runs; of each run its newest ``max_events_per_run`` events (older
        ones are dropped); and ``max_kept_events`` events in all (the events of the runs that
        received none for longest are dropped first). Whatever the counts, results and events
        together never hold more than ``max_kept_bytes`` (their size as received): the oldest
        runs' events go first, then the oldest results, then the oldest events of the run that
        just received one; a record larger than the whole budget is handed to its waiters but
        not kept. ``database_url`` (and
        ``database_schema``, ``GRAPHWIRE_AUDIT_SCHEMA``) enable ``crons``, and let ``cancel``
        find a request the audit table accepted that no worker holds yet.
        ``fetch_max_wait_ms`` and ``events_fetch_max_wait_ms``: how long the broker may hold a
        fetch of results, of events, waiting for data."""
        if not 1 <= max_events_per_run <= max_kept_events or max_kept_results < 1:
            raise ValueError(
                "GraphwireClient needs 1 <= max_events_per_run <= max_kept_events and "
                f"max_kept_results >= 1 (got {max_events_per_run}, {max_kept_events}, "
                f"{max_kept_results}); raise max_kept_events or lower max_events_per_run"
            )
        if max_kept_bytes < 1:
            raise ValueError(f"GraphwireClient needs max_kept_bytes >= 1 (got {max_kept_bytes})")
        self.bootstrap_servers = bootstrap_servers
        self.topics = TopicNames(topic_prefix)
        self._redis_url = redis_url
        self._max_kept = max_kept_results
        self._max_events_per_run = max_events_per_run
        self._max_kept_events = max_kept_events
        self._max_kept_bytes = max_kept_bytes
        self._kept_bytes = 0
        self._result_bytes: dict[str, int] = {}  # request_id -> its kept result's bytes
        self._kwargs = client_kwargs
        self._max_request_size = max_request_size
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._events_fetch_max_wait_ms = events_fetch_max_wait_ms
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None  # results
        self._events_consumer: AIOKafkaConsumer | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._watched: OrderedDict[str, bool] = OrderedDict()  # -> keep its events
        # submitted here after the reader took its positions: the first wait for the result
        # needs no Redis lookup (the reader sees it); later waits look, in case it was trimmed
        self._submitted_here: set[str] = set()
        self._waiting: dict[str, int] = {}
        self._results: OrderedDict[str, Result] = OrderedDict()
        self._result_waiters: dict[str, asyncio.Future[Result]] = {}
        # per run, the runs with the most recent event last (the last to be dropped)
        self._events: OrderedDict[str, KeptEvents] = OrderedDict()
        self._kept_events = 0
        self._dropped: dict[str, int] = {}
        self._dropped_total = 0
        self._event_signal: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        # request_id -> until when it wants events (monotonic); while none does, the events
        # partitions are paused
        self._event_wants: dict[str, float] = {}
        self._events_paused: list[TopicPartition] = []
        self._wants_checked = 0.0
        self._thread_graphs: dict[str, str] = {}
        self._crons = Crons(database_url, database_schema) if database_url else None
        self._result_listeners: list[Callable[[Result], None]] = []
        self._redis: Any = None  # for _published_earlier and cancel, made on first use
        self._lookup: AIOKafkaConsumer | None = None  # reads single earlier results
        self._lookup_lock = asyncio.Lock()

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
        # results and events are read by two consumers: results with the longer fetch wait
        # (fewer idle polls), events with the short one (a streamed token waits for no poll)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            **self._kwargs,
        )
        self._events_consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            fetch_max_wait_ms=self._events_fetch_max_wait_ms,
            **self._kwargs,
        )
        try:
            await self._producer.start()
            await self._consumer.start()
            await self._events_consumer.start()
        except KafkaConnectionError as exc:
            await self.stop()
            raise DependencyUnavailable(
                f"cannot reach Kafka at {self.bootstrap_servers}: is the broker running and "
                "is the address right?"
            ) from exc
        await self._consumer.topics()  # refreshes metadata
        found = {topic: self._consumer.partitions_for_topic(topic)
                 for topic in (self.topics.results, self.topics.events)}
        for topic, numbers in found.items():
            if not numbers:
                await self.stop()
                raise GraphwireError(
                    f"topic {topic} does not exist: run `graphwire topics ensure` first"
                )
        for consumer, topic in ((self._consumer, self.topics.results),
                                (self._events_consumer, self.topics.events)):
            partitions = [TopicPartition(topic, p) for p in sorted(found[topic])]
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            for tp, offset in ends.items():
                consumer.seek(tp, offset)
        if not self._event_wants:
            self._pause_events()
        self._readers = [asyncio.create_task(self._read(self._consumer)),
                         asyncio.create_task(self._read(self._events_consumer))]

    async def stop(self) -> None:
        """Disconnect. Idempotent."""
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers = []
        for client in (self._consumer, self._events_consumer, self._producer, self._lookup):
            if client is not None:
                await client.stop()
        self._consumer = self._events_consumer = self._producer = self._lookup = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._crons is not None:
            await self._crons.close()

    @property
    def crons(self) -> Crons:
        """Define and manage crons (``add``, ``list``, ``get``, ``remove``, ``pause``,
        ``resume``); needs ``database_url``."""
        if self._crons is None:
            raise GraphwireError(
                "crons live in PostgreSQL: create the client with database_url=... (and "
                "database_schema=... if the scheduler's tables are in one)"
            )
        return self._crons

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def submit(
        self,
        graph: str,
        input: Any = None,
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
        multitask_strategy: MultitaskStrategy | None = None,
        checkpoint_id: str | None = None,
        webhook: str | None = None,
        after_seconds: float | None = None,
        run_at: datetime | str | None = None,
        context: Mapping[str, Any] | None = None,
        interrupt_before: Sequence[str] | Literal["*"] | None = None,
        interrupt_after: Sequence[str] | Literal["*"] | None = None,
        subgraphs: bool = False,
    ) -> str:
        """Produce a request (validated against the contract); returns its request_id.
        ``webhook``: a URL the result is POSTed to (``graphwire webhooks``).
        ``after_seconds``/``run_at``: accepted now, run then (by ``graphwire scheduler``).
        ``input`` is any JSON value (None continues ``thread_id`` from a breakpoint);
        ``context`` is LangGraph's run context; ``interrupt_before``/``interrupt_after`` stop
        at those nodes; ``subgraphs`` streams subgraphs' events too."""
        request = self.build_request(
            graph, input, request_id=request_id, thread_id=thread_id, command=command,
            config=config, stream=stream, metadata=metadata, timeout_s=timeout_s,
            multitask_strategy=multitask_strategy, checkpoint_id=checkpoint_id,
            webhook=webhook, after_seconds=after_seconds, run_at=run_at, context=context,
            interrupt_before=interrupt_before, interrupt_after=interrupt_after,
            subgraphs=subgraphs,
        )
        return await self.submit_request(request, reply_to=reply_to, traceparent=traceparent)

    def build_request(
        self,
        graph: str,
        input: Any = None,
        *,
        request_id: str | None = None,
        thread_id: str | None = None,
        command: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        stream: Iterable[str] = ("updates",),
        metadata: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
        multitask_strategy: MultitaskStrategy | None = None,
        checkpoint_id: str | None = None,
        webhook: str | None = None,
        after_seconds: float | None = None,
        run_at: datetime | str | None = None,
        context: Mapping[str, Any] | None = None,
        interrupt_before: Sequence[str] | Literal["*"] | None = None,
        interrupt_after: Sequence[str] | Literal["*"] | None = None,
        subgraphs: bool = False,
    ) -> Request:
        """The request ``submit`` would produce, validated but not sent (``ValueError`` when
        the contract refuses it): check a whole batch before submitting any of it."""
        body: dict[str, Any] = {
            "request_id": request_id or uuid.uuid4().hex,
            "graph": graph,
            "input": dict(input) if isinstance(input, Mapping) else input,
            "thread_id": thread_id,
            "command": dict(command) if command is not None else None,
            "config": dict(config or {}),
            "stream": list(stream),
            "timeout_s": timeout_s,
            "metadata": dict(metadata or {}),
        }
        if multitask_strategy is not None:
            body["multitask_strategy"] = multitask_strategy
        if checkpoint_id is not None:
            body["checkpoint_id"] = checkpoint_id
        if webhook is not None:
            body["webhook"] = webhook
        if after_seconds is not None or run_at is not None:  # scheduled runs
            body.update(after_seconds=after_seconds, run_at=run_at)
        if context is not None:
            body["context"] = dict(context)
        for name, nodes in (("interrupt_before", interrupt_before),
                            ("interrupt_after", interrupt_after)):
            if nodes is not None:
                body[name] = nodes if nodes == "*" else list(nodes)
        if subgraphs:
            body["subgraphs"] = True
        return Request.model_validate(body)

    async def submit_request(
        self, request: Request, *, reply_to: str | None = None, traceparent: str | None = None,
        keep_events: bool = True, headers: list[tuple[str, bytes]] | None = None,
    ) -> str:
        """Produce a request built by ``build_request``; returns its request_id. Without
        ``keep_events`` only its result is kept in memory (events read before ``events()``
        or ``watch(..., events=True)`` asks for them are not kept; while no request wants
        events they are not read at all, and are read when one does). ``headers``: more Kafka
        headers (the gateway's ``x-graphwire-principal``)."""
        assert self._producer is not None, "call start() or use `async with` first"
        headers = list(headers or [])
        if reply_to:
            headers.append((HEADER_REPLY_TO, reply_to.encode()))
        if traceparent:
            headers.append((HEADER_TRACEPARENT, traceparent.encode()))
        self.watch(request.request_id, events=keep_events)
        if len(self._submitted_here) < 4 * self._max_kept:  # in flight only; bounded anyway
            self._submitted_here.add(request.request_id)
        if request.thread_id:
            self._thread_graphs[request.thread_id] = request.graph
            if len(self._thread_graphs) > self._max_kept:
                del self._thread_graphs[next(iter(self._thread_graphs))]
        body = request.model_dump(mode="json")
        # unset optional fields are left out, as other producers do: no "webhook": null that
        # runners from before it would refuse
        for name in ("webhook", "after_seconds", "run_at"):
            if body.get(name) is None:
                body.pop(name, None)
        await self._producer.send_and_wait(
            self.topics.requests,
            dumps(body),
            key=request.key.encode(),
            headers=headers,
        )
        return request.request_id

    async def result(
        self, request_id: str, timeout: float | None = None, *, raise_on_error: bool = False
    ) -> Result:
        """Wait for the result of ``request_id`` (``TimeoutError`` after ``timeout`` seconds).

        With ``raise_on_error``, a result other than ``success``/``interrupted`` raises
        ``RunError``, ``RunRejected`` or ``RunTimedOut`` (each carries the result)."""
        self.watch(request_id, events=None)
        found = self._results.get(request_id)
        first_of_ours = request_id in self._submitted_here
        self._submitted_here.discard(request_id)
        if (found is None and not first_of_ours and request_id not in self._result_waiters
                and self._redis_url):
            earlier = await self._published_earlier(request_id)
            if earlier is not None:
                self._keep(*earlier)
                found = earlier[0]
            found = self._results.get(request_id, found)  # may have come while Redis answered
        if found is None:
            waiter = self._result_waiters.get(request_id)
            if waiter is None:
                waiter = asyncio.get_running_loop().create_future()
                self._result_waiters[request_id] = waiter
            self._waiting[request_id] = self._waiting.get(request_id, 0) + 1
            try:
                found = await asyncio.wait_for(asyncio.shield(waiter), timeout)
            finally:  # a wait that gave up (timeout, caller gone) leaves nothing behind
                left = self._waiting.pop(request_id, 1) - 1
                if left:
                    self._waiting[request_id] = left
                elif not waiter.done():
                    self._result_waiters.pop(request_id, None)
        if raise_on_error:
            _raise_for(found)
        return found

    def _keep_event(self, rid: str, event: Event, size: int) -> None:
        if size > self._max_kept_bytes:  # alone over the budget: never kept
            self._count_dropped(rid, 1)
            return
        kept = self._events.get(rid)
        if kept is None:
            kept = self._events[rid] = KeptEvents()
        self._events.move_to_end(rid)  # a run still sending events is the last to be dropped
        if len(kept) == self._max_events_per_run:  # drop the run's oldest event
            self._kept_events -= 1
            self._kept_bytes -= kept.pop_oldest()
            self._count_dropped(rid, 1)
        kept.add(event, size)
        self._kept_events += 1
        self._kept_bytes += size
        # ``rid`` is last and alone holds at most max_events_per_run <= max_kept_events: the
        # loops never drop the events of the run that just received one for a count
        while len(self._events) > self._max_kept or self._kept_events > self._max_kept_events:
            self._drop_events(next(iter(self._events)))
        self._trim(rid)

    def _drop_oldest_event(self, rid: str) -> None:
        kept = self._events[rid]
        self._kept_events -= 1
        self._kept_bytes -= kept.pop_oldest()
        self._count_dropped(rid, 1)
        if not kept:
            del self._events[rid]

    def _drop_events(self, rid: str) -> None:
        dropped = self._events.pop(rid)
        self._kept_events -= len(dropped)
        self._kept_bytes -= sum(size for _, size in dropped.arrived)
        self._count_dropped(rid, len(dropped))

    def _count_dropped(self, rid: str, count: int) -> None:
        self._dropped[rid] = self._dropped.get(rid, 0) + count
        self._dropped_total += count

    def _keep(self, result: Result, size: int) -> None:
        if size > self._max_kept_bytes:  # alone over the budget: handed to waiters only
            return
        if result.request_id in self._results:
            self._forget_result(result.request_id)
        self._results[result.request_id] = result
        self._result_bytes[result.request_id] = size
        self._kept_bytes += size
        while len(self._results) > self._max_kept:
            self._forget_result(next(iter(self._results)))
        self._trim(None)

    def _forget_result(self, rid: str) -> None:
        del self._results[rid]
        self._kept_bytes -= self._result_bytes.pop(rid)

    def _trim(self, receiving: str | None) -> None:
        """Drop until the budget holds: the events of the runs that received none for longest
        (not ``receiving``), then the oldest results, then ``receiving``'s oldest events."""
        while self._kept_bytes > self._max_kept_bytes:
            oldest = next(iter(self._events), None)
            if oldest is not None and oldest != receiving:
                self._drop_events(oldest)
            elif self._results:
                self._forget_result(next(iter(self._results)))
            elif receiving is not None and receiving in self._events:
                self._drop_oldest_event(receiving)
            else:  # nothing left to drop (cannot happen: every kept byte is counted)
                break

    @property
    def kept_bytes(self) -> int:
        """Bytes (as received) of the results and events this client keeps now; at most
        ``max_kept_bytes``."""
        return self._kept_bytes

    def add_result_listener(self, listener: Callable[[Result], None]) -> None:
        """Call ``listener(result)`` (on the event loop, quickly) for every result of a
        watched request the reader receives."""
        self._result_listeners.append(listener)

    async def _shared_redis(self) -> Any:
        if self._redis is None:
            from redis.asyncio import Redis

            assert self._redis_url is not None
            self._redis = Redis.from_url(self._redis_url, socket_timeout=5)
        return self._redis

    async def _published_earlier(self, request_id: str) -> tuple[Result, int] | None:
        """The result the runner's done marker points at, read from Kafka (None if unknown),
        with its size. One Redis client and one lookup consumer serve every call."""
        marker = await read_done_marker(await self._shared_redis(), self.topics.prefix,
                                        request_id)
        position = marker.result_position() if marker is not None else None
        if position is None:
            return None
        topic, partition, offset = position
        async with self._lookup_lock:  # one consumer: one position at a time
            if self._lookup is None:
                lookup = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers,
                                          enable_auto_commit=False, **self._kwargs)
                await lookup.start()
                self._lookup = lookup
            tp = TopicPartition(topic, partition)
            self._lookup.assign([tp])
            self._lookup.seek(tp, offset)
            try:
                record = await asyncio.wait_for(self._lookup.getone(), 10)
            except TimeoutError:
                return None
        value = record.value or b"{}"
        result = Result.model_validate(loads(value))
        return (result, len(value)) if result.request_id == request_id else None

    def watch(self, request_id: str, *, events: bool | None = True) -> None:
        """Start keeping the result and (with ``events``) the events of ``request_id``
        (``submit`` does this); ``events=None`` keeps what was asked before (else none)."""
        if events is None:
            events = self._watched.get(request_id, False)
        self._watched[request_id] = events
        self._watched.move_to_end(request_id)
        if events:
            self._want_events(request_id)
        while len(self._watched) > 4 * self._max_kept:  # the oldest are long answered
            old, _ = self._watched.popitem(last=False)
            self._event_signal.pop(old, None)
            self._dropped.pop(old, None)
            self._event_wants.pop(old, None)

    @property
    def reading_events(self) -> bool:
        """True while the events topic is read (some request wants its events)."""
        return self._events_consumer is not None and not self._events_paused

    def _want_events(self, request_id: str) -> None:
        now = time.monotonic()
        done = request_id in self._results
        self._event_wants[request_id] = now + (
            EVENTS_AFTER_RESULT_S if done else EVENTS_WANTED_MAX_S)
        if self._events_paused and self._events_consumer is not None:
            self._events_consumer.resume(*self._events_paused)
            self._events_paused = []

    def _pause_events(self) -> None:
        assert self._events_consumer is not None
        self._events_paused = list(self._events_consumer.assignment())
        self._events_consumer.pause(*self._events_paused)

    def _check_wants(self) -> None:
        """Pause the events partitions once no request wants events any more."""
        now = time.monotonic()
        if self._events_paused or now - self._wants_checked < WANTS_CHECK_S:
            return
        self._wants_checked = now
        self._event_wants = {rid: until for rid, until in self._event_wants.items()
                             if until > now}
        if not self._event_wants and self._events_consumer is not None:
            self._pause_events()

    def awaiting_first_result(self, request_id: str) -> bool:
        """Submitted by this client, result not seen yet and not waited for yet (it will be
        read off the results topic: no Redis lookup needed)."""
        return request_id in self._submitted_here

    def watching(self, request_id: str) -> bool:
        return request_id in self._watched

    def event_signal(self, request_id: str) -> asyncio.Event:
        """Set (by the reader) whenever an event of ``request_id`` arrives; clear it to wait."""
        return self._event_signal[request_id]

    def known_result(self, request_id: str) -> Result | None:
        """The result of ``request_id`` if this client has received it."""
        return self._results.get(request_id)

    def dropped_events(self, request_id: str) -> int:
        """How many received events of ``request_id`` this client dropped at its memory bounds
        (0: ``seen_events`` holds every event received). Dropped events are the run's oldest:
        read them from the audit table (``graphwire_events``) if you need them."""
        return self._dropped.get(request_id, 0)

    @property
    def dropped_events_total(self) -> int:
        """Events dropped at the memory bounds since the client was created (all runs)."""
        return self._dropped_total

    def seen_events(self, request_id: str) -> list[Event]:
        """Events of ``request_id`` received so far, by seq (duplicates dropped)."""
        kept = self._events.get(request_id)
        return kept.in_order() if kept is not None else []

    def kept_events(self, request_id: str) -> KeptEvents | None:
        """The events of ``request_id`` this client holds, by position as they arrive (a live
        view: a reader that wakes at each event looks up the next one here instead of
        copying what it holds)."""
        return self._events.get(request_id)

    async def events(
        self, request_id: str, *, after_seq: int = -1
    ) -> AsyncGenerator[Event, None]:
        """Yield the events of ``request_id`` with seq above ``after_seq``, in seq order, ending
        after ``run_finished``. Events that arrive twice (a record published again) are yielded
        once; when a later try's ``run_started`` is here, the wait for the rest of an earlier
        try ends and the stream goes on from it (``graphwire.topics.positions``)."""
        self.watch(request_id)
        last = after_seq
        while True:
            signal = self._event_signal[request_id]
            signal.clear()  # before looking: an event arriving while we yield wakes us
            kept = self._events.get(request_id) or _NONE_KEPT
            while (event := next_event(kept.by_seq, last, kept.starts)) is not None:
                last = event.seq
                yield event
                if event.type == "run_finished":
                    return
            self._raise_if_dropped(request_id, kept.by_seq, last)
            await signal.wait()

    def _raise_if_dropped(self, request_id: str, by_seq: Mapping[int, Event], last: int) -> None:
        """Events of one request arrive in order (one key, one partition): if later ones are
        here but not the next, and this client dropped some of the run's, the next was dropped."""
        dropped = self._dropped.get(request_id, 0)
        if dropped and any(seq > last for seq in by_seq):
            raise GraphwireError(
                f"{dropped} events of {request_id!r} were dropped at this client's memory bound "
                f"(max_events_per_run={self._max_events_per_run}, "
                f"max_kept_events={self._max_kept_events}) before events() read them: read the "
                f"run with `graphwire runs show {request_id}`, or raise the bounds"
            )

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

    async def cancel(
        self,
        request_id: str,
        action: CancelAction = "interrupt",
        *,
        reason: str | None = None,
        force: bool = False,
    ) -> CancelOutcome:
        """Cancel ``request_id`` wherever it is: a running run stops at its next step boundary
        (``interrupt`` keeps its progress, ``rollback`` deletes it), one not started yet runs
        nothing; its result is ``cancelled``.

        With ``redis_url`` the run status is checked first: a finished request is not sent a
        cancel (``state="finished"``). One that no worker holds is ``pending`` when this client
        submitted it, a worker marked it queued behind another run of its thread, or (with
        ``database_url``) the audit table has it as accepted (queued, or not fetched yet).
        One nobody knows of is ``unknown`` and not sent, unless ``force`` (it may still be on
        the requests topic and the audit sink a moment behind)."""
        assert self._producer is not None, "call start() or use `async with` first"
        control = Control(request_id=request_id, action=action, reason=reason)
        state = "sent"
        if self._redis_url:
            found = await read_run_state(await self._shared_redis(), self.topics.prefix,
                                         request_id)
            if found is not None and found.state == "done":
                return CancelOutcome(request_id, "finished", found.status)
            if found is not None:
                state = "running"
            elif force or self.watching(request_id) or await was_queued(
                    await self._shared_redis(), self.topics.prefix, request_id):
                state = "pending"  # ours, or a worker fetched it and queued it behind another
            elif (audited := await self._audit_status(request_id)) == "accepted":
                state = "pending"
            elif audited is not None:  # Redis forgot it (GRAPHWIRE_DONE_TTL_S); the table not
                return CancelOutcome(request_id, "finished", audited)
            else:
                return CancelOutcome(request_id, "unknown")
        await self.send_control(control)
        return CancelOutcome(request_id, state)

    async def _audit_status(self, request_id: str) -> str | None:
        """The request's status in the audit table (``accepted``: the audit sink saw it and no
        result yet); None without ``database_url``, when the table does not have it, or when
        PostgreSQL or the table is not there (a cancel is then decided on Redis alone)."""
        if self._crons is None:
            return None
        try:
            pool = await self._crons.pool()
            status = await pool.fetchval(
                "SELECT status FROM graphwire_runs WHERE request_id = $1", request_id)
        except Exception as exc:  # optional: no audit sink, no tables, PostgreSQL away
            log.info("the audit table cannot say whether %s was accepted (%s)", request_id,
                     type(exc).__name__)
            return None
        return None if status is None else str(status)

    async def produce(self, topic: str, value: bytes, *, key: bytes | None = None,
                      headers: Iterable[tuple[str, bytes]] = ()) -> None:
        """Produce one record as it is (a dead letter's original bytes, key and headers) with
        this client's producer, and wait for the broker's acknowledgement."""
        assert self._producer is not None, "call start() or use `async with` first"
        await self._producer.send_and_wait(topic, value, key=key, headers=list(headers))

    async def send_control(self, control: Control) -> None:
        """Produce a control message to ``<prefix>.control`` (keyed by its request_id)."""
        assert self._producer is not None, "call start() or use `async with` first"
        await self._producer.send_and_wait(
            self.topics.control, dumps(control.model_dump(mode="json")),
            key=control.request_id.encode(),
        )

    async def history(
        self, thread_id: str, *, database_url: str, schema: str | None = None, limit: int = 100
    ) -> list[CheckpointInfo]:
        """The thread's checkpoints, newest first, read from the checkpoint tables
        (``GRAPHWIRE_DATABASE_URL``, ``GRAPHWIRE_CHECKPOINT_SCHEMA``): pass one's
        ``checkpoint_id`` to ``submit(..., checkpoint_id=...)`` to fork the thread there."""
        return await read_history(database_url, thread_id, schema=schema, limit=limit)

    async def invoke(self, graph: str, input: Any, **kwargs: Any) -> Result:
        """Submit and wait for the result."""
        timeout = kwargs.pop("wait_timeout", None)
        return await self.result(await self.submit(graph, input, **kwargs), timeout)

    @property
    def reading(self) -> bool:
        """True while the reader of results and events runs (readiness)."""
        return bool(self._readers) and not any(reader.done() for reader in self._readers)

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200)
            except KafkaError as exc:  # the broker away for a moment: keep the reader alive
                log.warning("reading results and events failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                for record in records:
                    try:
                        self._take(tp.topic, record)
                    except Exception as exc:  # one malformed record must not stop the reader
                        log.warning("skipping %s/%d/%d: %s", tp.topic, tp.partition,
                                    record.offset, exc)
            self._check_wants()

    def _take(self, topic: str, record: Any) -> None:
        rid = record.key.decode("utf-8", "replace") if record.key else None
        if rid is None or rid not in self._watched or record.value is None:
            return
        if topic == self.topics.results:
            self._submitted_here.discard(rid)  # kept now: no lookup needed either way
            result = self._results.get(rid)
            if result is None:
                result = Result.model_validate(loads(record.value))
                self._keep(result, len(record.value))
            if rid in self._event_wants:  # its events may still come, for a while
                self._event_wants[rid] = min(self._event_wants[rid],
                                             time.monotonic() + EVENTS_AFTER_RESULT_S)
            waiter = self._result_waiters.pop(rid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)
            for listener in self._result_listeners:
                listener(result)
        elif self._watched[rid]:  # events only of runs someone streams
            self._keep_event(rid, Event.model_validate(loads(record.value)), len(record.value))
            self._event_signal[rid].set()


class CancelOutcome:
    """What ``cancel()`` found and did."""

    __slots__ = ("request_id", "state", "status")

    def __init__(self, request_id: str, state: str, status: str | None = None) -> None:
        self.request_id = request_id
        self.state = state
        """``running`` (it stops at its next step boundary), ``pending`` (not started: it runs
        nothing when reached), ``sent`` (no Redis to check), ``finished`` (nothing sent: it
        ended ``status``) or ``unknown`` (nothing sent: no store knows the request)."""
        self.status = status
        """The final status of a finished request."""

    @property
    def sent(self) -> bool:
        """True when a cancel was produced."""
        return self.state in ("running", "pending", "sent")

    def __repr__(self) -> str:
        return f"CancelOutcome({self.request_id!r}, {self.state!r}, {self.status!r})"


def _raise_for(result: Result) -> None:
    error = result.error
    why = f"{error.type}: {error.message}" if error else str(result.status)
    if result.status == "error":
        raise RunError(result, f"request {result.request_id} failed: {why}")
    if result.status == "rejected":
        raise RunRejected(result, f"request {result.request_id} was rejected: {why}")
    if result.status == "timeout":
        raise RunTimedOut(result, f"request {result.request_id} timed out: {why}")
    if result.status not in ("success", "interrupted"):
        raise RunFailed(result, f"request {result.request_id} ended {result.status}")
