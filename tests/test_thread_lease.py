"""One thread, one run at a time, whatever the key (issue 21): the thread lease across workers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from graphwire.topics.specs import TopicNames
from tests.kafka_helpers import Collector, WorkerProcess, encode, request, wait_for_members

pytestmark = pytest.mark.integration

GRAPHS = "steps=tests.sample_graphs:thread_steps"


def turn(rid: str, thread: str, label: str, pause: float, **fields: Any) -> dict[str, Any]:
    """A turn of the 4-step thread graph: appends ``<label>1`` .. ``<label>4`` to its log."""
    return request(rid, graph="steps", thread_id=thread, input={"label": label, "pause": pause},
                   **fields)


def labels(label: str) -> list[str]:
    return [f"{label}{i}" for i in range(1, 5)]


async def send(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes, int | None]]) -> None:
    """Produce ``(key, value, partition)`` in order (partition None: the key's partition)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, partition in messages:
            await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


def spans(out: Collector, topics: TopicNames) -> dict[str, list[tuple[str, int, str]]]:
    """Per request_id, its ``(type, Kafka timestamp ms, worker)`` of run_started/run_finished."""
    found: dict[str, list[tuple[str, int, str]]] = {}
    for record in out.records[topics.events]:
        import orjson

        event = orjson.loads(record.value)
        if event["type"] in ("run_started", "run_finished"):
            worker = event["data"].get("worker", "")
            found.setdefault(event["request_id"], []).append(
                (event["type"], record.timestamp, worker))
    return found


def by_id(out: Collector, topic: str) -> dict[str, Any]:
    return {v["request_id"]: v for v in out.values(topic)}


def two_workers(env: dict[str, str], log: Path) -> list[WorkerProcess]:
    return [WorkerProcess({**env, "GRAPHWIRE_WORKER_ID": f"w{i}"}, log_path=log).start()
            for i in range(2)]


async def test_turns_keyed_by_request_id_run_one_at_a_time_in_order_on_two_workers(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path
) -> None:
    """The issue's reproduction: 10 threads x 2 turns keyed by request_id on 4 partitions and 2
    workers: every turn 2 runs after its turn 1 (no overlap) and its state holds turn 1."""
    env = {**worker_env, "GRAPHWIRE_GRAPHS": GRAPHS}
    workers = two_workers(env, worker_log)
    try:
        await wait_for_members(bootstrap, env["GRAPHWIRE_GROUP_ID"], 2)
        threads = [f"th{i}" for i in range(10)]
        messages = []
        for thread in threads:
            for n, label in ((1, "a"), (2, "b")):
                rid = f"{thread}-{n}"
                messages.append((rid.encode(), encode(turn(rid, thread, label, 0.2)), None))
        await send(bootstrap, topics.requests, messages)
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await out.wait_until(lambda: len(by_id(out, topics.results)) == 20, timeout=120)
            await asyncio.sleep(0.3)
            results = by_id(out, topics.results)
            runs = spans(out, topics)
        assert {r["status"] for r in results.values()} == {"success"}
        split = 0
        for thread in threads:
            first, second = runs[f"{thread}-1"], runs[f"{thread}-2"]
            assert [t for t, _, _ in first] == ["run_started", "run_finished"], thread
            assert [t for t, _, _ in second] == ["run_started", "run_finished"], thread
            assert first[1][1] <= second[0][1], f"{thread}: the turns overlapped"
            assert results[f"{thread}-1"]["output"]["log"] == labels("a")
            assert results[f"{thread}-2"]["output"]["log"] == labels("a") + labels("b"), thread
            split += first[0][2] != second[0][2]
        assert split > 0, "no thread had its turns on both workers: the test shows nothing"
        assert [w.terminate() for w in workers] == [0, 0]
    finally:
        for w in workers:
            w.stop()
