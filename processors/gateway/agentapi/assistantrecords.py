"""Assistants in PostgreSQL (``agent_assistants`` and ``agent_assistant_versions``, created by
``records.setup``).

A graph's default assistant has a NULL owner: everyone sees it, nobody changes it. A caller's own
assistants carry its scope. Each create or patch writes a version; the assistant row holds the
latest (or the one ``set_latest`` chose).
"""

from __future__ import annotations

from typing import Any

from graphwire.processors.gateway.agentapi.errors import Conflict
from graphwire.processors.gateway.agentapi.ids import default_assistant_id
from graphwire.processors.gateway.agentapi.records import (
    _SEEN,
    ASSISTANT_SORTS,
    _filters,
    _json,
    _order,
    _shape,
)

_FIELDS = ("graph_id", "name", "description", "config", "context", "metadata")
_COPY_VERSION = (
    "INSERT INTO agent_assistant_versions (assistant_id, version, graph_id, name, description, "
    "config, context, metadata, created_at) SELECT assistant_id, version, graph_id, name, "
    "description, config, context, metadata, updated_at FROM agent_assistants "
    "WHERE assistant_id = $1")


async def ensure_default_assistants(db: Any, graph_ids: list[str]) -> None:
    """Store each graph's default assistant (LangGraph's id, ``created_by: system``) unless it
    is there."""
    async with db.acquire() as conn, conn.transaction():
        for graph_id in graph_ids:
            aid = default_assistant_id(graph_id)
            inserted = await conn.fetchval(
                "INSERT INTO agent_assistants (assistant_id, graph_id, owner, name, metadata) "
                "VALUES ($1, $2, NULL, $2, '{\"created_by\": \"system\"}') "
                "ON CONFLICT (assistant_id) DO NOTHING RETURNING assistant_id", aid, graph_id)
            if inserted is not None:
                await conn.execute(_COPY_VERSION, aid)


async def create_assistant(db: Any, *, assistant_id: str, owner: str | None, graph_id: str,
                           name: str, description: str | None = None,
                           config: dict[str, Any] | None = None,
                           context: dict[str, Any] | None = None,
                           metadata: dict[str, Any] | None = None,
                           if_exists: str = "raise") -> dict[str, Any]:
    """A new assistant (version 1); an existing visible one with ``if_exists="do_nothing"``,
    else ``Conflict``."""
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO agent_assistants (assistant_id, graph_id, owner, name, description, "
            "config, context, metadata) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, "
            "$8::jsonb) ON CONFLICT (assistant_id) DO NOTHING RETURNING *",
            assistant_id, graph_id, owner, name, description, _json(config or {}),
            _json(context or {}), _json(metadata or {}))
        if row is not None:
            await conn.execute(_COPY_VERSION, assistant_id)
            return _shape(row)
    existing = await get_assistant(db, assistant_id, owner)
    if if_exists == "do_nothing" and existing is not None:
        return existing
    raise Conflict(f"Assistant {assistant_id} already exists")


async def get_assistant(db: Any, assistant_id: str, owner: str | None) -> dict[str, Any] | None:
    """The assistant, if ``owner`` sees it (its own, or a default)."""
    row = await db.fetchrow(
        f"SELECT * FROM agent_assistants WHERE {_SEEN} AND assistant_id = $2",
        owner, assistant_id)
    return None if row is None else _shape(row)


async def patch_assistant(db: Any, assistant_id: str, owner: str | None,
                          **changes: Any) -> dict[str, Any] | None:
    """A new version with ``changes`` (of graph_id, name, description, config, context,
    metadata; metadata is merged, the others replaced); None if not ``owner``'s (a default
    assistant is nobody's)."""
    sets = ["version = (SELECT max(version) + 1 FROM agent_assistant_versions "
            "WHERE assistant_id = $2)", "updated_at = now()"]
    args: list[Any] = [owner, assistant_id]
    for field in _FIELDS:
        value = changes.get(field)
        if value is None:
            continue
        args.append(_json(value) if field in ("config", "context", "metadata") else value)
        n = len(args)
        sets.append(f"metadata = metadata || ${n}::jsonb" if field == "metadata" else
                    f"{field} = ${n}::jsonb" if field in ("config", "context") else
                    f"{field} = ${n}")
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE agent_assistants SET {', '.join(sets)} WHERE owner IS NOT NULL AND "
            f"($1::text IS NULL OR owner = $1) AND assistant_id = $2 RETURNING *", *args)
        if row is None:
            return None
        await conn.execute(_COPY_VERSION, assistant_id)
    return _shape(row)


async def delete_assistant(db: Any, assistant_id: str, owner: str | None) -> bool:
    """Delete the assistant and its versions; False if not ``owner``'s."""
    gone = await db.fetchval(
        "DELETE FROM agent_assistants WHERE owner IS NOT NULL AND ($1::text IS NULL OR "
        "owner = $1) AND assistant_id = $2 RETURNING assistant_id", owner, assistant_id)
    return gone is not None


async def search_assistants(db: Any, owner: str | None, graph_ids: list[str], *,
                            metadata: dict[str, Any] | None = None, graph_id: str | None = None,
                            name: str | None = None, limit: int = 10, offset: int = 0,
                            sort_by: str | None = None, sort_order: str | None = None,
                            ) -> tuple[list[dict[str, Any]], int]:
    """A page of the visible assistants of ``graph_ids`` that match (``name``: a substring,
    case-insensitive), newest first by default, and how many match."""
    where, args = _filters(2, metadata__contains=metadata, graph_id__eq=graph_id)
    if name is not None:
        args.append(f"%{name}%")
        where += f" AND name ILIKE ${len(args) + 2}"
    base = f"FROM agent_assistants WHERE {_SEEN} AND graph_id = ANY($2){where}"
    order = _order(sort_by, sort_order, ASSISTANT_SORTS, "created_at")
    rows = await db.fetch(f"SELECT * {base} ORDER BY {order} LIMIT {int(limit)} "
                          f"OFFSET {int(offset)}", owner, graph_ids, *args)
    total: int = await db.fetchval(f"SELECT count(*) {base}", owner, graph_ids, *args)
    return [_shape(r) for r in rows], total


async def list_versions(db: Any, assistant_id: str, owner: str | None, *,
                        metadata: dict[str, Any] | None = None, limit: int = 10,
                        offset: int = 0) -> list[dict[str, Any]]:
    """The visible assistant's versions, newest first."""
    where, args = _filters(2, metadata__contains=metadata)
    rows = await db.fetch(
        f"SELECT v.* FROM agent_assistant_versions v JOIN agent_assistants a USING "
        f"(assistant_id) WHERE (a.owner IS NULL OR $1::text IS NULL OR a.owner = $1) AND "
        f"v.assistant_id = $2{where.replace('metadata', 'v.metadata')} ORDER BY v.version DESC "
        f"LIMIT {int(limit)} OFFSET {int(offset)}", owner, assistant_id, *args)
    return [_shape(r) for r in rows]


async def set_latest(db: Any, assistant_id: str, owner: str | None,
                     version: int) -> dict[str, Any] | None:
    """Make ``version`` the assistant's current one; None if it or the version is not found."""
    row = await db.fetchrow(
        "UPDATE agent_assistants a SET version = v.version, graph_id = v.graph_id, "
        "name = v.name, description = v.description, config = v.config, context = v.context, "
        "metadata = v.metadata, updated_at = now() FROM agent_assistant_versions v "
        "WHERE a.owner IS NOT NULL AND ($1::text IS NULL OR a.owner = $1) AND "
        "a.assistant_id = $2 AND v.assistant_id = a.assistant_id AND v.version = $3 "
        "RETURNING a.*", owner, assistant_id, version)
    return None if row is None else _shape(row)
