"""Redis or PostgreSQL stop answering: the runner pauses, waits and resumes; nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.runner.runner import GraphRunner
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.kafka_helpers import Collector, encode, produce, request
from tests.private_services import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.integration


async def _outage(
    bootstrap: str,
    topics: TopicNames,
    runner: GraphRunner,
    dependency: str,
    stop,
    start,
) -> None:
    async with Collector(bootstrap, topics.results) as out:
        await produce(bootstrap, topics.requests, [(b"a", encode(request("before")))])
        await out.wait_count(topics.results, 1)
        await asyncio.to_thread(stop)
        await produce(
            bootstrap,
            topics.requests,
            [
                (b"b", encode(request("during-1", graph="slow", input={"seconds": 0.1}))),
                (b"c", encode(request("during-2"))),
            ],
        )
        await asyncio.sleep(3)
        assert len(out.records[topics.results]) == 1, "a request finished during the outage"
        assert runner.readiness()[dependency] != "ok"
        assert runner._consumer is not None and runner._consumer.paused()
        await asyncio.to_thread(start)
        await out.wait_count(topics.results, 3, timeout=60)
        await asyncio.sleep(0.5)
        results = sorted((v["request_id"], v["status"]) for v in out.values(topics.results))
    assert results == [("before", "success"), ("during-1", "success"), ("during-2", "success")]
    assert runner.readiness() == {"Kafka": "ok", "Redis": "ok", "PostgreSQL": "ok"}
    assert runner._consumer.paused() == set()


async def test_redis_outage_pauses_then_resumes_without_loss(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """Private Redis killed then restarted: no result while it is down, then each exactly once."""
    redis = PrivateRedis()
    redis.start()
    try:
        private = settings.model_copy(update={"redis_url": settings.redis_url.__class__(redis.url)})
        async with GraphRunner(private, GraphRegistry.from_sources()) as runner:
            await _outage(bootstrap, topics, runner, "Redis", redis.stop, redis.start)
    finally:
        redis.stop()


async def test_postgres_outage_pauses_then_resumes_without_loss(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """Private PostgreSQL (checkpoints) crashed then restarted: same guarantees."""
    pg = await asyncio.to_thread(PrivatePostgres)
    await asyncio.to_thread(pg.start)
    try:
        private = settings.model_copy(
            update={
                "database_url": settings.database_url.__class__(pg.url),
                "checkpoint_schema": None,
            }
        )
        async with GraphRunner(private, GraphRegistry.from_sources()) as runner:
            await _outage(bootstrap, topics, runner, "PostgreSQL", pg.stop, pg.start)
    finally:
        await asyncio.to_thread(pg.remove)


async def test_repeated_outages_during_one_run_are_not_deaths(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """MAX_DELIVERIES=2, one 20-step run hit by a PostgreSQL crash, a Redis freeze longer than
    the lease, and another PostgreSQL crash: it resumes each time and succeeds, attempts 4."""
    pg = await asyncio.to_thread(PrivatePostgres)
    await asyncio.to_thread(pg.start)
    redis = PrivateRedis()
    redis.start()
    assert redis.process is not None
    frozen = redis.process

    def freeze_redis() -> None:  # SIGSTOP: no answers, but (unlike a kill) its data is kept
        frozen.send_signal(signal.SIGSTOP)
        time.sleep(4.5)  # longer than the 3 s lease: it expires meanwhile
        frozen.send_signal(signal.SIGCONT)

    def crash_postgres() -> None:
        pg.stop()
        time.sleep(1.0)
        pg.start()

    try:
        private = settings.model_copy(
            update={
                "database_url": settings.database_url.__class__(pg.url),
                "redis_url": settings.redis_url.__class__(redis.url),
                "checkpoint_schema": None,
                "max_deliveries": 2,
            }
        )
        registry = GraphRegistry.from_sources(specs="paced=tests.sample_graphs:paced")
        async with (
            GraphRunner(private, registry),
            Collector(bootstrap, topics.results, topics.events, topics.dlq) as out,
        ):

            def starts() -> list[tuple[int, bool]]:
                return [(e["data"]["attempt"], e["data"]["resumed"])
                        for e in out.values(topics.events) if e["type"] == "run_started"]

            body = request("blips", "paced", input={"steps": 20, "pause": 0.8})
            await produce(bootstrap, topics.requests, [(b"k", encode(body))])
            for started, outage in enumerate((crash_postgres, freeze_redis, crash_postgres), 1):
                await out.wait_until(  # (a result: given up as poison, the bug)
                    lambda n=started: len(starts()) == n or bool(out.records[topics.results]),
                    timeout=60,
                )
                if out.records[topics.results]:
                    break
                await asyncio.sleep(0.6)  # a step or so into this start
                await asyncio.to_thread(outage)
            await out.wait_count(topics.results, 1, timeout=90)
            await asyncio.sleep(0.5)
            results = out.values(topics.results)
            dead_letters = len(out.records[topics.dlq])
    finally:
        redis.stop()
        await asyncio.to_thread(pg.remove)
    assert [(r["status"], r["attempts"], r.get("error")) for r in results] == [
        ("success", 4, None)
    ]
    assert results[0]["output"]["done"] == list(range(1, 21))
    assert starts() == [(1, False), (2, True), (3, True), (4, True)]
    assert dead_letters == 0
