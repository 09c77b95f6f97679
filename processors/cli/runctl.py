"""``graphwire cancel`` and ``graphwire history``: run control from the command line.

Exit codes of ``cancel``: 0 the cancel was sent (the request was running, or has not started:
Redis holds it, or the audit table accepted it, e.g. queued behind another run of its thread),
4 the request already finished (nothing sent), 5 no store knows the request (nothing sent;
``--force`` sends it anyway, for a request still on the requests topic that the audit sink has
not recorded yet, or with no audit sink).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from graphwire.processors.cli.common import EXIT_FAILED, EXIT_OK, settings_from
from graphwire.topics.codec import dumps
from graphwire.topics.errors import GraphwireError

EXIT_FINISHED, EXIT_UNKNOWN = 4, 5


async def cancel_command(args: argparse.Namespace) -> int:
    from graphwire.topics.client import GraphwireClient

    settings = settings_from(args)
    redis_url = settings.redis_url.get_secret_value() if settings.dedup else None
    async with GraphwireClient(  # the audit table knows requests no worker holds yet
        settings.bootstrap_servers, topic_prefix=settings.topic_prefix, redis_url=redis_url,
        database_url=settings.database_url.get_secret_value(),
        database_schema=settings.audit_schema, **settings.kafka_security(),
    ) as client:
        if args.wait:
            client.watch(args.request_id)
        outcome = await client.cancel(
            args.request_id, args.action, reason=args.reason, force=args.force
        )
        rid = args.request_id
        if outcome.state == "finished":
            print(f"graphwire: {rid} already finished ({outcome.status}): nothing to cancel",
                  file=sys.stderr)
            return EXIT_FINISHED
        if outcome.state == "unknown":
            print(f"graphwire: unknown request {rid!r}: neither running nor finished in Redis, "
                  "nor accepted in the audit table (check the id, GRAPHWIRE_TOPIC_PREFIX and "
                  "GRAPHWIRE_AUDIT_SCHEMA; if it was just produced and the audit sink has not "
                  "recorded it yet, or none runs, add --force)", file=sys.stderr)
            return EXIT_UNKNOWN
        what = {
            "running": "running: it stops at its next step boundary",
            "pending": "not started: it runs nothing when a worker reaches it",
            "sent": "sent (no Redis to check where it is)",
        }[outcome.state]
        print(f"cancel ({args.action}) of {rid} {what}", file=sys.stderr)
        if not args.wait:
            return EXIT_OK
        result = await client.result(rid, timeout=args.wait_timeout)
        print(result.model_dump_json(indent=2))
        return EXIT_OK if result.status == "cancelled" else EXIT_FAILED


async def history_command(args: argparse.Namespace) -> int:
    from graphwire.topics.history import read_history

    settings = settings_from(args)
    found = await read_history(
        settings.database_url.get_secret_value(), args.thread_id,
        schema=settings.checkpoint_schema, limit=args.limit,
    )
    if not found:
        raise GraphwireError(
            f"no checkpoint for thread {args.thread_id!r}: check the thread id, "
            "GRAPHWIRE_DATABASE_URL and GRAPHWIRE_CHECKPOINT_SCHEMA"
        )
    if args.json:
        for checkpoint in found:
            print(dumps({"graph": args.graph, **checkpoint.as_dict()}).decode())
        return EXIT_OK
    print(f"{'CHECKPOINT_ID':<38} {'STEP':>4} {'SOURCE':<7} {'RAN':<16} {'NEXT':<16} "
          f"{'TIME':<26} REQUEST")
    for c in found:
        print(f"{c.checkpoint_id:<38} {c.step if c.step is not None else '':>4} "
              f"{c.source or '':<7} {','.join(c.ran) or '-':<16} {','.join(c.next) or '-':<16} "
              f"{c.created_at or '':<26} {c.request_id or ''}")
    print(f"\nfork: graphwire submit {args.graph} --thread {args.thread_id} --checkpoint-id ID "
          "[--input JSON]", file=sys.stderr)
    return EXIT_OK


def add_parsers(sub: Any, kafka_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``cancel`` and ``history`` to the ``graphwire`` parser."""
    p = sub.add_parser("cancel", help="cancel a request wherever it runs (or before it starts)")
    kafka_flags(p)
    p.add_argument("request_id")
    p.add_argument("--action", choices=["interrupt", "rollback"], default="interrupt",
                   help="interrupt keeps its checkpointed progress, rollback deletes it")
    p.add_argument("--reason", help="a few words, echoed in the cancelled result")
    p.add_argument("--force", action="store_true",
                   help="send it even when no store knows the request (neither Redis nor the "
                        "audit table: just produced, or no audit sink)")
    p.add_argument("--wait", action="store_true", help="wait for its result and print it")
    p.add_argument("--wait-timeout", type=float, default=60.0, help="seconds to wait")
    p.set_defaults(func=cancel_command, is_async=True)

    p = sub.add_parser("history", help="list a thread's checkpoints (to fork from one)")
    p.add_argument("thread_id")
    p.add_argument("--graph", required=True, help="the graph the thread runs")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--limit", type=int, default=100, help="the newest N checkpoints")
    p.set_defaults(func=history_command, is_async=True)
