"""One thread, one run at a time, whatever the key (issue 21): the thread lease across workers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_REDIS_URL
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
        text = await asyncio.to_thread(worker_log.read_text)
        warnings = text.count("not keyed by their thread_id")
        assert warnings == 2  # one per worker: the first mis-keyed request, then once a minute
    finally:
        for w in workers:
            w.stop()


async def partition_owners(bootstrap: str, topics: TopicNames, out: Collector) -> dict[int, str]:
    """Which worker runs each partition of the requests topic (one probe request each)."""
    probes = [(f"probe-{p}".encode(), encode(turn(f"probe-{p}", f"probe-{p}", "P", 0)), p)
              for p in range(4)]
    await send(bootstrap, topics.requests, probes)
    await out.wait_until(lambda: all(f"probe-{p}" in runs
                                     for runs in [spans(out, topics)] for p in range(4)))
    runs = spans(out, topics)
    owners = {p: runs[f"probe-{p}"][0][2] for p in range(4)}
    assert sorted(set(owners.values())) == ["w0", "w1"], owners
    return owners


def node_events(
    out: Collector, topics: TopicNames, rid: str, *, replayed: bool = False
) -> list[str]:
    """The nodes of ``rid``'s node events that ran (``replayed``: of those replayed)."""
    return [e["node"] for e in out.values(topics.events)
            if e["request_id"] == rid and e["type"] == "node"
            and e.get("replayed", False) is replayed]


@pytest.mark.parametrize("strategy", ["reject", "interrupt", "rollback"])
async def test_multitask_strategy_applies_to_a_run_on_the_other_worker(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path,
    strategy: str,
) -> None:
    """A turn keyed otherwise lands on the worker that does not run its thread: reject answers
    ThreadBusy at once while the run goes on; interrupt/rollback stop that run at a step
    boundary (through the cancel marker) and then run on the thread's state."""
    env = {**worker_env, "GRAPHWIRE_GRAPHS": GRAPHS}
    workers = two_workers(env, worker_log)
    try:
        await wait_for_members(bootstrap, env["GRAPHWIRE_GROUP_ID"], 2)
        async with Collector(bootstrap, topics.results, topics.events, topics.dlq) as out:
            owner_of = await partition_owners(bootstrap, topics, out)
            on_w0 = next(p for p, w in owner_of.items() if w == "w0")
            on_w1 = next(p for p, w in owner_of.items() if w == "w1")
            await send(bootstrap, topics.requests,
                       [(b"T", encode(turn("A", "T", "A", 1.0)), on_w0)])
            await out.wait_until(lambda: "step1" in node_events(out, topics, "A"))
            second = turn("B", "T", "B", 0, multitask_strategy=strategy)
            await send(bootstrap, topics.requests, [(b"B-key", encode(second), on_w1)])
            await out.wait_until(lambda: {"A", "B"} <= set(by_id(out, topics.results)),
                                 timeout=60)
            await asyncio.sleep(0.3)
            results = by_id(out, topics.results)
            order = [v["request_id"] for v in out.values(topics.results)
                     if v["request_id"] in ("A", "B")]
            runs = spans(out, topics)
            dead = out.values(topics.dlq)
        a, b = results["A"], results["B"]
        assert dead == []
        assert runs["A"][0][2] == "w0" and runs["B"][0][2] == "w1"
        if strategy == "reject":
            assert order == ["B", "A"]
            assert (a["status"], b["status"]) == ("success", "rejected")
            assert b["error"]["type"] == "ThreadBusy"
            assert "thread 'T' has a run in progress ('A')" in b["error"]["message"]
            assert a["output"]["log"] == labels("A")
            assert node_events(out, topics, "B") == []
            return
        assert order == ["A", "B"]
        assert (a["status"], b["status"]) == ("cancelled", "success")
        assert a["error"]["message"].startswith(
            f"cancelled: request 'B' arrived on thread 'T' with multitask_strategy '{strategy}'")
        kept = node_events(out, topics, "A")
        assert 1 <= len(kept) < 4 and kept == [f"step{i}" for i in range(1, len(kept) + 1)]
        before = [f"A{i}" for i in range(1, len(kept) + 1)] if strategy == "interrupt" else []
        assert b["output"]["log"] == before + labels("B")
        assert runs["A"][-1][1] <= runs["B"][0][1], "B started before A stopped"
        assert [w.terminate() for w in workers] == [0, 0]
    finally:
        for w in workers:
            w.stop()


async def test_a_sigkilled_holder_frees_the_thread_after_the_lease_and_turns_go_on_in_order(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path
) -> None:
    """The worker running turn A is SIGKILLed while turn B (keyed otherwise) waits on the other
    worker: after the lease TTL A resumes there from its checkpoint, then B runs on A's state."""
    env = {**worker_env, "GRAPHWIRE_GRAPHS": GRAPHS}  # GRAPHWIRE_LEASE_MS=3000
    workers = two_workers(env, worker_log)
    try:
        await wait_for_members(bootstrap, env["GRAPHWIRE_GROUP_ID"], 2)
        async with Collector(bootstrap, topics.results, topics.events) as out:
            owner_of = await partition_owners(bootstrap, topics, out)
            on_w0 = next(p for p, w in owner_of.items() if w == "w0")
            on_w1 = next(p for p, w in owner_of.items() if w == "w1")
            await send(bootstrap, topics.requests,
                       [(b"T", encode(turn("A", "T", "A", 1.0)), on_w0)])
            await out.wait_until(lambda: "step1" in node_events(out, topics, "A"))
            await send(bootstrap, topics.requests,
                       [(b"B-key", encode(turn("B", "T", "B", 0)), on_w1)])
            await asyncio.sleep(1.0)  # B has claimed and waits (A is in step2)
            assert "B" not in spans(out, topics)
            workers[0].kill()
            await out.wait_until(lambda: {"A", "B"} <= set(by_id(out, topics.results)),
                                 timeout=90)
            await asyncio.sleep(0.3)
            results = by_id(out, topics.results)
            runs = spans(out, topics)
            nodes_a = node_events(out, topics, "A")
            replayed_a = node_events(out, topics, "A", replayed=True)
            starts_a = [e["data"] for e in out.values(topics.events)
                        if e["request_id"] == "A" and e["type"] == "run_started"]
        assert (results["A"]["status"], results["B"]["status"]) == ("success", "success")
        assert [(s["worker"], s["attempt"], s["resumed"]) for s in starts_a] == [
            ("w0", 1, False), ("w1", 2, True)]
        assert nodes_a.count("step1") == 1  # resumed from its checkpoint, not rerun
        # the steps attempt 1 finished, sent again by attempt 2 (the kill came during step2,
        # or just after it)
        assert replayed_a in (["step1"], ["step1", "step2"])
        assert results["A"]["output"]["log"] == labels("A")
        assert results["B"]["output"]["log"] == labels("A") + labels("B")
        assert [t for t, _, _ in runs["B"]] == ["run_started", "run_finished"]
        assert runs["A"][-1][1] <= runs["B"][0][1], "B ran before A's resumed run finished"
        assert workers[1].terminate() == 0
    finally:
        for w in workers:
            w.stop()


async def test_the_claim_of_a_turn_is_one_round_trip_and_turns_take_the_thread_in_order(
    prefix: str,
) -> None:
    """RedisClaims against Redis: a claim with its thread is one script in one round trip;
    the thread goes to the earliest live turn; release keeps a turn's place, done frees it;
    a turn whose worker stopped giving signs of life loses its place after keep_ms."""
    from graphwire.processors.runner.claims import RedisClaims, Turn
    from graphwire.topics.runstatus import thread_keys

    async with RedisClaims(TEST_REDIS_URL, namespace=prefix, lease_ms=1000, keep_ms=1500) as store:
        batcher = store.batcher
        first = await store.acquire("r2", "o2", Turn("T", 2000))  # loads the script
        assert (first.state, first.attempt, first.thread_busy) == ("acquired", 1, None)

        before = (batcher.round_trips, batcher.calls)
        waiting = await store.acquire("r3", "o3", Turn("T", 3000))
        assert (batcher.round_trips - before[0], batcher.calls - before[1]) == (1, 1)
        assert (waiting.state, waiting.thread_busy, waiting.ahead) == ("wait", "r2", ())
        plain = (batcher.round_trips, batcher.calls)
        assert (await store.acquire("lone", "o")).state == "acquired"  # no thread: as before
        assert (batcher.round_trips - plain[0], batcher.calls - plain[1]) == (1, 1)

        early = await store.acquire("r1", "o1", Turn("T", 1000, "stop"))  # produced first
        assert (early.state, early.thread_busy, early.ahead) == ("wait", "r2", ())
        late = await store.acquire("r3", "o3", Turn("T", 3000, "stop"))
        assert (late.state, late.thread_busy, late.ahead) == ("wait", "r2", ("r1",))
        rejected = await store.acquire("r4", "o4", Turn("T", 4000, "reject"))
        assert (rejected.state, rejected.thread_busy) == ("acquired", "r2")

        await store.complete("r2", "o2", "success")
        assert (await store.acquire("r3", "o3", Turn("T", 3000))).state == "wait"  # r1 first
        assert (await store.acquire("r1", "o1", Turn("T", 1000))).state == "acquired"
        await store.release("r1", "o1")  # drained: r1 keeps its place for its redelivery
        assert (await store.acquire("r3", "o3", Turn("T", 3000))).state == "wait"
        settling = await store.acquire("r1", "o1b", Turn("T", 1000, "settle"))
        assert (settling.state, settling.detail, settling.thread_busy) == ("wait", "settle", None)
        again = await store.acquire("r1", "o1b", Turn("T", 1000))
        assert (again.state, again.attempt) == ("acquired", 2)
        await store.complete("r1", "o1b", "success")
        assert (await store.acquire("r3", "o3", Turn("T", 3000))).state == "acquired"
        await store.complete("r3", "o3", "success")
        done = await store.acquire("r3", "o3", Turn("T", 3000))
        assert (done.state, done.detail) == ("done", "success")

        keys = thread_keys(prefix, "T")
        assert await store.client.exists(keys.lease, keys.turns, keys.alive) == 0
        assert (await store.acquire("r5", "o5", Turn("T", 5000))).state == "acquired"
        await store.release("r5", "o5")  # its worker is gone: no claim, no renewal follows
        assert (await store.acquire("r6", "o6", Turn("T", 6000))).state == "wait"
        await asyncio.sleep(1.6)
        assert (await store.acquire("r6", "o6", Turn("T", 6000))).state == "acquired"
        assert await store.client.zrange(keys.turns, 0, -1) == [b"r6"]
        await store.complete("r6", "o6", "success")


async def test_topics_scale_wait_drained_waits_for_the_runners_to_consume_every_request(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path
) -> None:
    """`graphwire topics scale --wait-drained S` adds no partition while requests wait (exit 1,
    saying how many); once a runner has consumed them it goes on to add them (which the test
    broker refuses: the step after the wait is all it can show)."""
    import subprocess

    from tests.helpers import graphwire

    def scale() -> subprocess.CompletedProcess[str]:
        return graphwire("topics", "scale", "--partitions", "8", "--wait-drained", "2",
                         env=worker_env, timeout=120)

    env = {**worker_env, "GRAPHWIRE_GRAPHS": GRAPHS}
    await send(bootstrap, topics.requests,
               [(f"d{i}".encode(), encode(turn(f"d{i}", f"d{i}", "D", 0)), i % 4)
                for i in range(6)])
    waiting = await asyncio.to_thread(scale)
    assert waiting.returncode == 1
    assert (f"{topics.requests}: 6 requests not consumed by the runners ({topics.prefix}-runners)"
            f" after 2 s; partitions not added") in waiting.stderr
    worker = WorkerProcess(env, log_path=worker_log).start()
    try:
        async with Collector(bootstrap, topics.results) as out:
            await out.wait_count(topics.results, 6, timeout=60)
        await asyncio.sleep(1.0)  # the runner commits every 100 ms
        drained = await asyncio.to_thread(scale)
    finally:
        worker.stop()
    assert (f"{topics.requests}: the runners ({topics.prefix}-runners) have consumed every "
            "request (lag 0)") in drained.stdout
    assert drained.returncode == 1
    assert "it may not support CreatePartitions (the bundled test broker does not)" in (
        drained.stderr)
