"""``/threads``: create, get, patch, delete, search, count and copy threads.

A thread is a row in ``agent_threads`` (owner, metadata, status, values, interrupts) whose id is
graphwire's ``thread_id`` on Kafka and in the checkpointer, unchanged. Deleting a thread deletes
its checkpoints (and ``once`` effects journal) too, as LangGraph's server does; copying one copies
its checkpoints to the new id.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from langgraph.types import StateUpdate
from pydantic import Field

from graphwire.processors.gateway.agentapi import kafkaruns, records
from graphwire.processors.gateway.agentapi.body import Body, json_response, paged, parse
from graphwire.processors.gateway.agentapi.deps import Caller, GatewayDep
from graphwire.processors.gateway.agentapi.errors import BadRequest, NotFound, Unprocessable
from graphwire.processors.gateway.agentapi.ids import new_id, parse_uuid
from graphwire.processors.gateway.agentapi.runbook import ACTIVE
from graphwire.processors.gateway.agentapi.runs import book
from graphwire.processors.gateway.agentapi.state import owned_thread, sync_thread

router = APIRouter(tags=["threads"])

Status = Literal["idle", "busy", "interrupted", "error"]
THREAD_FIELDS = ("thread_id", "created_at", "updated_at", "state_updated_at", "metadata",
                 "config", "status", "values", "interrupts")


class Update(Body):
    """One update of a superstep: ``values`` written as ``as_node``."""

    values: Any = None
    as_node: str
    command: dict[str, Any] | None = None


class Superstep(Body):
    """A superstep of ``POST /threads``: its updates apply together."""

    updates: list[Update]


class ThreadCreate(Body):
    """``POST /threads`` (the SDK sends ``{}`` by default)."""

    thread_id: str | None = None
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"
    ttl: Any = None
    supersteps: list[Superstep] | None = None


class ThreadPatch(Body):
    """``PATCH /threads/{id}``: metadata merged into the thread's."""

    metadata: dict[str, Any] = Field(default_factory=dict)
    ttl: Any = None


class ThreadSearch(Body):
    """``POST /threads/search`` (``/count`` reads the filters only)."""

    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    ids: list[str] | None = None
    status: Status | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    sort_by: Literal["thread_id", "status", "created_at", "updated_at",
                     "state_updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[Literal[THREAD_FIELDS]] | None = None  # type: ignore[valid-type]
    extract: dict[str, str] | None = None


def _no_ttl(ttl: Any) -> None:
    if ttl is not None:
        raise Unprocessable("ttl is not supported: graphwire prunes threads idle for longer "
                            "than GRAPHWIRE_CHECKPOINT_TTL_S (graphwire checkpoints prune)")


@router.post("/threads")
async def create(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """A new thread (``if_exists``: ``raise`` gives 409, ``do_nothing`` returns it); with
    ``supersteps``, its state written as those updates (needs ``metadata.graph_id``)."""
    body = await parse(request, ThreadCreate)
    _no_ttl(body.ttl)
    graph_id = (body.metadata or {}).get("graph_id")
    if body.supersteps:
        if not graph_id:
            raise BadRequest("supersteps need metadata.graph_id: the graph whose state they "
                             "write")
        if any(u.command is not None for s in body.supersteps for u in s.updates):
            raise Unprocessable("supersteps[].updates[].command is not supported: use values")
        graph = gw.agent.durable(graph_id)  # 404 for an unknown graph, before creating
    db = gw.agent.records()
    thread = await records.create_thread(
        db, thread_id=parse_uuid(body.thread_id or new_id(), "thread"),
        owner=gw.agent.owner(caller) or caller.scope, metadata=body.metadata,
        if_exists=body.if_exists)
    if body.supersteps:
        steps = [[StateUpdate(u.values, u.as_node) for u in s.updates] for s in body.supersteps]
        try:
            await graph.abulk_update_state(
                {"configurable": {"thread_id": thread["thread_id"], "checkpoint_ns": ""}}, steps)
        except (ValueError, KeyError, TypeError) as exc:
            await records.delete_thread(db, thread["thread_id"], None)
            raise BadRequest(f"supersteps: {exc}; the thread was not created") from None
        await sync_thread(gw, thread)
        thread = await owned_thread(gw, caller, thread["thread_id"])
    return json_response(thread)


@router.post("/threads/search")
async def search(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """A page of the caller's matching threads, with ``X-Pagination-*`` headers."""
    body = await parse(request, ThreadSearch)
    if kafkaruns.operator(gw, caller):  # threads produced straight to Kafka, recorded first
        await kafkaruns.quietly(kafkaruns.adopt_threads(gw), None)
    if body.extract:
        raise Unprocessable("extract is not supported: select values and read the fields")
    ids = [parse_uuid(i, "thread") for i in body.ids] if body.ids else None
    rows, total = await records.search_threads(
        gw.agent.records(), gw.agent.owner(caller), metadata=body.metadata, values=body.values,
        ids=ids, status=body.status, limit=body.limit, offset=body.offset,
        sort_by=body.sort_by, sort_order=body.sort_order)
    if body.select:
        rows = [{k: r[k] for k in body.select} for r in rows]
    return paged(rows, body.offset, total)


@router.post("/threads/count")
async def count(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """How many of the caller's threads match."""
    body = await parse(request, ThreadSearch)
    if kafkaruns.operator(gw, caller):
        await kafkaruns.quietly(kafkaruns.adopt_threads(gw), None)
    total = await records.count_threads(gw.agent.records(), gw.agent.owner(caller),
                                        metadata=body.metadata, values=body.values,
                                        status=body.status)
    return json_response(total)


@router.get("/threads/{thread_id}")
async def get(thread_id: str, request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """The thread: metadata, status, values and interrupts. Its runs still recorded as active
    are brought up to date first (a cron's firings, runs another gateway created): the
    thread is ``busy`` while one is, and its status and values are those of their ends."""
    if request.query_params.get("include"):
        raise Unprocessable("include is not supported: threads have no ttl in graphwire")
    thread = await owned_thread(gw, caller, thread_id)
    db, tid = gw.agent.records(), thread["thread_id"]
    runs = book(gw)
    active = await records.active_runs(db, tid)
    ended = [run for run in active if (await runs.refresh(run))["status"] not in ACTIVE]
    if len(ended) < len(active) and thread["status"] != "busy":
        await records.set_thread_state(db, tid, status="busy")
    if active:
        thread = await records.get_thread(db, tid, None) or thread
    return json_response(thread)


@router.patch("/threads/{thread_id}")
async def patch(thread_id: str, request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """Merge ``metadata`` into the thread's."""
    body = await parse(request, ThreadPatch)
    _no_ttl(body.ttl)
    tid = parse_uuid(thread_id, "thread")
    found = await records.patch_thread(gw.agent.records(), tid, gw.agent.owner(caller),
                                       body.metadata)
    if found is None:
        raise NotFound(f"Thread {tid} not found")
    return json_response(found)


@router.delete("/threads/{thread_id}", status_code=204)
async def delete(thread_id: str, gw: GatewayDep, caller: Caller) -> Response:
    """Delete the thread, its runs' records and its checkpoints (204)."""
    tid = parse_uuid(thread_id, "thread")
    if not await records.delete_thread(gw.agent.records(), tid, gw.agent.owner(caller)):
        raise NotFound(f"Thread {tid} not found")
    if gw.agent.checkpoints is not None:
        gw.agent.checkpoints.forget_later(tid)
        await gw.agent.checkpoints.flush_forgotten()
    return Response(status_code=204)


@router.post("/threads/{thread_id}/copy")
async def copy(thread_id: str, gw: GatewayDep, caller: Caller) -> Response:
    """A new thread with this one's metadata, state and checkpoints."""
    source = await owned_thread(gw, caller, thread_id)
    db = gw.agent.records()
    target = await records.create_thread(db, thread_id=new_id(), owner=gw.agent.owner(caller)
                                         or caller.scope, metadata=source["metadata"],
                                         config=source["config"])
    await gw.agent.saver().acopy_thread(source["thread_id"], target["thread_id"])
    busy = source["status"] == "busy"  # the copy has no run
    await records.set_thread_state(db, target["thread_id"],
                                   status="idle" if busy else source["status"],
                                   values=source["values"], interrupts=source["interrupts"])
    return json_response(await owned_thread(gw, caller, target["thread_id"]))
