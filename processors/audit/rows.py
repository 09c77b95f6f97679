"""Kafka records of the four graphwire topics -> rows of the audit tables.

Pure functions, no I/O. Every record becomes exactly one row: a request, a result, an event, or
a dead letter. A record that cannot be decoded or breaks the contract becomes a dead letter of
the sink's own (``origin = 'audit'``) with the reason; it never stops the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from graphwire.topics.codec import HEADER_ERROR, HEADER_SOURCE, decode_request
from graphwire.topics.errors import GraphwireError
from graphwire.topics.models import EventType, Result, Status
from graphwire.topics.specs import TopicNames

EVENT_TYPES = frozenset(t.value for t in EventType)

# Column order of the staging tables (graphwire.processors.audit.writer creates them from these).
REQUEST_COLUMNS = (
    "request_id", "graph", "thread_id", "input", "command", "metadata", "requested_at",
    "request_source", "pos",
)
RESULT_COLUMNS = (
    "request_id", "graph", "thread_id", "status", "output", "error", "interrupts", "metadata",
    "attempts", "cached", "duration_ms", "finished_at", "result_source", "result_partition",
    "pos",
)
EVENT_COLUMNS = ("request_id", "seq", "type", "node", "data", "ts")
DEAD_LETTER_COLUMNS = (
    "source_topic", "source_partition", "source_offset", "origin", "request_id", "key", "value",
    "headers", "reason", "received_at",
)


@dataclass(frozen=True, slots=True)
class Record:
    """What the sink needs of one Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    timestamp: float
    """Seconds since the epoch (the record's Kafka timestamp)."""

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True, slots=True)
class Row:
    """One row for one table, with the record it came from (for isolating bad rows)."""

    table: str
    """``requests``, ``results``, ``events`` or ``dead_letters`` (the staging table)."""
    values: tuple[Any, ...]
    record: Record


class BadRecord(GraphwireError):
    """The record is not what its topic's contract says."""


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def _nul_free(obj: Any) -> Any:
    """PostgreSQL text and jsonb cannot hold U+0000: replace it with U+FFFD.

    Applied to every jsonb column and to the text columns (a request's graph and thread_id
    here; results and events get it on every field through ``_object``), so such a row is
    stored, not refused and isolated. A request's request_id never needs it: the contract
    refuses one that is not printable."""
    if isinstance(obj, str):
        return obj.replace("\x00", "\ufffd")
    if isinstance(obj, dict):
        return {_nul_free(k): _nul_free(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nul_free(v) for v in obj]
    return obj


def _object(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise BadRecord("no value (a tombstone)")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadRecord(f"value is not UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise BadRecord(f"value is a JSON {type(obj).__name__}, not an object")
    if b"\\u0000" in value:
        obj = _nul_free(obj)
    result: dict[str, Any] = obj
    return result


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _time(seconds: float) -> datetime:
    """A timestamp PostgreSQL accepts; a nonsense one (producers set them) becomes now."""
    try:
        if 0 <= seconds < 32503680000:  # before year 3000
            return datetime.fromtimestamp(seconds, tz=UTC)
    except (ValueError, OverflowError, OSError, TypeError):
        pass
    return datetime.now(UTC)


def _request_id(obj: dict[str, Any]) -> str:
    rid = obj.get("request_id")
    if not (isinstance(rid, str) and 0 < len(rid) <= 128 and rid.isprintable()):
        raise BadRecord("no usable request_id (1..128 printable characters)")
    return rid


def request_row(record: Record, max_bytes: int) -> tuple[Any, ...]:
    """A ``requests`` staging row; the request must pass the runner's own validation."""
    request = decode_request(record.value, max_bytes=max_bytes)
    if b"\\u0000" in (record.value or b""):
        # jsonb and the text columns graph and thread_id (names shown and searched, not keys:
        # the run is still recorded); request_id is a key, and the contract refuses it already
        request = request.model_copy(update={
            k: _nul_free(getattr(request, k))
            for k in ("input", "command", "metadata", "graph", "thread_id")
        })
    return (
        request.request_id, request.graph, request.thread_id, _json(request.input),
        _json(request.command), _json(request.metadata), _time(record.timestamp),
        record.source, record.offset,
    )


def result_row(record: Record) -> tuple[Any, ...]:
    """A ``results`` staging row."""
    obj = _object(record.value)
    try:
        result = Result.model_validate(obj)
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise BadRecord(f"not a result: {where}") from None
    return (
        result.request_id, result.graph, result.thread_id, str(result.status),
        _json(obj.get("output")), _json(obj.get("error")), _json(obj.get("interrupts") or []),
        _json(obj.get("metadata") or {}), result.attempts, result.cached, result.duration_ms,
        _time(record.timestamp), record.source, record.partition, record.offset,
    )


def event_row(record: Record) -> tuple[Any, ...]:
    """An ``events`` staging row (checked by hand: this is the sink's hot path)."""
    obj = _object(record.value)
    rid = _request_id(obj)
    seq, type_, node, ts = obj.get("seq"), obj.get("type"), obj.get("node"), obj.get("ts")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**53:
        raise BadRecord(f"event seq must be an integer from 0, got {seq!r} (below 2**53)")
    if type_ not in EVENT_TYPES:
        raise BadRecord(f"event type {type_!r} is not one of {sorted(EVENT_TYPES)}")
    if node is not None and not isinstance(node, str):
        raise BadRecord(f"event node must be a string or null, got {type(node).__name__}")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not 0 <= ts < 32503680000:
        raise BadRecord(f"event ts must be Unix seconds, got {ts!r}")
    return (rid, seq, type_, node, _json(obj.get("data")), _time(ts))


def _headers_json(headers: Sequence[tuple[str, bytes]]) -> str:
    pairs = [[k.replace("\x00", "\\x00"), _text(v or b"")] for k, v in headers]
    return orjson.dumps(pairs).decode()


def _rid_of(value: bytes | None) -> str | None:
    try:
        return _request_id(_object(value))
    except BadRecord:
        return None


def dead_letter_row(record: Record, reason: str | None = None) -> tuple[Any, ...]:
    """A ``dead_letters`` row: a runner's (or the webhook processor's, of a result) dead letter
    from the dlq topic (``reason`` None), or this record itself, rejected by the sink with
    ``reason``."""
    headers = {k: v for k, v in record.headers}
    origin, topic, partition, offset = "audit", record.topic, record.partition, record.offset
    if reason is None:
        origin = "runner"
        reason = _text(headers.get(HEADER_ERROR, b"")) or "(no reason header)"
        source = _text(headers.get(HEADER_SOURCE, b"")).rsplit("/", 2)
        if len(source) == 3 and source[1].isdigit() and source[2].isdigit():
            topic, partition, offset = source[0], int(source[1]), int(source[2])
        if topic == record.topic.removesuffix(".dlq") + ".results":  # graphwire webhooks'
            origin = "webhooks"
    return (
        topic, partition, offset, origin, _rid_of(record.value), record.key, record.value,
        _headers_json(record.headers), reason.replace("\x00", "\\x00"), _time(record.timestamp),
    )


def to_row(record: Record, topics: TopicNames, *, max_request_bytes: int) -> Row:
    """The row for ``record``; a dead letter (with the reason) when it is not valid."""
    try:
        if record.topic == topics.events:
            return Row("events", event_row(record), record)
        if record.topic == topics.results:
            return Row("results", result_row(record), record)
        if record.topic == topics.requests:
            return Row("requests", request_row(record, max_request_bytes), record)
        if record.topic == topics.dlq:
            return Row("dead_letters", dead_letter_row(record), record)
        raise BadRecord(f"topic {record.topic!r} is not one of graphwire's")
    except (BadRecord, GraphwireError) as exc:
        return rejected(record, f"{record.topic}: {exc}")
    except Exception as exc:  # a bug here must not stop the partition: keep the record
        return rejected(record, f"{record.topic}: the sink could not read it ({exc!r})")


def rejected(record: Record, reason: str) -> Row:
    """``record`` as a dead letter of the sink's own."""
    return Row("dead_letters", dead_letter_row(record, reason), record)


def status_names() -> list[str]:
    """Values of ``graphwire_runs.status``."""
    return ["accepted", *(s.value for s in Status)]
