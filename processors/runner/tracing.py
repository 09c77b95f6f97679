"""OpenTelemetry spans, when switched on (``GRAPHWIRE_OTEL=true``, optional dependency
``graphwire[otel]``): one span per run, continuing the request's W3C ``traceparent``, and one
child span per node. The exporter is configured by the standard ``OTEL_*`` variables
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ...). Off: no tracer, no cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from graphwire.topics.errors import GraphwireError

_tracer: Any = None


def setup_tracing(service_name: str, exporter: Any = None) -> None:
    """Install a tracer provider exporting with OTLP/HTTP (or ``exporter``, for tests)."""
    global _tracer
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        raise GraphwireError(
            "GRAPHWIRE_OTEL=true needs OpenTelemetry: pip install 'graphwire[otel]'"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("graphwire")


def enabled() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def run_span(graph: str, request_id: str, traceparent: bytes | None) -> Iterator[Any]:
    """The span of one run, a child of the request's ``traceparent`` when it has one."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = None
    if traceparent:
        carrier = {"traceparent": traceparent.decode("ascii", "replace")}
        parent = TraceContextTextMapPropagator().extract(carrier)
    with _tracer.start_as_current_span(
        f"graph {graph}", context=parent,
        attributes={"graphwire.request_id": request_id, "graphwire.graph": graph},
    ) as span:
        yield span


def start_node_span(graph: str, node: str) -> Any:
    """A span for one node (a child of the current run span); end it with ``end_span``."""
    if _tracer is None:
        return None
    return _tracer.start_span(f"node {node}", attributes={"graphwire.graph": graph,
                                                          "graphwire.node": node})


def end_span(span: Any, error: BaseException | None = None) -> None:
    if span is None:
        return
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    span.end()
