"""The Agent Server API's own records in PostgreSQL: threads, runs, assistants and their versions,
crons (``agent_crons``: what graphwire's ``graphwire_crons`` row of a cron does not hold).

Tables (prefixed ``agent_``, in the gateway's schema) are created at gateway start, idempotently
and under an advisory lock. Every function takes the gateway's pool and an ``owner``: a caller's
scope sees only its rows; ``None`` (the operator) sees every row. Assistants with a NULL owner are
the graphs' default assistants, which everyone sees. Functions return rows in the API's shape:
UUID strings, ISO 8601 times with an offset, JSON decoded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from graphwire.processors.gateway.agentapi.errors import Conflict
from graphwire.processors.gateway.agentapi.ids import iso
from graphwire.topics.codec import dumps, loads

_LOCK = 0x67_77_61_67  # "gwag": graphwire Agent Server tables

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS agent_threads (
    thread_id uuid PRIMARY KEY,
    owner text,
    metadata jsonb NOT NULL DEFAULT '{}',
    config jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'idle',
    "values" jsonb,
    interrupts jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    state_updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE agent_threads ADD COLUMN IF NOT EXISTS error jsonb;
CREATE INDEX IF NOT EXISTS agent_threads_owner ON agent_threads (owner, updated_at DESC);
CREATE INDEX IF NOT EXISTS agent_threads_metadata ON agent_threads USING gin (metadata);
CREATE TABLE IF NOT EXISTS agent_runs (
    run_id uuid PRIMARY KEY,
    thread_id uuid,
    assistant_id uuid NOT NULL,
    owner text,
    status text NOT NULL DEFAULT 'pending',
    metadata jsonb NOT NULL DEFAULT '{}',
    kwargs jsonb NOT NULL DEFAULT '{}',
    multitask_strategy text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS agent_runs_thread ON agent_runs (thread_id, created_at DESC);
CREATE TABLE IF NOT EXISTS agent_assistants (
    assistant_id uuid PRIMARY KEY,
    graph_id text NOT NULL,
    owner text,
    name text NOT NULL,
    description text,
    config jsonb NOT NULL DEFAULT '{}',
    context jsonb NOT NULL DEFAULT '{}',
    metadata jsonb NOT NULL DEFAULT '{}',
    version int NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS agent_crons (
    cron_id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    owner text,
    assistant_id uuid NOT NULL,
    thread_id uuid,
    user_id text,
    payload jsonb NOT NULL DEFAULT '{}',
    metadata jsonb NOT NULL DEFAULT '{}',
    on_run_completed text,
    end_time timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS agent_crons_owner ON agent_crons (owner, created_at DESC);
CREATE TABLE IF NOT EXISTS agent_assistant_versions (
    assistant_id uuid NOT NULL REFERENCES agent_assistants ON DELETE CASCADE,
    version int NOT NULL,
    graph_id text NOT NULL,
    name text NOT NULL,
    description text,
    config jsonb NOT NULL DEFAULT '{}',
    context jsonb NOT NULL DEFAULT '{}',
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (assistant_id, version)
);
"""

THREAD_SORTS = ("thread_id", "status", "created_at", "updated_at", "state_updated_at")
ASSISTANT_SORTS = ("assistant_id", "graph_id", "name", "created_at", "updated_at")
_MINE = "($1::text IS NULL OR owner = $1)"  # $1 is always the owner
_SEEN = "(owner IS NULL OR $1::text IS NULL OR owner = $1)"  # assistants: defaults too


async def setup(db: Any, schema: str | None = None) -> None:
    """Create the tables (and ``schema``) unless they exist; one gateway at a time."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        if schema:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(TABLES_SQL)


def _json(value: Any) -> str:
    return dumps(value).decode()


def _decoded(value: Any) -> Any:
    return None if value is None else loads(value)


def _shape(row: Any) -> dict[str, Any]:
    """A row as the API has it: UUIDs as strings, times in ISO 8601, JSON decoded."""
    out: dict[str, Any] = {}
    for key, value in dict(row).items():
        if key == "owner" or (key == "error" and value is None):
            continue  # a thread's ``error`` appears once a run ended (null when it did not fail)
        if key.endswith("_id") and value is not None and not isinstance(value, str):
            value = str(value)
        elif isinstance(value, datetime):
            value = iso(value)
        elif key in ("metadata", "config", "context", "values", "interrupts", "kwargs", "error"):
            value = _decoded(value)
        out[key] = value
    return out


def _filters(start: int, **conditions: Any) -> tuple[str, list[Any]]:
    """`` AND ...`` clauses for the given conditions (None: no condition), numbered from
    ``start``; keys are ``column__op``: ``contains`` (jsonb @>), ``any`` (= ANY) or ``eq``."""
    clauses, args = [], []
    for key, value in conditions.items():
        if value is None:
            continue
        column, _, op = key.partition("__")
        column = '"values"' if column == "values" else column
        args.append(_json(value) if op == "contains" else value)
        n = start + len(args)
        clauses.append({"contains": f"{column} @> ${n}::jsonb", "any": f"{column} = ANY(${n})",
                        "eq": f"{column} = ${n}"}[op])
    return "".join(f" AND {c}" for c in clauses), args


def _order(sort_by: str | None, sort_order: str | None, allowed: tuple[str, ...],
           default: str) -> str:
    column = sort_by if sort_by in allowed else default
    return f"{column} {'ASC' if sort_order == 'asc' else 'DESC'}, {allowed[0]}"


# -- threads ---------------------------------------------------------------------------------

async def create_thread(db: Any, *, thread_id: str, owner: str | None,
                        metadata: dict[str, Any] | None = None,
                        config: dict[str, Any] | None = None,
                        if_exists: str = "raise") -> dict[str, Any]:
    """A new idle thread; an existing one with ``if_exists="do_nothing"`` (the caller's only),
    else ``Conflict``."""
    row = await db.fetchrow(
        "INSERT INTO agent_threads (thread_id, owner, metadata, config) "
        "VALUES ($1, $2, $3::jsonb, $4::jsonb) ON CONFLICT (thread_id) DO NOTHING RETURNING *",
        thread_id, owner, _json(metadata or {}), _json(config or {}))
    if row is not None:
        return _shape(row)
    existing = await get_thread(db, thread_id, owner)
    if if_exists == "do_nothing" and existing is not None:
        return existing
    raise Conflict(f"Thread {thread_id} already exists")


async def get_thread(db: Any, thread_id: str, owner: str | None) -> dict[str, Any] | None:
    """The thread, if it exists and is ``owner``'s."""
    row = await db.fetchrow(f"SELECT * FROM agent_threads WHERE {_MINE} AND thread_id = $2",
                            owner, thread_id)
    return None if row is None else _shape(row)


async def patch_thread(db: Any, thread_id: str, owner: str | None,
                       metadata: dict[str, Any]) -> dict[str, Any] | None:
    """Merge ``metadata`` into the thread's (top-level keys replaced); None if not found."""
    row = await db.fetchrow(
        f"UPDATE agent_threads SET metadata = metadata || $3::jsonb, updated_at = now() "
        f"WHERE {_MINE} AND thread_id = $2 RETURNING *", owner, thread_id, _json(metadata))
    return None if row is None else _shape(row)


async def set_thread_state(db: Any, thread_id: str, *, status: str | None = None,
                           values: Any = ..., interrupts: dict[str, Any] | None = None,
                           metadata: dict[str, Any] | None = None,
                           run_error: Any = ...) -> None:
    """Record what a run or a state update left: ``status`` (idle|busy|interrupted|error),
    ``values`` and ``interrupts`` (``{task_id: [{id, value}]}``), and ``metadata`` merged in
    (run creation stamps ``graph_id`` and ``assistant_id``); ``run_error`` when a run ended
    (None when it did not fail). Unowned: the caller checked."""
    sets: list[str] = ["updated_at = now()"]
    args: list[Any] = [thread_id]
    for column, value in (("status", status), ("metadata", metadata),
                          ("interrupts", interrupts), ('"values"', values)):
        if value is None or value is ...:
            continue
        args.append(value if column == "status" else _json(value))
        n = len(args)
        sets.append(f"metadata = metadata || ${n}::jsonb" if column == "metadata"
                    else f"{column} = ${n}" + ("" if column == "status" else "::jsonb"))
    if values is not ... or interrupts is not None:
        sets.append("state_updated_at = now()")
    if run_error is not ...:  # a run ended: its error (null on success), and the thread's
        # config takes the run's shape, as the Agent Server records it
        args.append(_json(run_error))
        sets.append(f"error = ${len(args)}::jsonb")
        sets.append("config = CASE WHEN config ? 'configurable' THEN config "
                    "ELSE config || '{\"configurable\": {}}'::jsonb END")
    await db.execute(f"UPDATE agent_threads SET {', '.join(sets)} WHERE thread_id = $1", *args)


async def delete_thread(db: Any, thread_id: str, owner: str | None) -> bool:
    """Delete the thread and its runs' records; False if not found."""
    async with db.acquire() as conn, conn.transaction():
        gone = await conn.fetchval(
            f"DELETE FROM agent_threads WHERE {_MINE} AND thread_id = $2 RETURNING thread_id",
            owner, thread_id)
        if gone is not None:
            await conn.execute("DELETE FROM agent_runs WHERE thread_id = $1", thread_id)
    return gone is not None


async def search_threads(db: Any, owner: str | None, *, metadata: dict[str, Any] | None = None,
                         values: dict[str, Any] | None = None, ids: list[str] | None = None,
                         status: str | None = None, limit: int = 10, offset: int = 0,
                         sort_by: str | None = None, sort_order: str | None = None,
                         ) -> tuple[list[dict[str, Any]], int]:
    """A page of the matching threads (newest update first by default) and how many match."""
    where, args = _filters(1, metadata__contains=metadata, values__contains=values,
                           thread_id__any=ids, status__eq=status)
    order = _order(sort_by, sort_order, THREAD_SORTS, "updated_at")
    rows = await db.fetch(
        f"SELECT *, count(*) OVER () AS total_ FROM agent_threads WHERE {_MINE}{where} "
        f"ORDER BY {order} LIMIT {int(limit)} OFFSET {int(offset)}", owner, *args)
    if rows:
        total = rows[0]["total_"]
    else:
        total = await db.fetchval(f"SELECT count(*) FROM agent_threads WHERE {_MINE}{where}",
                                  owner, *args)
    return [{k: v for k, v in _shape(r).items() if k != "total_"} for r in rows], total


async def count_threads(db: Any, owner: str | None, *, metadata: dict[str, Any] | None = None,
                        values: dict[str, Any] | None = None,
                        status: str | None = None) -> int:
    """How many of ``owner``'s threads match."""
    where, args = _filters(1, metadata__contains=metadata, values__contains=values,
                           status__eq=status)
    count: int = await db.fetchval(
        f"SELECT count(*) FROM agent_threads WHERE {_MINE}{where}", owner, *args)
    return count


# -- runs ------------------------------------------------------------------------------------

def _run(row: Any) -> dict[str, Any]:
    """A run as the Agent Server has it (``langsmith_session_name``: graphwire traces with
    OpenTelemetry, not LangSmith, so always null)."""
    return {**_shape(row), "langsmith_session_name": None}


async def get_run(db: Any, run_id: str, owner: str | None,
                  thread_id: str | None = None) -> dict[str, Any] | None:
    """The run, if ``owner``'s (and on ``thread_id`` when given)."""
    where, args = _filters(2, thread_id__eq=thread_id)
    row = await db.fetchrow(f"SELECT * FROM agent_runs WHERE {_MINE} AND run_id = $2{where}",
                            owner, run_id, *args)
    return None if row is None else _run(row)


async def list_runs(db: Any, thread_id: str, owner: str | None, *, limit: int = 10,
                    offset: int = 0, status: str | None = None) -> list[dict[str, Any]]:
    """The thread's runs, newest first (``status``: only those)."""
    where, args = _filters(2, status__eq=status)
    rows = await db.fetch(
        f"SELECT * FROM agent_runs WHERE {_MINE} AND thread_id = $2{where} "
        f"ORDER BY created_at DESC, run_id DESC LIMIT {int(limit)} OFFSET {int(offset)}",
        owner, thread_id, *args)
    return [_run(r) for r in rows]


async def active_runs(db: Any, thread_id: str) -> list[dict[str, Any]]:
    """The thread's pending and running runs, oldest first (whoever owns them)."""
    rows = await db.fetch(
        "SELECT * FROM agent_runs WHERE thread_id = $1 AND status IN ('pending', 'running') "
        "ORDER BY created_at, run_id", thread_id)
    return [_run(r) for r in rows]


async def delete_run(db: Any, run_id: str, owner: str | None,
                     thread_id: str | None = None) -> bool:
    """Delete the run's record; False if not found."""
    where, args = _filters(2, thread_id__eq=thread_id)
    gone = await db.fetchval(
        f"DELETE FROM agent_runs WHERE {_MINE} AND run_id = $2{where} RETURNING run_id",
        owner, run_id, *args)
    return gone is not None
