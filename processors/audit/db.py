"""The audit tables in PostgreSQL: connections, numbered migrations, and the queries behind
``graphwire runs``, ``graphwire status`` and ``graphwire db prune``.

Migrations are the files ``processors/migrations/NNNN_name.sql``, applied in order, each in its
own transaction, under an advisory lock so two processes starting at once do not race. The
table ``graphwire_schema_migrations`` records which ones ran.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import asyncpg
import orjson

from graphwire.topics.errors import DependencyUnavailable, GraphwireError

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x6777_6175_6474  # pg_advisory_lock key: "gwaudt"
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS graphwire_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The migrations shipped with graphwire, in version order."""
    found = []
    for entry in resources.files("graphwire.processors.audit.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version number: {versions}")
    return found


def search_path(schema: str) -> str:
    """The search_path of an audit connection to ``schema``: that schema and nothing else.

    No ``public`` after it: a configured schema that was never migrated would then silently read
    and write the tables someone else left in ``public``."""
    return '"' + schema.replace('"', '""') + '"'


def server_settings(schema: str | None) -> dict[str, str]:
    """Session settings for audit connections (only ``schema`` on the search_path, if given)."""
    settings = {"application_name": "graphwire-audit"}
    if schema:
        settings["search_path"] = search_path(schema)
    return settings


async def connect(dsn: str, schema: str | None = None, *, timeout: float = 10.0) -> Any:
    """One connection, or ``DependencyUnavailable`` saying which URL setting to check."""
    try:
        return await asyncpg.connect(
            dsn, timeout=timeout, command_timeout=60, server_settings=server_settings(schema)
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DependencyUnavailable(
            f"PostgreSQL does not answer ({type(exc).__name__}: {exc}); "
            "check GRAPHWIRE_DATABASE_URL"
        ) from None


async def migrate(conn: Any, schema: str | None = None) -> list[Migration]:
    """Apply the migrations this database has not seen; returns the ones applied.

    With ``schema``, the tables go there (the connection's search_path is set to it)."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        if schema:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(f"SET search_path TO {search_path(schema)}")
        await conn.execute(_VERSION_TABLE)
        done = {r["version"] for r in await conn.fetch(
            "SELECT version FROM graphwire_schema_migrations"
        )}
        applied = []
        for migration in migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO graphwire_schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def schema_exists(conn: Any, schema: str) -> bool:
    """Whether the database has a schema named ``schema``."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema
    ))


async def schema_version(conn: Any, schema: str | None = None) -> int:
    """The highest applied migration (0 when none) in ``schema``, else in the search_path."""
    table = "graphwire_schema_migrations"
    if schema:
        table = f"{search_path(schema)}.{table}"
    # to_regclass is NULL (not an error) for a missing table and for a missing schema
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
        return 0
    latest = await conn.fetchval(f"SELECT max(version) FROM {table}")
    return int(latest or 0)


async def require_migrated(conn: Any, schema: str | None = None) -> None:
    """Raise a clear error when ``schema`` (if given) is missing, or the audit tables are missing
    or older than this graphwire."""
    if schema and not await schema_exists(conn, schema):
        raise GraphwireError(
            f"the audit schema {schema!r} (GRAPHWIRE_AUDIT_SCHEMA) does not exist in this "
            "database: run `graphwire db migrate` to create it, or correct the setting"
        )
    have, want = await schema_version(conn, schema), migrations()[-1].version
    if have < want:
        raise GraphwireError(
            f"the audit tables are at version {have}, this graphwire needs {want}: run "
            "`graphwire db migrate` (or start the sink with --migrate)"
        )


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


def run_row(record: Any) -> dict[str, Any]:
    """A ``graphwire_runs`` row as a JSON-ready dict."""
    row = dict(record)
    for name in ("input", "command", "output", "error", "interrupts", "metadata"):
        row[name] = _json(row.get(name))
    for name in ("requested_at", "finished_at"):
        if row.get(name) is not None:
            row[name] = row[name].isoformat()
    return row


async def run_with_events(conn: Any, request_id: str) -> dict[str, Any] | None:
    """The run and its events in seq order, or None when the sink never saw it."""
    run = await conn.fetchrow("SELECT * FROM graphwire_runs WHERE request_id = $1", request_id)
    if run is None:
        return None
    events = await conn.fetch(
        "SELECT seq, type, node, data, ts FROM graphwire_events WHERE request_id = $1 "
        "ORDER BY seq",
        request_id,
    )
    row = run_row(run)
    row["events"] = [
        {"seq": e["seq"], "type": e["type"], "node": e["node"], "data": _json(e["data"]),
         "ts": e["ts"].isoformat()}
        for e in events
    ]
    # the once() calls of the run, from its effect events: the journal itself is deleted with
    # the thread's checkpoints, this record stays
    row["effects"] = [
        {"seq": e["seq"], "node": e["node"], **e["data"]}
        for e in row["events"] if e["type"] == "effect" and isinstance(e["data"], dict)
    ]
    return row


def parse_age(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``7d`` (or a bare number of seconds) as a timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise GraphwireError(f"cannot read the age {text!r}: write it like 90s, 15m, 1h, 7d or 2w")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match[2]]
    return timedelta(seconds=float(match[1]) * unit)


async def list_runs(
    conn: Any,
    *,
    graph: str | None = None,
    status: str | None = None,
    since: timedelta | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Newest runs first, filtered by graph, status and age."""
    where: list[str] = []
    args: list[Any] = []
    if graph:
        args.append(graph)
        where.append(f"graph = ${len(args)}")
    if status:
        args.append(status)
        where.append(f"status = ${len(args)}")
    if since is not None:
        args.append(datetime.now(UTC) - since)
        where.append(f"coalesce(requested_at, finished_at) >= ${len(args)}")
    args.append(limit)
    sql = (
        "SELECT request_id, graph, thread_id, status, attempts, cached, duration_ms, "
        "requested_at, finished_at FROM graphwire_runs"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY coalesce(requested_at, finished_at) DESC NULLS LAST LIMIT ${len(args)}"
    )
    return [run_row(r) for r in await conn.fetch(sql, *args)]


async def prune_events(conn: Any, older_than: timedelta, *, batch: int = 10_000) -> int:
    """Delete events older than ``older_than`` in batches (short locks); returns the count."""
    cutoff = datetime.now(UTC) - older_than
    total = 0
    while True:
        status = await conn.execute(
            "DELETE FROM graphwire_events WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM graphwire_events WHERE ts < $1 LIMIT $2))",
            cutoff,
            batch,
        )
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch:
            return total
