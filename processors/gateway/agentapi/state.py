"""``/threads/{id}/state`` and ``/threads/{id}/history``: a thread's state, read and updated
through the checkpointer the runners write (graphwire's ``CheckpointStore``), as LangGraph's
``aget_state``/``aget_state_history``/``aupdate_state`` give it.

A thread's graph is its ``metadata.graph_id`` (run creation stamps it; ``threads.create(
graph_id=...)`` sets it). The answers have every field RemoteGraph and the SDK read.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from langgraph.types import StateSnapshot
from pydantic import Field

from graphwire.processors.gateway.agentapi import records
from graphwire.processors.gateway.agentapi.body import Body, json_response, parse
from graphwire.processors.gateway.agentapi.deps import Caller, GatewayDep
from graphwire.processors.gateway.agentapi.errors import (
    BadRequest,
    Conflict,
    NotFound,
    Unprocessable,
)
from graphwire.processors.gateway.agentapi.ids import parse_uuid
from graphwire.processors.gateway.auth import Principal

router = APIRouter(tags=["threads"])


class CheckpointRequest(Body):
    """``POST /threads/{id}/state/checkpoint``."""

    checkpoint: dict[str, Any]
    subgraphs: bool = False
    select: list[str] | None = None


class StateUpdateBody(Body):
    """``POST /threads/{id}/state``."""

    values: Any = None
    as_node: str | None = None
    checkpoint: dict[str, Any] | None = None
    checkpoint_id: str | None = None


class HistoryRequest(Body):
    """``POST /threads/{id}/history``."""

    limit: int = Field(10, ge=1, le=1000)
    before: str | dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    select: list[str] | None = None


def checkpoint_of(config: Any) -> dict[str, Any] | None:
    """A snapshot config's checkpoint ``{thread_id, checkpoint_ns, checkpoint_id}`` (and
    ``checkpoint_map`` when it has one, as LangGraph's server gives it: RemoteGraph then reads
    ``{}``); None without a checkpoint id."""
    configurable = (config or {}).get("configurable") or {}
    if not configurable.get("thread_id") or not configurable.get("checkpoint_id"):
        return None
    checkpoint = {"thread_id": configurable["thread_id"],
                  "checkpoint_ns": configurable.get("checkpoint_ns") or "",
                  "checkpoint_id": configurable["checkpoint_id"]}
    if configurable.get("checkpoint_map"):
        checkpoint["checkpoint_map"] = configurable["checkpoint_map"]
    return checkpoint


def _interrupt(interrupt: Any) -> dict[str, Any]:
    return {"id": interrupt.id, "value": interrupt.value}


def thread_state(snapshot: StateSnapshot) -> dict[str, Any]:
    """A ``StateSnapshot`` as the API's ``ThreadState`` (LangGraph server's shape)."""
    config, parent = snapshot.config, snapshot.parent_config
    return {
        "values": snapshot.values,
        "next": list(snapshot.next),
        "tasks": [{
            "id": t.id, "name": t.name, "path": list(t.path), "error": t.error,
            "interrupts": [_interrupt(i) for i in t.interrupts],
            "checkpoint": t.state["configurable"]
            if t.state is not None and not isinstance(t.state, StateSnapshot) else None,
            "state": thread_state(t.state) if isinstance(t.state, StateSnapshot) else None,
            "result": t.result,
        } for t in snapshot.tasks],
        "metadata": snapshot.metadata,
        "created_at": snapshot.created_at,
        "checkpoint": checkpoint_of(config),
        "parent_checkpoint": checkpoint_of(parent),
        "interrupts": [_interrupt(i) for i in snapshot.interrupts],
        "checkpoint_id": (config or {}).get("configurable", {}).get("checkpoint_id"),
        "parent_checkpoint_id": (parent or {}).get("configurable", {}).get("checkpoint_id"),
    }


EMPTY_STATE: dict[str, Any] = {
    "values": {}, "next": [], "tasks": [], "metadata": None, "created_at": None,
    "checkpoint": None, "parent_checkpoint": None, "interrupts": [],
    "checkpoint_id": None, "parent_checkpoint_id": None}
"""The state of a thread nothing has run on yet."""


async def owned_thread(gw: Any, caller: Principal, thread_id: str) -> dict[str, Any]:
    """The caller's thread record; 422 for a bad id, 404 when not found or not its."""
    from graphwire.processors.gateway.agentapi import kafkaruns

    tid = parse_uuid(thread_id, "thread")
    found = await records.get_thread(gw.agent.records(), tid, gw.agent.owner(caller))
    if found is None and kafkaruns.operator(gw, caller) and await kafkaruns.quietly(
            kafkaruns.adopt_thread(gw, tid), False):  # a thread produced straight to Kafka
        found = await records.get_thread(gw.agent.records(), tid, None)
    if found is None:
        raise NotFound(f"Thread {tid} not found")
    return found


def _config(thread_id: str, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run config addressing the thread (at ``checkpoint``); the path's id wins."""
    given = {k: v for k, v in (checkpoint or {}).items() if v is not None}
    return {"configurable": {"checkpoint_ns": "", **given, "thread_id": thread_id}}


async def _graph_of(gw: Any, thread: dict[str, Any]) -> Any:
    """The thread's graph on the checkpointer; None for a thread with no graph and no
    checkpoint (nothing ran on it), 400 for one with checkpoints but no ``graph_id``."""
    graph_id = (thread["metadata"] or {}).get("graph_id")
    if graph_id:
        return gw.agent.durable(graph_id)
    saver = gw.agent.saver()
    if await saver.aget_tuple(_config(thread["thread_id"])) is None:
        return None
    raise BadRequest(f"Thread {thread['thread_id']} has no metadata.graph_id, so its graph is "
                     "unknown: set it with PATCH /threads/{id} {\"metadata\": {\"graph_id\": ...}}")


def _no_select(select: list[str] | None) -> None:
    if select:
        raise Unprocessable("select is not supported on thread state: read the whole state")


async def read_state(gw: Any, thread: dict[str, Any], checkpoint: dict[str, Any] | None = None,
                     subgraphs: bool = False) -> dict[str, Any]:
    """The thread's ``ThreadState`` (at ``checkpoint``; latest without one)."""
    graph = await _graph_of(gw, thread)
    if graph is None:
        return EMPTY_STATE
    snapshot = await graph.aget_state(_config(thread["thread_id"], checkpoint),
                                      subgraphs=subgraphs)
    return thread_state(snapshot)


async def sync_thread(gw: Any, thread: dict[str, Any], *, run_ended: bool = False,
                      failed: bool = False) -> None:
    """Copy the thread's latest state into its record: ``values`` and ``interrupts`` by task,
    and its status: ``error`` when its run ``failed``, else ``interrupted`` when tasks are
    pending, else ``idle`` (a ``busy`` thread stays busy unless its ``run_ended``)."""
    graph = await _graph_of(gw, thread)
    snapshot = None if graph is None else await graph.aget_state(_config(thread["thread_id"]))
    status = None if thread["status"] == "busy" and not run_ended else (
        "error" if failed else "interrupted" if snapshot is not None and snapshot.next
        else "idle")
    ended: dict[str, Any] = {"run_error": {"error": "run failed"} if failed else None} \
        if run_ended else {}
    if snapshot is None:
        await records.set_thread_state(gw.agent.records(), thread["thread_id"], status=status,
                                       **ended)
        return
    interrupts = {t.id: [_interrupt(i) for i in t.interrupts]
                  for t in snapshot.tasks if t.interrupts}
    await records.set_thread_state(gw.agent.records(), thread["thread_id"], status=status,
                                   values=snapshot.values, interrupts=interrupts, **ended)


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name) in ("true", "True", "1")


@router.get("/threads/{thread_id}/state")
async def get_state(thread_id: str, request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """The thread's latest state (``subgraphs``: with its subgraphs' states)."""
    _no_select(request.query_params.getlist("select"))
    thread = await owned_thread(gw, caller, thread_id)
    return json_response(await read_state(gw, thread, subgraphs=_flag(request, "subgraphs")))


@router.get("/threads/{thread_id}/state/{checkpoint_id}")
async def get_state_at(thread_id: str, checkpoint_id: str, request: Request, gw: GatewayDep,
                       caller: Caller) -> Response:
    """The thread's state at a checkpoint."""
    _no_select(request.query_params.getlist("select"))
    thread = await owned_thread(gw, caller, thread_id)
    state = await read_state(gw, thread, {"checkpoint_id": checkpoint_id},
                             subgraphs=_flag(request, "subgraphs"))
    return json_response(state)


@router.post("/threads/{thread_id}/state/checkpoint")
async def post_state_at(thread_id: str, request: Request, gw: GatewayDep,
                        caller: Caller) -> Response:
    """The thread's state at a checkpoint given as a dict (RemoteGraph's ``get_state``)."""
    body = await parse(request, CheckpointRequest)
    _no_select(body.select)
    thread = await owned_thread(gw, caller, thread_id)
    return json_response(await read_state(gw, thread, body.checkpoint, body.subgraphs))


@router.post("/threads/{thread_id}/state")
async def update_state(thread_id: str, request: Request, gw: GatewayDep,
                       caller: Caller) -> Response:
    """Write ``values`` as if ``as_node`` returned them (on ``checkpoint``, else the latest);
    answers the new checkpoint. 409 while a run holds the thread."""
    body = await parse(request, StateUpdateBody)
    thread = await owned_thread(gw, caller, thread_id)
    if thread["status"] == "busy":
        raise Conflict(f"Thread {thread['thread_id']} is busy with a run; update its state "
                       "when the run has finished")
    if not (thread["metadata"] or {}).get("graph_id"):
        raise BadRequest(f"Thread {thread['thread_id']} has no metadata.graph_id, so the graph "
                         "to update is unknown: create the thread with graph_id (or PATCH its "
                         "metadata), or run it first")
    graph = await _graph_of(gw, thread)
    at = {**(body.checkpoint or {})}
    if body.checkpoint_id:
        at["checkpoint_id"] = body.checkpoint_id
    try:
        # the update's checkpoint names the graph, as the Agent Server stamps it
        stamped = {**_config(thread["thread_id"], at),
                   "metadata": {"graph_id": thread["metadata"]["graph_id"]}}
        config = await graph.aupdate_state(stamped, body.values, as_node=body.as_node)
    except (ValueError, KeyError, TypeError) as exc:  # LangGraph's InvalidUpdateError is one
        raise BadRequest(f"cannot update the state: {exc}") from None
    await sync_thread(gw, thread)
    checkpoint = checkpoint_of(config)
    return json_response({  # LangGraph's server also sends the last two (deprecated) forms
        "checkpoint": checkpoint, "configurable": checkpoint,
        "checkpoint_id": (checkpoint or {}).get("checkpoint_id")})


async def _history(gw: Any, caller: Principal, thread_id: str, limit: int, before: Any,
                   metadata: dict[str, Any] | None,
                   checkpoint: dict[str, Any] | None) -> Response:
    thread = await owned_thread(gw, caller, thread_id)
    graph = await _graph_of(gw, thread)
    if graph is None:
        return json_response([])
    if isinstance(before, str):
        before = {"checkpoint_id": before}
    before_config = _config(thread["thread_id"], before) if before else None
    states = [thread_state(s) async for s in graph.aget_state_history(
        _config(thread["thread_id"], checkpoint), filter=metadata or None,
        before=before_config, limit=limit)]
    return json_response(states)


@router.post("/threads/{thread_id}/history")
async def post_history(thread_id: str, request: Request, gw: GatewayDep,
                       caller: Caller) -> Response:
    """The thread's past states, newest first (``before`` a checkpoint, matching
    ``metadata``)."""
    body = await parse(request, HistoryRequest)
    _no_select(body.select)
    return await _history(gw, caller, thread_id, body.limit, body.before, body.metadata,
                          body.checkpoint)


@router.get("/threads/{thread_id}/history")
async def get_history(thread_id: str, request: Request, gw: GatewayDep,
                      caller: Caller) -> Response:
    """The thread's past states, newest first (``limit``, ``before`` a checkpoint id)."""
    text = request.query_params.get("limit") or "10"
    if not text.isdigit() or int(text) < 1:
        raise Unprocessable(f"Invalid limit {text}")
    return await _history(gw, caller, thread_id, int(text), request.query_params.get("before"),
                          None, None)
