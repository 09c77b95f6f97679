"""What a thread holds for a request about to run: what an earlier start left (finished, stopped
between steps, at an interrupt or a breakpoint), whether there is anything to continue or
resume, and the outcome of a checkpoint read PostgreSQL refused.

Reads only: the RunExecutor (``graphrun.py``) decides what to do with the answers.
"""

from __future__ import annotations

from typing import Any

from langgraph._internal._constants import INTERRUPT

from graphwire.graphs.execution import RunOutcome, interrupt_dicts, where_stopped
from graphwire.processors.runner.failures import data_error, refusal
from graphwire.processors.runner.pgsaver import CheckpointDatabaseUnavailable, is_outage
from graphwire.topics.errors import DependencyUnavailable, UnstorableRequest
from graphwire.topics.models import Request


async def earlier_attempt(
    graph: Any, config: dict[str, Any], request: Request
) -> RunOutcome | None:
    """What an earlier attempt of ``request_id`` left on its thread, if anything.

    ``unfinished`` (stopped between steps), ``success`` (the graph ended: its final state)
    or ``interrupted``; None when the thread's last checkpoint is not this request's.
    """
    state = await checkpointed_state(graph, config)
    if (
        state is None
        or not state.metadata
        or state.metadata.get("graphwire_request_id") != request.request_id
    ):
        return None
    if state.interrupts:
        found = interrupt_dicts(state.interrupts)
        next_nodes, _ = await where_stopped(graph, config, found, None)
        return RunOutcome(status="interrupted", interrupts=found, next=next_nodes)
    stopped = await at_breakpoint(graph, config, state, request)
    if stopped is not None:  # a redelivery never runs past a breakpoint
        return RunOutcome(status="interrupted", next=list(state.next), breakpoint=stopped)
    # ``next`` alone misleads: a step whose tasks finished (their writes saved) but whose
    # next checkpoint was not written yet shows no ``next``. Any task left means unfinished.
    if state.next or state.tasks:
        return RunOutcome(status="unfinished")
    return RunOutcome(status="success", output=state.values)


async def at_breakpoint(
    graph: Any, config: dict[str, Any], state: Any, request: Request
) -> str | None:
    """``before``/``after`` when the thread's last checkpoint is where a run of ``request``
    stops at a breakpoint (LangGraph's ``should_interrupt``: a channel changed since the last
    breakpoint, and a node about to run, or one that just ran, is a breakpoint); else None."""
    if not state.next:
        return None
    found = await graph.checkpointer.aget_tuple(config)
    if found is None or not updated_since_breakpoint(found.checkpoint):
        return None
    before = request.interrupt_before or graph.interrupt_before_nodes
    if before == "*" or set(state.next) & set(before or ()):
        return "before"
    after = request.interrupt_after or graph.interrupt_after_nodes
    if not after or state.parent_config is None:
        return None
    parent = await graph.aget_state(state.parent_config)
    if after == "*" or set(parent.next) & set(after):
        return "after"
    return None


def updated_since_breakpoint(checkpoint: Any) -> bool:
    """A channel changed since the thread last stopped at a breakpoint (LangGraph's test)."""
    versions = checkpoint["channel_versions"]
    seen = checkpoint["versions_seen"].get(INTERRUPT, {})
    kind: Any = type(next(iter(versions.values()), None))
    null = kind()
    return any(version > seen.get(channel, null) for channel, version in versions.items())


async def checkpointed_state(graph: Any, config: dict[str, Any]) -> Any:
    """The thread's state snapshot; None without a checkpointer."""
    if graph.checkpointer is None:
        return None
    try:
        return await graph.aget_state(config)
    except Exception as exc:
        raise read_failed(exc) from exc


def read_failed(exc: Exception) -> UnstorableRequest:
    """A failed checkpoint read: ``DependencyUnavailable`` (raised) when PostgreSQL did not
    answer; ``UnstorableRequest`` when it refused the request's data (the caller rejects the
    request); anything else is ours, raised as it is (an internal error, dead-lettered)."""
    if isinstance(exc, CheckpointDatabaseUnavailable) or is_outage(exc):
        raise DependencyUnavailable(f"cannot read the checkpoint: {exc}") from exc
    refused = data_error(exc)
    if refused is None:
        raise exc
    return UnstorableRequest(refusal(refused))


def unstorable(exc: UnstorableRequest) -> RunOutcome:
    """The ``rejected`` outcome of a request whose data PostgreSQL refused."""
    return RunOutcome(status="rejected", error=("UnstorableRequest", str(exc)))


async def nothing_to_continue(
    graph: Any, config: dict[str, Any], request: Request
) -> RunOutcome | None:
    """A ``rejected`` outcome when ``request`` continues (null input) or resumes a thread
    that has nothing to continue; None when it may run."""
    resume = request.command is not None and "resume" in request.command
    if graph.checkpointer is None or not (resume or (
            request.input is None and request.command is None)):
        return None
    try:
        state = await checkpointed_state(graph, config)
    except UnstorableRequest as exc:
        return unstorable(exc)
    thread = request.thread_id
    if state is None or not state.config or not state.created_at:
        what = "resume" if resume else "continue (input null)"
        return RunOutcome(status="rejected", error=("NothingToContinue", (
            f"thread {thread!r} has no state to {what}: start it with an 'input'")))
    if resume and not state.interrupts and not state.next:
        return RunOutcome(status="rejected", error=("NothingToResume", (
            f"thread {thread!r} has no pending interrupt and is not at a breakpoint: "
            "nothing to resume; send an 'input' to start a new run")))
    return None


async def unfinished(graph: Any, config: dict[str, Any]) -> bool:
    """True when the thread's last run stopped between steps (not at an interrupt)."""
    state = await checkpointed_state(graph, config)
    return state is not None and bool(state.next) and not state.interrupts
