"""OpenTelemetry (GRAPHWIRE_OTEL=true): a span per run continuing the request's traceparent,
a child span per node."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from graphwire.processors.runner import tracing
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.helpers import runner_for
from tests.kafka_helpers import Collector, encode, produce, request

pytestmark = pytest.mark.integration

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("graphwire-test", exporter=exporter)
    try:
        yield exporter
    finally:
        tracing._tracer = None


async def test_run_and_node_spans_continue_the_request_trace(
    bootstrap: str, topics: TopicNames, settings: Settings, spans: InMemorySpanExporter
) -> None:
    """A request with a traceparent gets a "graph pipeline" span in that trace, child of the given
    parent, status success, with child spans node normalize, node tokenize, node count in order in
    the same trace; a request without one starts a new trace, and its interrupt leaves the run
    status "interrupted" and the one "node review" span OK."""
    async with runner_for(settings), Collector(
        bootstrap, topics.results
    ) as out:
        await produce(bootstrap, topics.requests, [
            (b"s1", encode(request("s1")), [("traceparent", f"00-{TRACE}-{PARENT}-01".encode())]),
            (b"s2", encode(request("s2", "approval", input={"topic": "t"}, thread_id="th")), []),
        ])
        await out.wait_count(topics.results, 2, timeout=60)
    finished = spans.get_finished_spans()
    runs = {
        s.attributes["graphwire.request_id"]: s for s in finished if s.name.startswith("graph ")
    }
    run = runs["s1"]
    assert run.name == "graph pipeline"
    assert format(run.context.trace_id, "032x") == TRACE
    assert format(run.parent.span_id, "016x") == PARENT
    assert run.attributes["graphwire.status"] == "success"
    nodes = [s for s in finished if s.name.startswith("node ") and s.parent is not None
             and s.parent.span_id == run.context.span_id]
    assert [s.name for s in sorted(nodes, key=lambda s: s.start_time)] == [
        "node normalize", "node tokenize", "node count"
    ]
    assert all(s.context.trace_id == run.context.trace_id for s in nodes)
    other = runs["s2"]  # no traceparent: a new trace; an interrupt is not an error
    assert other.parent is None and other.context.trace_id != run.context.trace_id
    assert other.attributes["graphwire.status"] == "interrupted"
    review = [s for s in finished if s.name == "node review"]
    assert len(review) == 1 and review[0].status.is_ok
