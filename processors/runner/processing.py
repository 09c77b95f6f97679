"""RequestProcessor: what happens to one request message, from bytes to acknowledged outputs.

A request's life, in ``RequestProcessor._process``: admit it (decode, validate, find the graph;
a refusal is an ``Answer``), claim the request_id (Redis, or ``LocalClaims`` without it), answer
without running (kept, poison, cancelled, busy) or else from the result cache or by a run
(``RunExecutor``), publish the answer (``OutputPublisher.finish``), mark the request done.
``handle`` around it dead-letters what cannot run and waits out dependency outages. The
consumer-group mechanics around that (polling, ordering, commits, rebalances) are the
GraphRunner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.errors import KafkaError

from graphwire.graphs.registry import GraphRegistry, UnknownGraphName
from graphwire.processors.logs import bind, trace_id, unbind
from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner.answer import Addressee, Answer, answer_without_run
from graphwire.processors.runner.cache import ResultCache, cache_key
from graphwire.processors.runner.checkpoints import CheckpointStore
from graphwire.processors.runner.claims import Claim, LeaseLost, RedisClaims, Turn
from graphwire.processors.runner.control import ControlHandler, Stop
from graphwire.processors.runner.failures import data_error, refusal
from graphwire.processors.runner.gate import DependencyGate
from graphwire.processors.runner.graphrun import RunExecutor
from graphwire.processors.runner.localclaims import Claims, LocalClaims
from graphwire.processors.runner.nodecache import RedisNodeCache
from graphwire.processors.runner.publisher import (
    Keep,
    OutputPublisher,
    PublishFailed,
    Record,
    Start,
    header,
)
from graphwire.processors.settings import Settings
from graphwire.processors.webhooks.policy import WebhookPolicy
from graphwire.topics.codec import (
    HEADER_PRINCIPAL,
    HEADER_TRACEPARENT,
    decode_principal,
    decode_request,
    dumps,
    loads,
    peek_graph,
)
from graphwire.topics.errors import (
    DependencyUnavailable,
    InvalidRequest,
    LeftForRedelivery,
    RequestTooLarge,
    UndecodableMessage,
    UnknownGraph,
    UnstorableRequest,
)
from graphwire.topics.models import Request
from graphwire.topics.runstatus import CancelMarker, DoneMarker

log = logging.getLogger(__name__)

_MISSKEYED_WARN_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Job:
    """A fetched message queued behind its key, with the answer decided when it was fetched:
    ``preset`` is the ``rejected`` of a ``multitask_strategy: reject`` request whose thread
    was busy on this worker then (it is answered beside the thread's runs, not after them)."""

    record: Record
    preset: Answer | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A message refused at intake: ``answer`` goes to ``to``; without a request to answer
    (``to`` is None: not a request at all) the message is only dead-lettered."""

    to: Addressee | None
    answer: Answer


class RequestProcessor:
    """Turns one request message into its events, result and dead letter."""

    def __init__(
        self,
        settings: Settings,
        registry: GraphRegistry,
        metrics: RunnerMetrics,
        out: OutputPublisher,
        *,
        dedup: RedisClaims | None = None,
        checkpoints: CheckpointStore | None = None,
        stopping: Callable[[], bool] = lambda: False,
        gate: DependencyGate | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        metrics.graph_names = frozenset(registry.names())  # rejected runs of others: "unknown"
        self._out = out
        self._claims: Claims = dedup if dedup is not None else LocalClaims()
        self._checkpoints = checkpoints
        self._stopping = stopping
        self._gate = gate
        self._allowed = frozenset(
            g.strip() for g in settings.allowed_graphs.split(",") if g.strip()
        )
        self._versions: dict[str, tuple[Any, str]] = {}
        self._webhooks = WebhookPolicy(settings.webhook_allowed_hosts)
        self._cache = ResultCache(dedup.batcher) if dedup is not None else None
        node_cache = None if dedup is None else RedisNodeCache(
            dedup.client, batcher=dedup.batcher, namespace=settings.topic_prefix,
            serde=checkpoints.serde if checkpoints is not None else None, metrics=metrics)
        self._executor = RunExecutor(
            settings, metrics, out, checkpoints=checkpoints, stopping=stopping,
            node_cache=node_cache,
        )
        self.control = ControlHandler(
            out, metrics, self._executor.stops, dedup=dedup, gate=gate, stopping=stopping
        )
        """Handles the messages of ``<prefix>.control`` (cancels)."""
        self._misskeyed_warned = -_MISSKEYED_WARN_EVERY_S
        self._misskeyed_unwarned = 0
        self._waiting: set[asyncio.Task[Any]] = set()

    def drain(self) -> None:
        """Ask every checkpointed run to stop at its next step boundary (on shutdown)."""
        self._executor.drain()

    async def handle(self, job: Job) -> bool:
        """Process one message to its end; False when it is left uncommitted (for redelivery).

        A message left unfinished stops its key: the scheduler drops the key's queued messages,
        so a later message of the same thread never runs before an earlier one.
        """
        record = job.record
        while True:
            try:
                await self._process(job)
                return True
            except InvalidRequest as exc:  # found out while running: PostgreSQL refused its data
                return await self._reject_late(record, exc)
            except DependencyUnavailable as exc:
                refused = data_error(exc)
                if refused is not None:  # Redis or PostgreSQL answered: the message is bad
                    return await self._reject_late(record, UnstorableRequest(refusal(refused)))
                if self._gate is not None and not self._stopping():
                    self._gate.report(exc)  # pauses new work; we retry once it answers
                    if await self._gate.wait_healthy(self._stopping):
                        continue
                log.warning("leaving %s/%d uncommitted: %s", record.topic, record.offset, exc)
                return False
            except LeftForRedelivery as exc:  # shutdown: another start finishes it
                log.warning("leaving %s/%d uncommitted: %s", record.topic, record.offset, exc)
                return False
            except LeaseLost as exc:  # another worker owns it now: go back to the claim
                log.warning("%s; waiting for that run", exc)
                continue
            except PublishFailed as exc:  # an output can never be written: say so, move on
                return await self._dead_letter_or_leave(
                    record, f"outputs could not be published: {exc}", "publish_failed"
                )
            except Exception as exc:  # a bug of ours must not stop the partition
                log.exception("internal error on %s/%d", record.topic, record.offset)
                reason = (
                    f"internal error while processing ({type(exc).__name__}: {exc}); "
                    "report it to the graphwire maintainers, then replay the dead letter"
                )
                return await self._dead_letter_or_leave(record, reason, "internal")

    async def _reject_late(self, record: Record, exc: InvalidRequest) -> bool:
        """A request a dependency could not store (a data error, not an outage): ``rejected``
        with the reason plus a dead letter, and the offset moves on; it is never retried, since
        the same data is refused every time. False if even that cannot be published."""
        try:
            request = decode_request(record.value, max_bytes=self.settings.max_request_bytes)
        except (InvalidRequest, UndecodableMessage):  # not expected: it decoded before
            return await self._dead_letter_or_leave(record, str(exc), "unstorable")
        refused = Refusal(Addressee.of(request), Answer.rejected(exc, "unstorable"))
        try:
            await self._refuse(Start(record, self._out.outbox(), self.settings.worker_id),
                               refused)
        except (LeftForRedelivery, PublishFailed, KafkaError) as failed:
            log.error("could not reject %s/%d: %s", record.topic, record.offset, failed)
            return False
        return True

    async def _dead_letter_or_leave(self, record: Record, reason: str, label: str) -> bool:
        """Dead-letter ``record``; False if even that cannot be published (left uncommitted)."""
        try:
            await self._out.dead_letter_only(record, reason, label)
        except (LeftForRedelivery, PublishFailed, KafkaError) as exc:
            log.error("could not dead-letter %s/%d: %s", record.topic, record.offset, exc)
            return False
        return True

    async def _process(self, job: Job) -> None:
        """One request's life: admit, claim, answer (without running, from the cache or by a
        run), publish the answer, mark the request done."""
        record, preset = job.record, job.preset
        start = Start(record, self._out.outbox(), self.settings.worker_id)
        admitted = self.admit(record)  # 1. admit: a refusal is an answer of its own
        if isinstance(admitted, Refusal):
            await self._refuse(start, admitted)
            return
        if admitted is None:
            return
        request, graph = admitted
        rid, to, claims = request.request_id, Addressee.of(request), self._claims
        stops = self._executor.stops
        token = bind(request_id=rid, graph=request.graph,
                     trace_id=trace_id(header(record, HEADER_TRACEPARENT)))
        try:
            owner = f"{self.settings.worker_id}:{record.topic}/{record.partition}/{record.offset}"
            claim = await self._claim(record, request, owner, preset is not None)  # 2. claim
            if claim.state == "done":
                self.metrics.duplicates.inc()
                log.info("skipping %s: already done (%s)", rid, claim.detail)
                return
            start.claimed(claim.attempt)
            stop = _cancel_stop(claim.cancel) if claim.cancel is not None else stops.get(rid)
            decided = answer_without_run(rid, request.thread_id, claim, stop, preset,
                                         self.settings.max_deliveries)  # 3. without running?
            self._hold(rid, owner)
            try:  # 3. else run, or use the cache; 4. publish the answer
                async with self._answer(start, request, graph, decided) as answer:
                    result_at = await self._out.finish(start, to, answer, self._keep(rid, owner))
                marker = DoneMarker(answer.status, result_at).encode()
                # 5. mark done. The outputs are out: only the done marker is missing, so an
                # outage here is waited out (not re-run, which would publish the result twice)
                await self._through_outage(lambda: claims.complete(rid, owner, marker))
                stops.forget(rid)
                self._forget_checkpoints(request, answer.status)
            except BaseException:
                with contextlib.suppress(Exception):  # best effort: else the lease just expires
                    await claims.release(rid, owner)
                raise
            finally:
                claims.let_go(rid)
        finally:
            unbind(token)

    def _hold(self, rid: str, owner: str) -> None:
        """Renew the lease while the request is ours; a lost lease drains the run, a cancel
        marker found on renewal stops it."""
        stops = self._executor.stops

        def on_cancel(marker: CancelMarker) -> None:
            stops.ask(rid, _cancel_stop(marker))

        self._claims.hold(rid, owner, on_lost=lambda: self._executor.drain_request(
            rid, "lease lost"), on_cancel=on_cancel)

    def _keep(self, rid: str, owner: str) -> Keep:
        """Keep the result in the claim before it is published (crash safety), unless the
        lease was lost meanwhile: then another worker owns the request, publish nothing."""
        claims = self._claims

        async def keep(value: bytes, dead_letter: str | None) -> None:
            if claims.lost(rid):
                raise LeaseLost(f"lease on {rid} expired during the run; another worker owns it")
            await self._through_outage(lambda: claims.keep_result(rid, owner, value, dead_letter))

        return keep

    @contextlib.asynccontextmanager
    async def _answer(
        self, start: Start, request: Request, graph: Any, without_run: Answer | None
    ) -> AsyncIterator[Answer]:
        """``without_run`` when the request is answered without running (a rollback of an
        earlier start's progress is done first), else the answer of a run or of the cache."""
        if without_run is None:
            async with self._run_or_cache(start, request, graph) as answer:
                yield answer
            return
        cancel = without_run.cancel
        if cancel is not None and cancel.action == "rollback" and start.attempt > 1:
            await self._through_outage(lambda: self._executor.roll_back(request))
        _log_without_run(request.request_id, without_run)
        if without_run.republished:  # the start that kept it may have lost its last events
            without_run = await self._executor.replay_republished(start, request, graph,
                                                                  without_run)
        yield without_run

    def admit(self, record: Record) -> tuple[Request, Any] | Refusal | None:
        """Decode and check a request message (no I/O): the request and its graph, a refusal,
        or None when no runner takes it (deferred: graphwire scheduler produces it when due).

        Until its webhook passed the policy, a refusal does not carry it."""
        try:
            request = decode_request(record.value, max_bytes=self.settings.max_request_bytes)
        except UndecodableMessage as exc:
            return Refusal(None, Answer.rejected(exc, "undecodable"))
        except InvalidRequest as exc:
            assert exc.request_id is not None
            label = "too_large" if isinstance(exc, RequestTooLarge) else "invalid"
            to = Addressee(exc.request_id, peek_graph(record.value))
            return Refusal(to, Answer.rejected(exc, label))
        if request.deferred:  # graphwire scheduler stores it and produces it when due
            self.metrics.deferred.inc()
            log.info("%s runs later (after_seconds/run_at): left to graphwire scheduler",
                     request.request_id)
            return None
        refused = self._refusal(record, request)
        if refused is not None:
            reason, label = refused
            error = InvalidRequest(f"invalid request: {reason}")
            return Refusal(Addressee.of(request, webhook=False), Answer.rejected(error, label))
        try:
            if self._allowed and request.graph not in self._allowed:
                raise UnknownGraphName(request.graph)
            return request, self.registry.get(request.graph)
        except UnknownGraphName:
            allowed = [n for n in self.registry.names() if not self._allowed or n in self._allowed]
            unknown = UnknownGraph(request.graph, allowed)
            return Refusal(Addressee.of(request), Answer.rejected(unknown, "unknown_graph"))

    def _refusal(self, record: Record, request: Request) -> tuple[str, str] | None:
        """Why a decoded request is refused before it runs, and the dead letter's label: a
        caller header that does not decode, a reply-to or a webhook the policy refuses."""
        principal = header(record, HEADER_PRINCIPAL)
        if principal is not None:
            try:
                decode_principal(principal)
            except ValueError as exc:
                return str(exc), "invalid"
        reply_refusal = self._out.reply_to_not_allowed(record)
        if reply_refusal is not None:  # refused at once, as a webhook is
            return reply_refusal, "reply_to_refused"
        if request.webhook is not None:  # refused at once, not when the result is out
            webhook_refusal = self._webhooks.refusal(request.webhook)
            if webhook_refusal is not None:
                return webhook_refusal, "webhook_refused"
        return None

    async def _refuse(self, start: Start, refused: Refusal) -> None:
        """Answer a refused message, unless its request_id is done or running.

        A message with no request to answer is dead-lettered only. A done request_id has its
        result out; a second one (``rejected`` after a ``success``) would contradict it. Such a
        message is a duplicate (a bad replay, a result read back as a request): it publishes
        nothing and is counted with the duplicates. A running request_id will have its own
        result: the refused message gets a dead letter only.
        """
        to, answer, record = refused.to, refused.answer, start.record
        dead_letter = answer.dead_letter
        assert dead_letter is not None
        if to is None:
            await self._out.dead_letter_only(record, dead_letter.reason, dead_letter.label)
            return
        known = await self._claims.lookup(to.request_id)
        if known is not None and known.state == "done":
            self.metrics.duplicates.inc()
            log.info("not rejecting %s: already done (%s)", to.request_id, known.status)
            return
        if known is not None and known.state == "running":
            await self._out.dead_letter_only(
                record, f"{dead_letter.reason}; not rejected with a result: request_id "
                f"{to.request_id!r} is running, and its result is that run's", dead_letter.label)
            return
        await self._out.finish(start, to, answer, None)
        log.warning("rejected %s: %s", to.request_id, dead_letter.reason)

    def queued(self, record: Record) -> None:
        """A request waits behind another run of its key on this worker: leave the mark that
        lets a cancel without ``--force`` know a worker holds it (``runstatus.queued_key``)."""
        rid = _peek_request_id(record)
        if rid is not None:
            self._claims.mark_queued(rid)

    def double_text(self, record: Record, ahead: list[Record]) -> Answer | None:
        """A request arrived on a thread with runs ahead of it (``ahead``: the running one
        first): apply its ``multitask_strategy``. Returns its answer when the new one is to be
        rejected at once (``reject``: ThreadBusy); None when it queues (``enqueue``, or after
        asking the runs ahead to stop: ``interrupt``/``rollback``). Only requests that name a
        strategy are decoded here."""
        if record.value is None or b"multitask_strategy" not in record.value:
            return None
        try:
            request = decode_request(record.value, max_bytes=self.settings.max_request_bytes)
        except (InvalidRequest, UndecodableMessage):  # rejected with the reason at its turn
            return None
        strategy, thread = request.multitask_strategy, request.thread_id
        if strategy in (None, "enqueue") or thread is None or request.deferred:
            return None  # a deferred request applies its strategy when it is produced again
        ahead_ids = [rid for rid in map(_peek_request_id, ahead) if rid is not None]
        if not ahead_ids:
            return None
        self.metrics.multitask.labels(strategy).inc()
        if strategy == "reject":
            return Answer.busy(thread, ahead_ids[0])
        assert strategy in ("interrupt", "rollback")
        why = (f"cancelled: request {request.request_id!r} arrived on thread {thread!r} with "
               f"multitask_strategy {strategy!r}")
        for rid in ahead_ids:
            self._executor.stops.ask(rid, Stop(strategy, "multitask", why))
        log.info("%s (%s) stops %s", request.request_id, strategy, ", ".join(ahead_ids))
        return None

    def _forget_checkpoints(self, request: Request, status: str) -> None:
        """A stateless run is done for good (done marker written): drop its checkpoints.

        Not earlier: until the done marker exists a crash redelivers the request, and its
        checkpoints are what lets the next attempt reuse the finished run instead of rerunning.
        """
        if self._checkpoints and request.thread_id is None and status != "interrupted":
            self._checkpoints.forget_later(request.request_id)

    @contextlib.asynccontextmanager
    async def _run_or_cache(
        self, start: Start, request: Request, graph: Any
    ) -> AsyncIterator[Answer]:
        """The answer of a run, or the cached output of an identical request when caching
        applies; once the body published it, a run's success is cached for the next."""
        rid = request.request_id
        claims = self._claims

        def lease_lost() -> bool:
            return claims.lost(rid)

        key = self._cache_key(start.record, request, graph)
        if key is None or self._cache is None:
            yield await self._executor.execute(start, request, graph, lease_lost=lease_lost)
            return
        owner = uuid.uuid4().hex
        hit, output = await self._cache.lookup_or_lock(key, owner)
        self.metrics.cache.labels("hit" if hit else "miss").inc()
        if hit:
            yield Answer.from_cache(output, start.attempt)
            return
        try:
            answer = await self._executor.execute(start, request, graph, lease_lost=lease_lost)
            yield answer
        except BaseException:
            await self._cache.unlock(key, owner)
            raise
        if answer.status != "success":
            await self._cache.unlock(key, owner)
            return
        ttl = self._cache_ttl(request, graph)
        assert ttl is not None
        try:  # the result is out: caching it is best effort, never a reason to rerun
            await self._cache.store(key, owner, dumps(answer.output), ttl)
        except (DependencyUnavailable, TypeError) as exc:
            log.warning("could not cache the result of %s: %s", request.request_id, exc)
            await self._cache.unlock(key, owner)

    def _cache_ttl(self, request: Request, graph: Any) -> float | None:
        if request.cache is not None:
            return request.cache.ttl_s
        return self._executor.options(graph).cache_ttl_s

    def _cache_key(self, record: Record, request: Request, graph: Any) -> str | None:
        """The cache key, or None when the request is not cacheable (threads, commands)."""
        if request.thread_id is not None or request.command is not None:
            return None
        if self._cache_ttl(request, graph) is None:
            return None
        version = self._executor.options(graph).version or self._structure_hash(
            request.graph, graph
        )
        config = request.config.model_dump(mode="json")
        if request.context is not None:  # the graph's answer may depend on it
            config["context"] = request.context
        for stop in ("interrupt_before", "interrupt_after"):
            if getattr(request, stop) is not None:
                config[stop] = getattr(request, stop)
        principal = header(record, HEADER_PRINCIPAL)
        if principal is not None:  # a graph may answer each caller differently
            config["principal"] = decode_principal(principal)
        return cache_key(self.settings.topic_prefix, request.graph, version, request.input, config)

    def _structure_hash(self, name: str, graph: Any) -> str:
        cached = self._versions.get(name)
        if cached is None or cached[0] is not graph:
            drawable = graph.get_graph()
            shape = {
                "nodes": sorted(drawable.nodes),
                "edges": sorted((e.source, e.target, e.conditional) for e in drawable.edges),
            }
            cached = (graph, hashlib.sha256(dumps(shape)).hexdigest()[:16])
            self._versions[name] = cached
        return cached[1]

    async def _through_outage(self, operation: Callable[[], Awaitable[None]]) -> None:
        """Run ``operation``, waiting out dependency outages (unless the worker stops)."""
        while True:
            try:
                await operation()
                return
            except DependencyUnavailable as exc:
                if self._gate is None or self._stopping():
                    raise
                self._gate.report(exc)
                if not await self._gate.wait_healthy(self._stopping):
                    raise

    async def _claim(
        self, record: Record, request: Request, owner: str, answered: bool
    ) -> Claim:
        """Acquire the lease (a turn on a thread: and the thread's, in the same round trip),
        waiting while another live worker holds the request_id, or while another turn runs on
        the thread or an earlier one waits for it (its ``multitask_strategy`` applies then).

        The wait blocks this key only (it is the key's task), and retries when the thread is
        announced free, else after a backoff doubling from 50 ms to 1 s. A request already
        ``answered`` (rejected: its thread is busy) claims its request_id only."""
        rid = request.request_id
        if request.thread_id is not None and record.key != request.thread_id.encode():
            self._misskeyed(record, request)
        turn = self._turn(record, request) if not answered else None
        settle_until = 0.0
        if turn is not None and turn.mode == "settle":
            settle_until = min(turn.timestamp_ms / 1000, time.time()) + (
                self.settings.thread_order_window_ms / 1000)
        delay, waited, stopped = 0.05, False, set[str]()
        while True:
            if turn is not None and turn.mode == "settle" and time.time() >= settle_until:
                turn = Turn(turn.thread_id, turn.timestamp_ms, "run")
            claim = await self._claims.acquire(rid, owner, turn)
            if claim.state not in ("busy", "wait"):
                if claim.thread_busy is not None:
                    self.metrics.multitask.labels("reject").inc()
                return claim
            if self._stopping():
                raise LeftForRedelivery(
                    f"{rid} is still running on {claim.detail}; left for redelivery"
                    if claim.state == "busy" else
                    f"{rid} waits for its thread {request.thread_id!r}; left for redelivery"
                )
            if claim.state == "busy":
                self.metrics.lease_waits.inc()
                await asyncio.sleep(delay)
            else:
                assert turn is not None
                if not waited and claim.detail != "settle":
                    waited = True
                    self.metrics.thread_waits.inc()
                if turn.mode == "stop":
                    await self._stop_turns_ahead(request, claim, stopped)
                wait = delay
                if turn.mode == "settle":
                    wait = max(0.0, min(delay, settle_until - time.time()))
                task = asyncio.current_task()
                assert task is not None
                self._waiting.add(task)
                try:
                    await self._claims.wait_for_thread(turn.thread_id, wait)
                finally:
                    self._waiting.discard(task)
            delay = min(delay * 2, 1.0)

    def waiting_for_threads(self) -> set[asyncio.Task[Any]]:
        """The tasks whose request waits for its thread right now, holding nothing (no lease
        taken; its turn keeps its place): on a revoke they are cancelled at once rather than
        given the grace, so the partition moves (and the turn is redelivered) without delay."""
        return set(self._waiting)

    def _turn(self, record: Record, request: Request) -> Turn | None:
        """The turn this request claims on its thread (None without a thread)."""
        thread = request.thread_id
        if thread is None:
            return None
        stamp = record.timestamp if record.timestamp and record.timestamp > 0 else None
        timestamp_ms = stamp if stamp is not None else int(time.time() * 1000)
        strategy = request.multitask_strategy
        if strategy == "reject":
            return Turn(thread, timestamp_ms, "reject")
        if strategy in ("interrupt", "rollback"):
            return Turn(thread, timestamp_ms, "stop")
        misskeyed = record.key != thread.encode()
        window = self.settings.thread_order_window_ms
        return Turn(thread, timestamp_ms, "settle" if misskeyed and window > 0 else "run")

    async def _stop_turns_ahead(self, request: Request, claim: Claim, stopped: set[str]) -> None:
        """``interrupt``/``rollback`` on a thread whose run (or earlier turns) are on other
        workers: stop them through the cancel marker and its announcement, as a cancel does."""
        strategy = request.multitask_strategy
        assert strategy in ("interrupt", "rollback")
        ahead = [rid for rid in (claim.thread_busy, *claim.ahead)
                 if rid is not None and rid not in stopped]
        if not ahead:
            return
        if not stopped:
            self.metrics.multitask.labels(strategy).inc()
        why = (f"cancelled: request {request.request_id!r} arrived on thread "
               f"{request.thread_id!r} with multitask_strategy {strategy!r}")
        for rid in ahead:
            await self._claims.mark_cancel(rid, CancelMarker(strategy, why, cause="multitask"))
            self._executor.stops.ask(rid, Stop(strategy, "multitask", why))
            stopped.add(rid)
        log.info("%s (%s) stops %s on other workers", request.request_id, strategy,
                 ", ".join(ahead))

    def _misskeyed(self, record: Record, request: Request) -> None:
        """A turn on a thread keyed by something else than its thread_id: counted, and
        warned about at most once a minute (keyed by request_id, every key is new)."""
        self.metrics.misskeyed.inc()
        self._misskeyed_unwarned += 1
        now = time.monotonic()
        if now - self._misskeyed_warned < _MISSKEYED_WARN_EVERY_S:
            return
        key = record.key.decode(errors="replace")[:80] if record.key is not None else None
        guard = ("the thread lease keeps its turns one at a time and in order"
                 if not isinstance(self._claims, LocalClaims)
                 else "without Redis (GRAPHWIRE_DEDUP off) nothing keeps them from running at "
                 "once on different workers")
        log.warning(
            "%d request(s) on a thread were not keyed by their thread_id (e.g. %s on thread "
            "%r had key %r): its turns land on different partitions; %s, at some latency; "
            "produce them with key = thread_id", self._misskeyed_unwarned, request.request_id,
            request.thread_id, key, guard,
        )
        self._misskeyed_warned, self._misskeyed_unwarned = now, 0


def _log_without_run(rid: str, answer: Answer) -> None:
    if answer.republished:
        log.warning("%s: publishing again the %s result an earlier start kept", rid,
                    answer.status)
    elif answer.error is not None:
        level = logging.ERROR if answer.status == "error" else logging.INFO  # error: poison
        log.log(level, "%s %s without running: %s", rid, answer.status, answer.error[1])


def _cancel_stop(marker: CancelMarker) -> Stop:
    action: Literal["interrupt", "rollback"] = (
        "rollback" if marker.action == "rollback" else "interrupt")
    if marker.cause == "multitask" and marker.reason:  # a later turn on another worker
        return Stop(action, "multitask", marker.reason)
    reason = f" ({marker.reason})" if marker.reason else ""
    return Stop(action, "cancel", f"cancelled by a cancel request{reason}")


def _peek_request_id(record: Record) -> str | None:
    """The request_id of a queued request message, None when it has none (no JSON)."""
    try:
        body = loads(record.value or b"")
    except ValueError:
        return None
    rid = body.get("request_id") if isinstance(body, dict) else None
    return rid if isinstance(rid, str) else None
