"""The run inspector's JSON bodies: what each page shows, as the OpenAPI document describes it.

The HTML pages are rendered from these same models, so a page never shows what its JSON
endpoint does not return.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RunSummary(BaseModel):
    """One row of the Runs page."""

    request_id: str
    graph: str | None
    thread_id: str | None
    status: str
    attempts: int | None
    cached: bool | None
    duration_ms: float | None
    requested_at: datetime | None
    finished_at: datetime | None
    resume: bool = Field(description="the request resumed an interrupted thread")


class RunsPage(BaseModel):
    """A page of runs, newest first."""

    runs: list[RunSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class EventRow(BaseModel):
    """One event of a run, with where it sits on the timeline."""

    seq: int
    attempt: int = Field(description="the request's start (delivery attempt), from 1")
    try_index: int = Field(description="the in-process retry within that start, from 0")
    type: str
    node: str | None
    ts: datetime
    offset_ms: float = Field(description="since the run's first event")
    duration_ms: float | None = Field(description="a node's time: since the event before it")
    data: Any = None


class DrawnNode(BaseModel):
    """A node of the graph as drawn, and where this run met it."""

    id: str
    x: float
    y: float
    visited: bool
    order: list[int] = Field(description="the positions (from 1) at which this run ran it")


class DrawnEdge(BaseModel):
    source: str
    target: str
    conditional: bool
    taken: bool = Field(description="this run went along it")
    path: str = Field(description="SVG path data")


class Drawing(BaseModel):
    """The graph's own structure (LangGraph ``get_graph()``), laid out, with this run's path."""

    width: float
    height: float
    nodes: list[DrawnNode]
    edges: list[DrawnEdge]
    note: str | None = Field(default=None, description="why there is no drawing")


class Bar(BaseModel):
    """A node's bar on the timeline (SVG coordinates)."""

    label: str
    x: float
    width: float
    y: float
    duration_ms: float


class RunDetail(BaseModel):
    """Everything the One run page shows."""

    request_id: str
    graph: str | None
    thread_id: str | None
    status: str
    attempts: int | None
    cached: bool | None
    duration_ms: float | None
    requested_at: datetime | None
    finished_at: datetime | None
    input: Any = None
    command: Any = None
    output: Any = None
    error: Any = None
    interrupts: list[Any] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    events: list[EventRow]
    nodes: list[str] = Field(description="nodes this run ran, in order")
    starts: int = Field(description="delivery attempts seen in the events")
    drawing: Drawing
    bars: list[Bar]
    timeline_ms: float
    turns: list[RunSummary] = Field(description="the thread's runs (its resumes among them)")
    resumable: bool = Field(description="an interrupted thread this caller may resume")
    recorded: bool = Field(description="the audit table has the result (else the status is "
                                       "the runner's, from Redis, and the output is to come)")
    cancel_url: str | None = Field(
        default=None, description="POST here to cancel (when run control is available)")


class Checkpoint(BaseModel):
    """One checkpoint of a thread's history."""

    checkpoint_id: str
    step: int | None
    source: str | None
    ts: str | None
    parent_id: str | None
    values: Any = None


class ThreadDetail(BaseModel):
    """A thread's turns and, where checkpoints exist, its history (newest first)."""

    thread_id: str
    turns: list[RunDetail] = Field(description="a page of turns, oldest first; each lists its "
                                   "first events only (see events_per_turn) and no other turns")
    checkpoints: list[Checkpoint]
    checkpoints_note: str | None = None
    next_cursor: str | None = Field(default=None, description="the next page of turns")
    events_per_turn: int = Field(description="at most this many events of each turn are "
                                 "listed: open the run for all of them")


class DeadLetterRow(BaseModel):
    """A dead letter: why, where from, and the original bytes (as text and base64)."""

    id: int
    source: str
    origin: str
    request_id: str | None
    reason: str
    received_at: datetime
    key_text: str | None
    value_text: str | None = Field(description="the bytes as UTF-8 (invalid bytes escaped)")
    value_base64: str | None
    value_bytes: int
    headers: list[list[str]]


class DeadLettersPage(BaseModel):
    letters: list[DeadLetterRow]
    next_before: int | None = Field(description="pass as ?before= for the next page")


class Replayed(BaseModel):
    id: int
    request_id: str | None
    topic: str
    run_url: str | None


class ResumeBody(BaseModel):
    """The resume value for the thread's interrupt (``Command(resume=...)``)."""

    model_config = ConfigDict(extra="forbid")

    resume: Any = Field(description="any JSON value; the approval graph wants "
                                    '{"approved": true|false, "comment": "..."}')


class Resumed(BaseModel):
    request_id: str
    thread_id: str
    run_url: str


class Minute(BaseModel):
    minute: datetime
    runs: int
    failed: int
    p50_ms: float | None
    p99_ms: float | None


class GraphHour(BaseModel):
    """One graph's last hour."""

    graph: str
    runs: int
    failed: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None
    per_minute: list[Minute]


class PartitionLag(BaseModel):
    group: str
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int


class Overview(BaseModel):
    """Throughput, error rate and latency per graph over the last hour; consumer lag."""

    since: datetime
    graphs: list[GraphHour]
    lag: list[PartitionLag]
    lag_note: str | None = None
