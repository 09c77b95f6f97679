"""The v1 message contract: decoding, validation errors, output shapes, JSON Schema."""

from __future__ import annotations

import re

import jsonschema
import orjson
import pytest

from graphwire.topics.codec import decode_request, dumps, event_dict, result_dict
from graphwire.topics.errors import InvalidRequest, RequestTooLarge, UndecodableMessage
from graphwire.topics.models import Event, Result
from graphwire.topics.schema import json_schemas

ISSUE_REQUEST = {
    "request_id": "r-123",
    "graph": "pipeline",
    "input": {"text": "Hello World"},
    "thread_id": None,
    "command": None,
    "config": {"configurable": {}, "recursion_limit": None},
    "stream": ["updates"],
    "timeout_s": None,
    "metadata": {},
}
ISSUE_EVENT = {
    "request_id": "r-123",
    "seq": 1,
    "type": "node",
    "graph": "pipeline",
    "node": "tokenize",
    "data": {"tokens": ["hello", "world"]},
    "ts": 1764400000.123,
    "metadata": {},
}
ISSUE_RESULT = {
    "request_id": "r-123",
    "graph": "pipeline",
    "status": "success",
    "output": {"text": "hello world", "tokens": ["hello", "world"], "count": 2},
    "error": None,
    "interrupts": [],
    "thread_id": None,
    "attempts": 1,
    "duration_ms": 4.2,
    "metadata": {},
}


def test_documented_examples_validate_against_the_published_schema() -> None:
    """Each example message of the docs validates against `graphwire schema` output."""
    schemas = json_schemas()
    for name, example in (
        ("request", ISSUE_REQUEST),
        ("event", ISSUE_EVENT),
        ("result", ISSUE_RESULT),
    ):
        jsonschema.Draft202012Validator(schemas[name]).validate(example)


def test_schema_rejects_what_the_runner_rejects() -> None:
    """The published request schema refuses unknown fields and unknown stream modes."""
    validator = jsonschema.Draft202012Validator(json_schemas()["request"])
    assert not validator.is_valid({**ISSUE_REQUEST, "inptu": {}})
    assert not validator.is_valid({**ISSUE_REQUEST, "stream": ["tokens"]})


def test_decode_request_fills_defaults_and_keys_by_thread() -> None:
    """A minimal request gets the documented defaults; key is thread_id, else request_id."""
    req = decode_request(b'{"request_id":"r1","graph":"echo","input":{"text":"x"}}', max_bytes=1024)
    assert (req.stream, req.config.recursion_limit, req.metadata, req.timeout_s) == (
        ["updates"],
        None,  # LangGraph's own default (or the graph's with_config)
        {},
        None,
    )
    assert req.key == "r1"
    threaded = decode_request(
        b'{"request_id":"r2","graph":"echo","thread_id":"t9","command":{"resume":"yes"}}',
        max_bytes=1024,
    )
    assert (threaded.key, threaded.input, threaded.command) == ("t9", None, {"resume": "yes"})


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "tombstone"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (b'{"graph": "echo"}', "no usable request_id"),
        (b'{"request_id": "", "graph": "echo"}', "no usable request_id"),
        (b'{"request_id": "a\\nb", "graph": "echo"}', "no usable request_id"),
        (orjson.dumps({"request_id": "x" * 129, "graph": "echo"}), "no usable request_id"),
    ],
)
def test_undecodable_messages_say_what_to_fix(value: bytes | None, fragment: str) -> None:
    """Bytes that are no request raise UndecodableMessage with an actionable reason."""
    with pytest.raises(UndecodableMessage, match=fragment):
        decode_request(value, max_bytes=1024)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"graph": "echo"}, "request: give 'input' or 'command': a null input continues a "
                            "thread's run (from a breakpoint), so it needs 'thread_id'"),
        ({"graph": "echo", "input": 1, "context": [1]},
         "context: Input should be a valid dictionary"),
        ({"graph": "echo", "input": 1, "interrupt_before": "b"}, "interrupt_before"),
        ({"graph": "echo", "thread_id": "t", "command": {"resume": None}},
         "command has nothing to do"),
        ({"graph": "echo", "input": {}, "stream": ["tokens"]}, "stream.0: Input should be"),
        ({"graph": "echo", "input": {}, "extra": 1}, "extra: Extra inputs are not permitted"),
        (
            {"graph": "echo", "input": {}, "timeout_s": 0},
            "timeout_s: Input should be greater than 0",
        ),
        ({"graph": "echo", "command": {"jump": 1}}, "command takes one or more of"),
        ({"graph": "", "input": {}}, "graph: String should have at least 1 character"),
        (
            {"graph": "echo", "input": {}, "config": {"recursion_limit": 0}},
            "config.recursion_limit",
        ),
    ],
)
def test_invalid_requests_carry_their_request_id(body: dict[str, object], fragment: str) -> None:
    """A request with a usable request_id but bad fields raises InvalidRequest naming the field."""
    with pytest.raises(InvalidRequest, match=re.escape(fragment)) as caught:
        decode_request(orjson.dumps({"request_id": "rid-7", **body}), max_bytes=1024)
    assert caught.value.request_id == "rid-7"


def test_too_large_request_is_rejected_with_its_request_id() -> None:
    """Over max_bytes: RequestTooLarge with the size, the limit and the request_id."""
    value = orjson.dumps({"request_id": "big", "graph": "echo", "input": {"text": "x" * 2000}})
    with pytest.raises(
        RequestTooLarge, match=f"{len(value)} bytes, over the limit of 1024"
    ) as caught:
        decode_request(value, max_bytes=1024)
    assert caught.value.request_id == "big"


def test_hot_path_dicts_validate_against_the_models() -> None:
    """event_dict/result_dict build exactly what the Event/Result models describe."""
    event = event_dict("r1", 0, "run_started", "echo", None, {"k": 1}, {"m": 2})
    # the optional fields (cached, langgraph) are left out of the hot path's dict when unset
    assert Event.model_validate(orjson.loads(dumps(event))).model_dump(
        mode="json", exclude_unset=True) == orjson.loads(dumps(event))
    result = result_dict("r1", "echo", "error", error=("ValueError", "bad"), duration_ms=1.23456)
    parsed = Result.model_validate(orjson.loads(dumps(result)))
    assert parsed.error is not None and (parsed.error.type, parsed.error.message) == (
        "ValueError",
        "bad",
    )
    assert parsed.duration_ms == 1.235
    jsonschema.Draft202012Validator(json_schemas()["result"]).validate(orjson.loads(dumps(result)))


def test_dumps_never_fails_on_state_json_cannot_hold() -> None:
    """Sets, tuples, bytes and arbitrary objects in graph state still encode."""

    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    encoded = orjson.loads(
        dumps({"s": {3}, "t": (1, 2), "b": b"\x00\x01", "o": Opaque(), 1: "int key"})
    )
    assert encoded == {"s": [3], "t": [1, 2], "b": "AAE=", "o": "opaque!", "1": "int key"}
