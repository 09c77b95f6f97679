"""Issue 21, scheduler intake: a delayed request it cannot store is rejected, never a stop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from graphwire.topics.specs import TopicNames
from tests.kafka_helpers import Collector, WorkerProcess, encode, ready, request
from tests.test_schedules import by_id, db, processes, sched_env, start_stack

pytestmark = pytest.mark.integration
__all__ = ["db", "processes", "sched_env"]  # fixtures

READY = {"ready": True, "dependencies": {"kafka": "ok", "postgresql": "ok"}}
LAST_SECOND_MS = 253402300799000  # 9999-12-31T23:59:59Z, the last second Python can represent


async def produce_stamped(bootstrap: str, topic: str,
                          messages: list[tuple[bytes, bytes, int | None]]) -> None:
    """Produce ``(key, value, timestamp_ms)`` in order (None: the producer's clock)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, stamp in messages:
            await (await producer.send(topic, value, key=key, timestamp_ms=stamp))
    finally:
        await producer.stop()


def dead_letters(out: Collector, topic: str) -> dict[str, tuple[str, str]]:
    """request_id -> (reason, source) of each dead letter on ``topic``."""
    found = {}
    for record in out.records[topic]:
        headers = dict(record.headers)
        rid = orjson.loads(record.value)["request_id"]
        assert rid not in found, f"two dead letters for {rid}"
        found[rid] = (headers["x-graphwire-error"].decode(),
                      headers["x-graphwire-source"].decode())
    return found


async def test_a_due_time_out_of_range_is_rejected_and_the_intake_goes_on(
    bootstrap: str, topics: TopicNames, sched_env: dict[str, str], db: Any,
    processes: list[WorkerProcess], tmp_path: Path,
) -> None:
    """run_at outside years 1-9999 in UTC, and after_seconds past a producer timestamp of
    9999-12-31: one rejected result and one dead letter each; the delayed request behind them on
    the same partition runs, the scheduler keeps running and stays ready."""
    await start_stack(bootstrap, sched_env, processes, tmp_path)
    scheduler = processes[1]
    async with Collector(bootstrap, topics.results, topics.dlq) as out:
        await produce_stamped(bootstrap, topics.requests, [
            (b"k", encode(request("early", run_at="0001-01-01T00:00:00+14:00")), None),
            (b"k", encode(request("late", run_at="9999-12-31T23:59:59-14:00")), None),
            (b"k", encode(request("stamped", after_seconds=1)), LAST_SECOND_MS),
            (b"k", encode(request("fine", after_seconds=0.5)), None),
        ])
        await out.wait_until(lambda: len(out.records[topics.results]) >= 4
                             and len(out.records[topics.dlq]) >= 3, timeout=60)
        await asyncio.sleep(1.0)  # nothing else comes
        results = {rid: [v for _, v in found] for rid, found in by_id(out, topics.results).items()}
        assert sorted(results) == ["early", "fine", "late", "stamped"]
        assert all(len(found) == 1 for found in results.values())
        assert results["fine"][0]["status"] == "success"
        for rid in ("early", "late", "stamped"):
            got = results[rid][0]
            assert (got["status"], got["error"]["type"]) == ("rejected", "InvalidRequest"), got
        assert "run_at" in results["early"][0]["error"]["message"]
        assert "run_at" in results["late"][0]["error"]["message"]
        assert results["stamped"][0]["error"]["message"] == (
            "invalid request: after_seconds: 1 s after the message's Kafka timestamp "
            "(253402300799000 ms) is past the year 9999; produce it with the current time as "
            "its timestamp, or give run_at")
        letters = dead_letters(out, topics.dlq)
        assert sorted(letters) == ["early", "late", "stamped"]
        for rid in letters:
            assert letters[rid][0] == results[rid][0]["error"]["message"]
        assert [letters[rid][1].rsplit("/", 1)[1] for rid in ("early", "late", "stamped")] == [
            "0", "1", "2"]
    assert scheduler.process is not None and scheduler.process.poll() is None
    port = int(sched_env["GRAPHWIRE_SCHEDULER_HTTP_PORT"])
    assert await ready(port) == (200, READY)
    rows = await db.fetch("SELECT request_id FROM graphwire_schedules ORDER BY request_id")
    assert [r["request_id"] for r in rows] == ["fine"]


async def test_a_row_postgresql_refuses_is_rejected_and_the_rest_is_stored(
    bootstrap: str, topics: TopicNames, sched_env: dict[str, str], db: Any,
    processes: list[WorkerProcess], tmp_path: Path,
) -> None:
    """A NUL in the graph name of one delayed request among others: that one gets a rejected
    result and a dead letter, the others are stored and run, /ready stays 200."""
    await start_stack(bootstrap, sched_env, processes, tmp_path)
    async with Collector(bootstrap, topics.results, topics.dlq) as out:
        await produce_stamped(bootstrap, topics.requests, [
            (b"k", encode(request("before", after_seconds=0.5)), None),
            (b"k", encode(request("nul", "pipeline\x00", after_seconds=0.5)), None),
            (b"k", encode(request("after", after_seconds=0.5)), None),
        ])
        await out.wait_until(lambda: len(out.records[topics.results]) >= 3
                             and len(out.records[topics.dlq]) >= 1, timeout=60)
        await asyncio.sleep(1.0)  # nothing else comes
        results = {rid: [v["status"] for _, v in found]
                   for rid, found in by_id(out, topics.results).items()}
        assert results == {"before": ["success"], "nul": ["rejected"], "after": ["success"]}
        nul = by_id(out, topics.results)["nul"][0][1]
        assert nul["error"]["type"] == "InvalidRequest"
        letters = dead_letters(out, topics.dlq)
        assert list(letters) == ["nul"]
        assert letters["nul"][0] == nul["error"]["message"]
    port = int(sched_env["GRAPHWIRE_SCHEDULER_HTTP_PORT"])
    assert await ready(port) == (200, READY)
    rows = await db.fetch("SELECT request_id, fired_at IS NOT NULL AS fired "
                          "FROM graphwire_schedules ORDER BY request_id")
    assert [(r["request_id"], r["fired"]) for r in rows] == [("after", True), ("before", True)]
