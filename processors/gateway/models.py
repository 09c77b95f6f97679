"""Request and response bodies of the gateway, its metrics, and the body size limit."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

import orjson
from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphwire.processors.gateway.auth import ID_BUDGET, SCOPE_HEX
from graphwire.processors.metrics import UNKNOWN
from graphwire.topics.models import (
    MAX_DELAY_S,
    Breakpoints,
    MultitaskStrategy,
    Result,
    RunConfig,
    StreamMode,
)


class WorkflowRequest(BaseModel):
    """A run to submit (the guide's body, plus graphwire's options)."""

    model_config = ConfigDict(extra="forbid")

    workflow_name: str = Field(min_length=1, max_length=200, description="a registered graph")
    input_data: Any = Field(default=None, description="the graph's input: any JSON value; "
                                                      "null continues the thread")
    config: RunConfig = Field(default_factory=RunConfig)
    context: dict[str, Any] | None = Field(default=None,
                                           description="LangGraph's run context (runtime.context)")
    interrupt_before: Breakpoints | None = Field(default=None,
                                                 description='stop before these nodes, or "*"')
    interrupt_after: Breakpoints | None = Field(default=None,
                                                description='stop after these nodes, or "*"')
    subgraphs: bool = Field(default=False, description="stream subgraphs' events too (with ns)")
    request_id: str | None = Field(
        default=None, min_length=1, max_length=ID_BUDGET, pattern=r"^[\x20-\x7e]+$",
        description="idempotency key; the run's id is it, in the caller's namespace",
    )
    thread_id: str | None = Field(default=None, min_length=1, max_length=256 - SCOPE_HEX - 1,
                                  description="the caller's thread (namespaced per caller)")
    command: dict[str, Any] | None = Field(
        default=None, description='instead of input, e.g. {"resume": ...}'
    )
    stream: list[StreamMode] = Field(default_factory=lambda: list[StreamMode](["updates"]))
    metadata: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0, le=24 * 3600)
    multitask_strategy: MultitaskStrategy | None = Field(
        default=None, description="when the thread has a run in progress: enqueue (default), "
                                  "reject, interrupt or rollback")
    checkpoint_id: str | None = Field(default=None, min_length=1, max_length=256,
                                      description="run from this checkpoint of the thread")
    webhook: str | None = Field(default=None, max_length=2048,
                                description="POST the result to this URL when the run ends "
                                            "(signed; its host must be allowed)")
    # scheduled runs: accepted now, run then (graphwire scheduler)
    after_seconds: float | None = Field(default=None, ge=0, le=MAX_DELAY_S,
                                        description="run this many seconds from now")
    run_at: AwareDatetime | None = Field(default=None, description="run at this RFC 3339 time")


class Accepted(BaseModel):
    request_id: str
    status: Literal["accepted"] = "accepted"
    status_url: str
    stream_url: str

    @classmethod
    def of(cls, request_id: str) -> Accepted:
        return cls(request_id=request_id, status_url=f"/workflow/status/{request_id}",
                   stream_url=f"/workflow/stream/{request_id}")


class RunStatus(BaseModel):
    request_id: str
    status: str = Field(description="scheduled, accepted, running, success, error, rejected, "
                                    "timeout, interrupted, cancelled")
    source: Literal["redis", "postgresql"]
    attempts: int | None = None
    requested_at: datetime | None = None
    finished_at: datetime | None = None
    run_at: datetime | None = Field(default=None, description="when a scheduled run is due")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[WorkflowRequest] = Field(min_length=1)
    wait: bool = Field(default=False, description="gather the results before answering")


class BatchResponse(BaseModel):
    request_ids: list[str]
    results: list[Result | None] | None = Field(
        default=None, description="with wait: each result, or null when it did not come in time"
    )


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("graphwire_gateway_requests_total",
                                "HTTP requests by method, route and status.",
                                ["method", "route", "status"], registry=r)
        self.duration = Histogram("graphwire_gateway_request_duration_seconds",
                                  "HTTP request duration by route.", ["route"], registry=r,
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                           10, 30))
        self.rate_limited = Counter("graphwire_gateway_rate_limited_total",
                                    "Requests refused by the rate limit.", registry=r)
        self.auth_failures = Counter("graphwire_gateway_auth_failures_total",
                                     "Requests refused by authentication (401) or "
                                     "authorization (403).", ["status"], registry=r)


class BodyLimit:
    """413 for bodies over ``max_bytes`` (declared or streamed), before anything parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # a chunked body: FastAPI turns this into the 413
                    # (an HTTPException, not a domain error: FastAPI answers any other
                    # exception raised while it reads a body with a 400)
                    raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps({"detail": f"request body over {self.max_bytes} bytes"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})



# HTTP methods counted under their own name; a client may send any token as a method, and each
# one would become a new time series
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Measure:
    """Requests by method, route and status, and their duration (a plain ASGI middleware:
    Starlette's BaseHTTPMiddleware costs a task per request)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app, self.metrics = app, metrics
        # the metrics' children by (method, route, status): bound once, not per request (the
        # routes are templates and the statuses few, so this stays small)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else UNKNOWN
            key = (method, path, status)
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    self.metrics.requests.labels(method, path, str(status)),
                    self.metrics.duration.labels(path))
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
