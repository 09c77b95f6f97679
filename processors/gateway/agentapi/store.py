"""``/store``: the graphs' long-term memory store (``runtime.store``), read and written by
clients: ``PUT``/``GET``/``DELETE /store/items``, ``POST /store/items/search`` and
``POST /store/namespaces``.

It is the very store the runners give graphs (``GroupCommitStore``, the ``store`` table in the
checkpoint database), so what a graph remembered is what a client reads, with no translation
of namespaces.

Who sees what, as LangGraph's own store authorization does it (``@auth.on.store``: the first
label of a namespace is the user's identity):

- An operator (an operator key or JWT; everyone with ``GRAPHWIRE_GATEWAY_AUTH=false``) reads
  and writes every namespace.
- Any other caller acts only on namespaces whose first label is its identity,
  ``<kind>:<name>`` (``api_key:svc-a``): the ``langgraph_auth_user_id`` its runs get in
  ``config["configurable"]``, so a graph that namespaces its memories by it
  (``(user_id, "memories")``) writes where its caller reads. A search or listing without a
  prefix is confined to that label; another first label is a 403 naming the rule.

No semantic search: ``query`` and an ``index`` other than ``false`` are refused (422).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from langgraph.store.base import (
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)
from pydantic import Field

from graphwire.processors.gateway.agentapi.body import Body, json_response, parse
from graphwire.processors.gateway.agentapi.deps import Caller, GatewayDep
from graphwire.processors.gateway.agentapi.errors import Forbidden, Unavailable, Unprocessable
from graphwire.processors.gateway.auth import Principal
from graphwire.processors.runner.pgstore import (
    GroupCommitStore,
    StoreDatabaseUnavailable,
    StoreDataRefused,
)

router = APIRouter(tags=["store"])

NO_SEMANTIC_SEARCH = ("graphwire's store has no semantic search (no embeddings index: it "
                      "needs pgvector)")


class PutBody(Body):
    """``PUT /store/items``."""

    namespace: list[str]
    key: str = Field(min_length=1)
    value: dict[str, Any]
    index: Literal[False] | list[str] | None = None
    ttl: float | None = Field(default=None, gt=0)
    """Minutes until the item expires (refreshed by reads that ask)."""


class DeleteBody(Body):
    """``DELETE /store/items``."""

    namespace: list[str]
    key: str = Field(min_length=1)


class SearchBody(Body):
    """``POST /store/items/search``."""

    namespace_prefix: list[str] = Field(default_factory=list)
    filter: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    query: str | None = None
    refresh_ttl: bool | None = None


class NamespacesBody(Body):
    """``POST /store/namespaces``."""

    prefix: list[str] | None = None
    suffix: list[str] | None = None
    max_depth: int | None = Field(default=None, ge=1)
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0)


def identity(caller: Principal) -> str:
    """A caller's identity, ``<kind>:<name>``: the first label of its namespaces."""
    return f"{caller.kind}:{caller.name}"


def _label(gw: Any, caller: Principal) -> str | None:
    """The first label the caller's namespaces must have; None for the operator (any)."""
    return None if gw.agent.owner(caller) is None else identity(caller)


def _rule(caller: Principal) -> str:
    mine = identity(caller)
    if "." in mine:
        return (f"the store namespaces of {mine!r} would start with its identity, which holds "
                "a '.' (no namespace label may): ask an operator to read and write them")
    return (f"a caller's store namespaces start with its identity: use [{mine!r}, ...] (the "
            "langgraph_auth_user_id its runs get); an operator key sees every namespace")


def _check(namespace: list[str], what: str) -> tuple[str, ...]:
    """``namespace`` as a tuple if LangGraph accepts its labels; else 422."""
    for label in namespace:
        if not isinstance(label, str) or not label or "." in label or "\x00" in label:
            raise Unprocessable(f"{what}: namespace label {label!r} must be a non-empty string "
                                "without periods")
    return tuple(namespace)


def _owned(gw: Any, caller: Principal, namespace: list[str], what: str) -> tuple[str, ...]:
    """An item's namespace, if the caller may act on it (403 otherwise)."""
    found = _check(namespace, what)
    if not found:
        raise Unprocessable(f"{what}: the namespace cannot be empty")
    label = _label(gw, caller)
    if label is not None and found[0] != label:
        raise Forbidden(_rule(caller))
    return found


def _prefix(gw: Any, caller: Principal, prefix: list[str] | None,
            what: str) -> tuple[str, ...]:
    """A search or listing prefix, confined to the caller's namespaces (403 for another's)."""
    found = _check(prefix or [], what)
    label = _label(gw, caller)
    if label is None:
        return found
    if not found:
        return (label,)
    if found[0] != label:
        raise Forbidden(_rule(caller))
    return found


def _item(item: Item, search: bool = False) -> dict[str, Any]:
    out = item.dict()
    if search:
        out["score"] = None
    return out


async def _run(gw: Any, ops: list[Any]) -> list[Any]:
    """``ops`` on the store; its errors as the API's."""
    store: GroupCommitStore = gw.agent.store()
    try:
        return await store.abatch(ops)
    except StoreDatabaseUnavailable as exc:
        raise Unavailable.retry(str(exc)) from None
    except StoreDataRefused as exc:
        raise Unprocessable(str(exc)) from None
    except InvalidNamespaceError as exc:
        raise Unprocessable(str(exc)) from None


@router.put("/store/items", status_code=204)
async def put_item(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """Store or replace an item (204)."""
    body = await parse(request, PutBody)
    if body.index not in (None, False):
        raise Unprocessable(f"index: {NO_SEMANTIC_SEARCH}; put with index=False or without it")
    namespace = _owned(gw, caller, body.namespace, "namespace")
    await _run(gw, [PutOp(namespace, body.key, body.value, index=False, ttl=body.ttl)])
    return Response(status_code=204)


@router.get("/store/items")
async def get_item(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """One item (``namespace`` dot-joined, ``key``, ``refresh_ttl``), or ``null``."""
    query = request.query_params
    key = query.get("key")
    if not key:
        raise Unprocessable("key: required")
    namespace = _owned(gw, caller, query.get("namespace", "").split("."), "namespace")
    refresh = (query.get("refresh_ttl") or "").lower() in ("true", "1")
    found = (await _run(gw, [GetOp(namespace, key, refresh_ttl=refresh)]))[0]
    return json_response(None if found is None else _item(found))


@router.delete("/store/items", status_code=204)
async def delete_item(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """Delete an item (204, also when there was none)."""
    body = await parse(request, DeleteBody)
    namespace = _owned(gw, caller, body.namespace, "namespace")
    await _run(gw, [PutOp(namespace, body.key, None)])
    return Response(status_code=204)


@router.post("/store/items/search")
async def search_items(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """Items under a namespace prefix matching ``filter``, newest first: ``{"items": [...]}``."""
    body = await parse(request, SearchBody)
    if body.query:
        raise Unprocessable(f"query: {NO_SEMANTIC_SEARCH}; search by namespace_prefix and "
                            "filter")
    prefix = _prefix(gw, caller, body.namespace_prefix, "namespace_prefix")
    found = (await _run(gw, [SearchOp(prefix, body.filter, body.limit, body.offset,
                                      refresh_ttl=bool(body.refresh_ttl))]))[0]
    return json_response({"items": [_item(i, search=True) for i in found]})


@router.post("/store/namespaces")
async def list_namespaces(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """The namespaces (cut at ``max_depth``) matching ``prefix`` and ``suffix``, sorted:
    ``{"namespaces": [[...], ...]}``."""
    body = await parse(request, NamespacesBody)
    prefix = _prefix(gw, caller, body.prefix, "prefix")
    suffix = _check(body.suffix or [], "suffix")
    conditions = [MatchCondition("prefix", prefix)] if prefix else []
    if suffix:
        conditions.append(MatchCondition("suffix", suffix))
    found = (await _run(gw, [ListNamespacesOp(tuple(conditions), body.max_depth, body.limit,
                                              body.offset)]))[0]
    return json_response({"namespaces": [list(n) for n in found]})
