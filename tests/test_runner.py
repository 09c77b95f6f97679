"""The runner against the real test broker, in-process: contract, bad input, ordering, limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.runner.runner import GraphRunner
from graphwire.processors.settings import Settings
from graphwire.topics.models import Event, Result
from graphwire.topics.specs import TopicNames
from tests.kafka_helpers import Collector, encode, produce, request

pytestmark = pytest.mark.integration


def _settings(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)


@pytest.fixture
async def runner(settings: Settings, topics: TopicNames) -> AsyncIterator[GraphRunner]:
    """A started in-process runner with the built-in graphs."""
    registry = GraphRegistry.from_sources(specs="failing=tests.sample_graphs:failing")
    async with GraphRunner(settings, registry) as running:
        yield running


async def test_pipeline_request_yields_exact_events_and_one_result(
    bootstrap: str, topics: TopicNames, runner: GraphRunner
) -> None:
    """pipeline: run_started, 3 node events, run_finished at positions 2**32 + 0..4 (attempt
    1, try 0), and one success."""
    await produce(
        bootstrap,
        topics.requests,
        [
            (
                b"r-123",
                encode(request("r-123", metadata={"team": "search"})),
                [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
            )
        ],
    )
    async with Collector(bootstrap, topics.events, topics.results) as out:
        await out.wait_count(topics.results, 1)
        await out.wait_count(topics.events, 5)
        await asyncio.sleep(0.3)  # nothing more may arrive
        events = [Event.model_validate(v) for v in out.values(topics.events)]
        results = [Result.model_validate(v) for v in out.values(topics.results)]
    assert [(e.seq - 2**32, e.type, e.node) for e in events] == [
        (0, "run_started", None),
        (1, "node", "normalize"),
        (2, "node", "tokenize"),
        (3, "node", "count"),
        (4, "run_finished", None),
    ]
    assert [e.data for e in events[1:4]] == [
        {"text": "hello world"},
        {"tokens": ["hello", "world"]},
        {"count": 2},
    ]
    assert events[4].data["status"] == "success"
    assert all(e.request_id == "r-123" and e.metadata == {"team": "search"} for e in events)
    assert len(results) == 1
    result = results[0]
    assert result.status == "success"
    assert result.output == {"text": "hello world", "tokens": ["hello", "world"], "count": 2}
    assert (result.error, result.interrupts, result.attempts) == (None, [], 1)
    assert result.metadata == {"team": "search"}
    records = out.records[topics.results] + out.records[topics.events]
    assert {r.key for r in records} == {b"r-123"}
    sample = runner.metrics.registry.get_sample_value
    assert (
        sample(
            "langgraph_workflow_executions_total",
            {"workflow_name": "pipeline", "status": "success"},
        )
        == 1
    )
    assert sample("graphwire_events_published_total", {"type": "node"}) == 3
    assert sample("graphwire_events_published_total", {"type": "run_started"}) == 1
    assert sample("graphwire_in_flight_messages") == 0
    assert all(
        dict(r.headers)["traceparent"] == b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        for r in records
    )


async def test_bad_messages_end_where_the_contract_says_and_processing_goes_on(
    bootstrap: str, topics: TopicNames, runner: GraphRunner
) -> None:
    """Undecodable, no request_id, unknown graph, 2 MB input: dlq (+ rejected); the next runs."""
    big = encode(request("big-1", input={"text": "x" * (2 * 1024 * 1024)}))
    key = b"same-key"  # all on one partition, so a stuck message would block the good one
    messages = [
        (key, b"\xff not json", [("origin", b"test")]),
        (key, encode({"graph": "pipeline", "input": {"text": "no id"}})),
        (key, encode(request("unknown-1", graph="nope"))),
        (key, big),
        (key, encode(request("bad-fields-1", stream=["tokens"]))),
        (key, encode(request("good-1"))),
    ]
    await produce(bootstrap, topics.requests, messages)
    async with Collector(bootstrap, topics.dlq, topics.results) as out:
        await out.wait_until(
            lambda: any(
                orjson.loads(r.value)["request_id"] == "good-1" for r in out.records[topics.results]
            )
        )
        await out.wait_count(topics.dlq, 5)
        await asyncio.sleep(0.3)
        dlq = out.records[topics.dlq]
        results = {v["request_id"]: v for v in out.values(topics.results)}

    assert len(dlq) == 5
    reasons = [dict(r.headers)["x-graphwire-error"].decode() for r in dlq]
    assert "not UTF-8 JSON" in reasons[0]
    assert "request_id" in reasons[1]
    assert "unknown graph 'nope'" in reasons[2] and "pipeline" in reasons[2]
    assert "over the limit of 1048576 bytes" in reasons[3]
    assert "stream.0" in reasons[4]
    # original key, bytes and headers are kept; the source says where it came from
    assert [r.value for r in dlq] == [m[1] for m in messages[:5]]
    assert all(r.key == key for r in dlq)
    assert dict(dlq[0].headers)["origin"] == b"test"
    sources = [dict(r.headers)["x-graphwire-source"].decode() for r in dlq]
    partition = dlq[0].headers and sources[0].split("/")[1]
    assert sources == [f"{topics.requests}/{partition}/{i}" for i in range(5)]

    assert set(results) == {"unknown-1", "big-1", "bad-fields-1", "good-1"}
    assert results["unknown-1"]["status"] == "rejected"
    assert results["unknown-1"]["error"]["type"] == "UnknownGraph"
    assert results["big-1"]["status"] == "rejected"
    assert results["big-1"]["error"]["type"] == "RequestTooLarge"
    assert results["bad-fields-1"]["status"] == "rejected"
    assert results["bad-fields-1"]["error"]["type"] == "InvalidRequest"
    assert results["good-1"]["status"] == "success"


async def test_same_key_runs_in_order_and_different_keys_overlap(
    bootstrap: str, topics: TopicNames, runner: GraphRunner
) -> None:
    """slow 0.5 s: two requests of one thread never overlap; two other keys run concurrently."""
    body = {"seconds": 0.5}
    await produce(
        bootstrap,
        topics.requests,
        [
            (b"thread-a", encode(request("a1", graph="slow", input=body, thread_id="thread-a"))),
            (b"thread-a", encode(request("a2", graph="slow", input=body, thread_id="thread-a"))),
            (b"key-b", encode(request("b1", graph="slow", input=body))),
            (b"key-c", encode(request("c1", graph="slow", input=body))),
        ],
    )
    async with Collector(bootstrap, topics.events) as out:
        await out.wait_until(
            lambda: sum(v["type"] == "run_finished" for v in out.values(topics.events)) == 4
        )
        spans: dict[str, list[float]] = {}
        for v in out.values(topics.events):
            if v["type"] in ("run_started", "run_finished"):
                spans.setdefault(v["request_id"], []).append(v["ts"])
    a1, a2, b1, c1 = (spans[r] for r in ("a1", "a2", "b1", "c1"))
    assert a2[0] >= a1[1], "a2 started before a1 finished"
    assert b1[0] < c1[1] and c1[0] < b1[1], "b1 and c1 did not overlap"
    assert a1[0] < b1[1] and b1[0] < a1[1], "a1 and b1 did not overlap"


async def test_outcomes_timeout_error_reply_to_and_dead_letter(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, prefix: str
) -> None:
    """timeout_s gives timeout; a raising graph gives error + dead letter; reply-to gets a copy."""
    reply_topic = f"{prefix}.replies"
    await produce(bootstrap, reply_topic, [(b"init", b"{}")])  # create it
    await produce(
        bootstrap,
        topics.requests,
        [
            (b"t1", encode(request("t1", graph="slow", input={"seconds": 5}, timeout_s=0.2))),
            (b"e1", encode(request("e1", graph="failing"))),
            (b"p1", encode(request("p1")), [("reply-to", reply_topic.encode())]),
        ],
    )
    async with Collector(bootstrap, topics.results, topics.dlq, reply_topic) as out:
        await out.wait_count(topics.results, 3)
        await out.wait_count(reply_topic, 2)
        await out.wait_count(topics.dlq, 1)
        await asyncio.sleep(0.3)
        results = {v["request_id"]: v for v in out.values(topics.results)}
        replies = out.values(reply_topic)
        dlq = out.records[topics.dlq]
    assert results["t1"]["status"] == "timeout"
    assert results["t1"]["error"]["type"] == "Timeout"
    assert 200 <= results["t1"]["duration_ms"] < 5000
    assert results["e1"]["status"] == "error"
    assert results["e1"]["error"] == {
        "type": "ValueError",
        "message": "cannot handle 'Hello World': send a shorter text",
    }
    assert results["p1"]["status"] == "success"
    assert [r["request_id"] for r in replies[1:]] == ["p1"]
    assert replies[1] == results["p1"]
    assert len(dlq) == 1 and orjson.loads(dlq[0].value)["request_id"] == "e1"
    assert dict(dlq[0].headers)["x-graphwire-error"].decode().startswith("graph failed:")


async def test_at_the_in_flight_limit_fetching_pauses_and_resumes(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """max_in_flight=2 with 6 slow runs: never more than 2 at once, partitions paused, all done."""
    limited = _settings(settings, max_in_flight=2)
    peak = 0
    async with GraphRunner(limited, GraphRegistry.from_sources()) as runner:
        await produce(
            bootstrap,
            topics.requests,
            [
                (f"k{i}".encode(), encode(request(f"s{i}", graph="slow", input={"seconds": 1.2})))
                for i in range(6)
            ],
        )
        paused_seen = False
        async with Collector(bootstrap, topics.results) as out:
            deadline = time.monotonic() + 30
            while len(out.records[topics.results]) < 6 and time.monotonic() < deadline:
                peak = max(peak, runner.in_flight)
                paused_seen |= bool(runner._consumer and runner._consumer.paused())
                await asyncio.sleep(0.05)
            statuses = [v["status"] for v in out.values(topics.results)]
    assert statuses == ["success"] * 6
    assert peak == 2
    assert paused_seen


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_requests_compressed_with_any_codec_are_decoded(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, codec: str
) -> None:
    """Producers in the wild compress: each Kafka codec's requests run like plain ones."""
    ids = [f"{codec}-{i}" for i in range(3)]
    await produce(
        bootstrap,
        topics.requests,
        [(i.encode(), encode(request(i, graph="echo", input={"text": i}))) for i in ids],
        compression_type=codec,
    )
    async with Collector(bootstrap, topics.results) as out:
        await out.wait_count(topics.results, 3)
        results = {v["request_id"]: (v["status"], v["output"]) for v in out.values(topics.results)}
    assert results == {i: ("success", {"text": i}) for i in ids}


async def test_dead_letter_too_large_to_carry_its_value_still_moves_on(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """A rejected request bigger than the worker may produce: dlq keeps reason, drops bytes."""
    small = _settings(settings, max_request_bytes=50_000, max_message_bytes=200_000)
    big = encode(request("huge-1", input={"text": "y" * 150_000}))
    async with GraphRunner(small, GraphRegistry.from_sources()) as _runner:
        await produce(
            bootstrap,
            topics.requests,
            [(b"k", big), (b"k", encode(request("after-1")))],
        )
        async with Collector(bootstrap, topics.dlq, topics.results) as out:
            await out.wait_count(topics.results, 2)
            await out.wait_count(topics.dlq, 1)
            dlq = out.records[topics.dlq]
            results = {v["request_id"]: v["status"] for v in out.values(topics.results)}
    assert results == {"huge-1": "rejected", "after-1": "success"}
    assert len(dlq) == 1
    headers = dict(dlq[0].headers)
    assert dlq[0].value is None
    assert headers["x-graphwire-value-dropped"] == str(len(big)).encode()
    assert b"over the limit of 50000 bytes" in headers["x-graphwire-error"]
    assert headers["x-graphwire-source"].decode().endswith("/0")
