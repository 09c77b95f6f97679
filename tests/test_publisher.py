"""The output publisher: which Kafka errors it retries, and how large an output may be."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)

from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner.publisher import (
    OutputPublisher,
    _can_succeed_later,
    output_limit,
)
from graphwire.processors.settings import Settings
from graphwire.topics.admin import ensure_topics, message_limits
from graphwire.topics.specs import TopicNames, TopicSpec
from tests.conftest import PARTITIONS
from tests.helpers import runner_for
from tests.kafka_helpers import Collector, encode, produce, request

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (KafkaConnectionError(), True),
        (KafkaTimeoutError(), True),
        (NotLeaderForPartitionError(), True),
        (TopicAuthorizationFailedError(), False),
        (MessageSizeTooLargeError(), False),
    ],
)
def test_retries_only_what_can_succeed_later(error: Exception, retry: bool) -> None:
    """Lost connections and leader moves are retried; refusals become PublishFailed."""
    assert _can_succeed_later(error) is retry  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("configured", "learned", "limit"),
    [
        (8 * MIB, {}, 8 * MIB - 65536),
        (8 * MIB, {"r": 1048588, "e": 2 * MIB, "d": 1000}, 1048588 - 65536),
        (MIB, {"r": 8 * MIB}, MIB - 65536),
        (8 * MIB, {"r": 100_000}, 75_000),
    ],
)
def test_output_limit_is_the_smallest_known_limit_less_room_for_the_record(
    configured: int, learned: dict[str, int], limit: int
) -> None:
    """The smaller of the setting and the named topics' limits, less min(64 KiB, a quarter)."""
    assert output_limit(configured, learned, ["r", "e"]) == limit


def _with_limits(names: TopicNames, limits: dict[str, int]) -> list[TopicSpec]:
    """The four topics' specs, with ``max.message.bytes`` set where ``limits`` names one."""
    return [
        replace(s, configs={**s.configs, "max.message.bytes": str(limits[s.name])})
        for s in names.specs(PARTITIONS)
        if s.name in limits
    ] + [s for s in names.specs(PARTITIONS) if s.name not in limits]


@pytest.mark.integration
async def test_outputs_are_truncated_to_the_topics_max_message_bytes(
    bootstrap: str, prefix: str, settings: Settings
) -> None:
    """results 300 kB, events 400 kB, dlq 250 kB: a 350 kB output and a 450 kB dead letter fit."""
    # Tansu stores and reports max.message.bytes but does not enforce it: Apache Kafka would
    # refuse these outputs (MessageSizeTooLarge) and the result would be lost.
    names = TopicNames(prefix)
    limits = {names.results: 300_000, names.events: 400_000, names.dlq: 250_000}
    await ensure_topics(bootstrap, _with_limits(names, limits))
    assert await message_limits(bootstrap, list(limits)) == limits
    assert await message_limits(bootstrap, [names.requests]) == {}  # Tansu: no broker default
    text = "x" * 350_000
    big = encode(request("big-2", graph="echo", input={"text": "y" * 450_000}))
    async with runner_for(settings, max_request_bytes=400_000):
        await produce(
            bootstrap,
            names.requests,
            [(b"k", encode(request("big-1", graph="echo", input={"text": text}))), (b"k", big)],
        )
        async with Collector(bootstrap, names.results, names.events, names.dlq) as out:
            await out.wait_count(names.results, 2)
            await out.wait_count(names.dlq, 1)
            await asyncio.sleep(0.3)
            results = {v["request_id"]: v for v in out.values(names.results)}
            node = [v for v in out.values(names.events) if v["type"] == "node"]
            dead = out.records[names.dlq]
    expected_limit = 300_000 - 65_536  # results is the smaller of results and events
    output = results["big-1"]["output"]
    assert (results["big-1"]["status"], results["big-2"]["status"]) == ("success", "rejected")
    assert (output["truncated"], output["limit"]) == (True, expected_limit)
    assert 350_000 < output["bytes"] < 351_000
    assert len(node) == 1
    assert (node[0]["data"]["truncated"], node[0]["data"]["limit"]) == (True, expected_limit)
    assert 350_000 < node[0]["data"]["bytes"] < 351_000
    assert len(dead) == 1 and dead[0].value is None
    assert dict(dead[0].headers)["x-graphwire-value-dropped"] == str(len(big)).encode()
    assert dead[0].key == b"k"


async def test_failing_reply_to_topics_are_skipped_for_a_while_in_bounded_memory() -> None:
    """1005 failed reply-to topics: the newest 1000 are skipped, the oldest 5 may be tried."""
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started: no I/O
    metrics = RunnerMetrics()
    out = OutputPublisher(
        producer, TopicNames("p"), metrics, max_message_bytes=MIB, stopping=lambda: False
    )
    try:
        for i in range(1005):
            out._reply_to_failed(f"gone-{i}", "timeout", "KafkaTimeoutError")
        skipped = [i for i in range(1005) if out._refuse_reply_to(f"gone-{i}") is not None]
    finally:
        await producer.stop()
    assert skipped == list(range(5, 1005))
    assert out._refuse_reply_to("gone-1004") == ("recent_failure", "it failed less than 60s ago")
    own = ("own_topic", "it is one of graphwire's own topics")
    assert out._refuse_reply_to("p.requests") == own
    assert out._refuse_reply_to("a b") == ("invalid_name", "not a valid topic name")
    sample = metrics.registry.get_sample_value
    assert sample("graphwire_reply_to_failures_total", {"reason": "timeout"}) == 1005
