"""JSON Schema documents for the contract, generated from the models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from graphwire.topics.models import CONTRACT_VERSION, Control, Event, Request, Result

SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "request": Request, "event": Event, "result": Result, "control": Control,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """``{"request": schema, "event": schema, "result": schema, "control": schema}``, draft
    2020-12."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in SCHEMA_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"urn:graphwire:v{CONTRACT_VERSION}:{name}"
        out[name] = schema
    return out
