"""Encoding and decoding of graphwire messages with orjson.

The runner's hot path builds events and results as plain dicts here rather than through the
pydantic models: a model per event costs more than the rest of publishing it. ``tests`` check
that every dict built here validates against its model in ``graphwire.topics.models``.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping, Sequence
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
HEADER_PRINCIPAL = "x-graphwire-principal"
"""The caller the gateway authenticated, as JSON ``{"kind", "name", "scope"}``; runners give it
to the graph as ``config["configurable"]["langgraph_auth_user"]`` (and ``_user_id``). Kafka
writers are trusted as admins over every tenant: a header a raw producer sets is honoured."""

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


MAX_DEPTH = 200
"""Deepest nesting of objects and arrays a request may have (the request object is level 1).
orjson decodes up to 1024 levels but encodes at most 254: a deeper input would run and then
never get its result published. 200 leaves room for the result and event envelopes."""
_PEEK_BYTES = 4096
_REQUEST_ID_KEY = re.compile(rb'"request_id"\s*:\s*("(?:[^"\\\x00-\x1f]|\\.){1,700}")')


def _peek_request_id(value: bytes) -> str | None:
    """The top-level ``request_id`` of a message too large to parse, when it is a string in
    its first 4 KiB (producers usually put it first); None otherwise. A ``request_id`` key
    nested in ``input`` is not taken for it: only keys at level 1 count."""
    head, depth, i, expect_key = value[:_PEEK_BYTES], 0, 0, False
    while i < len(head):
        c = head[i]
        if c == 0x22:  # a string: a key when at level 1 after '{' or ','
            if depth == 1 and expect_key and (m := _REQUEST_ID_KEY.match(head, i)):
                try:
                    found = orjson.loads(m.group(1))
                except orjson.JSONDecodeError:
                    return None
                return found if _usable_request_id(found) else None
            i += 1
            while i < len(head) and head[i] != 0x22:
                i += 2 if head[i] == 0x5C else 1
            expect_key = False
        elif c in b"{[":
            depth += 1
            expect_key = c == 0x7B and depth == 1
        elif c in b"}]":
            depth -= 1
        elif c == 0x2C and depth == 1:
            expect_key = True
        i += 1
    return None


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST = re.compile(rb"\[\]")
_RUN = re.compile(rb"\[+|\]+")
_LEAF_PASSES = 8


def _too_deep(value: bytes, limit: int) -> bool:
    """True when the JSON ``value`` (valid: it parsed) nests objects and arrays more than
    ``limit`` levels deep, in C-speed passes (walking the decoded object in Python costs
    seconds for a wide megabyte). Strings go, then everything but brackets; a few passes
    delete the innermost pairs (one level of every branch each: the many small leaves of a
    wide document); the depth of what is left is summed over runs of ``[`` and ``]``, of
    which a megabyte that survived the passes holds few."""
    brackets = _JSON_STRING.sub(b"", value).translate(_BRACKETS, _NOT_BRACKETS)
    passes = 0
    while brackets and passes < _LEAF_PASSES:
        brackets = _INNERMOST.sub(b"", brackets)
        passes += 1
    level = deepest = 0
    for run in _RUN.finditer(brackets):
        width = run.end() - run.start()
        if brackets[run.start()] == 0x5B:
            level += width
            deepest = max(deepest, level)
        else:
            level -= width
    return deepest + passes > limit if brackets else passes > limit


def decode_request(value: bytes | None, *, max_bytes: int) -> Request:
    """Decode and validate one request message.

    Raises ``UndecodableMessage`` when the bytes are not a request at all (dead letter only),
    ``RequestTooLarge`` or ``InvalidRequest`` (carrying the request_id) when the request is
    understood but cannot run (``rejected`` result and dead letter). The size is checked
    before parsing; a message too large has its request_id looked for in its first 4 KiB.
    """
    if value is None:
        raise UndecodableMessage(
            "message has no value (a tombstone); produce a JSON request object instead"
        )
    if len(value) > max_bytes:
        too_large = (
            f"request is {len(value)} bytes, over the limit of {max_bytes} bytes; send large "
            "data by reference (a URL or object key) or raise GRAPHWIRE_MAX_REQUEST_BYTES"
        )
        found = _peek_request_id(value)
        if found is None:
            raise UndecodableMessage(f"{too_large} (and no request_id in its first "
                                     f"{_PEEK_BYTES} bytes to reject it with)")
        raise RequestTooLarge(too_large, request_id=found)
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
    # cheap for the usual request: fewer brackets than the limit cannot nest deeper than it
    if value.count(b"[") + value.count(b"{") > MAX_DEPTH and _too_deep(value, MAX_DEPTH):
        raise InvalidRequest(
            f"request nests objects and arrays more than {MAX_DEPTH} levels deep, which its "
            "result could not be encoded with; flatten the input (or send it as a string)",
            request_id=request_id,
        )
    try:
        return Request.model_validate(obj)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid request: {_describe(exc)}", request_id=request_id) from None


def principal_header(kind: str, name: str, scope: str) -> tuple[str, bytes]:
    """The ``x-graphwire-principal`` header for a request produced on behalf of a caller."""
    return HEADER_PRINCIPAL, orjson.dumps({"kind": kind, "name": name, "scope": scope})


def decode_principal(value: bytes) -> dict[str, str]:
    """The caller in an ``x-graphwire-principal`` header; ``ValueError`` says what is wrong."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        obj = None
    fields = ("kind", "name", "scope")
    if not isinstance(obj, dict) or not all(
        isinstance(obj.get(f), str) and 0 < len(obj[f]) <= 256 and obj[f].isprintable()
        for f in fields
    ):
        raise ValueError(
            f"header {HEADER_PRINCIPAL} must be a JSON object of printable strings 'kind', "
            "'name' and 'scope' (1..256 characters each), as the gateway sets it; fix or drop it"
        )
    return {f: obj[f] for f in fields}


def peek_graph(value: bytes | None) -> str:
    """Best-effort graph name of a message that failed to decode (for rejected results)."""
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return ""
    graph = obj.get("graph") if isinstance(obj, dict) else None
    # only a valid name is echoed: a NUL or a newline in it would reach logs and tables
    return graph if isinstance(graph, str) and _GRAPH_NAME.match(graph) else ""


TOP_NS: list[str] = []
"""The ``ns`` of the top graph's events (shared: never mutated)."""


def event_dict(
    request_id: str,
    seq: int,
    type_: str,
    graph: str,
    node: str | None,
    data: Any,
    metadata: Mapping[str, Any],
    ns: Sequence[str] = TOP_NS,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An event as the contract's ``Event`` describes it, stamped with the current time;
    ``extra`` adds the optional fields (``cached``, ``replayed``, ``langgraph``)."""
    event = {
        "request_id": request_id,
        "seq": seq,
        "type": type_,
        "graph": graph,
        "node": node,
        "ns": ns,
        "data": data,
        "ts": time.time(),
        "metadata": metadata,
    }
    if extra:
        event.update(extra)
    return event


def result_dict(
    request_id: str,
    graph: str,
    status: str,
    *,
    output: Any = None,
    error: tuple[str, str] | None = None,
    interrupts: list[Any] | None = None,
    next: list[str] | None = None,
    breakpoint: str | None = None,
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
        "next": next or [],
        "breakpoint": breakpoint,
        "thread_id": thread_id,
        "attempts": attempts,
        "cached": cached,
        "duration_ms": round(duration_ms, 3),
        "metadata": metadata or {},
    }
