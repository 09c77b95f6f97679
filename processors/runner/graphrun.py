"""RunExecutor: one request's graph run, from its run_started to its ``Answer``.

Attaches the PostgreSQL checkpointer, resumes or reuses what an earlier attempt of the same
request left on its thread (or forks from a checkpoint), retries retriable failures with
backoff, and stops at a step boundary when cancelled or asked to drain. It publishes the run's
events; ``OutputPublisher.finish`` publishes its answer. Idempotency and caching around it are
the RequestProcessor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from langgraph._internal._constants import CONFIG_KEY_STRICT_RESUME
from langgraph.cache.base import BaseCache
from langgraph.runtime import RunControl

from graphwire.graphs.effects import bind_effects
from graphwire.graphs.execution import (
    RunOutcome,
    inline_sync_nodes,
    is_retriable,
    run_graph,
)
from graphwire.graphs.registry import GraphOptions
from graphwire.graphs.replay import finished_steps
from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner import tracing
from graphwire.processors.runner.answer import Addressee, Answer
from graphwire.processors.runner.callbacks import node_timer, run_callbacks
from graphwire.processors.runner.checkpoints import CheckpointStore
from graphwire.processors.runner.claims import LeaseLost
from graphwire.processors.runner.control import RunStops, Stop, delete_run_checkpoints
from graphwire.processors.runner.failures import data_error, refusal
from graphwire.processors.runner.identity import auth_configurable
from graphwire.processors.runner.nodecache import NodeCaches
from graphwire.processors.runner.noderetry import retried_by_node
from graphwire.processors.runner.pgsaver import (
    FRESH_THREAD,
    CheckpointDatabaseUnavailable,
    CheckpointDataRefused,
    GroupCommitSaver,
    Pipelined,
)
from graphwire.processors.runner.pgstore import store_attachment
from graphwire.processors.runner.publisher import OutputPublisher, Record, Start, header
from graphwire.processors.runner.threadstate import (
    earlier_attempt,
    nothing_to_continue,
    read_failed,
    unfinished,
    unstorable,
)
from graphwire.processors.settings import Settings
from graphwire.topics.codec import (
    HEADER_PRINCIPAL,
    HEADER_TRACEPARENT,
    TOP_NS,
    decode_principal,
)
from graphwire.topics.errors import DependencyUnavailable, LeftForRedelivery, UnstorableRequest
from graphwire.topics.models import Request

log = logging.getLogger(__name__)

_REPLAYED = {"replayed": True}


@dataclass(frozen=True, slots=True)
class _StartingPoint:
    """Where a start begins its first try."""

    earlier: RunOutcome | None
    """What an earlier start left (a finished run is reused, nothing runs), a fork's refusal,
    or None."""
    input: Any
    command: dict[str, Any] | None
    config: dict[str, Any]
    """The first try's config (a fork's checkpoint, or a fresh thread's)."""
    resumed: bool


class RunExecutor:
    """Runs graphs for requests and publishes what they produce."""

    def __init__(
        self,
        settings: Settings,
        metrics: RunnerMetrics,
        out: OutputPublisher,
        *,
        checkpoints: CheckpointStore | None,
        stopping: Callable[[], bool],
        node_cache: BaseCache[Any] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._out = out
        self._checkpoints = checkpoints
        self._node_caches = NodeCaches(node_cache)
        self._stopping = stopping
        self._durable_graphs: dict[str, tuple[Any, Any]] = {}
        self._controls: set[RunControl] = set()
        self._controls_by_request: dict[str, RunControl] = {}
        self._graph_options: dict[int, tuple[Any, GraphOptions]] = {}
        self.stops = RunStops()
        """Cancels and double-texting stops asked for on this worker."""

    def options(self, graph: Any) -> GraphOptions:
        """The graph's declared options, read once per graph object (which is then prepared:
        its sync nodes made inline where the graph or ``GRAPHWIRE_SYNC_NODES`` says so)."""
        options = self._graph_options.get(id(graph))
        if options is None or options[0] is not graph:
            options = (graph, GraphOptions.of(graph))
            self._graph_options[id(graph)] = options
            where = self.settings.sync_nodes
            if where == "inline" or (where == "declared" and options[1].sync_nodes == "inline"):
                changed = inline_sync_nodes(graph)
                log.debug("sync nodes %s of graph %s run inline", changed, graph.name)
        return options[1]

    def _durable(self, name: str, graph: Any) -> Any:
        """The graph with what the worker attaches (once per graph): the PostgreSQL
        checkpointer and the long-term memory store, the shared node cache."""
        durable = self._durable_graphs.get(name)
        if durable is None or durable[0] is not graph:
            update: dict[str, Any] = {}
            if self._checkpoints is not None and self._checkpoints.saver is not None:
                update["checkpointer"] = self._checkpoints.saver
                update |= store_attachment(name, graph, self._checkpoints.store)
            if (cache := self._node_caches.for_graph(graph)) is not None:
                update["cache"] = cache
            durable = (graph, graph.copy(update=update) if update else graph)
            self._durable_graphs[name] = durable
        return durable[1]

    async def execute(
        self,
        start: Start,
        request: Request,
        graph: Any,
        *,
        lease_lost: Callable[[], bool] = lambda: False,
    ) -> Answer:
        """Run ``request`` to its answer (in an OpenTelemetry span when on); ``finish``
        publishes it."""
        with tracing.run_span(request.graph, request.request_id,
                              header(start.record, HEADER_TRACEPARENT)) as span:  # None when off
            answer = await self._execute(start, request, graph, lease_lost)
            if span is not None:
                span.set_attribute("graphwire.status", answer.status)
            return answer

    async def _execute(
        self, start: Start, request: Request, graph: Any, lease_lost: Callable[[], bool]
    ) -> Answer:
        graph = self._durable(request.graph, graph)
        config = self._config(start.record, request)
        point = await self._starting_point(graph, config, request, start.attempt)
        outcome, attempts = await self._tries(start, request, graph, config, point)
        return await self._stop(graph, request, outcome, attempts, lease_lost)

    def _config(self, record: Record, request: Request) -> dict[str, Any]:
        """The LangGraph config of the run: its thread (the request_id when it has none), the
        caller's identity, limits, tags and callbacks."""
        rid = request.request_id
        configurable = {**request.config.configurable, "thread_id": request.thread_id or rid}
        principal = header(record, HEADER_PRINCIPAL)  # checked at intake
        if principal is not None:
            configurable.update(auth_configurable(decode_principal(principal)))
        config: dict[str, Any] = {
            "configurable": configurable,
            "metadata": {**request.config.metadata, "graphwire_request_id": rid},
        }
        if request.config.recursion_limit is not None:  # else the graph's, or LangGraph's
            config["recursion_limit"] = request.config.recursion_limit
        if self.settings.run_callbacks:
            config["callbacks"] = [run_callbacks(self.metrics, request.graph)]
        if request.config.tags:
            config["tags"] = request.config.tags
        if request.config.max_concurrency:
            config["max_concurrency"] = request.config.max_concurrency
        if request.command is not None and "resume" in request.command:
            # a resume that matches no pending interrupt is refused before anything is
            # written (LangGraph's UnknownInterruptError), not run against the wrong question
            configurable[CONFIG_KEY_STRICT_RESUME] = True
        return config

    async def _starting_point(
        self, graph: Any, config: dict[str, Any], request: Request, attempt: int
    ) -> _StartingPoint:
        """Where this start begins: resume what an earlier start left, fork from a
        checkpoint, or run fresh.

        A redelivery (attempt > 1) looks at what the earlier attempt left on the thread:
        unfinished -> continue from the checkpoint; finished -> reuse it, run nothing."""
        try:
            earlier = (await earlier_attempt(graph, config, request)
                       if attempt > 1 else None)
        except UnstorableRequest as exc:
            earlier = unstorable(exc)
        resumed = earlier is not None and earlier.status != "rejected"
        payload_input, command = (None, None) if resumed else (request.input, request.command)
        fork_config = None
        if request.checkpoint_id is not None and earlier is None:  # time travel: fork there
            fork_config, command, earlier = await self._fork(graph, config, request, command)
        # Attempt 1 of a stateless request under dedup needs no checkpoint read: its thread is
        # its request_id, and anything on it would come from an earlier delivery of the same
        # request, which the Redis claim would have numbered attempt > 1 (after a done marker
        # expired, forget_later already deleted the finished thread). Retries within this
        # delivery and every delivery > 1 still read. Without dedup every delivery says
        # attempt 1, so nothing is skipped there.
        if earlier is None and not resumed and request.checkpoint_id is None:
            earlier = await nothing_to_continue(graph, config, request)
        first_config = fork_config or config
        if attempt == 1 and request.thread_id is None and self.settings.dedup:
            first_config = {**config, "configurable": {**config["configurable"],
                                                       FRESH_THREAD: True}}
        return _StartingPoint(earlier, payload_input, command, first_config, resumed)

    async def _tries(
        self, start: Start, request: Request, graph: Any, config: dict[str, Any],
        point: _StartingPoint,
    ) -> tuple[RunOutcome, int]:
        """Try the graph from ``point``, again after a retriable failure (the failed step only,
        when it checkpoints), until an outcome stands; returns it and the attempts it took."""
        to = Addressee.of(request)
        options = self.options(graph)
        max_attempts = request.max_attempts or options.max_attempts or self.settings.max_attempts
        attempt, payload_input, command = start.attempt, point.input, point.command
        await self._run_started(start, to, request, attempt, point.resumed)
        if point.resumed:
            await self._replay(start, to, request, graph, config)
        with self._controlled(request.request_id, graph) as control:
            if point.earlier is not None and point.earlier.status != "unfinished":
                return point.earlier, attempt  # the crash came after the graph ended
            config_now = point.config
            while True:
                outcome = await self._try(start, to, request, graph, config_now, payload_input,
                                          command, control, options)
                if outcome.status != "error" or attempt >= max_attempts or not is_retriable(
                        outcome.exception) or _node_retried(graph, request, outcome):
                    return outcome, attempt
                await self._back_off(request.request_id, attempt, outcome)
                attempt, config_now = attempt + 1, config
                try:
                    resumed = await unfinished(graph, config)
                except UnstorableRequest as exc:
                    return unstorable(exc), attempt
                if resumed:  # retry the failed step only
                    payload_input, command = None, None
                start.positions.next_try()
                await self._run_started(start, to, request, attempt, resumed)

    async def _run_started(
        self, start: Start, to: Addressee, request: Request, attempt: int, resumed: bool
    ) -> None:
        """Every try opens with one, at ``i = 0`` of its own base."""
        timeout_s, capped = self._timeout(request)
        data: dict[str, Any] = {"thread_id": request.thread_id, "worker": start.worker,
                                "attempt": attempt, "resumed": resumed, "timeout_s": timeout_s}
        if capped:  # the request asked for longer than this worker allows
            data["timeout_capped"] = {"asked": request.timeout_s,
                                      "max_run_s": self.settings.max_run_s}
        if request.checkpoint_id is not None:  # a fork: recorded with the run's events
            data["forked_from"] = request.checkpoint_id
        await self._out.emit(start, to, "run_started", None, data)

    async def _replay(
        self, start: Start, to: Addressee, request: Request, graph: Any, config: dict[str, Any]
    ) -> None:
        """A resumed start re-emits the ``node``/``values`` events of the steps earlier starts
        finished, marked ``replayed``: the worker that ran them may have died before the
        broker acknowledged them (their checkpoint was written first). In-process retries
        need none: the earlier try's events are in this worker's outbox."""
        try:
            events = await finished_steps(graph, config, request.request_id, set(request.stream))
        except Exception as exc:
            refused = read_failed(exc)  # an outage is raised: the start waits it out
            log.warning("no replay of %s's finished steps: %s", request.request_id, refused)
            return
        for type_, node, data in events:
            await self._out.emit(start, to, type_, node, data, TOP_NS, _REPLAYED)

    async def replay_republished(
        self, start: Start, request: Request, graph: Any, answer: Answer
    ) -> Answer:
        """A start that publishes again the result an earlier start kept: its ``run_started``,
        then the replays of the run's finished steps (that start may have died before the
        broker acknowledged them); the answer then owes only its ``run_finished``."""
        graph = self._durable(request.graph, graph)
        if graph.checkpointer is None:
            return answer
        to = Addressee.of(request)
        await self._out.emit(start, to, "run_started", None,
                             answer.run_started(request.thread_id, start.worker, start.attempt))
        await self._replay(start, to, request, graph, self._config(start.record, request))
        return dataclasses.replace(answer, events="run_finished")

    @contextlib.contextmanager
    def _controlled(self, request_id: str, graph: Any) -> Iterator[RunControl]:
        """The run's ``RunControl``, registered for cancels, lease loss and (when another
        worker could resume the run) shutdown while the run lasts."""
        control = RunControl()
        if graph.checkpointer is not None:  # shutdown stops only runs another worker resumes
            self._controls.add(control)
        self._controls_by_request[request_id] = control
        self.stops.started(request_id, control)  # a cancel asked for already stops it at once
        self.metrics.active.inc()
        try:
            yield control
        finally:
            self.metrics.active.dec()
            self._controls.discard(control)
            self._controls_by_request.pop(request_id, None)
            self.stops.ended(request_id)

    async def _try(
        self, start: Start, to: Addressee, request: Request, graph: Any,
        config: dict[str, Any], payload_input: Any, command: dict[str, Any] | None,
        control: RunControl, options: GraphOptions,
    ) -> RunOutcome:
        """One try of the graph, its outcome classified: a checkpoint database outage is
        raised, a timeout at ``GRAPHWIRE_MAX_RUN_S`` says so, refused data is ``rejected``."""
        rid, thread_id = request.request_id, request.thread_id
        durability = request.durability or options.durability or self.settings.durability
        timeout_s, _capped = self._timeout(request)
        emit = functools.partial(self._out.emit, start, to)

        async def emit_effect(type_: str, node: str | None, data: Any) -> None:
            self.metrics.effects.labels(data["outcome"]).inc()
            await emit(type_, node, data)

        # once() effects journal next to the checkpoints; without them there is nothing to
        # resume, and once() just calls
        journal = None
        if graph.checkpointer is not None and self._checkpoints is not None:
            journal = self._checkpoints.effects
        with bind_effects(journal, thread_id=thread_id or rid, request_id=rid,
                          namespace=self.settings.topic_prefix, emit=emit_effect), \
                _pipelined(graph.checkpointer) as writes:
            outcome = await run_graph(
                graph, input=payload_input, command=command, config=config,
                stream=request.stream, timeout_s=timeout_s, emit=emit,
                durability=durability if graph.checkpointer else None, control=control,
                context=request.context, interrupt_before=request.interrupt_before,
                interrupt_after=request.interrupt_after, subgraphs=request.subgraphs,
                on_node=(node_timer(self.metrics, request.graph)
                         if self.settings.run_callbacks else None),
            )
            # the run's checkpoint writes returned once queued: its end counts once they are in
            failed = await writes.settle() if writes is not None else None
            if failed is not None and outcome.status in ("success", "interrupted"):
                outcome = RunOutcome(status="error", error=(type(failed).__name__, str(failed)),
                                     exception=failed)
        if graph.checkpointer is not None and _is_database_outage(outcome.exception):
            raise DependencyUnavailable(
                f"PostgreSQL (checkpoints) failed during {rid}: {outcome.exception}"
            ) from outcome.exception
        if outcome.status == "timeout" and request.timeout_s != timeout_s:
            return self._timed_out_at_max(request, outcome.exception)
        if isinstance(outcome.exception, CheckpointDataRefused):  # never retried
            return unstorable(UnstorableRequest(refusal(
                data_error(outcome.exception) or outcome.exception)))
        return outcome

    async def _stop(
        self, graph: Any, request: Request, outcome: RunOutcome, attempts: int,
        lease_lost: Callable[[], bool],
    ) -> Answer:
        """The answer of the ended run. Stopped at a step boundary: a cancel is answered
        (rolled back if asked); a drain leaves the request to another worker."""
        rid = request.request_id
        stop = self.stops.get(rid) if outcome.status == "drained" else None
        if stop is not None:
            outcome = await self._cancelled(graph, request, stop)
        if outcome.status == "drained" and lease_lost():
            raise LeaseLost(f"lease on {rid} expired during the run; another worker owns it")
        if outcome.status == "drained":
            raise LeftForRedelivery(
                f"{rid} stopped at a step boundary for shutdown; another worker resumes it "
                "from its checkpoint"
            )
        return Answer.of_run(outcome, attempts, stop)

    def _timeout(self, request: Request) -> tuple[float, bool]:
        """The run's timeout: the request's ``timeout_s`` capped at ``GRAPHWIRE_MAX_RUN_S``
        (also the default); True when that cut what the request asked for."""
        most = self.settings.max_run_s
        if request.timeout_s is None:
            return most, False
        return min(request.timeout_s, most), request.timeout_s > most

    def _timed_out_at_max(self, request: Request, exc: BaseException | None) -> RunOutcome:
        """A timeout at ``GRAPHWIRE_MAX_RUN_S``, with a message that names it."""
        most = self.settings.max_run_s
        asked = ("gave no timeout_s" if request.timeout_s is None
                 else f"asked for timeout_s={request.timeout_s:g}")
        return RunOutcome(status="timeout", error=("Timeout", (
            f"the run took longer than {most:g}s, this worker's GRAPHWIRE_MAX_RUN_S (the request "
            f"{asked}); make the graph faster, split the work, or have the operator raise "
            "GRAPHWIRE_MAX_RUN_S")), exception=exc)

    async def _fork(
        self, graph: Any, config: dict[str, Any], request: Request,
        command: dict[str, Any] | None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, RunOutcome | None]:
        """The config that runs ``request`` from its ``checkpoint_id`` (after applying
        ``command.update`` there, as LangGraph's ``update_state`` does), the command left to
        send, and a ``rejected`` outcome instead when the checkpoint is unknown."""
        checkpoint_id = request.checkpoint_id
        if graph.checkpointer is None:
            return None, command, RunOutcome(status="rejected", error=(
                "InvalidRequest", "checkpoint_id needs checkpoints: this worker runs with "
                "GRAPHWIRE_CHECKPOINTS=false"))
        at = {**config, "configurable": {**config["configurable"], "checkpoint_id": checkpoint_id}}
        try:
            found = await graph.checkpointer.aget_tuple(at)
        except Exception as exc:
            return None, command, unstorable(read_failed(exc))
        if found is None:
            return None, command, RunOutcome(status="rejected", error=(
                "UnknownCheckpoint",
                f"thread {request.thread_id!r} has no checkpoint {checkpoint_id!r}: pick one "
                f"from `graphwire history {request.thread_id} --graph {request.graph}`"))
        self.metrics.forks.inc()
        if command and "update" in command:
            at = await graph.aupdate_state(at, command["update"])
            at = {**config, "configurable": {**config["configurable"], **at["configurable"]}}
            command = {k: v for k, v in command.items() if k != "update"} or None
        return at, command, None

    async def _cancelled(self, graph: Any, request: Request, stop: Stop) -> RunOutcome:
        """A run stopped at a step boundary by ``stop``: roll its checkpoints back if asked."""
        rid = request.request_id
        if stop.action == "rollback" and graph.checkpointer is not None:
            await self.roll_back(request)
        log.info("%s cancelled (%s, %s)", rid, stop.action, stop.cause)
        return RunOutcome(
            status="cancelled", error=("Cancelled", stop.message(request.thread_id, ran=True))
        )

    async def roll_back(self, request: Request) -> None:
        """Delete the checkpoints ``request`` wrote on its thread (idempotent)."""
        if self._checkpoints is None or self._checkpoints.saver is None:
            return
        thread = request.thread_id or request.request_id
        try:
            deleted = await delete_run_checkpoints(
                self._checkpoints.saver, thread, request.request_id
            )
        except Exception as exc:
            if data_error(exc) is None:
                raise DependencyUnavailable(
                    f"could not roll back {request.request_id} on PostgreSQL: {exc}"
                ) from exc
            # PostgreSQL refuses the thread's name itself: it never stored a checkpoint under
            # it, so there is nothing to delete (retrying would stop the partition for good)
            log.warning("nothing to roll back for %s: %s", request.request_id, refusal(exc))
            return
        log.info("rolled back %s: %d checkpoints of thread %s deleted", request.request_id,
                 deleted, thread)

    async def _back_off(self, request_id: str, attempt: int, outcome: RunOutcome) -> None:
        """Sleep before retry ``attempt + 1`` (exponential, jittered); give up on shutdown."""
        s = self.settings
        delay = min(s.retry_backoff_max_s, s.retry_backoff_s * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)
        self.metrics.retries.inc()
        log.warning(
            "%s attempt %d failed (%s); retrying in %.2fs",
            request_id,
            attempt,
            outcome.error and outcome.error[0],
            delay,
        )
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self._stopping():
                raise LeftForRedelivery(f"{request_id}: shutdown during retry backoff")
            await asyncio.sleep(min(0.1, deadline - time.monotonic()))

    def drain_request(self, request_id: str, reason: str) -> None:
        """Ask one run to stop at its next step boundary."""
        control = self._controls_by_request.get(request_id)
        if control is not None:
            control.request_drain(reason)

    def drain(self) -> None:
        """Ask every checkpointed run to stop at its next step boundary (on shutdown)."""
        for control in self._controls:
            control.request_drain("shutdown")



def _node_retried(graph: Any, request: Request, outcome: RunOutcome) -> bool:
    """True when the node that failed had its own RetryPolicy: LangGraph retried it already,
    so the runner does not (its retries are for the other retriable failures)."""
    node = retried_by_node(graph, outcome.exception)
    if node is not None:
        log.info("%s failed in node %s, which has its own RetryPolicy: not retried by the "
                 "runner", request.request_id, node)
    return node is not None


@contextlib.contextmanager
def _pipelined(checkpointer: Any) -> Iterator[Pipelined | None]:
    """The run's writes pipelined by a ``GroupCommitSaver`` (None for any other saver)."""
    if isinstance(checkpointer, GroupCommitSaver):
        with checkpointer.pipelined() as writes:
            yield writes
    else:
        yield None


def _is_database_outage(exc: BaseException | None) -> bool:
    """Connection-level failures of the checkpointer's PostgreSQL (not the graph's own bugs):
    GroupCommitSaver wraps every one it sees in CheckpointDatabaseUnavailable."""
    return isinstance(exc, CheckpointDatabaseUnavailable)
