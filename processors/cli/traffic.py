"""``graphwire submit --file`` (many requests, a progress bar and a summary) and
``graphwire tail`` (events and results live, for a person or, with ``--json``, a machine)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from graphwire.processors.cli.common import EXIT_FAILED, EXIT_OK, settings_from
from graphwire.topics.codec import dumps, loads
from graphwire.topics.errors import GraphwireError

_REQUEST_FIELDS = {"graph", "input", "command", "request_id", "thread_id", "config", "stream",
                   "timeout_s", "metadata"}


def read_requests(path: Path, default_graph: str | None) -> list[dict[str, Any]]:
    """Requests from a JSON Lines file: each line a request (with ``graph``) or, with a default
    graph, just the input object. Errors name the line."""
    requests = []
    text = path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = loads(line)
        except ValueError as exc:
            raise GraphwireError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise GraphwireError(f"{path}:{number}: expected a JSON object per line")
        if "graph" in obj:
            unknown = set(obj) - _REQUEST_FIELDS
            if unknown:
                raise GraphwireError(
                    f"{path}:{number}: unknown request fields {sorted(unknown)}; "
                    f"a line is a request ({', '.join(sorted(_REQUEST_FIELDS))}) or an input"
                )
            requests.append(obj)
        elif default_graph:
            requests.append({"graph": default_graph, "input": obj})
        else:
            raise GraphwireError(
                f"{path}:{number}: no 'graph' in the line; give one per line or as the "
                "command's GRAPH argument"
            )
    if not requests:
        raise GraphwireError(f"{path} has no requests")
    return requests


class Progress:
    """A one-line progress bar on stderr (a line every few seconds when not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.errors = total, 0, 0
        self.started = time.monotonic()
        self._tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, ok: bool, *, final: bool = False) -> None:
        if not final:
            self.done += 1
            self.errors += not ok
        now = time.monotonic()
        if not (final or (self._tty and now - self._last > 0.1) or now - self._last > 5):
            return
        self._last = now
        width = 30
        filled = int(width * self.done / self.total)
        rate = self.done / max(now - self.started, 1e-6)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}  "
                f"{rate:.1f}/s  errors {self.errors}")
        end = "\n" if final or not self._tty else ""
        print(("\r" if self._tty else "") + line, end=end, file=sys.stderr, flush=True)


async def submit_file(args: argparse.Namespace) -> int:
    """Submit every request of ``--file``, wait for all results, print a summary table."""
    from graphwire.topics.client import GraphwireClient

    settings = settings_from(args)
    requests = read_requests(Path(args.file), args.graph)
    progress = Progress(len(requests))
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    window = asyncio.Semaphore(args.concurrency)
    async with GraphwireClient(
        settings.bootstrap_servers, topic_prefix=settings.topic_prefix, **settings.kafka_security()
    ) as client:

        async def one(body: dict[str, Any]) -> None:
            async with window:
                body = dict(body)
                graph = body.pop("graph")
                payload = body.pop("input", None)
                sent = time.monotonic()
                rid = await client.submit(graph, payload, **body)
                result = await client.result(rid, timeout=args.wait_timeout)
            latencies.append((time.monotonic() - sent) * 1000)
            statuses[str(result.status)] += 1
            if args.json:
                print(result.model_dump_json())
            progress.update(result.status == "success")

        started = time.monotonic()
        await asyncio.gather(*(one(body) for body in requests))
        elapsed = time.monotonic() - started
    progress.update(True, final=True)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    rows = [("requests", f"{len(requests)}"), ("done", f"{statuses['success']}")]
    rows += [(status, str(n)) for status, n in sorted(statuses.items()) if status != "success"]
    rows += [
        ("errors", str(sum(n for s, n in statuses.items() if s != "success"))),
        ("p50 latency", f"{statistics.median(latencies):.1f} ms"),
        ("p99 latency", f"{p99:.1f} ms"),
        ("throughput", f"{len(requests) / elapsed:.1f} requests/s"),
    ]
    for name, value in rows:
        print(f"{name:<12} {value:>16}", file=sys.stderr)
    return EXIT_OK if statuses["success"] == len(requests) else EXIT_FAILED


_COLOURS = {"success": "32", "error": "31", "rejected": "31", "timeout": "33",
            "interrupted": "36"}


def _human(kind: str, body: dict[str, Any], colour: bool) -> str:
    def paint(text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if colour else text

    stamp = time.strftime("%H:%M:%S", time.localtime(body.get("ts") or time.time()))
    head = f"{stamp} {body.get('request_id', '?'):<34} {body.get('graph', ''):<12}"
    if kind == "event":
        node = f" {body['node']}" if body.get("node") else ""
        data = dumps(body.get("data")).decode()
        data = data if len(data) <= 100 else data[:97] + "..."
        return f"{head} {body.get('seq', ''):>3} {body.get('type', '')}{node} {data}"
    status = str(body.get("status", ""))
    error = body.get("error") or {}
    detail = f" {error.get('type')}: {error.get('message')}" if error else ""
    return (f"{head} result {paint(status, _COLOURS.get(status, '0'))} "
            f"{body.get('duration_ms', 0):.1f} ms, attempts {body.get('attempts', 1)}{detail}")


async def tail_command(args: argparse.Namespace) -> int:
    """Follow events and results (from now, or ``--from-beginning``) until Ctrl-C or
    ``--limit`` results."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    settings = settings_from(args)
    topics = settings.topics
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
        fetch_max_wait_ms=50, **settings.kafka_security()
    )
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    colour = sys.stdout.isatty() and not args.json
    results = 0
    try:
        await consumer.topics()
        partitions = []
        for topic in (topics.events, topics.results):
            found = consumer.partitions_for_topic(topic)
            if not found:
                raise GraphwireError(f"topic {topic} does not exist: run `graphwire topics ensure`")
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(partitions)
        if args.from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            for tp, offset in (await consumer.end_offsets(partitions)).items():
                consumer.seek(tp, offset)
        print(f"following {topics.events} and {topics.results}", file=sys.stderr, flush=True)
        while not stop.is_set():
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                kind = "event" if tp.topic == topics.events else "result"
                for record in records:
                    try:
                        body = loads(record.value or b"")
                    except ValueError:
                        continue
                    if not isinstance(body, dict):
                        continue
                    wanted = not args.graph or body.get("graph") == args.graph
                    if not wanted:
                        continue
                    if args.json:
                        print(dumps({"kind": kind, **body}).decode(), flush=True)
                    else:
                        print(_human(kind, body, colour), flush=True)
                    results += kind == "result"
                    if args.limit and results >= args.limit:
                        return EXIT_OK
    finally:
        await consumer.stop()
    return EXIT_OK


def add_parsers(sub: Any, kafka_flags: Any) -> None:
    p = sub.add_parser("tail", help="follow events and results live")
    kafka_flags(p)
    p.add_argument("--graph", help="only this graph")
    p.add_argument("--json", action="store_true", help="one JSON object per line, with 'kind'")
    p.add_argument("--from-beginning", action="store_true", help="replay what the topics hold")
    p.add_argument("--limit", type=int, help="stop after this many results")
    p.set_defaults(func=tail_command, is_async=True)
