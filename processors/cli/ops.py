"""``graphwire`` commands for operators: topics (ensure, scale), contract documents (schema,
asyncapi) and ``doctor``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from graphwire.processors.cli.common import EXIT_FAILED, EXIT_OK, settings_from


async def topics_ensure_command(args: argparse.Namespace) -> int:
    from graphwire.topics.admin import ensure_topics, partition_counts

    settings = settings_from(args)
    specs = settings.topics.specs(settings.partitions)
    outcome = await ensure_topics(
        settings.bootstrap_servers,
        specs,
        replication_factor=settings.replication_factor,
        **settings.kafka_security(),
    )
    counts = await partition_counts(
        settings.bootstrap_servers, [s.name for s in specs], **settings.kafka_security()
    )
    for spec in specs:
        print(f"{spec.name:<40} {outcome[spec.name]:<8} partitions={counts.get(spec.name, '?')}")
    return EXIT_OK


async def topics_scale_command(args: argparse.Namespace) -> int:
    from graphwire.topics.admin import scale_partitions

    settings = settings_from(args)
    topic = settings.topics.requests
    if args.wait_drained is not None and not await _wait_drained(settings, args.wait_drained):
        return EXIT_FAILED
    had = await scale_partitions(
        settings.bootstrap_servers, topic, args.partitions, **settings.kafka_security()
    )
    if had == args.partitions:
        print(f"{topic} already has {had} partitions: nothing to do")
        return EXIT_OK
    print(f"{topic}: {had} -> {args.partitions} partitions")
    print(
        "A key may now map to another partition. The runners' thread lease keeps each thread "
        "to one run at a time whatever the partition, and turns they hold wait in Kafka "
        "timestamp order; for strict order, a turn produced before this change must have been "
        "consumed before one produced after it: pause producers and use --wait-drained. "
        "Runners pick the new partitions up at their next rebalance (within the metadata "
        "refresh interval); add runners up to the new count to use them."
    )
    return EXIT_OK


async def _wait_drained(settings: Any, timeout_s: float) -> bool:
    """Wait until the runners' group has committed every request produced so far (lag 0 on
    every partition of the requests topic); False, saying what is left, after ``timeout_s``."""
    import asyncio
    import time

    from graphwire.processors.gateway.ui.lag import KEEP_S, LagReader

    reader, deadline = LagReader(settings), time.monotonic() + timeout_s
    topic, group = settings.topics.requests, settings.group_id
    while True:
        lag = sum(p.lag for p in await reader.read() if p.group == group and p.topic == topic)
        if lag == 0:
            print(f"{topic}: the runners ({group}) have consumed every request (lag 0)")
            return True
        if time.monotonic() >= deadline:
            print(f"{topic}: {lag} requests not consumed by the runners ({group}) after "
                  f"{timeout_s:g} s; partitions not added. Check that producers are paused and "
                  "the runners are up, then run it again.", file=sys.stderr)
            return False
        print(f"{topic}: waiting for {lag} requests to be consumed ({group})")
        await asyncio.sleep(min(KEEP_S, max(0.0, deadline - time.monotonic())) + 0.01)


def schema_command(args: argparse.Namespace) -> int:
    from graphwire.topics.schema import json_schemas

    schemas = json_schemas()
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, schema in schemas.items():
            (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
            print(out / f"{name}.schema.json")
    else:
        print(json.dumps(schemas, indent=2))
    return EXIT_OK


def asyncapi_command(args: argparse.Namespace) -> int:
    from graphwire.topics.asyncapi import asyncapi_document

    text = json.dumps(asyncapi_document(settings_from(args).bootstrap_servers), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(args.out)
    else:
        print(text, end="")
    return EXIT_OK



def add_parsers(sub: Any, kafka_flags: Any) -> None:
    p = sub.add_parser("topics", help="manage graphwire's topics")
    tsub = p.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    e = tsub.add_parser("ensure", help="create missing topics (idempotent)")
    kafka_flags(e)
    e.add_argument("--partitions", type=int, help="partitions of requests/events/results")
    e.add_argument(
        "--replication-factor", type=int, help="replicas per partition (3 in production)"
    )
    e.set_defaults(func=topics_ensure_command, is_async=True)

    s = tsub.add_parser("scale", help="add partitions to the requests topic (never removes)")
    kafka_flags(s)
    s.add_argument("--partitions", type=int, required=True, help="the new partition count")
    s.add_argument(
        "--wait-drained", type=float, metavar="SECONDS", default=None,
        help="first wait (at most SECONDS) until the runners have consumed every request "
        "produced so far (pause producers first): turns of a thread produced after the change "
        "then never run before ones produced before it",
    )
    s.set_defaults(func=topics_scale_command, is_async=True)

    p = sub.add_parser("schema", help="print (or write) the JSON Schema of the message contract")
    p.add_argument("--out", help="directory to write request/event/result .schema.json files")
    p.set_defaults(func=schema_command, is_async=False)

    p = sub.add_parser("asyncapi", help="print (or write) the AsyncAPI 3.0 document of the topics")
    kafka_flags(p)
    p.add_argument("--out", help="file to write (default: standard output)")
    p.set_defaults(func=asyncapi_command, is_async=False)

    p = sub.add_parser("doctor", help="check the deployment against the production checklist")
    kafka_flags(p)
    p.set_defaults(func=_doctor, is_async=False)


def _doctor(args: argparse.Namespace) -> int:
    from graphwire.processors.cli.doctor import doctor_command

    return doctor_command(args)
