"""The ``graphwire`` command line: worker, topics, submit, graphs, schema, broker.

Flags override ``GRAPHWIRE_*`` environment variables. Errors are one readable line on stderr and
a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal

from pydantic import ValidationError

from graphwire.processors.cli.audit import add_parsers as add_audit_parsers
from graphwire.processors.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    json_object,
    registry_from,
    settings_from,
    tune_gc,
)
from graphwire.processors.cli.gateway import add_parsers as add_gateway_parsers
from graphwire.processors.cli.ops import add_parsers as add_ops_parsers
from graphwire.processors.cli.runctl import add_parsers as add_runctl_parsers
from graphwire.processors.cli.schedules import add_parsers as add_schedule_parsers
from graphwire.processors.cli.state import (
    checkpoints_prune_command,
    dlq_list_command,
    dlq_replay_command,
    state_command,
)
from graphwire.processors.cli.store import add_parsers as add_store_parsers
from graphwire.processors.cli.traffic import add_parsers as add_traffic_parsers
from graphwire.processors.cli.webhooks import add_parsers as add_webhooks_parsers
from graphwire.topics.errors import GraphwireError

log = logging.getLogger("graphwire")


# -- commands ----------------------------------------------------------------------------

NO_GRAPHS = (
    "no graphs to serve: name yours with GRAPHWIRE_GRAPHS=name=package.module:attr (or --graphs) "
    "or GRAPHWIRE_LANGGRAPH_JSON=path/to/langgraph.json (or --config); for the built-in demo "
    "graphs (echo, chat, slow, ...; never in production) add --demo-graphs or set "
    "GRAPHWIRE_DEMO_GRAPHS=true"
)


async def _worker(args: argparse.Namespace) -> int:
    from graphwire.processors.httpserver import HealthServer
    from graphwire.processors.logs import setup_logging
    from graphwire.processors.runner.runner import GraphRunner

    settings = _graph_settings(args)
    setup_logging(settings.log_level, settings.log_format)
    if settings.otel:
        from graphwire.processors.runner.tracing import setup_tracing

        setup_tracing("graphwire-worker")
    registry = registry_from(settings)
    if not registry.names():
        raise GraphwireError(NO_GRAPHS)
    stop = asyncio.Event()
    runner = GraphRunner(settings, registry, on_failure=stop.set)  # a dead task: exit, restart
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runner.start()
    tune_gc(settings.gc_young_threshold)
    health = HealthServer(
        runner.readiness, runner.metrics.registry, host=settings.http_host, port=settings.http_port
    )
    await health.start()
    print(
        f"graphwire worker {settings.worker_id}: serving {', '.join(registry.names())} "
        f"from {settings.topics.requests} on {settings.bootstrap_servers}",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    log.info("stopping: draining in-flight runs (grace %ss)", settings.shutdown_grace_s)
    await runner.stop()
    await health.stop()
    if runner.failure is not None:
        print(f"graphwire: error: {runner.failure}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _processes(args: argparse.Namespace) -> int:
    """``worker`` or ``audit`` with ``--processes N``: N supervised children."""
    from graphwire.processors.dev.supervisor import run_processes

    argv = [a for a in sys.argv[1:] if not a.startswith("--processes")]
    if "--processes" in sys.argv:  # "--processes N" form: drop the value too
        i = sys.argv.index("--processes")
        argv = sys.argv[1:i] + sys.argv[i + 2 :]
    settings = settings_from(args)
    if args.command == "audit":
        return run_processes(
            args.processes, argv, settings.audit_http_port, "GRAPHWIRE_AUDIT_HTTP_PORT"
        )
    return run_processes(args.processes, argv, http_port=settings.http_port)


def _nodes(text: str | None) -> list[str] | Literal["*"] | None:
    """``--interrupt-before``/``--interrupt-after``: ``*`` or comma-separated node names."""
    if text is None:
        return None
    return "*" if text.strip() == "*" else [n.strip() for n in text.split(",") if n.strip()]


async def _submit(args: argparse.Namespace) -> int:
    from graphwire.topics.client import GraphwireClient

    if args.file:
        from graphwire.processors.cli.traffic import submit_file

        return await submit_file(args)
    if not args.graph:
        raise GraphwireError("name the graph to run (see `graphwire graphs`), or give --file")
    settings = settings_from(args)
    starts = [args.input is not None, args.resume is not None, args.continue_run]
    if sum(starts) > 1 or (sum(starts) == 0 and not args.checkpoint_id):
        raise GraphwireError("give --input JSON (a new run), or --resume JSON or --continue "
                             "with --thread")
    if (args.resume is not None or args.continue_run) and not args.thread:
        raise GraphwireError("--resume and --continue continue a thread: add --thread THREAD_ID")
    try:
        payload = json.loads(args.input) if args.input is not None else None
        command = {"resume": json.loads(args.resume)} if args.resume is not None else None
    except json.JSONDecodeError as exc:
        raise GraphwireError(
            f'--input is not valid JSON ({exc}); pass JSON like \'{{"text": "hi"}}\''
        ) from None
    context = json_object("--context", args.context)
    stream = args.stream_modes.split(",") if args.stream_modes else ["updates"]
    async with GraphwireClient(
        settings.bootstrap_servers, topic_prefix=settings.topic_prefix, **settings.kafka_security()
    ) as client:
        request_id = await client.submit(
            args.graph,
            payload,
            request_id=args.request_id,
            thread_id=args.thread,
            command=command,
            stream=stream,
            timeout_s=args.timeout_s,
            multitask_strategy=args.multitask_strategy,
            checkpoint_id=args.checkpoint_id,
            webhook=args.webhook,
            after_seconds=args.after_seconds,
            run_at=args.run_at,
            context=context,
            interrupt_before=_nodes(args.interrupt_before),
            interrupt_after=_nodes(args.interrupt_after),
            subgraphs=args.subgraphs,
        )
        print(f"submitted {request_id}", file=sys.stderr)
        if not (args.wait or args.stream):
            print(request_id)
            return EXIT_OK
        if args.stream:
            async for event in client.events(request_id):
                print(event.model_dump_json())
        result = await client.result(request_id, timeout=args.wait_timeout)
        print(result.model_dump_json(indent=2))
        return EXIT_OK if result.status == "success" else EXIT_FAILED


def _graph_settings(args: argparse.Namespace) -> Any:
    """The settings, with ``--demo-graphs`` turning the demo graphs on."""
    settings = settings_from(args)
    if getattr(args, "demo_graphs", False):
        return settings.model_copy(update={"demo_graphs": True})
    return settings


def _graphs(args: argparse.Namespace) -> int:
    registry = registry_from(_graph_settings(args))
    if not registry.names():
        print(NO_GRAPHS, file=sys.stderr)
    for name in registry.names():
        print(f"{name:<20} {' -> '.join(registry.nodes(name))}")
    return EXIT_OK


def _broker(args: argparse.Namespace) -> int:
    from graphwire.processors.dev.broker import DevBroker

    broker = DevBroker(args.port)
    broker.start()
    print(
        f"development broker (memory storage) on {broker.bootstrap_servers}; Ctrl-C stops it",
        flush=True,
    )
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        broker.stop()
    return EXIT_OK


async def _dev(args: argparse.Namespace) -> int:
    from graphwire.processors.dev.main import run_dev
    from graphwire.processors.logs import setup_logging

    setup_logging("WARNING", "text")
    return await run_dev(args.port, args.demo, args.exit_after_demo, keep=args.keep)


# -- parser ------------------------------------------------------------------------------


def _kafka_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", help="Kafka brokers (GRAPHWIRE_BOOTSTRAP_SERVERS)")
    p.add_argument("--topic-prefix", help="topic name prefix (GRAPHWIRE_TOPIC_PREFIX)")


def _graph_flags(p: argparse.ArgumentParser, demo_flag: bool = True) -> None:
    p.add_argument("--graphs", help="extra graphs: name=package.module:attr,... (GRAPHWIRE_GRAPHS)")
    p.add_argument(
        "--config", dest="langgraph_json", help="a LangGraph CLI langgraph.json to serve"
    )
    if demo_flag:
        p.add_argument(
            "--demo-graphs",
            action="store_true",
            help="also serve the built-in demo graphs: echo, chat, slow, ... "
            "(GRAPHWIRE_DEMO_GRAPHS; never in production: any caller may run them)",
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``graphwire``."""
    parser = argparse.ArgumentParser(prog="graphwire", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", help="run graphs for requests from Kafka")
    _kafka_flags(p)
    _graph_flags(p)
    p.add_argument("--group-id", help="consumer group (GRAPHWIRE_GROUP_ID)")
    p.add_argument(
        "--max-in-flight", type=int, help="messages held at once (GRAPHWIRE_MAX_IN_FLIGHT)"
    )
    p.add_argument(
        "--processes", type=int, default=1, help="worker processes in the group (one core each)"
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_worker, is_async=True)

    p = sub.add_parser("submit", help="submit one request; --wait/--stream print its outcome")
    _kafka_flags(p)
    p.add_argument("graph", nargs="?", help="graph name (see `graphwire graphs`)")
    p.add_argument(
        "--file", help="submit every request of a JSON Lines file (progress and a summary)"
    )
    p.add_argument(
        "--concurrency", type=int, default=100, help="with --file: requests in flight at once"
    )
    p.add_argument("--json", action="store_true", help="with --file: print each result")
    p.add_argument("--input", help="the input as JSON (an object for most graphs)")
    p.add_argument("--resume", help="resume an interrupted thread with this JSON value")
    p.add_argument("--continue", dest="continue_run", action="store_true",
                   help="continue --thread from where it stopped (a breakpoint): input null")
    p.add_argument("--context", help="LangGraph's run context, a JSON object")
    p.add_argument("--interrupt-before", help="stop before these nodes: a,b or *")
    p.add_argument("--interrupt-after", help="stop after these nodes: a,b or *")
    p.add_argument("--subgraphs", action="store_true", help="stream subgraphs' events too")
    p.add_argument("--thread", help="thread id (stateful graphs)")
    p.add_argument("--request-id", help="idempotency key (default: a new uuid)")
    p.add_argument("--timeout-s", type=float, help="give up the run after this many seconds")
    p.add_argument("--webhook", help="POST the result to this URL (graphwire webhooks)")
    p.add_argument("--after-seconds", type=float, help="run this many seconds from now")
    p.add_argument("--run-at", help="run at this RFC 3339 time, e.g. 2026-12-02T15:00:00Z")
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    p.add_argument(
        "--stream", action="store_true", help="print events as they arrive, then the result"
    )
    p.add_argument("--stream-modes", help="comma-separated: updates,custom,messages,values,"
                   "tasks,checkpoints,debug")
    p.add_argument(
        "--wait-timeout", type=float, default=60.0, help="seconds to wait for the result"
    )
    p.add_argument("--multitask-strategy", choices=["enqueue", "reject", "interrupt", "rollback"],
                   help="when the thread has a run in progress (default enqueue)")
    p.add_argument("--checkpoint-id", help="run from this checkpoint of --thread (a fork)")
    p.set_defaults(func=_submit, is_async=True)

    p = sub.add_parser("state", help="print a thread's current state and pending interrupts")
    p.add_argument("thread_id")
    p.add_argument("--graph", required=True, help="the graph the thread runs")
    _graph_flags(p, demo_flag=False)  # GRAPHWIRE_DEMO_GRAPHS=true for a demo graph's thread
    p.set_defaults(func=state_command, is_async=True)

    p = sub.add_parser("dlq", help="inspect and replay dead letters")
    dsub = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    d = dsub.add_parser("list", help="list dead letters with their reasons")
    _kafka_flags(d)
    d.add_argument("--limit", type=int, help="only the last N")
    d.add_argument("--json", action="store_true", help="one JSON object per line")
    d.set_defaults(func=dlq_list_command, is_async=True)
    d = dsub.add_parser("replay", help="re-produce dead letters to the requests topic")
    _kafka_flags(d)
    d.add_argument("--request-id", help="replay the dead letters of this request")
    d.add_argument("--all", action="store_true", help="replay every dead letter")
    d.set_defaults(func=dlq_replay_command, is_async=True)

    p = sub.add_parser("checkpoints", help="manage LangGraph checkpoints in PostgreSQL")
    csub = p.add_subparsers(dest="checkpoints_command", required=True, metavar="ACTION")
    c = csub.add_parser(
        "prune", help="delete threads idle for longer than the retention, with their effect journal"
    )
    c.add_argument(
        "--older-than-s", type=float, help="seconds (default GRAPHWIRE_CHECKPOINT_TTL_S, 30 days)"
    )
    c.set_defaults(func=checkpoints_prune_command, is_async=True)

    add_audit_parsers(sub, _kafka_flags)
    add_traffic_parsers(sub, _kafka_flags)
    add_gateway_parsers(sub, _kafka_flags)
    add_ops_parsers(sub, _kafka_flags)
    add_runctl_parsers(sub, _kafka_flags)
    add_webhooks_parsers(sub, _kafka_flags)
    add_schedule_parsers(sub, _kafka_flags)
    add_store_parsers(sub, _kafka_flags)

    p = sub.add_parser("graphs", help="list registered graphs and their nodes")
    _graph_flags(p)
    p.set_defaults(func=_graphs, is_async=False)

    p = sub.add_parser(
        "dev", help="the whole stack on this machine: broker, Redis, PostgreSQL, runner, sink"
    )
    p.add_argument("--port", type=int, help="broker port (default: a free one)")
    p.add_argument("--demo", action="store_true", help="submit sample requests and print them")
    p.add_argument(
        "--exit-after-demo", action="store_true", help="stop after the demo (for scripts)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary data and logs")
    p.set_defaults(func=_dev, is_async=True)

    p = sub.add_parser("broker", help="run the bundled development broker (memory storage)")
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(func=_broker, is_async=False)
    return parser


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()]
        return "invalid settings or arguments: " + "; ".join(parts)
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the result: is a worker running? (graphwire worker)"
    return str(exc)


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on uvloop where it is installed (about 10% more runs/s), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``graphwire`` console script."""
    args = build_parser().parse_args(argv)
    # one-line errors, not aiokafka's
    if args.command not in ("worker", "audit", "gateway", "webhooks", "scheduler"):
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        if args.command in ("worker", "audit") and args.processes > 1:
            return _processes(args)
        func: Callable[[argparse.Namespace], Any] = args.func
        if args.is_async:
            coro: Coroutine[Any, Any, int] = func(args)
            return run_async(coro)
        return int(func(args))
    except KeyboardInterrupt:
        return 130
    except (GraphwireError, ValidationError, TimeoutError, OSError) as exc:
        if args.debug:
            raise
        print(f"graphwire: error: {_describe_error(exc)}", file=sys.stderr)
        code = EXIT_UNAVAILABLE if getattr(exc, "retriable", False) else EXIT_FAILED
        return code
    except Exception as exc:
        if args.debug:
            raise
        from graphwire.graphs.registry import GraphLoadError

        if isinstance(exc, GraphLoadError):
            print(f"graphwire: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(
            f"graphwire: error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
