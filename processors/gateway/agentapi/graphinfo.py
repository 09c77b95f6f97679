"""What an assistant's graph looks like: its drawing (``/graph``), its JSON schemas
(``/schemas``) and its subgraphs' schemas (``/subgraphs``), as LangGraph's server derives them
from the compiled graph. Pure functions of a compiled graph.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, get_type_hints

from pydantic import TypeAdapter, create_model

from graphwire.processors.gateway.agentapi.errors import Unprocessable

log = logging.getLogger(__name__)

EXCLUDED_CONFIGURABLE = ("__pregel_checkpointer", "__pregel_store", "checkpoint_id",
                         "checkpoint_ns", "thread_id")
"""Keys of ``configurable`` a run sets itself, left out of ``config_schema``."""


def parse_xray(text: str | None) -> bool | int:
    """``xray`` as the SDK sends it (``true``/``false``/a positive depth); 422 otherwise."""
    if text in (None, "", "false", "False", "0"):
        return False
    if text in ("true", "True"):
        return True
    try:
        depth = int(text)
    except ValueError:
        raise Unprocessable("Invalid xray value") from None
    if depth <= 0:
        raise Unprocessable("Invalid xray value")
    return depth


async def drawing(graph: Any, xray: bool | int) -> dict[str, Any]:
    """``DrawableGraph.to_json()`` without the nodes' ``data.id`` (a class path), edges with
    only the fields RemoteGraph's ``DrawableEdge`` takes."""
    try:
        drawable = await graph.aget_graph(xray=xray)
    except NotImplementedError:
        raise Unprocessable("The graph does not support visualization") from None
    shape: dict[str, Any] = drawable.to_json()
    for node in shape.get("nodes", []):
        if isinstance(data := node.get("data"), dict):
            data.pop("id", None)
    shape["edges"] = [{k: v for k, v in edge.items()
                       if k in ("source", "target", "data", "conditional")}
                      for edge in shape.get("edges", [])]
    return shape


def schemas(graph: Any) -> dict[str, Any]:
    """``input_schema``, ``output_schema``, ``state_schema``, ``config_schema`` and
    ``context_schema`` (each None when it cannot be derived)."""
    builder: Any = getattr(graph, "builder", None)
    return {
        "input_schema": _first(graph.get_input_jsonschema, lambda: _fields_schema(
            builder.input_schema, graph.get_name("Input"))),
        "output_schema": _first(graph.get_output_jsonschema, lambda: _fields_schema(
            builder.output_schema, graph.get_name("Output"))),
        "state_schema": _first(lambda: _state_schema(graph)),
        "config_schema": _first(lambda: _configurable_schema(graph)),
        "context_schema": _first(graph.get_context_jsonschema),
    }


async def subgraph_schemas(graph: Any, namespace: str | None,
                           recurse: bool) -> dict[str, dict[str, Any]]:
    """``{namespace: schemas}`` of the graph's subgraphs (under ``namespace`` when given)."""
    try:
        return {ns: schemas(sub) async for ns, sub in
                graph.aget_subgraphs(namespace=namespace, recurse=recurse)}
    except NotImplementedError:
        raise Unprocessable("The graph does not support visualization") from None


def _first(*ways: Any) -> Any:
    """The first way that works; None (logged) when none does."""
    for way in ways:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # config_schema() is deprecated in LangGraph 1
                result = way()
            return result
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
    log.info("no JSON schema for a graph (%s)", reason.splitlines()[0])
    return None


def _fields_schema(typ: Any, title: str) -> dict[str, Any]:
    """A schema field by field, for types pydantic refuses whole (``typing.TypedDict`` on
    Python < 3.12): a field it refuses becomes ``Any``."""
    fields: dict[str, Any] = {}
    for name, hint in get_type_hints(typ, include_extras=True).items():
        try:
            TypeAdapter(hint).json_schema()
            fields[name] = (hint, None)
        except Exception:
            fields[name] = (Any, None)
    schema: dict[str, Any] = create_model(title, **fields).model_json_schema()
    return schema


def _state_schema(graph: Any) -> dict[str, Any]:
    """The state's channels and what each accepts (LangGraph server's ``state_schema``)."""
    fields: dict[str, Any] = {}
    for name in graph.stream_channels_list:
        kind = graph.channels[name].UpdateType
        try:
            TypeAdapter(kind).json_schema()
            fields[name] = (kind, None)
        except Exception:
            fields[name] = (Any, None)
    schema: dict[str, Any] = create_model(graph.get_name("State"), **fields).model_json_schema()
    return schema


def _configurable_schema(graph: Any) -> dict[str, Any]:
    """The ``configurable`` part of the config schema only; ``{}`` when it has none."""
    model = graph.config_schema()
    fields = getattr(model, "model_fields", {})
    if "configurable" not in fields:
        return {}
    configurable: Any = fields["configurable"].annotation
    schema: dict[str, Any] = TypeAdapter(configurable).json_schema()
    for key in EXCLUDED_CONFIGURABLE:
        schema.get("properties", {}).pop(key, None)
    if (config_type := getattr(graph, "config_type", None)) is not None:
        schema["title"] = getattr(config_type, "__name__", schema.get("title"))
    return schema
