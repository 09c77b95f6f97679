"""``graphwire scheduler`` (the processor) and ``graphwire cron add|list|rm|pause|resume``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from graphwire.processors.cli.common import EXIT_FAILED, EXIT_OK, json_object, settings_from


async def scheduler_command(args: argparse.Namespace) -> int:
    from graphwire.processors.httpserver import HealthServer
    from graphwire.processors.logs import setup_logging
    from graphwire.processors.schedules import Scheduler

    settings = settings_from(args)
    setup_logging(settings.log_level, settings.log_format)
    scheduler = Scheduler(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await scheduler.start(migrate=args.migrate)
    health = HealthServer(scheduler.readiness, scheduler.metrics.registry,
                          host=settings.http_host, port=settings.scheduler_http_port)
    await health.start()
    print(f"graphwire scheduler: delayed requests and crons of {settings.topics.requests} "
          f"(group {settings.scheduler_group_id})", file=sys.stderr, flush=True)
    while not stop.is_set() and scheduler.failed is None:
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    failure = scheduler.failed
    await scheduler.stop()
    await health.stop()
    if failure is not None:
        print(f"graphwire: error: the scheduler stopped: {type(failure).__name__}: {failure}",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _store(settings: Any) -> tuple[Any, Any]:
    from graphwire.processors.audit.db import connect, require_migrated
    from graphwire.topics.crons import CronStore

    conn = await connect(settings.database_url.get_secret_value(), settings.audit_schema)
    try:
        await require_migrated(conn, settings.audit_schema)
    except BaseException:
        await conn.close()
        raise
    return conn, CronStore(conn)


def _row(cron: Any) -> dict[str, Any]:
    row: dict[str, Any] = cron.model_dump(mode="json")
    return row


async def cron_command(args: argparse.Namespace) -> int:
    from graphwire.topics.crons import cron_spec

    settings = settings_from(args)
    spec = None
    if args.cron_command == "add":  # check the definition before connecting
        spec = cron_spec(
            name=args.name, graph=args.graph, schedule=args.schedule, timezone=args.timezone,
            input=json_object("--input", args.input) or {}, thread_id=args.thread,
            metadata=json_object("--metadata", args.metadata) or {}, missed=args.missed,
        )
    conn, crons = await _store(settings)
    try:
        if spec is not None:
            cron = await crons.add(spec, replace=args.replace)
            print(f"cron {cron.name}: {cron.graph} at '{cron.schedule}' ({cron.timezone}); "
                  f"next firing {cron.next_at.isoformat()}")
        elif args.cron_command == "list":
            found = await crons.list()
            if args.json:
                for cron in found:
                    print(json.dumps(_row(cron)))
            else:
                print(f"{'NAME':<24} {'GRAPH':<16} {'SCHEDULE':<18} {'TIMEZONE':<16} "
                      f"{'MISSED':<6} {'STATE':<7} NEXT")
                for c in found:
                    state = "paused" if c.paused else "active"
                    print(f"{c.name:<24} {c.graph:<16} {c.schedule:<18} {c.timezone:<16} "
                          f"{c.missed:<6} {state:<7} {c.next_at.isoformat()}")
        elif args.cron_command == "rm":
            await crons.remove(args.name)
            print(f"cron {args.name} removed")
        elif args.cron_command == "pause":
            await crons.pause(args.name)
            print(f"cron {args.name} paused")
        else:
            cron = await crons.resume(args.name)
            print(f"cron {args.name} resumed; next firing {cron.next_at.isoformat()}")
    finally:
        await conn.close()
    return EXIT_OK


def add_parsers(sub: Any, kafka_flags: Any) -> None:
    p = sub.add_parser("scheduler", help="run delayed requests (after_seconds, run_at) and crons")
    kafka_flags(p)
    p.add_argument("--migrate", action="store_true", help="apply database migrations first")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=scheduler_command, is_async=True)

    p = sub.add_parser("cron", help="graphs on a timetable: add, list, rm, pause, resume")
    csub = p.add_subparsers(dest="cron_command", required=True, metavar="ACTION")
    c = csub.add_parser("add", help="define a cron (firings are requests '<name>:<time>')")
    c.add_argument("name", help="1..80 letters, digits, '_', '.', '-'")
    c.add_argument("--graph", required=True, help="the graph each firing runs")
    c.add_argument("--schedule", required=True,
                   help="cron fields, e.g. '*/5 * * * *' (a 6th field is seconds)")
    c.add_argument("--input", help="the input of every firing, a JSON object")
    c.add_argument("--thread", help="run every firing on this thread")
    c.add_argument("--timezone", default="UTC", help="IANA time zone of the schedule (UTC)")
    c.add_argument("--missed", choices=["run", "skip"], default="run",
                   help="firings missed while no scheduler ran: run the latest once, or skip")
    c.add_argument("--metadata", help="a JSON object echoed on every firing's result")
    c.add_argument("--replace", action="store_true", help="redefine a cron of that name")
    for action, text in (("list", "list crons"), ("rm", "remove a cron"),
                         ("pause", "stop firing a cron"), ("resume", "fire a paused cron again")):
        c = csub.add_parser(action, help=text)
        if action == "list":
            c.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            c.add_argument("name")
    p.set_defaults(func=cron_command, is_async=True)
