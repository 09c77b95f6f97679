"""``graphwire webhooks``: the webhook processor, until SIGTERM; ``graphwire webhooks key``: a
caller's signing key, for the operator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from graphwire.processors.cli.common import EXIT_FAILED, EXIT_OK, settings_from

log = logging.getLogger("graphwire")


async def webhooks_command(args: argparse.Namespace) -> int:
    from graphwire.processors.httpserver import HealthServer
    from graphwire.processors.logs import setup_logging
    from graphwire.processors.webhooks.dispatcher import WebhookDispatcher

    settings = settings_from(args)
    if args.webhook_group_id:
        settings = settings.model_copy(update={"webhook_group_id": args.webhook_group_id})
    setup_logging(settings.log_level, settings.log_format)
    stop = asyncio.Event()
    dispatcher = WebhookDispatcher(settings, on_failure=stop.set)  # no secret: one-line error
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await dispatcher.start()
    health = HealthServer(dispatcher.readiness, dispatcher.metrics.registry,
                          host=settings.http_host, port=settings.webhook_http_port)
    await health.start()
    print(f"graphwire webhooks {settings.worker_id}: delivering results of "
          f"{settings.topics.results} on {settings.bootstrap_servers}", file=sys.stderr,
          flush=True)
    await stop.wait()
    log.info("stopping: finishing attempts in progress")
    await dispatcher.stop()
    await health.stop()
    if dispatcher.failure is not None:
        print(f"graphwire: error: {dispatcher.failure}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def webhook_key_command(args: argparse.Namespace) -> int:
    """Print the signing key of ``--scope`` (or the operator's key) derived from the master."""
    from graphwire.processors.webhooks.keys import SigningKeys
    from graphwire.topics.webhooks import OPERATOR_SCOPE, scope_of

    scope = args.scope if args.scope is not None else OPERATOR_SCOPE
    if args.request_id:
        scope = scope_of(args.request_id)
    if scope and scope_of(f"{scope}.x") != scope:
        print("graphwire: error: --scope is the lowercase hex before the first dot of the "
              "caller's request ids (e.g. f3cb5844f63a)", file=sys.stderr)
        return EXIT_FAILED
    print(SigningKeys.from_settings(settings_from(args)).key(scope))
    return EXIT_OK


def add_parsers(sub: Any, kafka_flags: Any) -> None:
    p = sub.add_parser("webhooks", help="POST results to the webhooks their requests name")
    kafka_flags(p)
    p.add_argument("--group-id", dest="webhook_group_id",
                   help="consumer group (GRAPHWIRE_WEBHOOK_GROUP_ID)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=webhooks_command, is_async=True)
    actions = p.add_subparsers(dest="webhooks_action", metavar="[key]")
    k = actions.add_parser(
        "key", help="print a caller's webhook signing key (from GRAPHWIRE_WEBHOOK_SECRET)",
        description="Print the webhook signing key of one caller, for its receiver: the caller's "
                    "scope (the hex before the first dot of its request ids), or a request id "
                    "of it; neither: the operator's key (requests produced to Kafka directly).")
    k.add_argument("--scope", help="the caller's scope, e.g. f3cb5844f63a")
    k.add_argument("--request-id", help="a request id of the caller (its scope is used)")
    k.set_defaults(func=webhook_key_command, is_async=False)
