"""``/assistants``: each registered graph's default assistant, and callers' own assistants with
their config, context and metadata, versioned in PostgreSQL.

A graph name is accepted wherever an assistant id is (its default assistant). A caller sees the
default assistants of the graphs it may run, and its own assistants.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from graphwire.processors.gateway.agentapi import assistantrecords as store
from graphwire.processors.gateway.agentapi import graphinfo
from graphwire.processors.gateway.agentapi.body import Body, json_response, paged, parse
from graphwire.processors.gateway.agentapi.deps import Caller, GatewayDep
from graphwire.processors.gateway.agentapi.errors import Conflict, NotFound, Unprocessable
from graphwire.processors.gateway.agentapi.ids import (
    default_assistant_id,
    is_uuid,
    new_id,
    parse_uuid,
)
from graphwire.processors.gateway.auth import Principal

router = APIRouter(tags=["assistants"])

ASSISTANT_FIELDS = ("assistant_id", "graph_id", "config", "context", "metadata", "version",
                    "name", "description", "created_at", "updated_at")


class AssistantSearch(Body):
    """``POST /assistants/search`` (and ``/count``: the filters only)."""

    metadata: dict[str, Any] | None = None
    graph_id: str | None = None
    name: str | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    sort_by: Literal["assistant_id", "graph_id", "name", "created_at", "updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[Literal[ASSISTANT_FIELDS]] | None = None  # type: ignore[valid-type]


class AssistantCreate(Body):
    """``POST /assistants``."""

    graph_id: str
    assistant_id: str | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"
    name: str | None = None
    description: str | None = None


class AssistantPatch(Body):
    """``PATCH /assistants/{id}``: what changes (metadata is merged)."""

    graph_id: str | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    name: str | None = None
    description: str | None = None


class VersionSearch(Body):
    """``POST /assistants/{id}/versions``."""

    metadata: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class LatestVersion(Body):
    """``POST /assistants/{id}/latest``."""

    version: int


def runnable_graphs(gw: Any, caller: Principal) -> list[str]:
    """The registered graphs ``caller`` may run (whose assistants it sees)."""
    return [g for g in gw.agent.registry().names() if caller.may_run(g)]


async def resolve(gw: Any, caller: Principal, assistant_id: str) -> dict[str, Any]:
    """The assistant an id or a graph name names, if ``caller`` sees it; else 404. A graph's
    default assistant is read once and kept: everyone sees it and nobody changes it."""
    aid = assistant_id if is_uuid(assistant_id) else default_assistant_id(assistant_id)
    defaults: dict[str, dict[str, Any]] = gw.agent.default_assistants
    found = defaults.get(aid)
    if found is None:
        db = await gw.agent.defaults_stored()
        found = await store.get_assistant(db, parse_uuid(aid, "assistant"),
                                          gw.agent.owner(caller))
        if found is not None and str(found["assistant_id"]) == default_assistant_id(
                str(found["graph_id"])):
            defaults[aid] = found
    if found is not None:
        found = dict(found)
    if found is None or found["graph_id"] not in runnable_graphs(gw, caller):
        raise NotFound(f"Assistant {assistant_id} not found")
    return found


def _check_graph(gw: Any, caller: Principal, graph_id: str) -> None:
    if graph_id not in runnable_graphs(gw, caller):
        raise NotFound(f"Graph {graph_id!r} not found")


def _select(rows: list[dict[str, Any]], select: list[str] | None) -> list[dict[str, Any]]:
    return rows if not select else [{k: r[k] for k in select} for r in rows]


@router.post("/assistants/search")
async def search(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """A page of the caller's assistants, with ``X-Pagination-*`` headers."""
    body = await parse(request, AssistantSearch)
    db = await gw.agent.defaults_stored()
    rows, total = await store.search_assistants(
        db, gw.agent.owner(caller), runnable_graphs(gw, caller), metadata=body.metadata,
        graph_id=body.graph_id, name=body.name, limit=body.limit, offset=body.offset,
        sort_by=body.sort_by, sort_order=body.sort_order)
    return paged(_select(rows, body.select), body.offset, total)


@router.post("/assistants/count")
async def count(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """How many assistants match the filters."""
    body = await parse(request, AssistantSearch)
    db = await gw.agent.defaults_stored()
    _rows, total = await store.search_assistants(
        db, gw.agent.owner(caller), runnable_graphs(gw, caller), metadata=body.metadata,
        graph_id=body.graph_id, name=body.name, limit=1)
    return json_response(total)


@router.post("/assistants")
async def create(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """A new assistant of a graph with its own config, context and metadata (version 1)."""
    body = await parse(request, AssistantCreate)
    _check_graph(gw, caller, body.graph_id)
    if body.config and body.config.get("configurable") and body.context:
        raise Unprocessable("config.configurable and context: send one of them")
    db = await gw.agent.defaults_stored()
    found = await store.create_assistant(
        db, assistant_id=parse_uuid(body.assistant_id or new_id(), "assistant"),
        owner=caller.scope, graph_id=body.graph_id, name=body.name or "Untitled",
        description=body.description, config=body.config, context=body.context,
        metadata=body.metadata, if_exists=body.if_exists)
    return json_response(found)


@router.get("/assistants/{assistant_id}")
async def get(assistant_id: str, gw: GatewayDep, caller: Caller) -> Response:
    """The assistant (a UUID, or a graph name for its default assistant)."""
    return json_response(await resolve(gw, caller, assistant_id))


@router.patch("/assistants/{assistant_id}")
async def patch(assistant_id: str, request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """A new version of the caller's assistant; default assistants are read-only (409)."""
    body = await parse(request, AssistantPatch)
    found = await resolve(gw, caller, assistant_id)
    if body.graph_id is not None:
        _check_graph(gw, caller, body.graph_id)
    changed = await store.patch_assistant(
        gw.agent.records(), found["assistant_id"], gw.agent.owner(caller),
        **body.model_dump(exclude_none=True))
    if changed is None:
        raise Conflict(f"Assistant {assistant_id} is a graph's default assistant and cannot "
                       "change; create one with POST /assistants")
    return json_response(changed)


@router.delete("/assistants/{assistant_id}", status_code=204)
async def delete(assistant_id: str, request: Request, gw: GatewayDep,
                 caller: Caller) -> Response:
    """Delete the caller's assistant and its versions (204); default assistants stay (409)."""
    if request.query_params.get("delete_threads") in ("true", "True", "1"):
        raise Unprocessable("delete_threads is not supported: delete the threads one by one")
    found = await resolve(gw, caller, assistant_id)
    if not await store.delete_assistant(gw.agent.records(), found["assistant_id"],
                                        gw.agent.owner(caller)):
        raise Conflict(f"Assistant {assistant_id} is a graph's default assistant and cannot "
                       "be deleted")
    return Response(status_code=204)


@router.post("/assistants/{assistant_id}/versions")
async def versions(assistant_id: str, request: Request, gw: GatewayDep,
                   caller: Caller) -> Response:
    """The assistant's versions, newest first."""
    body = await parse(request, VersionSearch)
    found = await resolve(gw, caller, assistant_id)
    rows = await store.list_versions(gw.agent.records(), found["assistant_id"],
                                     gw.agent.owner(caller), metadata=body.metadata,
                                     limit=body.limit, offset=body.offset)
    return json_response(rows)


@router.post("/assistants/{assistant_id}/latest")
async def latest(assistant_id: str, request: Request, gw: GatewayDep,
                 caller: Caller) -> Response:
    """Make one of the caller's assistant's versions the current one."""
    body = await parse(request, LatestVersion)
    found = await resolve(gw, caller, assistant_id)
    changed = await store.set_latest(gw.agent.records(), found["assistant_id"],
                                     gw.agent.owner(caller), body.version)
    if changed is None:
        raise NotFound(f"Assistant {assistant_id} has no version {body.version} you may set")
    return json_response(changed)


@router.get("/assistants/{assistant_id}/graph")
async def graph(assistant_id: str, request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """The graph's drawing (``xray``: subgraphs expanded, to a depth)."""
    xray = graphinfo.parse_xray(request.query_params.get("xray"))
    found = await resolve(gw, caller, assistant_id)
    return json_response(await graphinfo.drawing(gw.agent.graph(found["graph_id"]), xray))


@router.get("/assistants/{assistant_id}/schemas")
async def schemas(assistant_id: str, gw: GatewayDep, caller: Caller) -> Response:
    """The graph's input, output, state, config and context JSON schemas."""
    found = await resolve(gw, caller, assistant_id)
    return json_response({"graph_id": found["graph_id"],
                          **graphinfo.schemas(gw.agent.graph(found["graph_id"]))})


@router.get("/assistants/{assistant_id}/subgraphs")
@router.get("/assistants/{assistant_id}/subgraphs/{namespace}")
async def subgraphs(assistant_id: str, request: Request, gw: GatewayDep, caller: Caller,
                    namespace: str | None = None) -> Response:
    """The schemas of the graph's subgraphs, by namespace (``recurse``: nested ones too)."""
    found = await resolve(gw, caller, assistant_id)
    recurse = request.query_params.get("recurse") in ("true", "True", "1")
    return json_response(await graphinfo.subgraph_schemas(
        gw.agent.graph(found["graph_id"]), namespace, recurse))
