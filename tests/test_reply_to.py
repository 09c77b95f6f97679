"""Reply-to copies that cannot be delivered, reply-to loops, and rejections of done requests."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.runner.runner import GraphRunner
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.conftest import PARTITIONS
from tests.helpers import eventually, runner_for
from tests.kafka_helpers import Collector, committed_total, encode, produce, request

pytestmark = pytest.mark.integration


def _echo(request_id: str, text: str = "hi") -> bytes:
    return encode(request(request_id, graph="echo", input={"text": text}))


def _failures(runner: GraphRunner) -> dict[str, float]:
    """``graphwire_reply_to_failures_total`` by reason, for the reasons that were counted."""
    found: dict[str, float] = {}
    for metric in runner.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "graphwire_reply_to_failures_total":
                found[sample.labels["reason"]] = sample.value
    return found


async def _wait_committed(bootstrap: str, settings: Settings, count: int) -> int:
    """The group's committed total on the requests topic, once it reaches ``count`` (or 15 s)."""
    total: int = await eventually(
        lambda: committed_total(bootstrap, settings.group_id, settings.topics.requests, PARTITIONS),
        15, what=f"{count} requests committed", until=lambda done: done >= count, interval=0.2,
    )
    return total


async def test_reply_to_topic_without_partitions_times_out_and_the_key_moves_on(
    bootstrap: str, topics: TopicNames, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply-to the cluster has no partitions for: results still out, 1 timeout, then skipped."""
    # The test broker creates any valid topic on first use; it answers ".." (a name Kafka
    # refuses) with no partitions, which is what a producer sees for a missing topic when
    # auto.create.topics.enable=false: its metadata wait runs out, then it fails retriably.
    quick = settings.model_copy(update={"reply_to_timeout_s": 1.0})
    missing = [("reply-to", b"..")]
    async with GraphRunner(quick, GraphRegistry.from_sources()) as runner:
        await produce(
            bootstrap,
            topics.requests,
            [(b"k", _echo("m1"), missing), (b"k", _echo("m2"), missing), (b"k", _echo("m3"))],
        )
        with caplog.at_level(logging.WARNING, "graphwire.processors.runner.publisher"):
            async with Collector(bootstrap, topics.results) as out:
                await out.wait_count(topics.results, 3, timeout=30)
                await asyncio.sleep(0.3)
                results = sorted((v["request_id"], v["status"]) for v in out.values(topics.results))
        assert await _wait_committed(bootstrap, quick, 3) == 3
        failures = _failures(runner)
    assert results == [("m1", "success"), ("m2", "success"), ("m3", "success")]
    assert failures == {"timeout": 1.0, "recent_failure": 1.0}
    warnings = [r.getMessage() for r in caplog.records if "no reply-to copy" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("no reply-to copy to '..' (timeout: ")
    assert f"the result is on {topics.results} only" in warnings[0]


async def test_reply_to_naming_an_own_topic_gets_no_copy_and_one_result(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """reply-to = requests, events or dlq: nothing copied there, exactly one success each."""
    own = {"o-req": topics.requests, "o-ev": topics.events, "o-dlq": topics.dlq}
    async with runner_for(settings) as runner:
        await produce(
            bootstrap,
            topics.requests,
            [(rid.encode(), _echo(rid), [("reply-to", t.encode())]) for rid, t in own.items()],
        )
        async with Collector(
            bootstrap, topics.requests, topics.events, topics.results, topics.dlq
        ) as out:
            await out.wait_count(topics.results, 3)
            await asyncio.sleep(2.0)  # time for a copy on requests to be read back and answered
            results = sorted((v["request_id"], v["status"]) for v in out.values(topics.results))
            requests = sorted(v["request_id"] for v in out.values(topics.requests))
            event_types = sorted(v["type"] for v in out.values(topics.events))
            dead_letters = len(out.records[topics.dlq])
        failures = _failures(runner)
    assert results == [("o-dlq", "success"), ("o-ev", "success"), ("o-req", "success")]
    assert requests == ["o-dlq", "o-ev", "o-req"]
    assert event_types == ["node"] * 3 + ["run_finished"] * 3 + ["run_started"] * 3
    assert dead_letters == 0
    assert failures == {"own_topic": 3.0}


async def test_rejecting_a_message_whose_request_id_is_done_publishes_nothing(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """Unknown graph, bad fields, too large for a done request_id: no result, no dlq, 3 dups."""
    async with runner_for(settings, max_request_bytes=4096) as runner:
        async with Collector(bootstrap, topics.results, topics.dlq) as out:
            await produce(bootstrap, topics.requests, [(b"k", _echo("d1"))])
            await out.wait_count(topics.results, 1)
            await produce(
                bootstrap,
                topics.requests,
                [
                    (b"k", encode(request("d1", graph="no-such-graph"))),
                    (b"k", encode(request("d1", graph="echo", timeout_s="soon"))),
                    (b"k", _echo("d1", "x" * 5000)),
                    (b"k", encode(request("d2", graph="no-such-graph"))),  # not done: rejected
                ],
            )
            await out.wait_count(topics.dlq, 1)
            await out.wait_count(topics.results, 2)
            await asyncio.sleep(0.5)
            results = [(v["request_id"], v["status"]) for v in out.values(topics.results)]
            dead = [orjson.loads(r.value)["request_id"] for r in out.records[topics.dlq]]
        sample: Any = runner.metrics.registry.get_sample_value
        duplicates = sample("graphwire_duplicates_skipped_total")
    assert sorted(results) == [("d1", "success"), ("d2", "rejected")]
    assert dead == ["d2"]
    assert duplicates == 3.0


async def test_rejecting_a_message_whose_request_id_is_running_publishes_no_result(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """An invalid message reusing a running request_id gets a dead letter, never a result: the
    running request's success is the one result of that id."""
    async with runner_for(settings):
        async with Collector(bootstrap, topics.results, topics.dlq, topics.events) as out:
            await produce(bootstrap, topics.requests, [
                (b"a", encode(request("busy", graph="slow", input={"seconds": 3})))])
            await out.wait_count(topics.events, 1, timeout=60)  # run_started: the lease is held
            await produce(bootstrap, topics.requests, [  # another key: not queued behind it
                (b"b", encode(request("busy", graph="no-such-graph")))])
            await out.wait_count(topics.dlq, 1, timeout=30)
            await out.wait_count(topics.results, 1, timeout=60)
            await asyncio.sleep(0.5)
            results = [(v["request_id"], v["status"]) for v in out.values(topics.results)]
            letters = [(orjson.loads(r.value)["graph"], dict(r.headers)["x-graphwire-error"])
                       for r in out.records[topics.dlq]]
    assert results == [("busy", "success")]
    assert len(letters) == 1 and letters[0][0] == "no-such-graph"
    assert letters[0][1].decode().endswith(
        "not rejected with a result: request_id 'busy' is running, and its result is that run's")
