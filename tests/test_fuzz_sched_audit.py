"""Issue 21 fuzz: hostile records on the scheduler's and the audit sink's topics.

The rule under test: every record ends stored or dead-lettered, exactly once; the processor
stays ready; a valid record produced after them is stored (and, delayed, runs).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from graphwire.processors.audit.db import server_settings
from graphwire.processors.dev.broker import free_port
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL
from tests.kafka_helpers import Collector, WorkerProcess, encode, ready, request, wait_ready
from tests.test_audit import audit_env
from tests.test_schedules import by_id, db, processes, sched_env, start_stack

pytestmark = pytest.mark.integration
__all__ = ["audit_env", "db", "processes", "sched_env"]  # fixtures

LAST_SECOND_MS = 253402300799000  # 9999-12-31T23:59:59Z
WIDE = secrets.token_urlsafe(15_000)  # incompressible: larger than a btree index row may be
HOSTILE = [
    "a\x00b", "\x00", "\x01\x02\x1f\x7f", "line\nbreak\rreturn", "\x1b[31mred\x1b[0m", "\u2028",
    "\ufeff\u202ertl", "x" * 5000, "",
]
OUT_OF_RANGE = [
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0000-01-01T00:00:00Z",
    "2026-13-45T00:00:00Z", "2026-01-01T00:00:00", "tomorrow", "2026\x00-01-01T00:00:00Z",
    "+275760-09-13T00:00:00Z", "",
]


DEEP = "__deep__"


def deep_json(body: dict[str, Any], depth: int = 300) -> bytes:
    """``body`` as JSON, each ``DEEP`` string replaced by an object nested ``depth`` levels
    (orjson reads up to 1024 levels but writes fewer than 255, so built by hand)."""
    nested = b'{"d":' * depth + b'"bottom"' + b"}" * depth
    return encode(body).replace(b'"' + DEEP.encode() + b'"', nested)


Message = tuple[bytes | None, bytes | None, int | None]
"""``(key, value, timestamp_ms)`` (None: the producer's clock)."""


async def produce_at(bootstrap: str, topic: str,
                     messages: list[Message]) -> list[tuple[int, int]]:
    """Produce in order; the ``(partition, offset)`` of each message."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        where = []
        for key, value, stamp in messages:
            meta = await (await producer.send(topic, value, key=key, timestamp_ms=stamp))
            where.append((meta.partition, meta.offset))
        return where
    finally:
        await producer.stop()


def hostile_requests(tag: str, schedule: dict[str, Any]) -> list[Message]:
    """Requests with each hostile string in each string field, plus dates, depth, size and
    bytes that are not JSON; ``schedule`` (after_seconds or run_at) added to each body."""
    n = iter(range(10_000))
    bodies: list[dict[str, Any]] = []
    for text in HOSTILE:
        for field in ("request_id", "graph", "thread_id", "checkpoint_id", "webhook"):
            rid = f"{tag}-{next(n)}"
            value = rid + text if field == "request_id" else text
            bodies.append({**request(rid, **schedule), field: value})
        rid = f"{tag}-{next(n)}"
        bodies.append(request(rid, input={"text": text, text: text}, metadata={text: text},
                              **schedule))
    messages: list[Message] = [(b"k", encode(body), None) for body in bodies]
    for run_at in OUT_OF_RANGE:
        messages.append((b"k", encode(request(f"{tag}-{next(n)}", run_at=run_at)), None))
    for after in (-1, 1e12, 1e308, "soon", True, [1]):
        messages.append((b"k", encode(request(f"{tag}-{next(n)}", after_seconds=after)), None))
    messages += [
        (b"k", encode(request(f"{tag}-{next(n)}", after_seconds=3600)), LAST_SECOND_MS),
        (b"k", deep_json(request(f"{tag}-{next(n)}", input={"d": DEEP}, **schedule)), None),
        (b"k", deep_json(request(f"{tag}-{next(n)}", metadata={"d": DEEP}, **schedule)), None),
        (b"k", encode(request(f"{tag}-{next(n)}", input={"text": "y" * 900_000}, **schedule)),
         None),
        (b"k", encode(request(f"{tag}-{next(n)}", input={"text": "z" * 1_500_000},
                              **schedule)), None),
        (b"k", b'{"request_id": "' + f"{tag}-{next(n)}".encode() + b'", "run_at": ', None),
        (b"k", b'\xff\xfe{"after_seconds": 1, "run_at": 2}', None),
        (b"k", b'[{"after_seconds": 1}]', None),
        (b"k", b'{"request_id": "' + f"{tag}-{next(n)}".encode() + b'\\ud800", '
               b'"graph": "pipeline", "after_seconds": 3600}', None),
        (b"k", None, None),
    ]
    return messages


async def test_every_hostile_request_ends_stored_or_dead_lettered_by_the_scheduler(
    bootstrap: str, topics: TopicNames, sched_env: dict[str, str], db: Any,
    processes: list[WorkerProcess], tmp_path: Path,
) -> None:
    """Hostile delayed requests (a worker rejects what breaks the contract, the scheduler what
    it cannot store): each ends as one stored row or one dead letter, never both; the scheduler
    stays ready, and a delayed request produced after them runs."""
    await start_stack(bootstrap, sched_env, processes, tmp_path)
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    messages = (hostile_requests(f"{topics.prefix}-a", {"after_seconds": 3600})
                + hostile_requests(f"{topics.prefix}-b", {"run_at": later}))
    async with Collector(bootstrap, topics.dlq, topics.results) as out:
        where = await produce_at(bootstrap, topics.requests, messages)
        sources = {f"{topics.requests}/{p}/{o}" for p, o in where}
        assert len(sources) == len(messages)

        async def settled() -> tuple[list[str], list[str]]:
            rows = await db.fetch("SELECT source FROM graphwire_schedules")
            letters = [dict(r.headers)["x-graphwire-source"].decode()
                       for r in out.records[topics.dlq]]
            return [r["source"] for r in rows], letters

        deadline = time.monotonic() + 120
        stored, letters = await settled()
        while len(stored) + len(letters) < len(messages) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            stored, letters = await settled()
        await asyncio.sleep(1.0)  # nothing else comes
        stored, letters = await settled()
        assert Counter(stored + letters) == Counter(sources), (
            f"{len(stored)} stored + {len(letters)} dead letters for {len(messages)} records")
        port = int(sched_env["GRAPHWIRE_SCHEDULER_HTTP_PORT"])
        assert (await ready(port))[0] == 200
        await produce_at(bootstrap, topics.requests,
                         [(b"k", encode(request("valid", after_seconds=0.5)), None)])
        await out.wait_until(lambda: "valid" in by_id(out, topics.results), timeout=60)
        assert [v["status"] for _, v in by_id(out, topics.results)["valid"]] == ["success"]
    assert (await ready(port))[0] == 200


def hostile_results(tag: str) -> list[Message]:
    """Results with each hostile string in each string field, and numbers out of range."""
    good = {"graph": "pipeline", "status": "success", "output": {"text": "x"}, "error": None,
            "interrupts": [], "thread_id": "t", "attempts": 1, "cached": False,
            "duration_ms": 1.0, "metadata": {}}
    n = iter(range(10_000))
    bodies = []
    for text in HOSTILE:
        for field in ("request_id", "graph", "thread_id", "status", "output", "metadata"):
            rid = f"{tag}-{next(n)}"
            value: Any = rid + text if field == "request_id" else text
            if field in ("output", "metadata"):
                value = {text: text}
            bodies.append({**good, "request_id": rid, field: value})
    for field, value in (("attempts", 2**40), ("attempts", -1), ("duration_ms", 1e308),
                         ("output", DEEP), ("error", {"type": "\x00", "message": "\x00"}),
                         ("output", {"text": "y" * 900_000}),
                         ("thread_id", WIDE), ("graph", WIDE)):  # too large for an index
        bodies.append({**good, "request_id": f"{tag}-{next(n)}", field: value})
    return [(b"k", deep_json(b), None) for b in bodies] + [
        (b"k", b"not json", None), (b"k", None, None), (b"k", b"[]", None)]


def hostile_events(tag: str) -> list[Message]:
    """Events with hostile strings, seq and ts out of range, deep data."""
    n = iter(range(10_000))

    def event(**fields: Any) -> dict[str, Any]:
        return {"request_id": f"{tag}-{next(n)}", "seq": 0, "type": "node", "graph": "pipeline",
                "node": "n", "data": {}, "ts": 1_700_000_000.0, "metadata": {}, **fields}

    bodies = []
    for text in HOSTILE:
        bodies += [event(node=text), event(type=text), event(data={text: text}),
                   event(graph=text)]
        rid = f"{tag}-{next(n)}"
        bodies.append(event(request_id=rid + text))
    for seq in (-1, 2**60, "1", None):
        bodies.append(event(seq=seq))
    for ts in (-1, 1e20, "now", None):
        bodies.append(event(ts=ts))
    bodies += [event(data=DEEP), event(data={"text": "y" * 900_000})]
    return [(b"k", deep_json(b), None) for b in bodies] + [
        (b"k", b"\x00\x01", None), (b"k", None, None)]


def hostile_dead_letters() -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """Dead letters with hostile reasons, sources that do not parse, and values."""
    found = []
    for i, text in enumerate(HOSTILE):
        found.append((b"k", text.encode() or None,
                      [("x-graphwire-error", text.encode()),
                       ("x-graphwire-source", f"{text}/x/{i}".encode())]))
    found.append((None, b"\xff" * 100, [("\x00", b"\x00")]))
    return found


async def test_every_hostile_record_ends_stored_or_dead_lettered_by_the_audit_sink(
    bootstrap: str, topics: TopicNames, audit_env: dict[str, str], tmp_path: Path,
) -> None:
    """Hostile records on the four topics the sink reads: each ends as exactly one row (a run's
    request or result half, an event, a dead letter) or one dead letter of the sink's own;
    the sink stays ready, and a valid request produced after them is recorded."""
    port = free_port()
    env = {**audit_env, "GRAPHWIRE_AUDIT_HTTP_PORT": str(port)}
    sink = WorkerProcess(env, "--migrate", command="audit", log_path=tmp_path / "sink.log")
    sink.start()
    conn = None
    try:
        await wait_ready(port, 200, timeout=60)
        tag = topics.prefix
        requests = hostile_requests(f"{tag}-q", {})
        results = hostile_results(f"{tag}-s")
        events = hostile_events(f"{tag}-e")
        letters = hostile_dead_letters()
        at: dict[str, list[tuple[int, int]]] = {
            topics.requests: await produce_at(bootstrap, topics.requests, requests),
            topics.results: await produce_at(bootstrap, topics.results, results),
            topics.events: await produce_at(bootstrap, topics.events, events),
        }
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            at[topics.dlq] = []
            for key, value, headers in letters:
                meta = await (await producer.send(topics.dlq, value, key=key, headers=headers))
                at[topics.dlq].append((meta.partition, meta.offset))
        finally:
            await producer.stop()
        total = sum(len(v) for v in at.values())
        conn = await asyncpg.connect(
            TEST_DATABASE_URL, server_settings=server_settings(env["GRAPHWIRE_AUDIT_SCHEMA"]))

        async def outcomes() -> list[tuple[str, int, int]]:
            """One ``(topic, partition, offset)`` per row the sink wrote."""
            found = []
            for column in ("request_source", "result_source"):
                for r in await conn.fetch(f"SELECT {column} AS s FROM graphwire_runs "
                                          f"WHERE {column} IS NOT NULL"):
                    topic, partition, offset = r["s"].rsplit("/", 2)
                    found.append((topic, int(partition), int(offset)))
            event_at = {orjson.loads(v)["request_id"].replace("\x00", "\ufffd"): where
                        for (_, v, _), where in zip(events, at[topics.events], strict=True)
                        if v and v.startswith(b"{")}
            for r in await conn.fetch("SELECT request_id FROM graphwire_events"):
                found.append((topics.events, *event_at[r["request_id"]]))
            for r in await conn.fetch("SELECT source_topic, source_partition, source_offset, "
                                      "origin FROM graphwire_dead_letters"):
                topic = topics.dlq if r["origin"] != "audit" else r["source_topic"]
                found.append((topic, r["source_partition"], r["source_offset"]))
            return found

        deadline = time.monotonic() + 120
        while len(await outcomes()) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # nothing else comes
        expected = Counter((t, p, o) for t, where in at.items() for p, o in where)
        assert Counter(await outcomes()) == expected
        assert (await ready(port))[0] == 200
        await produce_at(bootstrap, topics.requests,
                         [(b"k", encode(request(f"{tag}-valid")), None)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not await conn.fetchval(
                "SELECT count(*) FROM graphwire_runs WHERE request_id = $1", f"{tag}-valid"):
            await asyncio.sleep(0.2)
        run = await conn.fetchrow("SELECT graph, status FROM graphwire_runs "
                                  "WHERE request_id = $1", f"{tag}-valid")
        assert (run["graph"], run["status"]) == ("pipeline", "accepted")
        assert (await ready(port))[0] == 200
    finally:
        sink.stop()
        if conn is not None:
            await conn.close()
