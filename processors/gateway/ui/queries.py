"""What the run inspector reads from the audit tables, within one caller's scope (an
operator's: every run, its scope ``None``).

A caller's runs are the request ids in its namespace (``<scope>.<id>``), so every query has
``split_part(request_id, '.', 1) = $1`` and an index that starts with it (migration 0007); an
operator's queries drop that condition and use the indexes without the scope (migration 0001).
Pages are keyset-paginated on ``(seen, request_id)``, newest first, where ``seen`` is
``coalesce(requested_at, finished_at)``: a page is one index range scan, whatever its depth.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

SEEN = "coalesce(requested_at, finished_at)"
SCOPE = "split_part(request_id, '.', 1)"
SUMMARY_COLUMNS = (
    "request_id, graph, thread_id, status, attempts, cached, duration_ms, requested_at, "
    f"finished_at, {SEEN} AS seen, coalesce(command ? 'resume', false) AS resume"
)
FAILED = ("error", "timeout", "rejected")
LATEST_CHANGE_ALL = (  # no index on finished_at alone: the runs seen in the newest day
    f"SELECT newest.seen, (SELECT max(finished_at) FROM graphwire_runs "
    f"WHERE {SEEN} >= newest.seen - interval '1 day') AS finished "
    f"FROM (SELECT max({SEEN}) AS seen FROM graphwire_runs) AS newest")
"""The live feed's newest change for an operator: two ranges of ``graphwire_runs_seen``."""


class BadCursor(ValueError):
    """A page cursor that this gateway did not make."""


@dataclass(frozen=True, slots=True)
class RunFilter:
    """What the Runs page asks for; every field optional but the scope (``None``: every
    caller's runs and those produced to Kafka directly, for an operator)."""

    scope: str | None
    graph: str | None = None
    status: str | None = None
    thread_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def encode_cursor(seen: datetime, request_id: str) -> str:
    """The opaque cursor of the page after the row ``(seen, request_id)``."""
    raw = orjson.dumps([seen.isoformat(), request_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``(seen, request_id)`` from a cursor; ``BadCursor`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        seen, request_id = orjson.loads(raw)
        when = datetime.fromisoformat(seen)
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise BadCursor("this page cursor is not one the gateway made; start from page 1") from None
    if not isinstance(request_id, str) or when.tzinfo is None:
        raise BadCursor("this page cursor is not one the gateway made; start from page 1")
    return when, request_id


def runs_page_sql(flt: RunFilter, cursor: tuple[datetime, str] | None,
                  limit: int) -> tuple[str, list[Any]]:
    """The SQL and arguments of one page of runs (``limit + 1`` rows: one more says there is
    a next page)."""
    args: list[Any] = []
    where: list[str] = []
    if flt.scope is not None:
        args.append(flt.scope)
        # A thread id is namespaced too, so its index alone holds the page; the scope is then
        # a filter on those rows, written so the planner does not also read the caller's whole
        # slice of a scope index (and sort) to intersect the two.
        where.append(f"{SCOPE} = $1" if flt.thread_id is None
                     else "left(request_id, length($1) + 1) = $1 || '.'")
    for column, value in (("graph", flt.graph), ("status", flt.status),
                          ("thread_id", flt.thread_id)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if flt.since is not None:
        args.append(flt.since)
        where.append(f"{SEEN} >= ${len(args)}")
    if flt.until is not None:
        args.append(flt.until)
        where.append(f"{SEEN} < ${len(args)}")
    if cursor is not None:
        args += list(cursor)
        where.append(f"({SEEN}, request_id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    sql = (f"SELECT {SUMMARY_COLUMNS} FROM graphwire_runs WHERE {_all(where)} "
           f"ORDER BY {SEEN} DESC, request_id DESC LIMIT ${len(args)}")
    return sql, args


async def runs_page(db: Any, flt: RunFilter, cursor: str | None,
                    limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """One page of runs, newest first, and the cursor of the next page (None: the last)."""
    sql, args = runs_page_sql(flt, decode_cursor(cursor) if cursor else None, limit)
    rows = [dict(r) for r in await db.fetch(sql, *args)]
    more = len(rows) > limit
    rows = rows[:limit]
    following = encode_cursor(rows[-1]["seen"], rows[-1]["request_id"]) if more else None
    return rows, following


async def latest_change(db: Any, scope: str | None) -> tuple[datetime | None, datetime | None]:
    """The newest ``seen`` and ``finished_at`` of the caller's runs (every run's for an
    operator; two index lookups): the live feed tells the page when either moves."""
    if scope is None:
        row = await db.fetchrow(LATEST_CHANGE_ALL)
        return row["seen"], row["finished"]
    row = await db.fetchrow(
        f"SELECT (SELECT max({SEEN}) FROM graphwire_runs WHERE {SCOPE} = $1) AS seen, "
        f"(SELECT max(finished_at) FROM graphwire_runs WHERE {SCOPE} = $1 "
        "AND finished_at IS NOT NULL) AS finished",
        scope,
    )
    return row["seen"], row["finished"]


async def run(db: Any, request_id: str) -> dict[str, Any] | None:
    """One run's row (the caller's ownership is checked before)."""
    row = await db.fetchrow(
        f"SELECT *, {SEEN} AS seen, coalesce(command ? 'resume', false) AS resume "
        "FROM graphwire_runs "
        "WHERE request_id = $1", request_id)
    return None if row is None else dict(row)


async def events(db: Any, request_id: str, limit: int = 2000) -> list[dict[str, Any]]:
    """A run's events in seq order (at most ``limit``)."""
    rows = await db.fetch(
        "SELECT seq, type, node, data, ts FROM graphwire_events WHERE request_id = $1 "
        "ORDER BY seq LIMIT $2", request_id, limit)
    return [dict(r) for r in rows]


async def thread_turns(db: Any, thread_id: str, limit: int = 200,
                       after: tuple[datetime, str] | None = None,
                       *, bodies: bool = True) -> list[dict[str, Any]]:
    """A thread's runs, oldest first (``graphwire_runs_thread_seen``), after the turn
    ``after`` (``(seen, request_id)``, a keyset page); without ``bodies`` their summaries only
    (no input, output, error: a run page lists its thread's turns, it does not show them)."""
    columns = SUMMARY_COLUMNS + (", input, command, output, error, interrupts" if bodies else "")
    keyset = f"AND ({SEEN}, request_id) > ($3, $4) " if after else ""
    rows = await db.fetch(
        f"SELECT {columns} FROM graphwire_runs WHERE thread_id = $1 {keyset}"
        f"ORDER BY {SEEN}, request_id LIMIT $2", thread_id, limit, *(after or ()))
    return [dict(r) for r in rows]


async def dead_letters_page(db: Any, scope: str | None, before: int | None,
                            limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """The caller's dead letters (every one, for an operator), newest first, keyset on ``id``;
    and the next page's ``before`` (None: the last page)."""
    args: list[Any] = []
    conditions = []
    if scope is not None:
        args.append(scope)
        conditions += [f"{SCOPE} = $1", "request_id IS NOT NULL"]
    if before is not None:
        args.append(before)
        conditions.append(f"id < ${len(args)}")
    where = _all(conditions)
    args.append(limit + 1)
    rows = [dict(r) for r in await db.fetch(
        "SELECT id, source_topic, source_partition, source_offset, origin, request_id, key, "
        f"value, headers, reason, received_at FROM graphwire_dead_letters WHERE {where} "
        f"ORDER BY id DESC LIMIT ${len(args)}", *args)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, rows[-1]["id"] if more else None


async def dead_letter(db: Any, letter_id: int) -> dict[str, Any] | None:
    """One dead letter by id (ownership checked by the caller)."""
    row = await db.fetchrow(
        "SELECT id, source_topic, source_partition, source_offset, origin, request_id, key, "
        "value, headers, reason, received_at FROM graphwire_dead_letters WHERE id = $1",
        letter_id)
    return None if row is None else dict(row)


async def overview(db: Any, scope: str | None, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per graph and minute over the last hour: finished runs, failed ones, p50 and p99 of
    their duration. Rows ordered by graph, then minute."""
    since = (now or datetime.now(UTC)) - timedelta(hours=1)
    rows = await db.fetch(
        "SELECT coalesce(graph, '') AS graph, date_trunc('minute', finished_at) AS minute, "
        "count(*) AS runs, count(*) FILTER (WHERE status = ANY($3::text[])) AS failed, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50, "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99 "
        f"FROM graphwire_runs WHERE {_in_scope(scope)} AND finished_at IS NOT NULL "
        "AND finished_at >= $2 GROUP BY 1, 2 ORDER BY 1, 2",
        scope or "", since, list(FAILED))
    return [dict(r) for r in rows]


async def overview_totals(db: Any, scope: str | None,
                          now: datetime | None = None) -> list[dict[str, Any]]:
    """Per graph over the whole last hour (percentiles do not add up across minutes)."""
    since = (now or datetime.now(UTC)) - timedelta(hours=1)
    rows = await db.fetch(
        "SELECT coalesce(graph, '') AS graph, count(*) AS runs, "
        "count(*) FILTER (WHERE status = ANY($3::text[])) AS failed, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50, "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99 "
        f"FROM graphwire_runs WHERE {_in_scope(scope)} AND finished_at IS NOT NULL "
        "AND finished_at >= $2 GROUP BY 1 ORDER BY 1",
        scope or "", since, list(FAILED))
    return [dict(r) for r in rows]


def _all(conditions: list[str]) -> str:
    """The conditions joined with AND (``true`` when there are none)."""
    return " AND ".join(conditions) if conditions else "true"


def _in_scope(scope: str | None) -> str:
    """The condition that a row is in the scope ``$1``. An operator's (``None``) takes every
    caller's runs seen in the day before ``$2`` (the overview's start): ``graphwire_runs_seen``
    holds those, where no index has ``finished_at`` alone; a run longer than a day is left out
    of an operator's overview. ``$1`` is then unused, and its type must still be known."""
    if scope is not None:
        return f"{SCOPE} = $1"
    return f"$1::text IS NOT NULL AND {SEEN} >= $2::timestamptz - interval '1 day'"
