"""``graphwire store get|put|search|delete|namespaces``: the long-term memory store from the
command line (what graph runs see as ``runtime.store``).

A namespace is written with slashes: ``users/alice`` is LangGraph's ``("users", "alice")``.
Items print as JSON, one object per line (``namespace``, ``key``, ``value``, ``created_at``,
``updated_at``); namespaces as one JSON array per line. The database and schema are the
checkpoints' (``GRAPHWIRE_DATABASE_URL``, ``GRAPHWIRE_CHECKPOINT_SCHEMA``).

Exit codes: 0 done, 1 an error (a bad argument, PostgreSQL refused the value), 3 PostgreSQL
unavailable, 4 no such item (``get``, ``delete``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from graphwire.processors.cli.common import EXIT_OK, settings_from
from graphwire.topics.codec import dumps
from graphwire.topics.errors import GraphwireError

EXIT_NOT_FOUND = 4

NAMESPACE_HELP = "a namespace, labels joined by slashes: users/alice is ('users', 'alice')"


def parse_namespace(text: str, *, empty: bool = False) -> tuple[str, ...]:
    """``users/alice`` -> ``("users", "alice")``; a label may not be empty nor hold a dot."""
    if not text.strip("/"):
        if empty:
            return ()
        raise GraphwireError(f"namespace {text!r} is empty: give labels joined by slashes, "
                             "e.g. users/alice")
    labels = tuple(text.strip("/").split("/"))
    for label in labels:
        if not label or "." in label:
            raise GraphwireError(
                f"namespace {text!r} has an empty label or one with a dot ({label!r}): give "
                "labels joined by single slashes, without dots, e.g. users/alice"
            )
    return labels


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GraphwireError(f"{what} is not JSON ({exc}): give an object, e.g. "
                             "'{\"theme\": \"dark\"}'") from None
    if not isinstance(value, dict):
        raise GraphwireError(f"{what} must be a JSON object, not {type(value).__name__}: "
                             "e.g. '{\"theme\": \"dark\"}'")
    return value


@asynccontextmanager
async def _store(args: argparse.Namespace) -> AsyncIterator[Any]:
    from graphwire.processors.runner.checkpoints import CheckpointStore

    settings = settings_from(args)
    async with CheckpointStore(
        settings.database_url.get_secret_value(), schema=settings.checkpoint_schema,
        pool_size=2, store=True,
    ) as checkpoints:
        yield checkpoints.store


def _print_item(item: Any) -> None:
    print(dumps(item.dict()).decode())


def _not_found(namespace: tuple[str, ...], key: str) -> int:
    print(f"graphwire: no item {key!r} in namespace {'/'.join(namespace)!r} (check the "
          "namespace, the key and GRAPHWIRE_CHECKPOINT_SCHEMA; list them with `graphwire store "
          "search NAMESPACE`)", file=sys.stderr)
    return EXIT_NOT_FOUND


async def get_command(args: argparse.Namespace) -> int:
    namespace = parse_namespace(args.namespace)
    async with _store(args) as store:
        item = await store.aget(namespace, args.key, refresh_ttl=False)
    if item is None:
        return _not_found(namespace, args.key)
    _print_item(item)
    return EXIT_OK


async def put_command(args: argparse.Namespace) -> int:
    namespace = parse_namespace(args.namespace)
    value = _json_object(args.value, "VALUE")
    if namespace[0] == "langgraph":
        raise GraphwireError("namespace root 'langgraph' is reserved by LangGraph: pick another")
    async with _store(args) as store:
        await store.aput(namespace, args.key, value, ttl=args.ttl)
        item = await store.aget(namespace, args.key, refresh_ttl=False)
    _print_item(item)
    return EXIT_OK


async def delete_command(args: argparse.Namespace) -> int:
    namespace = parse_namespace(args.namespace)
    async with _store(args) as store:
        if await store.aget(namespace, args.key, refresh_ttl=False) is None:
            return _not_found(namespace, args.key)
        await store.adelete(namespace, args.key)
    print(f"deleted {args.key!r} from {'/'.join(namespace)!r}", file=sys.stderr)
    return EXIT_OK


async def search_command(args: argparse.Namespace) -> int:
    prefix = parse_namespace(args.prefix, empty=True)
    where = _json_object(args.filter, "--filter") if args.filter else None
    async with _store(args) as store:
        try:
            found = await store.asearch(prefix, filter=where, limit=args.limit,
                                        offset=args.offset, refresh_ttl=False)
        except ValueError as exc:  # an operator upstream does not know
            raise GraphwireError(f"--filter: {exc}; use $eq, $ne, $gt, $gte, $lt or $lte") \
                from None
    for item in found:
        _print_item(item)
    return EXIT_OK


async def namespaces_command(args: argparse.Namespace) -> int:
    prefix = parse_namespace(args.prefix, empty=True) if args.prefix else None
    suffix = parse_namespace(args.suffix, empty=True) if args.suffix else None
    async with _store(args) as store:
        found = await store.alist_namespaces(prefix=prefix or None, suffix=suffix or None,
                                             max_depth=args.max_depth, limit=args.limit,
                                             offset=args.offset)
    for namespace in found:
        print(dumps(list(namespace)).decode())
    return EXIT_OK


def add_parsers(sub: Any, kafka_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``store`` and its actions to the ``graphwire`` parser."""
    p = sub.add_parser(
        "store", help="read and write the long-term memory store graph runs share",
        description="The store nodes reach as runtime.store, in the checkpoint database "
        "(GRAPHWIRE_DATABASE_URL, GRAPHWIRE_CHECKPOINT_SCHEMA). NAMESPACE is " + NAMESPACE_HELP
        + ". Items print as JSON, one per line; exit 4: no such item.",
    )
    ssub = p.add_subparsers(dest="store_command", required=True, metavar="ACTION")

    s = ssub.add_parser("get", help="print one item as JSON (exit 4 when there is none)")
    s.add_argument("namespace", help=NAMESPACE_HELP)
    s.add_argument("key")
    s.set_defaults(func=get_command, is_async=True)

    s = ssub.add_parser("put", help="store a JSON object under a namespace and key")
    s.add_argument("namespace", help=NAMESPACE_HELP)
    s.add_argument("key")
    s.add_argument("value", help="a JSON object, e.g. '{\"theme\": \"dark\"}'")
    s.add_argument("--ttl", type=float, help="minutes until it expires (refreshed on reads)")
    s.set_defaults(func=put_command, is_async=True)

    s = ssub.add_parser("delete", help="delete one item (exit 4 when there is none)")
    s.add_argument("namespace", help=NAMESPACE_HELP)
    s.add_argument("key")
    s.set_defaults(func=delete_command, is_async=True)

    s = ssub.add_parser("search", help="items under a namespace prefix, newest first")
    s.add_argument("prefix", nargs="?", default="", help=NAMESPACE_HELP + " (default: all)")
    s.add_argument("--filter", help='JSON: {"field": value} or {"field": {"$gt": value}}')
    s.add_argument("--limit", type=int, default=10)
    s.add_argument("--offset", type=int, default=0)
    s.set_defaults(func=search_command, is_async=True)

    s = ssub.add_parser("namespaces", help="the namespaces in use, sorted")
    s.add_argument("--prefix", help="only under this namespace (* matches one label)")
    s.add_argument("--suffix", help="only ending with these labels")
    s.add_argument("--max-depth", type=int, help="cut namespaces to this many labels")
    s.add_argument("--limit", type=int, default=100)
    s.add_argument("--offset", type=int, default=0)
    s.set_defaults(func=namespaces_command, is_async=True)
