"""An AsyncAPI 3.0 document of the contract (``graphwire asyncapi``), for producers and
consumers in any language.

Built from the same pydantic models as ``graphwire schema``: the message payloads are the
models' JSON Schemas, with their shared definitions under ``components.schemas``. The document
describes graphwire as the application: it receives requests and sends events, results and dead
letters.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic.json_schema import models_json_schema

from graphwire.topics.codec import (
    HEADER_ERROR,
    HEADER_REPLY_TO,
    HEADER_SOURCE,
    HEADER_TRACEPARENT,
    HEADER_VALUE_DROPPED,
)
from graphwire.topics.models import CONTRACT_VERSION, Control, Event, Request, Result

_KAFKA_BINDING = "0.5.0"
_EVENTS_CHANNEL = (
    "Per-node events out, keyed by request_id. seq is the event's position over every try of "
    "the request: (delivery_attempt * 256 + try_index) * 2**24 + i, below 2**53. Positions "
    "strictly increase per request across attempts; within one try they are contiguous from its "
    "run_started; a new try starts at a higher base, so a consumer waiting for seq N that holds "
    "a run_started event with a higher seq moves on to it (work an earlier try did not finish "
    "is re-sent after it). A copy keeps its seq: dedupe on (request_id, seq). Unique across "
    "redeliveries only with dedup (Redis) on; without it every delivery is attempt 1."
)


def _version() -> str:
    try:
        return version("graphwire")
    except PackageNotFoundError:
        return "0.0.0"


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema(
        [(Request, "validation"), (Event, "validation"), (Result, "validation"),
         (Control, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = top["$defs"]
    return schemas


def _string(description: str) -> dict[str, str]:
    return {"type": "string", "description": description}


def _channel(suffix: str, description: str, message: str) -> dict[str, Any]:
    return {
        "address": "{prefix}." + suffix,
        "description": description,
        "parameters": {"prefix": {"$ref": "#/components/parameters/prefix"}},
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
    }


def asyncapi_document(bootstrap_servers: str = "localhost:9092") -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document (a JSON-ready dict)."""
    trace = _string("W3C trace context; copied to every event and result of the request")
    return {
        "asyncapi": "3.0.0",
        "id": "urn:graphwire",
        "info": {
            "title": "graphwire",
            "version": _version(),
            "description": (
                "Run LangGraph graphs on Kafka. Produce a request to `{prefix}.requests`; "
                "graphwire runs the named graph and publishes per-node events to "
                "`{prefix}.events`, the result to `{prefix}.results`, and messages it cannot "
                f"run to `{{prefix}}.dlq`. Contract version {CONTRACT_VERSION}; all values are "
                "UTF-8 JSON objects."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": bootstrap_servers,
                "protocol": "kafka",
                "description": "Any Kafka-protocol broker (GRAPHWIRE_BOOTSTRAP_SERVERS).",
            }
        },
        "channels": {
            "requests": _channel(
                "requests", "Requests in. Messages with the same key run in order.", "request"
            ),
            "events": _channel("events", _EVENTS_CHANNEL, "event"),
            "results": _channel("results", "One result per request.", "result"),
            "dlq": _channel("dlq", "Messages graphwire could not run, with the reason.",
                            "deadLetter"),
            "control": _channel(
                "control", "Control messages in (cancel a request wherever it is), keyed by "
                "request_id; a cancel of a finished request is dead-lettered.", "control"),
        },
        "operations": {
            "receiveRequest": {
                "action": "receive",
                "channel": {"$ref": "#/channels/requests"},
                "summary": "Runs the named graph for each request.",
                "messages": [{"$ref": "#/channels/requests/messages/request"}],
            },
            "receiveControl": {
                "action": "receive",
                "channel": {"$ref": "#/channels/control"},
                "summary": "Cancels a request: it stops at its next step boundary, or runs "
                           "nothing if not started; its result is `cancelled`.",
                "messages": [{"$ref": "#/channels/control/messages/control"}],
            },
            "sendEvent": {
                "action": "send",
                "channel": {"$ref": "#/channels/events"},
                "summary": "One event per node update (and run_started / run_finished).",
                "messages": [{"$ref": "#/channels/events/messages/event"}],
            },
            "sendResult": {
                "action": "send",
                "channel": {"$ref": "#/channels/results"},
                "summary": "How the request ended; also sent to the `reply-to` topic if given.",
                "messages": [{"$ref": "#/channels/results/messages/result"}],
            },
            "sendDeadLetter": {
                "action": "send",
                "channel": {"$ref": "#/channels/dlq"},
                "summary": "The original bytes and headers, plus the reason.",
                "messages": [{"$ref": "#/channels/dlq/messages/deadLetter"}],
            },
        },
        "components": {
            "parameters": {
                "prefix": {
                    "default": "graphwire",
                    "description": "GRAPHWIRE_TOPIC_PREFIX",
                }
            },
            "schemas": _schemas(),
            "messages": {
                "request": {
                    "name": "request",
                    "title": "Request",
                    "payload": {"$ref": "#/components/schemas/Request"},
                    "headers": {
                        "type": "object",
                        "properties": {
                            HEADER_REPLY_TO: _string("a topic that also receives the result"),
                            HEADER_TRACEPARENT: trace,
                        },
                    },
                    "bindings": {"kafka": {
                        "key": _string("thread_id when given, else request_id"),
                        "bindingVersion": _KAFKA_BINDING,
                    }},
                },
                "event": {
                    "name": "event",
                    "title": "Event",
                    "payload": {"$ref": "#/components/schemas/Event"},
                    "headers": {"type": "object", "properties": {HEADER_TRACEPARENT: trace}},
                    "bindings": {"kafka": {"key": _string("request_id"),
                                           "bindingVersion": _KAFKA_BINDING}},
                },
                "result": {
                    "name": "result",
                    "title": "Result",
                    "payload": {"$ref": "#/components/schemas/Result"},
                    "headers": {"type": "object", "properties": {HEADER_TRACEPARENT: trace}},
                    "bindings": {"kafka": {"key": _string("request_id"),
                                           "bindingVersion": _KAFKA_BINDING}},
                },
                "control": {
                    "name": "control",
                    "title": "Control",
                    "payload": {"$ref": "#/components/schemas/Control"},
                    "bindings": {"kafka": {"key": _string("request_id"),
                                           "bindingVersion": _KAFKA_BINDING}},
                },
                "deadLetter": {
                    "name": "deadLetter",
                    "title": "Dead letter",
                    "contentType": "application/octet-stream",
                    "summary": "The original message value, unchanged (any bytes).",
                    "payload": {"description": "the original value"},
                    "headers": {
                        "type": "object",
                        "required": [HEADER_ERROR, HEADER_SOURCE],
                        "properties": {
                            HEADER_ERROR: _string("why the message could not run"),
                            HEADER_SOURCE: _string("topic/partition/offset of the original"),
                            HEADER_VALUE_DROPPED: _string(
                                "set when the original was too large to carry"
                            ),
                        },
                        "additionalProperties": _string("the original message's headers"),
                    },
                    "bindings": {"kafka": {"key": _string("the original message's key"),
                                           "bindingVersion": _KAFKA_BINDING}},
                },
            },
        },
    }
