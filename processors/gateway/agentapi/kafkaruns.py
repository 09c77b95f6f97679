"""Runs produced straight to Kafka, seen through the Agent Server API by operators.

The mapping: a request a producer wrote to the requests topic itself (not through the gateway)
is an Agent Server **run** when its ``request_id`` is a UUID in canonical form (lowercase,
hyphenated; a UUIDv7 keeps runs in time order), and its ``thread_id`` an Agent Server
**thread** when that is a canonical UUID too. The assistant is the graph's default one. The
gateway learns of such runs from the audit table (``graphwire_runs``, written by
``graphwire audit``) and records them on an operator's read, with no owner (only operators see
rows without an owner):

- ``runs.get`` of such an id (``GET /runs/{id}``, ``/threads/{tid}/runs/{id}``);
- ``threads.get`` (and every thread route) of such a thread, and ``threads.search``: the
  threads the audit table holds that have no record yet are recorded first (their graph in
  ``metadata.graph_id``, their values and status from the checkpointer), with the runs on them;
- ``runs.list`` of such a thread records its runs seen since.

A search looks at the runs seen since the gateway's previous search (less ``OVERLAP``); a
thread whose runs the audit sink wrote later than that (a sink far behind) is found by
``threads.get`` of its id, and by searches after the gateway restarts.

From then on they are ordinary records: the status comes from Redis and the audit table
(``RunBook.refresh``), ``join``, ``join_stream`` and ``cancel`` work. Any other caller gets 404
for them and never finds them in a search. Requests whose ids are not UUIDs (``order-42``) stay
graphwire runs: ``/workflow/status`` and the inspector show them to operators.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from graphwire.processors.gateway.agentapi import records
from graphwire.processors.gateway.agentapi.ids import default_assistant_id
from graphwire.processors.gateway.agentapi.state import sync_thread
from graphwire.processors.gateway.auth import Principal
from graphwire.topics.codec import dumps, loads

log = logging.getLogger(__name__)

UUID_TEXT = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
"""A canonical UUID string (what ``str(uuid.UUID(...))`` gives)."""
STATUS = {"accepted": "pending", "success": "success", "error": "error", "timeout": "timeout",
          "interrupted": "interrupted", "cancelled": "interrupted", "rejected": "error"}
"""The audit table's status → the Agent Server's (``accepted``: not finished yet)."""
ADOPT_AT_ONCE = 200
"""Threads a search records at most per call (the next search records the rest)."""
OVERLAP = timedelta(minutes=5)
"""How far back a search looks before the previous one began (the audit sink writes a run
some time after its request was produced)."""

_RUN_COLUMNS = ("request_id, graph, thread_id, status, input, command, metadata, requested_at, "
                "finished_at")
_INSERT_RUN = (
    "INSERT INTO agent_runs (run_id, thread_id, assistant_id, owner, status, metadata, kwargs, "
    "created_at, updated_at) VALUES ($1::uuid, $2::uuid, $3::uuid, NULL, $4, $5::jsonb, "
    "$6::jsonb, coalesce($7, now()), coalesce($8, $7, now())) ON CONFLICT (run_id) DO NOTHING"
)


T = TypeVar("T")


async def quietly(work: Awaitable[T], default: T) -> T:
    """``work``, or ``default`` when this database has no audit tables (no ``graphwire db
    migrate`` in the gateway's schema: nothing was produced to Kafka that it could know)."""
    try:
        return await work
    except asyncpg.UndefinedTableError:
        return default


def operator(gw: Any, caller: Principal) -> bool:
    """Whether ``caller`` sees every record (Kafka-produced ones too)."""
    return gw.agent.owner(caller) is None and gw.db is not None


def _canonical(value: Any) -> str | None:
    """``value`` if it is a canonical UUID string, else None."""
    if not isinstance(value, str):
        return None
    try:
        return value if str(uuid.UUID(value)) == value else None
    except ValueError:
        return None


async def _record_run(db: Any, row: Any) -> None:
    run_id = _canonical(row["request_id"])
    if run_id is None or not row["graph"]:
        return
    kwargs = {k: loads(row[k]) if isinstance(row[k], str) else row[k]
              for k in ("input", "command") if row[k] is not None}
    metadata = row["metadata"] if row["metadata"] is not None else "{}"
    await db.execute(_INSERT_RUN, run_id, _canonical(row["thread_id"]),
                     default_assistant_id(row["graph"]), STATUS.get(row["status"], "error"),
                     metadata if isinstance(metadata, str) else dumps(metadata).decode(),
                     dumps(kwargs).decode(), row["requested_at"], row["finished_at"])


async def adopt_thread(gw: Any, thread_id: str) -> bool:
    """Record the Kafka thread ``thread_id`` (a canonical UUID) and its runs, if the audit
    table knows it and it has no record; whether a record exists now."""
    db = gw.agent.records()
    rows = await db.fetch(f"SELECT {_RUN_COLUMNS} FROM graphwire_runs WHERE thread_id = $1 "
                          "ORDER BY coalesce(requested_at, finished_at)", thread_id)
    graphs = [r["graph"] for r in rows if r["graph"]]
    if not graphs:
        return False
    graph = graphs[-1]
    created = await db.fetchval(
        "INSERT INTO agent_threads (thread_id, owner, metadata, created_at, updated_at) "
        "VALUES ($1::uuid, NULL, $2::jsonb, coalesce($3, now()), now()) "
        "ON CONFLICT (thread_id) DO NOTHING RETURNING true", thread_id,
        dumps({"graph_id": graph, "assistant_id": default_assistant_id(graph)}).decode(),
        rows[0]["requested_at"])
    for row in rows:
        await _record_run(db, row)
    if created:
        thread = await records.get_thread(db, thread_id, None)
        if thread is not None:
            try:
                await sync_thread(gw, thread)
            except Exception as exc:  # its graph is not registered here: no values
                log.info("thread %s produced to Kafka: no state read (%s: %s)", thread_id,
                         type(exc).__name__, exc)
    return True


async def adopt_threads(gw: Any) -> None:
    """Record the Kafka threads the audit table holds that have no record yet: all of them on
    a gateway's first search, then those with runs seen since its previous search (less
    ``OVERLAP``), so a search does not scan the whole table each time."""
    since: datetime | None = getattr(gw, "kafka_threads_seen", None)
    started = datetime.now(UTC)
    found = await gw.agent.records().fetch(
        "SELECT DISTINCT r.thread_id FROM graphwire_runs r WHERE r.thread_id ~ $1 AND "
        "($2::timestamptz IS NULL OR coalesce(r.requested_at, r.finished_at) >= $2) AND "
        "NOT EXISTS (SELECT 1 FROM agent_threads t WHERE t.thread_id::text = r.thread_id) "
        f"LIMIT {ADOPT_AT_ONCE}", UUID_TEXT, since)
    for row in found:
        await adopt_thread(gw, row["thread_id"])
    if len(found) < ADOPT_AT_ONCE:  # else the next search goes on from the same point
        gw.kafka_threads_seen = started - OVERLAP


async def adopt_runs_of(gw: Any, thread_id: str) -> None:
    """Record the runs on ``thread_id`` the audit table holds that have no record yet."""
    db = gw.agent.records()
    rows = await db.fetch(
        f"SELECT {_RUN_COLUMNS} FROM graphwire_runs r WHERE r.thread_id = $1 AND "
        "r.request_id ~ $2 AND NOT EXISTS (SELECT 1 FROM agent_runs a "
        "WHERE a.run_id::text = r.request_id)", thread_id, UUID_TEXT)
    for row in rows:
        await _record_run(db, row)


async def adopt_run(gw: Any, run_id: str) -> None:
    """Record the Kafka run ``run_id`` (and its thread), if the audit table knows it."""
    db = gw.agent.records()
    row = await db.fetchrow(f"SELECT {_RUN_COLUMNS} FROM graphwire_runs WHERE request_id = $1",
                            run_id)
    if row is None:
        return
    thread_id = _canonical(row["thread_id"])
    if thread_id is not None:
        await adopt_thread(gw, thread_id)
    await _record_run(db, row)
