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
    "checkpoint->'versions_seen', checkpoint->'updated_channels', checkpoint->>'ts', metadata "
    "FROM checkpoints "
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


def _counter(version: Any) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def _due(
    channel_versions: dict[str, Any], versions_seen: dict[str, Any], updated: list[str] | None
) -> list[str]:
    """Nodes whose trigger channel the checkpoint's step wrote, in a version they have not
    seen. LangGraph lists the written channels (``updated_channels``); where it does not (an
    update), they are the ones at the step's version, the highest (one version per step)."""
    if updated is None:
        top = max((_counter(v) for v in channel_versions.values()), default=0)
        updated = [c for c, v in channel_versions.items() if _counter(v) == top]
    due = []
    for channel in updated:
        version = channel_versions.get(channel)
        if channel == _START:
            node = _START
        elif channel.startswith(_BRANCH):
            node = channel.removeprefix(_BRANCH)
        else:
            continue
        seen = (versions_seen.get(node) or {}).get(channel)
        if version is not None and (seen is None or str(version) > str(seen)):
            due.append(node)
    return sorted(due)


def history_from_rows(rows: list[Any]) -> list[CheckpointInfo]:
    """``CheckpointInfo`` for rows of ``_HISTORY_SQL`` (newest first)."""
    seen_by_id: dict[str, dict[str, Any]] = {}
    parsed = []
    for checkpoint_id, parent, versions, seen, updated, ts, metadata in rows:
        meta = _json(metadata) or {}
        seen = _json(seen) or {}
        seen_by_id[checkpoint_id] = seen
        parsed.append((checkpoint_id, parent, ts, meta, seen,
                       _due(_json(versions) or {}, seen, _json(updated))))
    out = []
    for checkpoint_id, parent, ts, meta, seen, due in parsed:
        step = meta.get("step")
        request_id = meta.get("graphwire_request_id")
        before = seen_by_id.get(parent or "", {})
        # the nodes that ran in the step that wrote it: those whose seen versions moved
        ran = sorted(n for n, v in seen.items() if not n.startswith("__")
                     and v != before.get(n)) if parent in seen_by_id else []
        out.append(CheckpointInfo(
            checkpoint_id=checkpoint_id,
            parent_checkpoint_id=parent,
            step=step if isinstance(step, int) else None,
            source=meta.get("source"),
            created_at=ts,
            request_id=request_id if isinstance(request_id, str) else None,
            ran=ran,
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
