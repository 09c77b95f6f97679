"""A message that cannot be finished never stalls a key silently; a dead runner task exits.

Faults are real: the dead letter is refused by the worker's own producer (a record over its
GRAPHWIRE_MAX_MESSAGE_BYTES), and a runner task dies of an error raised inside the real
``graphwire worker`` process (armed by a request for a test graph that this module provides).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, TypedDict

import pytest
from aiokafka import AIOKafkaProducer
from langgraph.graph import END, START, StateGraph

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.dev.broker import free_port
from graphwire.processors.runner.runner import GraphRunner
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.helpers import until, wait_metric
from tests.kafka_helpers import (
    Collector,
    WorkerProcess,
    committed,
    encode,
    metrics,
    ready,
    request,
    wait_ready,
)

pytestmark = pytest.mark.integration

BLOB = 200_000  # a header over the worker's 100 kB producer limit: its dead letter is refused


async def produce_to(
    bootstrap: str, topic: str, messages: list[tuple[int, bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Produce ``(partition, key, value, headers)`` in order and wait for the acks."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    try:
        for partition, key, value, headers in messages:
            await producer.send_and_wait(topic, value, key=key, partition=partition,
                                         headers=headers)
    finally:
        await producer.stop()


async def test_unpublishable_dead_letter_stalls_partition_visibly_and_keeps_key_order(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """A refused dead letter holds partition 0 (/ready 503, metric), frees slots, keeps order."""
    port = free_port()
    env = {**worker_env, "GRAPHWIRE_HTTP_PORT": str(port),
           "GRAPHWIRE_MAX_MESSAGE_BYTES": "100000", "GRAPHWIRE_MAX_IN_FLIGHT": "2"}
    first = WorkerProcess(env, log_path=tmp_path / "worker1.log").start()
    async with Collector(bootstrap, topics.results, topics.dlq) as out:
        try:
            await wait_ready(port, 200)
            await produce_to(bootstrap, topics.requests, [
                (0, b"k", b"not json", [("blob", b"x" * BLOB)]),  # offset 0: stalls
                (0, b"c", encode(request("c")), []),  # offset 1: another key, runs once
                (0, b"k", encode(request("b")), []),  # offset 2: same key, must wait for 0
            ])
            body = await wait_ready(port, 503)
            assert body["ready"] is False
            assert body["dependencies"]["Kafka"].startswith(
                f"partition {topics.requests}/0 is stalled at offset 0 (attempts: "
            )
            stalls = f'graphwire_partition_stalls_total{{partition="0",topic="{topics.requests}"}}'
            await wait_metric(port, stalls, lambda v: v >= 3)  # rewound and retried: 1 s, 2 s
            # between tries the stalled messages give their 2 slots back (max_in_flight=2)
            await wait_metric(port, "graphwire_in_flight_messages", lambda v: v == 0)
            others = [(p, f"o{p}{i}".encode(), encode(request(f"o{p}{i}")), [])
                      for p in (1, 2, 3) for i in range(2)]
            await produce_to(bootstrap, topics.requests, others)
            await out.wait_count(topics.results, 7, timeout=60)
            await asyncio.sleep(0.5)  # nothing more may arrive
            m = await metrics(port)
            status, body = await ready(port)
            assert first.terminate() == 0
        finally:
            first.stop()
        done = sorted(r["request_id"] for r in out.values(topics.results))
        assert done == ["c", "o10", "o11", "o20", "o21", "o30", "o31"]  # no "b": not overtaken
        assert out.records[topics.dlq] == []
        assert status == 503 and "stalled at offset 0" in body["dependencies"]["Kafka"]
        assert m["graphwire_stalled_partitions"] == 1
        assert m["graphwire_duplicates_skipped_total"] == 0  # c was not fetched and run again
        assert m[stalls] >= 3
        assert (await committed(bootstrap, f"{topics.prefix}-runners", topics.requests, 4))[0] == 0

        # A worker whose producer may send it dead-letters offset 0, then runs b.
        second = WorkerProcess({**env, "GRAPHWIRE_MAX_MESSAGE_BYTES": str(8 * 1024 * 1024)},
                               log_path=tmp_path / "worker2.log").start()
        try:
            await out.wait_until(lambda: any(
                r["request_id"] == "b" for r in out.values(topics.results)), timeout=60)
            await wait_ready(port, 200)
            assert second.terminate() == 0
        finally:
            second.stop()
    dead = out.records[topics.dlq]
    assert len(dead) == 1
    assert dict(dead[0].headers)["x-graphwire-source"] == f"{topics.requests}/0/0".encode()
    b = [r for r in out.records[topics.results] if r.key == b"b"]
    assert len(b) == 1 and b[0].timestamp >= dead[0].timestamp
    assert (await committed(bootstrap, f"{topics.prefix}-runners", topics.requests, 4))[0] == 3


async def test_stalled_partition_moves_on_in_order_once_its_dead_letter_can_be_sent(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """In the same worker: the next retry after the limit is raised dead-letters, then runs b."""
    limited = settings.model_copy(update={"max_message_bytes": 100_000, "max_in_flight": 2})
    async with Collector(bootstrap, topics.results, topics.dlq) as out, GraphRunner(
        limited, GraphRegistry.from_sources()
    ) as runner:
        await produce_to(bootstrap, topics.requests, [
            (0, b"k", b"not json", [("blob", b"x" * BLOB)]),
            (0, b"k", encode(request("b")), []),
        ])
        sample = runner.metrics.registry.get_sample_value
        labels = {"topic": topics.requests, "partition": "0"}
        await until(lambda: (sample("graphwire_partition_stalls_total", labels) or 0) >= 2
                    and runner.in_flight == 0)
        stalled = runner.readiness()["Kafka"]
        assert (out.records[topics.results], out.records[topics.dlq]) == ([], [])
        # What an operator's fix amounts to (a restart with a larger GRAPHWIRE_MAX_MESSAGE_BYTES
        # is the other test): the running producer may now send the dead letter.
        assert runner._producer is not None
        runner._producer._max_request_size = 8 * 1024 * 1024
        await out.wait_until(lambda: len(out.records[topics.results]) == 1, timeout=30)
        await until(lambda: runner.readiness()["Kafka"] == "ok")
        assert sample("graphwire_stalled_partitions") == 0
        # b's result is out before its done marker and offset: its slot frees just after
        await until(lambda: runner.in_flight == 0, what="b's slot freed")
    assert stalled.startswith(f"partition {topics.requests}/0 is stalled at offset 0 (attempts: ")
    dead, results = out.records[topics.dlq], out.records[topics.results]
    assert [dict(r.headers)["x-graphwire-source"] for r in dead] == [
        f"{topics.requests}/0/0".encode()
    ]
    assert [r.key for r in results] == [b"b"] and results[0].timestamp >= dead[0].timestamp
    assert (await committed(bootstrap, f"{topics.prefix}-runners", topics.requests, 4))[0] == 2


async def test_revoking_a_stalled_partition_forgets_the_stall_and_its_new_owner_finishes_it(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """A stalled partition revoked to a worker that can dead-letter: the old one turns ready."""
    limited = settings.model_copy(update={"max_message_bytes": 100_000, "worker_id": "z-old"})
    async with Collector(bootstrap, topics.results, topics.dlq) as out, GraphRunner(
        limited, GraphRegistry.from_sources()
    ) as old:
        await produce_to(bootstrap, topics.requests, [
            (1, b"k", b"not json", [("blob", b"x" * BLOB)]),
            (1, b"k", encode(request("b")), []),
        ])
        await until(lambda: old.readiness()["Kafka"] != "ok")
        # round robin over the sorted partitions (control/0, requests/0..3) by member id: the
        # new member ("a-...") takes control/0, requests/1 and requests/3
        async with GraphRunner(settings.model_copy(update={"worker_id": "a-new"}),
                               GraphRegistry.from_sources()) as new:
            await out.wait_until(lambda: len(out.records[topics.results]) == 1, timeout=30)
            await until(lambda: old.readiness()["Kafka"] == "ok")
            sample = old.metrics.registry.get_sample_value
            # the result is out before its run leaves the books (the done marker comes after)
            await until(lambda: (old.in_flight, new.in_flight) == (0, 0))
            assert sample("graphwire_stalled_partitions") == 0
            assert new.metrics.registry.get_sample_value("graphwire_stalled_partitions") == 0
    assert [r.key for r in out.records[topics.results]] == [b"b"]
    assert [dict(r.headers)["x-graphwire-source"] for r in out.records[topics.dlq]] == [
        f"{topics.requests}/1/0".encode()
    ]


# -- a runner task that dies ------------------------------------------------------------------

_armed: dict[str, bool] = {"commit": False, "poll": False}


class _FaultState(TypedDict, total=False):
    text: str


def make_fault_graph() -> Any:
    """Test graph (GRAPHWIRE_GRAPHS): its run arms a one-shot error in the runner's commit or
    poll loop (named by the input text), then stays in flight for 2 s."""
    from graphwire.processors.runner.runner import GraphRunner

    commit, dispatch = GraphRunner._commit, GraphRunner._dispatch

    async def failing_commit(self: GraphRunner, *args: Any) -> None:
        if _armed["commit"]:
            _armed["commit"] = False
            raise RuntimeError("injected fault in the commit loop")
        await commit(self, *args)

    def failing_dispatch(self: GraphRunner, *args: Any) -> None:
        if _armed["poll"]:
            _armed["poll"] = False
            raise RuntimeError("injected fault in the poll loop")
        dispatch(self, *args)

    GraphRunner._commit = failing_commit  # type: ignore[method-assign]
    GraphRunner._dispatch = failing_dispatch  # type: ignore[method-assign]

    async def arm(state: _FaultState) -> _FaultState:
        _armed[state["text"]] = True
        await asyncio.sleep(2)
        return {"text": "armed"}

    builder = StateGraph(_FaultState)
    builder.add_node("arm", arm)
    builder.add_edge(START, "arm")
    builder.add_edge("arm", END)
    return builder.compile()


@pytest.mark.parametrize("task", ["commit", "poll"])
async def test_dead_runner_task_fails_readiness_and_exits_non_zero(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path, task: str
) -> None:
    """An unexpected error kills the commit/poll task: /ready 503 names it, the worker exits 1."""
    port = free_port()
    log_path = tmp_path / "worker.log"
    env = {**worker_env, "GRAPHWIRE_HTTP_PORT": str(port),
           "GRAPHWIRE_GRAPHS": "fault=tests.test_stalls:make_fault_graph"}
    worker = WorkerProcess(env, log_path=log_path).start()
    try:
        async with Collector(bootstrap, topics.results) as out:
            await wait_ready(port, 200)
            await produce_to(bootstrap, topics.requests,
                             [(0, b"f", encode(request("f", "fault", input={"text": task})), [])])
            body = await wait_ready(port, 503)
            assert worker.process is not None
            code = await asyncio.to_thread(worker.process.wait, 60)
            await out.wait_count(topics.results, 1)  # the run in flight was drained first
    finally:
        worker.stop()
    why = (f"the runner's {task} task died (RuntimeError: injected fault in the {task} loop); "
           "this worker must be restarted (it exits non-zero) and the error reported to the "
           "graphwire maintainers")
    assert body == {"ready": False,
                    "dependencies": {"Kafka": why, "Redis": "ok", "PostgreSQL": "ok"}}
    assert code == 1
    assert [r["status"] for r in out.values(topics.results)] == ["success"]
    assert f"graphwire: error: {why}" in log_path.read_text()
