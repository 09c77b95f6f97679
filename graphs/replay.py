"""The events of the steps a run finished, rebuilt from its checkpoints.

A worker SIGKILLed after a step's checkpoint was written, but before the broker acknowledged
that step's events, loses those events: the redelivered start resumes after the step. So a
resumed start first re-emits the events of every step that earlier starts finished, marked as
replays. They come from what LangGraph saved: each step's checkpoint holds the writes its
tasks made (the checkpoint's pending writes, stored before the next checkpoint), and the next
checkpoint holds the state after the step. The ``node`` events are LangGraph's own
``map_output_updates`` over those writes (what the ``updates`` stream gave), the ``values``
events the state after the step (what the ``values`` stream gave when the step wrote one of its
keys). Tokens (``messages``), ``custom`` payloads and the other modes are not in the checkpoint
and cannot be replayed; neither can the events of subgraphs (their own checkpoint namespaces).

Nothing here knows about Kafka: the caller emits what ``finished_steps`` returns.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from langgraph._internal._constants import ERROR, INTERRUPT, RESUME
from langgraph.constants import TAG_HIDDEN
from langgraph.pregel import Pregel
from langgraph.pregel._io import map_output_updates

_NOT_OUTPUT = frozenset({ERROR, INTERRUPT, RESUME})
"""Writes a task's saved list holds besides its output: an interrupt it raised and the answer it
was resumed with (the live stream emitted the interrupt, not an update), a failed try's error."""


@dataclass(frozen=True, slots=True)
class _Task:
    """What ``map_output_updates`` reads of a task: its name and its config's tags."""

    name: str
    config: dict[str, Any]


async def finished_steps(
    graph: Pregel[Any, Any, Any, Any], config: dict[str, Any], request_id: str,
    wanted: set[str],
) -> list[tuple[str, str | None, Any]]:
    """``(type, node, data)`` of the ``node`` events (``updates`` in ``wanted``) and ``values``
    events (``values`` in ``wanted``) of every step the run of ``request_id`` finished on its
    thread, in step order; within a step, one ``node`` event per task in LangGraph's task order,
    then its ``values``.

    A finished step is one whose next checkpoint was written: the steps of the run's chain of
    checkpoints (those whose metadata names ``request_id``), and the step that ran from the
    checkpoint the run started at (a resumed interrupt's). The last checkpoint's writes are not
    a finished step's: LangGraph emits them itself when it resumes there (``cached``).
    """
    if graph.checkpointer is None or not wanted & {"updates", "values"}:
        return []
    chain = await _run_chain(graph, config, request_id)
    output_keys = graph.stream_channels_asis
    events: list[tuple[str, str | None, Any]] = []
    for (step, writes), (after, _) in itertools.pairwise(chain):
        if (step.metadata or {}).get("source") == "input":
            continue  # the input's own step: no node ran
        names = {task.id: task.name for task in step.tasks}
        by_task: dict[str, list[tuple[str, Any]]] = {}
        for task_id, channel, value in writes:
            if task_id in names and channel not in _NOT_OUTPUT:
                by_task.setdefault(task_id, []).append((channel, value))
        for task_id, task_writes in by_task.items():
            if "updates" not in wanted:
                break
            task = _Task(names[task_id], {"tags": _tags(graph, names[task_id])})
            for chunk in map_output_updates(output_keys, [(task, task_writes)]):  # type: ignore[list-item]  # it reads .name and .config only
                events.extend(("node", node, update) for node, update in chunk.items())
        if "values" in wanted and _wrote_output(output_keys, by_task.values()):
            events.append(("values", None, after.values))
    return events


async def _run_chain(
    graph: Pregel[Any, Any, Any, Any], config: dict[str, Any], request_id: str
) -> list[tuple[Any, list[tuple[str, str, Any]]]]:
    """The run's checkpoints, oldest first, each a state snapshot with its saved writes: the
    latest one of ``request_id`` back through its parents, and the checkpoint it continued
    from when it continued another request's step."""
    saver = graph.checkpointer
    assert saver is not None and not isinstance(saver, bool)
    thread = {"configurable": {"thread_id": config["configurable"]["thread_id"],
                               "checkpoint_ns": ""}}
    mine = {"graphwire_request_id": request_id}
    snapshots = {_id(s.config): s async for s in graph.aget_state_history(thread, filter=mine)}  # type: ignore[arg-type]  # a plain dict of RunnableConfig keys
    if not snapshots:
        return []
    writes = {_id(t.config): list(t.pending_writes or [])
              async for t in saver.alist(thread, filter=mine)}  # type: ignore[arg-type]
    chain = []
    at: Any = snapshots[max(snapshots)]  # ids are time-ordered: the latest
    while at is not None:
        chain.append((at, writes.get(_id(at.config), [])))
        parent = at.parent_config
        at = snapshots.get(_id(parent)) if parent else None
        if at is None and parent and _continued(chain[-1][0]):
            started = await saver.aget_tuple(parent)
            if started is not None:
                chain.append((await graph.aget_state(parent), list(started.pending_writes or [])))
    chain.reverse()
    return chain


def _continued(oldest: Any) -> bool:
    """The run's oldest checkpoint ends a step that began at its parent, another request's
    checkpoint: the run continued the thread (resumed an interrupt, or went on from a
    breakpoint). A run that started with input (``input``) or from a fork (``fork``,
    ``update``) did not: the parent's writes are another run's."""
    return (oldest.metadata or {}).get("source") == "loop"


def _id(config: Any) -> str:
    return str(config["configurable"]["checkpoint_id"])


def _tags(graph: Pregel[Any, Any, Any, Any], name: str) -> list[str]:
    node = graph.nodes.get(name)
    return list(node.tags or []) if node is not None else [TAG_HIDDEN]


def _wrote_output(output_keys: Any, writes: Any) -> bool:
    """The step wrote one of the graph's output keys (LangGraph's test for a ``values`` event)."""
    keys = {output_keys} if isinstance(output_keys, str) else set(output_keys)
    return any(channel in keys for task_writes in writes for channel, _ in task_writes)
