"""``graphwire`` commands for operators: topics (ensure, scale), contract documents (schema,
asyncapi) and ``doctor``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from graphwire.processors.cli.common import EXIT_OK, settings_from


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
    had = await scale_partitions(
        settings.bootstrap_servers, topic, args.partitions, **settings.kafka_security()
    )
    if had == args.partitions:
        print(f"{topic} already has {had} partitions: nothing to do")
        return EXIT_OK
    print(f"{topic}: {had} -> {args.partitions} partitions")
    print(
        "Per-key ordering holds for messages produced from now on. A key may now map to another "
        "partition, so a message still queued under the old mapping can run after a newer one "
        "of the same key: for strict order, stop producers and let the lag reach 0 first. "
        "Runners pick the new partitions up at their next rebalance (within the metadata "
        "refresh interval); add runners up to the new count to use them."
    )
    return EXIT_OK


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
