"""``graphwire dev``: the bundled broker and a worker in one process, for a first look.

It starts the Kafka-compatible development broker (memory storage), creates the topics, runs
a GraphRunner with the built-in graphs and, with ``--demo``, submits sample requests and prints
their events and results. Ctrl-C stops everything; the broker's data goes with it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from graphs.registry import GraphRegistry
from processors.devbroker import DevBroker, free_port
from processors.runner import GraphRunner
from processors.settings import Settings
from topics.admin import ensure_topics
from topics.client import GraphwireClient

DEMO_REQUESTS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("pipeline", {"text": "Hello World"}, ["updates"]),
    ("echo", {"text": "graphwire"}, ["updates"]),
    (
        "chat",
        {"messages": [{"role": "user", "content": "What is 19 + 23?"}]},
        ["updates", "custom"],
    ),
]


async def _demo(client: GraphwireClient) -> bool:
    ok = True
    for graph, payload, stream in DEMO_REQUESTS:
        request_id = await client.submit(graph, payload, stream=stream)
        print(f"\n>>> {graph} {payload}  (request {request_id})", flush=True)
        async for event in client.events(request_id):
            where = f" {event.node}" if event.node else ""
            print(f"  event {event.seq} {event.type}{where}: {_short(event.data)}", flush=True)
        result = await client.result(request_id, timeout=30)
        print(f"  result {result.status}: {_short(result.output)}", flush=True)
        ok &= result.status == "success"
    return ok


def _short(value: Any, limit: int = 160) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def run_dev(port: int | None, demo: bool, exit_after_demo: bool) -> int:
    """Run the development stack until Ctrl-C (or after the demo with ``exit_after_demo``)."""
    broker = DevBroker(port or free_port())
    broker.start()
    settings = Settings(
        bootstrap_servers=broker.bootstrap_servers,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        partitions=4,
    )
    try:
        await ensure_topics(broker.bootstrap_servers, settings.topics.specs(settings.partitions))
        async with GraphRunner(settings, GraphRegistry.from_sources()) as runner:
            print(
                f"graphwire dev: broker on {broker.bootstrap_servers}, worker serving "
                f"{', '.join(runner.registry.names())}.\n"
                f"  Submit from another terminal:\n"
                f"  GRAPHWIRE_BOOTSTRAP_SERVERS={broker.bootstrap_servers} graphwire submit "
                'pipeline --input \'{"text": "Hello World"}\' --stream',
                flush=True,
            )
            ok = True
            if demo:
                async with GraphwireClient(broker.bootstrap_servers) as client:
                    ok = await _demo(client)
            if exit_after_demo:
                return 0 if ok else 1
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            print("\nrunning; Ctrl-C stops the worker and the broker", flush=True)
            await stop.wait()
        return 0
    finally:
        broker.stop()
        print("graphwire dev: stopped", file=sys.stderr)
