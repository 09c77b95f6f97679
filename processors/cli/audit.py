"""``graphwire`` commands of the audit record: ``audit``, ``db migrate|prune``, ``runs show|list``
and ``status``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from graphwire.processors.cli.common import EXIT_FAILED, EXIT_OK, settings_from
from graphwire.topics.codec import dumps
from graphwire.topics.errors import DependencyUnavailable, GraphwireError


def _db(settings: Any) -> tuple[str, str | None]:
    return settings.database_url.get_secret_value(), settings.audit_schema


def audit_command(args: argparse.Namespace) -> int:
    """Check (or migrate) the database, then run the faust sink until stopped."""
    import asyncio

    from graphwire.processors.audit.db import connect, migrate, require_migrated
    from graphwire.processors.audit.sink import run_sink

    settings = settings_from(args)
    if args.audit_group_id:
        settings = settings.model_copy(update={"audit_group_id": args.audit_group_id})

    async def prepare() -> None:
        conn = await connect(*_db(settings))
        try:
            if args.migrate:
                await migrate(conn, settings.audit_schema)
            else:
                await require_migrated(conn, settings.audit_schema)
        finally:
            await conn.close()

    asyncio.run(prepare())
    return run_sink(settings)


async def db_migrate_command(args: argparse.Namespace) -> int:
    from graphwire.processors.audit.db import connect, migrate, schema_version

    settings = settings_from(args)
    conn = await connect(*_db(settings))
    try:
        applied = await migrate(conn, settings.audit_schema)
        version = await schema_version(conn, settings.audit_schema)
    finally:
        await conn.close()
    for m in applied:
        print(f"applied {m.version:04d}_{m.name}")
    print(f"audit tables at version {version}" + ("" if applied else " (nothing to do)"))
    return EXIT_OK


async def db_prune_command(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from graphwire.processors.audit.db import connect, parse_age, prune_events, require_migrated

    settings = settings_from(args)
    age = (
        parse_age(args.older_than)
        if args.older_than
        else timedelta(days=settings.audit_retention_days)
    )
    conn = await connect(*_db(settings))
    try:
        await require_migrated(conn, settings.audit_schema)
        count = await prune_events(conn, age)
    finally:
        await conn.close()
    print(f"deleted {count} events older than {age}")
    return EXIT_OK


async def runs_show_command(args: argparse.Namespace) -> int:
    from graphwire.processors.audit.db import connect, require_migrated, run_with_events

    settings = settings_from(args)
    conn = await connect(*_db(settings))
    try:
        await require_migrated(conn, settings.audit_schema)
        run = await run_with_events(conn, args.request_id)
    finally:
        await conn.close()
    if run is None:
        raise GraphwireError(
            f"no run {args.request_id!r} in the audit tables: check the id, and that "
            "`graphwire audit` is running"
        )
    print(dumps(run).decode())
    return EXIT_OK


async def runs_list_command(args: argparse.Namespace) -> int:
    from graphwire.processors.audit.db import connect, list_runs, parse_age, require_migrated

    settings = settings_from(args)
    since = parse_age(args.since) if args.since else None
    conn = await connect(*_db(settings))
    try:
        await require_migrated(conn, settings.audit_schema)
        runs = await list_runs(
            conn, graph=args.graph, status=args.status, since=since, limit=args.limit
        )
    finally:
        await conn.close()
    if args.json:
        for run in runs:
            print(dumps(run).decode())
        return EXIT_OK
    print(f"{'REQUEST_ID':<38} {'GRAPH':<14} {'STATUS':<12} {'ATTEMPTS':>8} "
          f"{'DURATION_MS':>11}  REQUESTED_AT")
    for run in runs:
        duration = "" if run["duration_ms"] is None else f"{run['duration_ms']:.1f}"
        print(
            f"{run['request_id']:<38} {run['graph'] or '-':<14} {run['status']:<12} "
            f"{run['attempts'] or '':>8} {duration:>11}  {run['requested_at'] or '-'}"
        )
    print(f"{len(runs)} runs", file=sys.stderr)
    return EXIT_OK


async def status_command(args: argparse.Namespace) -> int:
    """Redis first (the runner's live lease and done marker), then the audit table."""
    from redis.asyncio import Redis

    from graphwire.processors.audit.db import connect, require_migrated
    from graphwire.topics.runstatus import read_run_state

    settings = settings_from(args)
    rid = args.request_id
    problems = []
    try:
        redis = Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5,
                               socket_connect_timeout=5)
        try:
            found = await read_run_state(redis, settings.topic_prefix, rid)
        finally:
            await redis.aclose()
        if found is not None:
            print(dumps({"request_id": rid, **found.as_dict(), "source": "redis"}).decode())
            return EXIT_OK
    except DependencyUnavailable as exc:
        problems.append(str(exc))
    try:
        conn = await connect(*_db(settings))
        try:
            await require_migrated(conn, settings.audit_schema)
            row = await conn.fetchrow(
                "SELECT status, attempts, requested_at, finished_at FROM graphwire_runs "
                "WHERE request_id = $1",
                rid,
            )
        finally:
            await conn.close()
    except DependencyUnavailable as exc:
        problems.append(str(exc))
        row = None
    if row is not None:
        body = {"request_id": rid, **dict(row), "source": "postgresql"}
        print(dumps(body).decode())
        return EXIT_OK
    if len(problems) == 2:
        raise DependencyUnavailable("; ".join(problems))
    print(f"graphwire: unknown request {rid!r} (neither Redis nor the audit table has it)"
          + (f"; {problems[0]}" if problems else ""), file=sys.stderr)
    return EXIT_FAILED


def add_parsers(sub: Any, kafka_flags: Any) -> None:
    """Add the audit commands to ``graphwire``'s subparsers."""
    p = sub.add_parser("audit", help="run the audit sink: every message into PostgreSQL")
    kafka_flags(p)
    p.add_argument(
        "--group-id", dest="audit_group_id", help="consumer group (GRAPHWIRE_AUDIT_GROUP_ID)"
    )
    p.add_argument("--migrate", action="store_true", help="create/upgrade the tables first")
    p.add_argument(
        "--processes", type=int, default=1, help="sink processes in the group (one core each)"
    )
    p.set_defaults(func=audit_command, is_async=False)

    p = sub.add_parser("db", help="the audit tables in PostgreSQL")
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    d = dsub.add_parser("migrate", help="create or upgrade the audit tables (idempotent)")
    d.set_defaults(func=db_migrate_command, is_async=True)
    d = dsub.add_parser("prune", help="delete events older than the retention")
    d.add_argument(
        "--older-than", help="age like 30d or 12h (default GRAPHWIRE_AUDIT_RETENTION_DAYS)"
    )
    d.set_defaults(func=db_prune_command, is_async=True)

    p = sub.add_parser("runs", help="query the audit record of runs")
    rsub = p.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    r = rsub.add_parser("show", help="one run with its events in order")
    r.add_argument("request_id")
    r.set_defaults(func=runs_show_command, is_async=True)
    r = rsub.add_parser("list", help="newest runs first")
    r.add_argument("--graph", help="only this graph")
    r.add_argument("--status", help="accepted, success, error, rejected, timeout, interrupted")
    r.add_argument("--since", help="only runs newer than this age, like 1h or 7d")
    r.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    r.add_argument("--json", action="store_true", help="one JSON object per line")
    r.set_defaults(func=runs_list_command, is_async=True)

    p = sub.add_parser("status", help="a request's status: Redis (live) then PostgreSQL")
    p.add_argument("request_id")
    p.set_defaults(func=status_command, is_async=True)
