"""RunExecutor: one request's graph run, from run_started to an acknowledged result.

Attaches the PostgreSQL checkpointer, resumes or reuses what an earlier attempt of the same
request left on its thread, retries retriable failures with backoff, stops at a step boundary
when asked to drain, and publishes events and the result. Idempotency and caching around it
are the RequestProcessor's.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from langgraph.runtime import RunControl

from graphwire.graphs.effects import bind_effects
from graphwire.graphs.execution import RunOutcome, inline_sync_nodes, is_retriable, run_graph
from graphwire.graphs.registry import GraphOptions
from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner import tracing
from graphwire.processors.runner.callbacks import RunCallbacks
from graphwire.processors.runner.checkpoints import CheckpointStore
from graphwire.processors.runner.control import RunStops, Stop, delete_run_checkpoints
from graphwire.processors.runner.dedup import LeaseLost
from graphwire.processors.runner.failures import data_error, refusal
from graphwire.processors.runner.identity import auth_configurable
from graphwire.processors.runner.pgsaver import (
    FRESH_THREAD,
    CheckpointDatabaseUnavailable,
    CheckpointDataRefused,
    is_outage,
)
from graphwire.processors.runner.publisher import (
    Keep,
    OutputPublisher,
    Record,
    header,
    trace_headers,
)
from graphwire.processors.settings import Settings
from graphwire.topics.codec import (
    HEADER_PRINCIPAL,
    HEADER_TRACEPARENT,
    decode_principal,
    event_dict,
    result_dict,
)
from graphwire.topics.errors import DependencyUnavailable, UnstorableRequest
from graphwire.topics.models import Request
from graphwire.topics.positions import event_position

log = logging.getLogger(__name__)


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
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._out = out
        self._checkpoints = checkpoints
        self._stopping = stopping
        self._events_topic = settings.topics.events
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
        """The graph with the PostgreSQL checkpointer attached (once per graph)."""
        if self._checkpoints is None or self._checkpoints.saver is None:
            return graph
        durable = self._durable_graphs.get(name)
        if durable is None or durable[0] is not graph:
            durable = (graph, graph.copy(update={"checkpointer": self._checkpoints.saver}))
            self._durable_graphs[name] = durable
        return durable[1]

    async def execute(
        self,
        record: Record,
        request: Request,
        graph: Any,
        started: float,
        *,
        attempt: int,
        lease_lost: Callable[[], bool] = lambda: False,
        keep_result: Keep | None = None,
    ) -> tuple[RunOutcome, str | None]:
        """Run ``request`` to its outcome and publish it (in an OpenTelemetry span when on)."""
        with tracing.run_span(request.graph, request.request_id,
                              header(record, HEADER_TRACEPARENT)) as span:  # None when off
            outcome = await self._execute(
                record, request, graph, started, attempt, lease_lost, keep_result
            )
            if span is not None:
                span.set_attribute("graphwire.status", outcome[0].status)
            return outcome

    async def _execute(
        self,
        record: Record,
        request: Request,
        graph: Any,
        started: float,
        attempt: int,
        lease_lost: Callable[[], bool],
        keep_result: Keep | None = None,
    ) -> tuple[RunOutcome, str | None]:
        rid = request.request_id
        key = rid.encode()
        headers = trace_headers(record)
        outbox = self._out.outbox()
        events_topic = self._events_topic
        metadata = request.metadata
        thread_id = request.thread_id
        # Positions are per try (topics/positions.py): this start's number from the claim,
        # the retry within it, the event within the try. Never a number an earlier try used.
        delivery, try_index, index = attempt, 0, 0

        async def emit(type_: str, node: str | None, data: Any) -> None:
            nonlocal index
            seq = event_position(delivery, try_index, index)
            event = event_dict(rid, seq, type_, request.graph, node, data, metadata)
            index += 1
            self.metrics.event_published(type_)
            await outbox.send(events_topic, self._out.encode(event, "data"), key, headers)

        async def emit_effect(type_: str, node: str | None, data: Any) -> None:
            self.metrics.effects.labels(data["outcome"]).inc()
            await emit(type_, node, data)

        timeout_s, capped = self._timeout(request)

        async def run_started(resumed: bool) -> None:
            """Every try opens with one, at ``i = 0`` of its own base."""
            data: dict[str, Any] = {"thread_id": thread_id, "worker": self.settings.worker_id,
                                    "attempt": attempt, "resumed": resumed,
                                    "timeout_s": timeout_s}
            if capped:  # the request asked for longer than this worker allows
                data["timeout_capped"] = {"asked": request.timeout_s,
                                          "max_run_s": self.settings.max_run_s}
            if request.checkpoint_id is not None:  # a fork: recorded with the run's events
                data["forked_from"] = request.checkpoint_id
            await emit("run_started", None, data)

        graph = self._durable(request.graph, graph)
        configurable = {**request.config.configurable, "thread_id": thread_id or rid}
        principal = header(record, HEADER_PRINCIPAL)  # checked at intake
        if principal is not None:
            configurable.update(auth_configurable(decode_principal(principal)))
        config: dict[str, Any] = {
            "configurable": configurable,
            "recursion_limit": request.config.recursion_limit,
            "metadata": {"graphwire_request_id": rid},
        }
        if self.settings.run_callbacks:
            config["callbacks"] = [RunCallbacks(self.metrics, request.graph)]
        if request.config.tags:
            config["tags"] = request.config.tags
        if request.config.max_concurrency:
            config["max_concurrency"] = request.config.max_concurrency
        options = self.options(graph)
        max_attempts = request.max_attempts or options.max_attempts or self.settings.max_attempts
        durability = request.durability or options.durability or self.settings.durability
        payload_input, command = request.input, request.command
        # A redelivery (attempt > 1) looks at what the earlier attempt left on the thread:
        # unfinished -> continue from the checkpoint; finished -> reuse it, run nothing.
        try:
            earlier = await self._earlier_attempt(graph, config, rid) if attempt > 1 else None
        except UnstorableRequest as exc:
            earlier = _unstorable(exc)
        resumed = earlier is not None and earlier.status != "rejected"
        if resumed:
            payload_input, command = None, None
        fork_config = None
        if request.checkpoint_id is not None and earlier is None:  # time travel: fork from there
            fork_config, command, earlier = await self._fork(graph, config, request, command)
        # Attempt 1 of a stateless request under dedup needs no checkpoint read: its thread is
        # its request_id, and anything on it would come from an earlier delivery of the same
        # request, which the Redis claim would have numbered attempt > 1 (after a done marker
        # expired, forget_later already deleted the finished thread). Retries within this
        # delivery (below) and every delivery > 1 still read. Without dedup every delivery says
        # attempt 1, so nothing is skipped there.
        first_config = fork_config or config
        if attempt == 1 and thread_id is None and self.settings.dedup:
            first_config = {**config, "configurable": {**config["configurable"],
                                                       FRESH_THREAD: True}}
        await run_started(resumed)
        # once() effects journal next to the checkpoints; without them there is nothing to
        # resume, and once() just calls
        journal = None
        if graph.checkpointer is not None and self._checkpoints is not None:
            journal = self._checkpoints.effects
        control = RunControl()
        if graph.checkpointer is not None:  # shutdown stops only runs another worker resumes
            self._controls.add(control)
        self._controls_by_request[rid] = control
        self.stops.started(rid, control)  # a cancel asked for already stops it at once
        self.metrics.active.inc()
        try:
            while True:
                if earlier is not None and earlier.status != "unfinished":
                    outcome = earlier  # the crash came after the graph ended: nothing to run
                    break
                with bind_effects(journal, thread_id=thread_id or rid, request_id=rid,
                                  namespace=self.settings.topic_prefix, emit=emit_effect):
                    outcome = await run_graph(
                        graph,
                        input=payload_input,
                        command=command,
                        config=first_config if try_index == 0 else config,
                        stream=request.stream,
                        timeout_s=timeout_s,
                        emit=emit,
                        durability=durability if graph.checkpointer else None,
                        control=control,
                    )
                if graph.checkpointer is not None and _is_database_outage(outcome.exception):
                    raise DependencyUnavailable(
                        f"PostgreSQL (checkpoints) failed during {rid}: {outcome.exception}"
                    ) from outcome.exception
                if outcome.status == "timeout" and request.timeout_s != timeout_s:
                    outcome = self._timed_out_at_max(request, outcome.exception)
                if isinstance(outcome.exception, CheckpointDataRefused):  # never retried
                    outcome = _unstorable(UnstorableRequest(refusal(
                        data_error(outcome.exception) or outcome.exception)))
                    break
                if not (
                    outcome.status == "error"
                    and attempt < max_attempts
                    and is_retriable(outcome.exception)
                ):
                    break
                await self._back_off(rid, attempt, outcome)
                attempt += 1
                try:
                    resumed = await self._unfinished(graph, config)
                except UnstorableRequest as exc:
                    outcome = _unstorable(exc)
                    break
                if resumed:  # retry the failed step only
                    payload_input, command = None, None
                try_index, index = try_index + 1, 0
                await run_started(resumed)
        finally:
            self.metrics.active.dec()
            self._controls.discard(control)
            self._controls_by_request.pop(rid, None)
            self.stops.ended(rid)
        stop = self.stops.get(rid) if outcome.status == "drained" else None
        if stop is not None:
            outcome = await self._cancelled(graph, request, stop)
        if outcome.status == "drained":
            raise DependencyUnavailable(
                f"{rid} stopped at a step boundary for shutdown; another worker resumes it "
                "from its checkpoint"
            )
        duration_ms = (time.perf_counter() - started) * 1000
        finished: dict[str, Any] = {"status": outcome.status,
                                    "duration_ms": round(duration_ms, 3)}
        if stop is not None:  # a cancel: recorded with the run's events
            finished["cancel"] = {"action": stop.action, "cause": stop.cause}
        await emit("run_finished", None, finished)
        result = result_dict(
            rid,
            request.graph,
            outcome.status,
            output=outcome.output,
            error=outcome.error,
            interrupts=outcome.interrupts,
            thread_id=thread_id,
            attempts=attempt,
            duration_ms=duration_ms,
            metadata=metadata,
        )
        if lease_lost():
            raise LeaseLost(f"lease on {rid} expired during the run; another worker owns it")
        dead_letter = None
        if outcome.status == "error":
            assert outcome.error is not None
            dead_letter = f"graph failed: {outcome.error[1]}"
        elif outcome.status == "rejected":  # an unknown checkpoint_id, data PostgreSQL refused
            assert outcome.error is not None
            dead_letter = outcome.error[1]
        if keep_result is not None:
            await keep_result(self._out.encode(result, "output"), dead_letter)
        await self._out.send_result(outbox, record, key, result, headers, webhook=request.webhook)
        if dead_letter is not None:
            await self._out.send_dead_letter(outbox, record, dead_letter)
            self.metrics.dead_letters.labels("graph_error").inc()
        await outbox.confirm()
        self.metrics.executions.labels(request.graph, outcome.status).inc()
        self.metrics.duration.labels(request.graph).observe(duration_ms / 1000)
        log.debug("run %s in %.1f ms (attempt %d)", outcome.status, duration_ms, attempt)
        return outcome, outbox.acked.get(self._out.results_topic)

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
            return None, command, _unstorable(_read_failed(exc))
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
        self.metrics.run_cancels.labels(stop.action, stop.cause).inc()
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
                raise DependencyUnavailable(f"{request_id}: shutdown during retry backoff")
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

    async def _earlier_attempt(
        self, graph: Any, config: dict[str, Any], request_id: str
    ) -> RunOutcome | None:
        """What an earlier attempt of ``request_id`` left on its thread, if anything.

        ``unfinished`` (stopped between steps), ``success`` (the graph ended: its final state)
        or ``interrupted``; None when the thread's last checkpoint is not this request's.
        """
        state = await _checkpointed_state(graph, config)
        if (
            state is None
            or not state.metadata
            or state.metadata.get("graphwire_request_id") != request_id
        ):
            return None
        if state.interrupts:
            found = [{"id": i.id, "value": i.value} for i in state.interrupts]
            return RunOutcome(status="interrupted", interrupts=found)
        # ``next`` alone misleads: a step whose tasks finished (their writes saved) but whose
        # next checkpoint was not written yet shows no ``next``. Any task left means unfinished.
        if state.next or state.tasks:
            return RunOutcome(status="unfinished")
        return RunOutcome(status="success", output=state.values)

    async def _unfinished(self, graph: Any, config: dict[str, Any]) -> bool:
        """True when the thread's last run stopped between steps (not at an interrupt)."""
        state = await _checkpointed_state(graph, config)
        return state is not None and bool(state.next) and not state.interrupts


async def _checkpointed_state(graph: Any, config: dict[str, Any]) -> Any:
    """The thread's state snapshot; None without a checkpointer."""
    if graph.checkpointer is None:
        return None
    try:
        return await graph.aget_state(config)
    except Exception as exc:
        raise _read_failed(exc) from exc


def _read_failed(exc: Exception) -> UnstorableRequest:
    """A failed checkpoint read: ``DependencyUnavailable`` (raised) when PostgreSQL did not
    answer; ``UnstorableRequest`` when it refused the request's data (the caller rejects the
    request); anything else is ours, raised as it is (an internal error, dead-lettered)."""
    if isinstance(exc, CheckpointDatabaseUnavailable) or is_outage(exc):
        raise DependencyUnavailable(f"cannot read the checkpoint: {exc}") from exc
    refused = data_error(exc)
    if refused is None:
        raise exc
    return UnstorableRequest(refusal(refused))


def _unstorable(exc: UnstorableRequest) -> RunOutcome:
    """The ``rejected`` outcome of a request whose data PostgreSQL refused."""
    return RunOutcome(status="rejected", error=("UnstorableRequest", str(exc)))


def _is_database_outage(exc: BaseException | None) -> bool:
    """Connection-level failures of the checkpointer's PostgreSQL (not the graph's own bugs):
    GroupCommitSaver wraps every one it sees in CheckpointDatabaseUnavailable."""
    return isinstance(exc, CheckpointDatabaseUnavailable)
