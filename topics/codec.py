"""Encoding and decoding of graphwire messages with orjson.

The runner's hot path builds events and results as plain dicts here rather than through the
pydantic models: a model per event costs more than the rest of publishing it. ``tests`` check
that every dict built here validates against its model in ``graphwire.topics.models``.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from graphwire.topics.errors import InvalidRequest, RequestTooLarge, UndecodableMessage
from graphwire.topics.models import GRAPH_NAME_PATTERN, Request

_GRAPH_NAME = re.compile(GRAPH_NAME_PATTERN)

# Header names (bytes values on the wire).
HEADER_REPLY_TO = "reply-to"
HEADER_TRACEPARENT = "traceparent"
HEADER_ERROR = "x-graphwire-error"
HEADER_SOURCE = "x-graphwire-source"
HEADER_VALUE_DROPPED = "x-graphwire-value-dropped"  # dead letter too large to carry its value

_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(obj: Any) -> Any:
    """Turn what graphs commonly put in state into JSON; never fails (falls back to ``str``)."""
    if isinstance(obj, BaseModel):  # LangChain messages, pydantic state
        return obj.model_dump(mode="json")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, Decimal):
        return str(obj)
    to_json = getattr(obj, "to_json", None)  # LangChain Serializable
    if callable(to_json):
        try:
            return to_json()
        except Exception:
            pass
    return str(obj)


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON; objects JSON cannot hold become their ``str()``."""
    return orjson.dumps(obj, default=_default, option=_DUMPS_OPTIONS)


def loads(data: bytes | str) -> Any:
    """Decode JSON bytes."""
    return orjson.loads(data)


def _usable_request_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable()


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "request"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def decode_request(value: bytes | None, *, max_bytes: int) -> Request:
    """Decode and validate one request message.

    Raises ``UndecodableMessage`` when the bytes are not a request at all (dead letter only),
    ``RequestTooLarge`` or ``InvalidRequest`` (carrying the request_id) when the request is
    understood but cannot run (``rejected`` result and dead letter).
    """
    if value is None:
        raise UndecodableMessage(
            "message has no value (a tombstone); produce a JSON request object instead"
        )
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise UndecodableMessage(
            f"value is not UTF-8 JSON ({exc}); "
            "produce a JSON object as `graphwire schema` describes"
        ) from None
    if not isinstance(obj, dict):
        raise UndecodableMessage(
            f"value is a JSON {type(obj).__name__}, not an object; produce a JSON request object"
        )
    request_id = obj.get("request_id")
    if not _usable_request_id(request_id):
        raise UndecodableMessage(
            "request has no usable request_id; set 'request_id' to 1..128 printable characters"
        )
    assert isinstance(request_id, str)
    if len(value) > max_bytes:
        raise RequestTooLarge(
            f"request is {len(value)} bytes, over the limit of {max_bytes} bytes; send large "
            "data by reference (a URL or object key) or raise GRAPHWIRE_MAX_REQUEST_BYTES",
            request_id=request_id,
        )
    try:
        return Request.model_validate(obj)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid request: {_describe(exc)}", request_id=request_id) from None


def peek_graph(value: bytes | None) -> str:
    """Best-effort graph name of a message that failed to decode (for rejected results)."""
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return ""
    graph = obj.get("graph") if isinstance(obj, dict) else None
    # only a valid name is echoed: a NUL or a newline in it would reach logs and tables
    return graph if isinstance(graph, str) and _GRAPH_NAME.match(graph) else ""


def event_dict(
    request_id: str,
    seq: int,
    type_: str,
    graph: str,
    node: str | None,
    data: Any,
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    """An event as the contract's ``Event`` describes it, stamped with the current time."""
    return {
        "request_id": request_id,
        "seq": seq,
        "type": type_,
        "graph": graph,
        "node": node,
        "data": data,
        "ts": time.time(),
        "metadata": metadata,
    }


def result_dict(
    request_id: str,
    graph: str,
    status: str,
    *,
    output: Any = None,
    error: tuple[str, str] | None = None,
    interrupts: list[Any] | None = None,
    thread_id: str | None = None,
    attempts: int = 1,
    cached: bool = False,
    duration_ms: float = 0.0,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A result as the contract's ``Result`` describes it; ``error`` is ``(type, message)``."""
    return {
        "request_id": request_id,
        "graph": graph,
        "status": status,
        "output": output,
        "error": {"type": error[0], "message": error[1]} if error else None,
        "interrupts": interrupts or [],
        "thread_id": thread_id,
        "attempts": attempts,
        "cached": cached,
        "duration_ms": round(duration_ms, 3),
        "metadata": metadata or {},
    }
