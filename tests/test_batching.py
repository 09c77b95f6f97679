"""A run's outputs go to the producer as record batches: order, exactly once, live, limits;
and the run's LangChain callbacks run inline, without a thread hop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypedDict

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from langchain_core.callbacks import manager as callback_manager
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, StateGraph

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.dev.broker import DevBroker
from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner.callbacks import RunCallbacks
from graphwire.processors.runner.publisher import OutputPublisher
from graphwire.processors.runner.runner import GraphRunner
from graphwire.processors.settings import Settings
from graphwire.topics.admin import ensure_topics
from graphwire.topics.errors import DependencyUnavailable
from graphwire.topics.positions import event_position
from graphwire.topics.specs import TopicNames
from tests.helpers import runner_for
from tests.kafka_helpers import Collector, encode, produce, request


class _Text(TypedDict, total=False):
    text: str


async def test_callbacks_of_a_sync_llm_call_run_inline_without_a_thread_hop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sync node's chat model call: tokens and node time counted, no callback event sent
    to LangChain's thread pool with a fresh event loop (an async handler costs two)."""
    hops: list[int] = []
    run_coros = callback_manager._run_coros

    def counted(coros: list[Coroutine[Any, Any, Any]]) -> None:
        hops.append(threading.get_ident())
        run_coros(coros)

    monkeypatch.setattr(callback_manager, "_run_coros", counted)
    usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
    model = FakeMessagesListChatModel(responses=[AIMessage("hi", usage_metadata=usage)])

    def ask(state: _Text) -> _Text:
        return {"text": str(model.invoke(state["text"]).content)}

    builder = StateGraph(_Text)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    metrics = RunnerMetrics()
    output = await builder.compile().ainvoke(
        {"text": "q"}, {"callbacks": [RunCallbacks(metrics, "g")]}
    )
    sample = metrics.registry.get_sample_value
    model_name = "FakeMessagesListChatModel"
    assert output == {"text": "hi"}
    assert hops == []
    assert sample("langgraph_llm_requests_total", {"model": model_name, "status": "success"}) == 1
    assert sample("langgraph_llm_tokens_total", {"model": model_name, "type": "input"}) == 3
    assert sample("langgraph_llm_tokens_total", {"model": model_name, "type": "output"}) == 2
    assert sample("graphwire_node_duration_seconds_count", {"graph": "g", "node": "ask"}) == 1


@pytest.mark.integration
async def test_each_runs_events_arrive_in_order_exactly_once(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """40 concurrent pipeline runs: each has its 5 events once, in order, on one partition."""
    ids = [f"order-{i}" for i in range(40)]
    async with runner_for(settings):
        await produce(bootstrap, topics.requests,
                      [(rid.encode(), encode(request(rid))) for rid in ids])
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await out.wait_count(topics.results, 40)
            await out.wait_count(topics.events, 200)
            await asyncio.sleep(0.5)  # anything duplicated would arrive by now
            events = out.records[topics.events]
            results = out.values(topics.results)
    by_run: dict[str, list[tuple[int, str, str | None]]] = {}
    partitions: dict[str, set[int]] = {}
    for record in sorted(events, key=lambda r: (r.partition, r.offset)):
        event = orjson.loads(record.value)
        by_run.setdefault(event["request_id"], []).append(
            (event["seq"], event["type"], event["node"])
        )
        partitions.setdefault(event["request_id"], set()).add(record.partition)
    expected = [
        (event_position(1, 0, 0), "run_started", None),
        (event_position(1, 0, 1), "node", "normalize"),
        (event_position(1, 0, 2), "node", "tokenize"),
        (event_position(1, 0, 3), "node", "count"),
        (event_position(1, 0, 4), "run_finished", None),
    ]
    assert len(events) == 200
    assert by_run == {rid: expected for rid in ids}
    assert all(len(found) == 1 for found in partitions.values())
    assert sorted(r["request_id"] for r in results) == sorted(ids)
    assert {r["status"] for r in results} == {"success"}


@pytest.mark.integration
async def test_events_stream_while_a_slow_run_goes_on(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """step2 sleeps 1.5 s: step1's event is consumed before the result, at least 1 s earlier."""
    registry = GraphRegistry.from_sources(specs="paused=tests.sample_graphs:make_paused_steps")
    async with GraphRunner(settings, registry):
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await produce(bootstrap, topics.requests,
                          [(b"live", encode(request("live", graph="paused",
                                                    input={"pause": 1.5})))])

            def step1_seen() -> bool:
                return any(v["node"] == "step1" for v in out.values(topics.events))

            await out.wait_until(step1_seen, timeout=30)
            seen_at = time.monotonic()
            results_then = len(out.records[topics.results])
            await out.wait_count(topics.results, 1)
            result_at = time.monotonic()
            kinds = [(v["type"], v["node"]) for v in out.values(topics.events)]
    assert results_then == 0
    assert result_at - seen_at >= 1.0
    assert kinds == [("run_started", None), ("node", "step1"), ("node", "step2"),
                     ("node", "step3"), ("run_finished", None)]


@pytest.mark.integration
async def test_messages_over_the_batch_size_are_split_and_oversized_ones_truncated(
    bootstrap: str, topics: TopicNames
) -> None:
    """4x6 kB, one 30 kB, 2x6 kB and one 200 kB event: batches of 2, 2, 1 and 3 messages
    (16 KiB batch size), all delivered in order, the 200 kB one with its data truncated."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        publisher = OutputPublisher(
            producer, topics, RunnerMetrics(), max_message_bytes=100_000,
            stopping=lambda: False, linger_ms=60_000,  # only a full batch or confirm sends
        )
        outbox = publisher.outbox()
        sizes = [6000] * 4 + [30_000] + [6000] * 2 + [200_000]
        for i, size in enumerate(sizes):
            event = {"request_id": "split", "seq": i, "type": "node", "data": "x" * size}
            await outbox.send(topics.events, publisher.encode(event, "data"), b"split", [])
        batches = [entry[4] for entry in outbox._sent]
        counts = [batches.count(b) for b in dict.fromkeys(batches)]
        await outbox.confirm()
        pointer = outbox.acked[topics.events]
    finally:
        await producer.stop()
    async with Collector(bootstrap, topics.events) as out:
        await out.wait_count(topics.events, 8)
        await asyncio.sleep(0.3)
        records = out.records[topics.events]
    values = [orjson.loads(r.value) for r in records]
    assert counts == [2, 2, 1, 3]
    assert [v["seq"] for v in values] == list(range(8))
    assert [len(v["data"]) for v in values[:7]] == sizes[:7]
    limit = 100_000 - 25_000  # a quarter of the limit is kept for key, headers and batch
    assert (values[7]["data"]["truncated"], values[7]["data"]["limit"]) == (True, limit)
    assert 200_000 < values[7]["data"]["bytes"] < 200_100
    assert len({r.partition for r in records}) == 1
    assert [r.offset for r in records] == list(range(records[0].offset, records[0].offset + 8))
    assert pointer == f"{topics.events}/{records[-1].partition}/{records[-1].offset}"


@pytest.mark.integration
async def test_a_batch_the_broker_does_not_take_leaves_the_request_unfinished(
    prefix: str,
) -> None:
    """The (private) broker stops after a result's batch was handed over: confirm() retries,
    then gives up at shutdown with DependencyUnavailable and no acknowledged pointer."""
    broker = DevBroker()
    await asyncio.to_thread(broker.start)
    try:
        names = TopicNames(prefix)
        await ensure_topics(broker.bootstrap_servers, names.specs(1))
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap_servers, acks="all", request_timeout_ms=1500
        )
        await producer.start()
        metrics, stopping = RunnerMetrics(), asyncio.Event()
        publisher = OutputPublisher(
            producer, names, metrics, max_message_bytes=100_000,
            stopping=stopping.is_set, linger_ms=60_000,
        )
        outbox = publisher.outbox()
        await outbox.send(names.events, b'{"type": "run_finished"}', b"gone", [])
        await outbox.send(names.results, b'{"status": "success"}', b"gone", [])
        await asyncio.to_thread(broker.stop)  # the batches go out at confirm: none is taken
        confirming = asyncio.ensure_future(outbox.confirm())
        sample = metrics.registry.get_sample_value
        for _ in range(200):
            if (sample("graphwire_publish_retries_total") or 0) >= 1:
                break
            await asyncio.sleep(0.05)
        stopping.set()
        with pytest.raises(DependencyUnavailable, match="stays uncommitted"):
            await asyncio.wait_for(confirming, 30)
        retries = sample("graphwire_publish_retries_total")
        await asyncio.wait_for(producer.stop(), 30)
    finally:
        await asyncio.to_thread(broker.stop)
    assert outbox.acked == {}
    assert retries == 2
