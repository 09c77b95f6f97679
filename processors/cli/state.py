"""``graphwire`` commands over stored state: thread state, dead letters, checkpoint retention."""

from __future__ import annotations

import argparse
import sys

from graphwire.processors.cli.common import EXIT_OK, registry_from, settings_from
from graphwire.topics.codec import dumps
from graphwire.topics.errors import GraphwireError


async def state_command(args: argparse.Namespace) -> int:
    from graphwire.graphs.registry import UnknownGraphName
    from graphwire.processors.runner.checkpoints import CheckpointStore

    settings = settings_from(args)
    registry = registry_from(settings)
    try:
        graph = registry.get(args.graph)
    except UnknownGraphName:
        raise GraphwireError(
            f"unknown graph {args.graph!r}: registered graphs are {', '.join(registry.names())}"
        ) from None
    key = settings.checkpoint_encryption_key
    async with CheckpointStore(
        settings.database_url.get_secret_value(), schema=settings.checkpoint_schema,
        encryption_key=key.get_secret_value() if key else None,
    ) as store:
        durable = graph.copy(update={"checkpointer": store.saver})
        snapshot = await durable.aget_state({"configurable": {"thread_id": args.thread_id}})
    if not snapshot.values and not snapshot.next:
        raise GraphwireError(
            f"no checkpoint for thread {args.thread_id!r} of graph {args.graph!r}: check both "
            "names (and GRAPHWIRE_DATABASE_URL)"
        )
    print(
        dumps(
            {
                "thread_id": args.thread_id,
                "graph": args.graph,
                "values": snapshot.values,
                "next": list(snapshot.next),
                "interrupts": [{"id": i.id, "value": i.value} for i in snapshot.interrupts],
                "updated_at": snapshot.created_at,
            }
        ).decode()
    )
    return EXIT_OK


async def dlq_list_command(args: argparse.Namespace) -> int:
    from graphwire.topics.deadletters import read_dead_letters

    settings = settings_from(args)
    letters = await read_dead_letters(
        settings.bootstrap_servers, settings.topics, **settings.kafka_security()
    )
    for letter in letters[-args.limit :] if args.limit else letters:
        if args.json:
            print(
                dumps(
                    {
                        "partition": letter.partition,
                        "offset": letter.offset,
                        "request_id": letter.request_id,
                        "source": letter.source,
                        "reason": letter.reason,
                    }
                ).decode()
            )
        else:
            print(
                f"{letter.partition}/{letter.offset:<6} {letter.request_id or '-':<36} "
                f"{letter.source:<40} {letter.reason}"
            )
    if not args.json:
        print(f"{len(letters)} dead letters on {settings.topics.dlq}", file=sys.stderr)
    return EXIT_OK


async def dlq_replay_command(args: argparse.Namespace) -> int:
    from graphwire.processors.runner.claims import RedisClaims
    from graphwire.topics.deadletters import is_webhook_letter, read_dead_letters, replay

    if not args.all and not args.request_id:
        raise GraphwireError("say which dead letters to replay: --request-id ID or --all")
    settings = settings_from(args)
    letters = await read_dead_letters(
        settings.bootstrap_servers, settings.topics, **settings.kafka_security()
    )
    if args.request_id:
        letters = [d for d in letters if d.request_id == args.request_id]
        if not letters:
            raise GraphwireError(f"no dead letter with request_id {args.request_id!r}")
    if settings.dedup:  # a replay is a deliberate rerun: forget that the request finished
        async with RedisClaims(
            settings.redis_url.get_secret_value(), namespace=settings.topic_prefix
        ) as store:
            # (not for a webhook's dead letter: its result is delivered again, nothing reruns)
            for rid in {d.request_id for d in letters
                        if d.request_id and not is_webhook_letter(d, settings.topics)}:
                await store.forget(rid)
    count = await replay(
        settings.bootstrap_servers, settings.topics, letters, **settings.kafka_security()
    )
    hooks = sum(is_webhook_letter(d, settings.topics) for d in letters)
    print(f"replayed {count - hooks} dead letters to {settings.topics.requests}"
          + (f" and {hooks} webhook deliveries to {settings.topics.results}" if hooks else ""))
    return EXIT_OK


async def checkpoints_prune_command(args: argparse.Namespace) -> int:
    from graphwire.processors.runner.checkpoints import CheckpointStore

    settings = settings_from(args)
    older = args.older_than_s if args.older_than_s is not None else settings.checkpoint_ttl_s
    async with CheckpointStore(
        settings.database_url.get_secret_value(), schema=settings.checkpoint_schema
    ) as store:
        count = await store.prune(older)
    print(f"deleted the checkpoints of {count} threads idle for more than {older:g} s")
    return EXIT_OK
