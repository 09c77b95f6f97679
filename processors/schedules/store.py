"""The schedules table (``graphwire_schedules``, migration 0006): stored requests and firings.

A row is a request to produce when it is due, exactly as it will be produced (value, key,
headers). ``fired_at`` is set once the broker acknowledged it: a row produced but not marked
(its leader died in between) is produced again by the next leader, with the same request_id.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from croniter import croniter

from graphwire.processors.gateway.auth import Principal
from graphwire.topics.codec import dumps, principal_header
from graphwire.topics.crons import Cron, cron_from_row, due_firings, rfc3339

log = logging.getLogger(__name__)

_CRON_COLUMNS = (
    "name, graph, schedule, timezone, input, thread_id, metadata, missed, owner, paused, "
    "next_at, last_fired, template, run_ids, end_at"
)

# The Agent Server API's crons (the gateway's ``agent_crons``, keyed by the graphwire cron's
# name): each firing is also an Agent Server run, recorded ``pending`` in ``agent_runs`` in the
# same transaction as its schedules row, so ``runs.get``/``runs.list`` find it (the gateway
# brings its status up to date from Redis as for any run). Only crons with ``run_ids = 'uuid7'``
# (which only the gateway's ``/runs/crons`` makes) run this.
RECORD_AGENT_RUNS = """
INSERT INTO agent_runs (run_id, thread_id, assistant_id, owner, status, metadata, kwargs,
                        multitask_strategy)
SELECT f.run_id::uuid, c.thread_id, c.assistant_id, c.owner, 'pending',
       coalesce(c.payload -> 'metadata', '{}'::jsonb)
           || jsonb_build_object('cron_id', c.cron_id::text, 'scheduled_at', f.at),
       c.payload - 'schedule' - 'timezone' - 'end_time' - 'enabled' - 'on_run_completed'
           - 'assistant_id' - 'metadata',
       CASE WHEN c.thread_id IS NULL THEN NULL
            ELSE coalesce(c.payload ->> 'multitask_strategy', 'enqueue') END
FROM agent_crons c, unnest($2::text[], $3::text[]) AS f(run_id, at)
WHERE c.name = $1
ON CONFLICT (run_id) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class Stored:
    """One row of ``graphwire_schedules``."""

    request_id: str
    due_at: datetime
    graph: str
    cron: str | None
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    source: str | None = None

    def args(self) -> tuple[Any, ...]:
        headers = [[name, base64.b64encode(value).decode()] for name, value in self.headers]
        return (self.request_id, self.due_at, self.graph, self.cron, self.key, self.value,
                orjson.dumps(headers).decode(), self.source)


_INSERT = (
    "INSERT INTO graphwire_schedules (request_id, due_at, graph, cron, msg_key, value, headers, "
    "source) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8) ON CONFLICT (request_id) DO NOTHING"
)


async def store(db: Any, rows: list[Stored]) -> None:
    """Insert ``rows`` (a request_id stored already keeps its first row)."""
    await db.executemany(_INSERT, [row.args() for row in rows])


@dataclass(frozen=True, slots=True)
class Due:
    """A stored request whose time has come."""

    request_id: str
    due_at: datetime
    cron: str | None
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


async def take_due(conn: Any, now: datetime, limit: int) -> list[Due]:
    """Unfired rows due at ``now``, oldest first."""
    rows = await conn.fetch(
        "SELECT request_id, due_at, cron, msg_key, value, headers FROM graphwire_schedules "
        "WHERE fired_at IS NULL AND due_at <= $1 ORDER BY due_at LIMIT $2", now, limit,
    )
    due = []
    for row in rows:
        headers = row["headers"]
        headers = orjson.loads(headers) if isinstance(headers, str) else headers
        due.append(Due(row["request_id"], row["due_at"], row["cron"], row["msg_key"],
                       row["value"], [(n, base64.b64decode(v)) for n, v in headers]))
    return due


async def mark_fired(conn: Any, request_ids: list[str]) -> None:
    """The broker acknowledged these: do not produce them again."""
    await conn.execute(
        "UPDATE graphwire_schedules SET fired_at = now() WHERE request_id = ANY($1::text[])",
        request_ids,
    )


async def next_due(conn: Any) -> datetime | None:
    """The earliest time something is due: an unfired row or an active cron's next firing."""
    found: datetime | None = await conn.fetchval(
        "SELECT least((SELECT min(due_at) FROM graphwire_schedules WHERE fired_at IS NULL), "
        "(SELECT min(next_at) FROM graphwire_crons WHERE NOT paused))"
    )
    return found


async def pending(conn: Any) -> int:
    """Rows not produced yet."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM graphwire_schedules WHERE fired_at IS NULL"
    ))


async def prune(conn: Any, older_than: timedelta, now: datetime) -> int:
    """Delete rows fired more than ``older_than`` ago; returns how many."""
    status = await conn.execute(
        "DELETE FROM graphwire_schedules WHERE fired_at < $1", now - older_than
    )
    return int(status.split()[-1])


@dataclass(frozen=True, slots=True)
class CronTick:
    """What taking the due crons did."""

    stored: int = 0
    missed_run: int = 0
    missed_skipped: int = 0


MAX_MISSED_COUNTED = 1000  # counting is CPU on the event loop: a long outage counts this many


def _missed(cron: Cron, now: datetime, grace: timedelta) -> int:
    """How many firings between ``cron.next_at`` and the grace cutoff were missed (at most
    ``MAX_MISSED_COUNTED``)."""
    cutoff = now - grace
    if cron.next_at >= cutoff:
        return 0
    count, at = 0, cron.next_at
    it = croniter(cron.schedule, at.astimezone(ZoneInfo(cron.timezone)))
    while at < cutoff and count < MAX_MISSED_COUNTED:
        count += 1
        at = it.get_next(datetime)
    return count


def cron_owner(body: Any) -> Principal | None:
    """The gateway caller a cron's request names in ``metadata.principal`` with a
    ``rate_per_minute`` (set by the gateway's cron routes); None for the crons of the CLI and
    the client, and for delayed requests."""
    found = body.get("metadata", {}).get("principal") if isinstance(body, dict) else None
    if not isinstance(found, dict):
        return None
    kind, name, rate = found.get("type"), found.get("name"), found.get("rate_per_minute")
    if not (isinstance(kind, str) and isinstance(name, str) and isinstance(rate, int)
            and not isinstance(rate, bool) and rate >= 1):
        return None
    return Principal(kind, name, frozenset(), rate)


def _firing(cron: Cron, at: datetime) -> Stored:
    """A firing's row: its request, and the ``x-graphwire-principal`` header of the caller
    who made the cron through the gateway (the runner gives the graph that caller's identity,
    ``langgraph_auth_user_id``, as for the caller's own runs)."""
    body = cron.request(at)
    key = (body.get("thread_id") or body["request_id"]).encode()
    owner = cron_owner(body)
    headers = [principal_header(owner.kind, owner.name, owner.scope)] if owner else []
    return Stored(body["request_id"], at, cron.graph, cron.name, key, dumps(body), headers,
                  f"cron {cron.name} {rfc3339(at)}")


async def take_crons(conn: Any, now: datetime, grace: timedelta) -> CronTick:
    """Turn every due firing of an active cron into a row (one transaction), and move each
    cron's ``next_at`` past ``now``; a cron past its ``end_at`` is paused, an Agent Server
    cron's firings are recorded as its runs (``RECORD_AGENT_RUNS``)."""
    stored = missed_run = missed_skipped = 0
    async with conn.transaction():
        rows = await conn.fetch(
            f"SELECT {_CRON_COLUMNS} FROM graphwire_crons WHERE NOT paused AND next_at <= $1 "
            "FOR UPDATE", now,
        )
        for row in rows:
            try:
                cron = cron_from_row(row)
                fire, upcoming = due_firings(cron, now, grace)
                if cron.end_at is not None:
                    fire = [at for at in fire if at <= cron.end_at]
                firings = [_firing(cron, at) for at in fire]
            except Exception as exc:  # a row written around CronStore: never stop the others
                log.error("cron %s cannot fire (%s: %s); paused it: redefine it with "
                          "`graphwire cron add %s --replace ...`", row["name"],
                          type(exc).__name__, exc, row["name"])
                await conn.execute("UPDATE graphwire_crons SET paused = true, updated_at = now() "
                                   "WHERE name = $1", row["name"])
                continue
            missed = _missed(cron, now, grace)
            if missed:
                if cron.missed == "run":
                    missed_run += missed
                else:
                    missed_skipped += missed
            if firings:
                await store(conn, firings)
                if cron.run_ids == "uuid7":
                    await conn.execute(RECORD_AGENT_RUNS, cron.name,
                                       [f.request_id for f in firings],
                                       [rfc3339(f.due_at) for f in firings])
            ended = cron.end_at is not None and upcoming > cron.end_at
            await conn.execute(
                "UPDATE graphwire_crons SET next_at = $2, last_fired = coalesce($3, last_fired), "
                "paused = paused OR $4 WHERE name = $1", cron.name, upcoming,
                fire[-1] if fire else None, ended,
            )
            stored += len(firings)
    return CronTick(stored, missed_run, missed_skipped)
