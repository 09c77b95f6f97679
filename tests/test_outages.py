"""Redis or PostgreSQL stop answering: the runner pauses, waits and resumes; nothing is lost."""

from __future__ import annotations

import asyncio

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
