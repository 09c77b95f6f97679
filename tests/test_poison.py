"""A request whose run takes its worker down every time is given up after
GRAPHWIRE_MAX_DELIVERIES deaths: an error result and a dead letter, and the partition goes on.
Starts that end cleanly (a drain on SIGTERM, a retry after an outage) are not deaths."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from graphwire.processors.runner.claims import RedisClaims
from graphwire.topics.runstatus import run_keys
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_REDIS_URL
from tests.kafka_helpers import Collector, WorkerProcess, encode, produce, request

pytestmark = pytest.mark.integration


async def test_a_request_that_kills_its_worker_is_given_up_after_max_deliveries(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """MAX_DELIVERIES=2: the crasher kills two workers, the third start gives it up (error
    result, one dead letter); the request behind it on the same key then succeeds."""
    env = {**worker_env, "GRAPHWIRE_MAX_DELIVERIES": "2",
           "GRAPHWIRE_GRAPHS": "crasher=tests.sample_graphs:crasher"}
    log = tmp_path / "worker.log"
    async with Collector(bootstrap, topics.results, topics.dlq) as out:
        # same key: the good request waits behind the poison one, in order
        await produce(bootstrap, topics.requests, [
            (b"k", encode(request("poison", "crasher", input={"text": "x"}))),
            (b"k", encode(request("after", "echo", input={"text": "fine"}))),
        ])
        deaths = 0
        deadline = time.monotonic() + 120
        worker = WorkerProcess(env, log_path=log).start()
        try:
            while len(out.records[topics.results]) < 2:
                assert time.monotonic() < deadline, f"stuck after {deaths} worker deaths"
                assert worker.process is not None
                if worker.process.poll() is not None:  # the graph killed it: restart
                    deaths += 1
                    worker = WorkerProcess(env, log_path=log).start()
                await asyncio.sleep(0.2)
        finally:
            worker.stop()
    assert deaths == 2  # started twice, killed twice; the third delivery gives up
    results = {r["request_id"]: r for r in out.values(topics.results)}
    poison = results["poison"]
    assert (poison["status"], poison["error"]["type"], poison["attempts"]) == (
        "error", "PoisonMessage", 2
    )
    assert poison["error"]["message"].startswith("started 2 times and never finished")
    assert results["after"]["status"] == "success"
    reasons = [dict(r.headers)["x-graphwire-error"].decode() for r in out.records[topics.dlq]]
    assert [r.split(":")[0] for r in reasons] == ["poison message"]


async def test_dedup_counts_a_death_only_for_a_start_that_never_ended(prefix: str) -> None:
    """deaths: 0 after a release (drain) and after this process re-acquires its own expired or
    live lease; 1 when another process's start expired; 2 when a restarted worker reuses the
    dead one's owner name; every acquire still gets a new, higher attempt number."""
    redis, rid = TEST_REDIS_URL, "r-deaths"
    async with (
        RedisClaims(redis, namespace=prefix, lease_ms=1000) as a,
        RedisClaims(redis, namespace=prefix, lease_ms=1000) as b,
        RedisClaims(redis, namespace=prefix, lease_ms=1000) as restarted_a,
    ):
        claims = [await a.acquire(rid, "w1")]
        await a.release(rid, "w1")  # a graceful drain
        claims.append(await b.acquire(rid, "w2"))
        claims.append(await b.acquire(rid, "w2"))  # a retry after an outage: lease still ours
        await asyncio.sleep(1.3)  # an outage longer than the lease: b's own lease expired
        claims.append(await b.acquire(rid, "w2"))
        await asyncio.sleep(1.3)  # b dies: its lease expires, never released
        claims.append(await a.acquire(rid, "w1"))
        # a dies too, and its container restarts with the same worker name at once
        claims.append(await restarted_a.acquire(rid, "w1"))
        await restarted_a.complete(rid, "w1", "success")
        done = await b.acquire(rid, "w3")
        keys = run_keys(prefix, rid)
        left = await a.client.mget(keys.start, keys.deaths)
    assert [(c.state, c.attempt, c.deaths) for c in claims] == [
        ("acquired", 1, 0),
        ("acquired", 2, 0),
        ("acquired", 3, 0),
        ("acquired", 4, 0),
        ("acquired", 5, 1),
        ("acquired", 6, 2),
    ]
    assert (done.state, done.detail) == ("done", "success")
    assert left == [None, b"2"]  # complete ended the start; the count stays until its TTL


async def test_rolling_restarts_during_one_run_are_not_deaths(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """MAX_DELIVERIES=2, one 10-step run, three workers SIGTERMed mid-run one after another
    (a rolling deploy): each drains, the fourth finishes it: success, attempts 4, no dead letter."""
    env = {**worker_env, "GRAPHWIRE_MAX_DELIVERIES": "2",
           "GRAPHWIRE_GRAPHS": "paced=tests.sample_graphs:paced"}
    log = tmp_path / "worker.log"
    workers: list[WorkerProcess] = []
    async with Collector(bootstrap, topics.results, topics.events, topics.dlq) as out:

        def starts() -> list[tuple[int, bool]]:
            return [(e["data"]["attempt"], e["data"]["resumed"])
                    for e in out.values(topics.events) if e["type"] == "run_started"]

        await produce(bootstrap, topics.requests, [
            (b"k", encode(request("rolling", "paced", input={"steps": 10, "pause": 0.4}))),
        ])
        try:
            for deployed in range(1, 4):
                workers.append(WorkerProcess(env, log_path=log).start())
                await out.wait_until(  # (a result: given up as poison, the bug)
                    lambda n=deployed: len(starts()) == n or bool(out.records[topics.results]),
                    timeout=60,
                )
                if out.records[topics.results]:
                    break
                await asyncio.sleep(0.5)  # at least one step on this worker
                assert await asyncio.to_thread(workers[-1].terminate) == 0
            else:
                workers.append(WorkerProcess(env, log_path=log).start())
            await out.wait_count(topics.results, 1, timeout=60)
            await asyncio.sleep(0.5)
        finally:
            for worker in workers:
                worker.stop()
        results = out.values(topics.results)
        dead_letters = len(out.records[topics.dlq])
    assert [(r["status"], r["attempts"], r.get("error")) for r in results] == [
        ("success", 4, None)
    ]
    assert results[0]["output"]["done"] == list(range(1, 11))
    assert starts() == [(1, False), (2, True), (3, True), (4, True)]
    assert dead_letters == 0
