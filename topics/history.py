"""A thread's checkpoint history, read from the checkpoint tables (time travel).

Read straight from PostgreSQL (``checkpoints``, as LangGraph's PostgreSQL savers and the
runner's write it), so it needs neither the graph nor the processors: ``graphwire history``,
``GraphwireClient.history()`` and the gateway's ``/workflow/threads/{thread}/history`` all use
it. Which nodes a checkpoint's step ran and which run next come from its channel versions
(``versions_seen`` against the trigger channels, as LangGraph decides): no value is decoded, so
it works on encrypted checkpoints too.

Pass a ``checkpoint_id`` from here in a request to run from that checkpoint (a fork).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from graphwire.topics.errors import DependencyUnavailable

_HISTORY_SQL = (
    "SELECT checkpoint_id, parent_checkpoint_id, checkpoint->'channel_versions', "
    "checkpoint->'versions_seen', checkpoint->>'ts', metadata FROM checkpoints "
    "WHERE thread_id = $1 AND checkpoint_ns = '' ORDER BY checkpoint_id DESC LIMIT $2"
)
_BRANCH = "branch:to:"
_START = "__start__"


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One checkpoint of a thread."""

    checkpoint_id: str
    """Pass it as a request's ``checkpoint_id`` to run (fork) from here."""
    parent_checkpoint_id: str | None
    """The checkpoint this one followed; a fork's first checkpoint names the forked one."""
    step: int | None
    """LangGraph's step: -1 for the input, then one per superstep."""
    source: str | None
    """``input``, ``loop`` (a step ran), ``update`` (state edited) or ``fork``."""
    created_at: str | None
    """ISO 8601 time the checkpoint was written."""
    request_id: str | None
    """The graphwire request whose run wrote it."""
    ran: list[str] = field(default_factory=list)
    """The nodes whose step wrote this checkpoint."""
    next: list[str] = field(default_factory=list)
    """The nodes that run next from here (empty: the run ended here)."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape ``graphwire history --json`` prints."""
        return asdict(self)


def _json(value: Any) -> Any:
    if value is None:
        return None
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _due(channel_versions: dict[str, Any], versions_seen: dict[str, Any]) -> list[str]:
    """Nodes whose trigger channel has a version they have not seen (LangGraph's rule)."""
    due = []
    for channel, version in channel_versions.items():
        if channel == _START:
            node = _START
        elif channel.startswith(_BRANCH):
            node = channel.removeprefix(_BRANCH)
        else:
            continue
        seen = (versions_seen.get(node) or {}).get(channel)
        if seen is None or str(version) > str(seen):
            due.append(node)
    return sorted(due)


def history_from_rows(rows: list[Any]) -> list[CheckpointInfo]:
    """``CheckpointInfo`` for rows of ``_HISTORY_SQL`` (newest first)."""
    nexts: dict[str, list[str]] = {}
    parsed = []
    for checkpoint_id, parent, versions, seen, ts, metadata in rows:
        meta = _json(metadata) or {}
        due = _due(_json(versions) or {}, _json(seen) or {})
        nexts[checkpoint_id] = due
        parsed.append((checkpoint_id, parent, ts, meta, due))
    out = []
    for checkpoint_id, parent, ts, meta, due in parsed:
        step = meta.get("step")
        request_id = meta.get("graphwire_request_id")
        out.append(CheckpointInfo(
            checkpoint_id=checkpoint_id,
            parent_checkpoint_id=parent,
            step=step if isinstance(step, int) else None,
            source=meta.get("source"),
            created_at=ts,
            request_id=request_id if isinstance(request_id, str) else None,
            ran=[n for n in nexts.get(parent, []) if n != _START] if parent else [],
            next=[n for n in due if n != _START],
        ))
    return out


async def read_history(
    database_url: str, thread_id: str, *, schema: str | None = None, limit: int = 100
) -> list[CheckpointInfo]:
    """The thread's checkpoints, newest first (at most ``limit``); empty for an unknown
    thread. Raises ``DependencyUnavailable`` when PostgreSQL does not answer."""
    import asyncpg

    settings = {"search_path": schema} if schema else None
    try:
        conn = await asyncpg.connect(database_url, timeout=5, server_settings=settings)
    except Exception as exc:
        raise DependencyUnavailable(
            f"PostgreSQL for checkpoints does not answer ({type(exc).__name__}); check "
            "GRAPHWIRE_DATABASE_URL"
        ) from exc
    try:
        rows = await conn.fetch(_HISTORY_SQL, thread_id, limit)
    except asyncpg.UndefinedTableError:
        return []  # no checkpoint was ever written under this schema
    finally:
        await conn.close()
    return history_from_rows([tuple(r) for r in rows])
