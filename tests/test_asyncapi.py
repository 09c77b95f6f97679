"""``graphwire asyncapi``: an AsyncAPI 3.0 document that the official JSON Schema accepts and
whose payload schemas accept real messages."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7

from graphwire.topics.asyncapi import asyncapi_document
from graphwire.topics.codec import event_dict, result_dict
from tests.helpers import ROOT, graphwire

# schemas/3.0.0-without-$id.json of the AsyncAPI spec-json-schemas project (npm @asyncapi/specs
# 6.11.1), vendored: tests never touch the network.
ASYNCAPI_SCHEMA = json.loads((ROOT / "tests/fixtures/asyncapi-3.0.0.schema.json").read_text())


def _offline(uri: str) -> Any:
    raise NoSuchResource(ref=uri)


def asyncapi_errors(document: dict[str, Any]) -> list[str]:
    registry = Registry(retrieve=_offline).with_resource(  # type: ignore[call-arg]
        "urn:asyncapi-3.0.0", Resource.from_contents(ASYNCAPI_SCHEMA, DRAFT7)
    )
    validator = jsonschema.Draft7Validator(ASYNCAPI_SCHEMA, registry=registry)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_the_document_is_valid_asyncapi_3() -> None:
    """The AsyncAPI document for "kafka-1:9092" has no error against the official 3.0.0 schema,
    names that host, has exactly the channels control, dlq, events, requests and results, and
    operations whose actions are send and receive."""
    document = asyncapi_document("kafka-1:9092")
    assert asyncapi_errors(document) == []
    assert document["servers"]["kafka"]["host"] == "kafka-1:9092"
    assert sorted(document["channels"]) == ["control", "dlq", "events", "requests", "results"]
    assert {op["action"] for op in document["operations"].values()} == {"send", "receive"}


def test_the_validator_is_not_a_rubber_stamp() -> None:
    """A document without ``info`` and with a "publish" action gives at least 2 errors, one of them
    "'info' is a required property"."""
    broken = copy.deepcopy(asyncapi_document())
    broken["operations"]["receiveRequest"]["action"] = "publish"
    del broken["info"]
    errors = asyncapi_errors(broken)
    assert any("'info' is a required property" in e for e in errors), errors
    assert len(errors) >= 2


def payload_validator(name: str) -> jsonschema.Draft202012Validator:
    document = asyncapi_document()
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(
    ("name", "message", "valid"),
    [
        ("Request", {"request_id": "r1", "graph": "pipeline", "input": {"text": "x"}}, True),
        ("Request", {"request_id": "r1", "input": {"text": "x"}}, False),
        ("Request", {"request_id": "r1", "graph": "g", "input": {}, "stream": ["nope"]}, False),
        ("Event", event_dict("r1", 0, "run_started", "g", None, {}, {}), True),
        ("Event", {**event_dict("r1", 0, "node", "g", "n", {}, {}), "seq": -1}, False),
        ("Result", result_dict("r1", "g", "success", output={"a": 1}, duration_ms=2.0), True),
        ("Result", {**result_dict("r1", "g", "success"), "status": "fine"}, False),
        ("Result", result_dict("r1", "g", "cancelled", error=("Cancelled", "x")), True),
        ("Control", {"type": "cancel", "request_id": "r1", "action": "rollback"}, True),
        ("Control", {"type": "cancel", "request_id": "r1", "action": "undo"}, False),
        ("Control", {"type": "cancel"}, False),
        ("Request", {"request_id": "r1", "graph": "g", "thread_id": "t", "checkpoint_id": "c",
                     "multitask_strategy": "interrupt"}, True),
        ("Request", {"request_id": "r1", "graph": "g", "input": {},
                     "multitask_strategy": "later"}, False),
    ],
)
def test_payload_schemas_accept_real_messages_and_refuse_broken_ones(
    name: str, message: dict[str, Any], valid: bool
) -> None:
    """Each payload schema accepts a real message of its kind (request, event, result, cancel
    control, fork request) and refuses a broken one (no graph, a bad stream mode, seq -1, status
    "fine", action "undo", a cancel without request_id, multitask_strategy "later")."""
    assert payload_validator(name).is_valid(message) is valid


def test_cli_writes_the_same_document(tmp_path: Path) -> None:
    """`graphwire asyncapi --bootstrap-servers b:9092 --out FILE` exits 0 and writes exactly
    ``asyncapi_document("b:9092")``."""
    out = tmp_path / "asyncapi.json"
    done = graphwire("asyncapi", "--bootstrap-servers", "b:9092", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == asyncapi_document("b:9092")
