"""What every ``graphwire`` command shares: settings from flags and env, the graph registry."""

from __future__ import annotations

import argparse
import gc
import json
from typing import Any

from graphwire.topics.errors import GraphwireError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def settings_from(args: argparse.Namespace) -> Any:
    from graphwire.processors.settings import Settings

    overrides = {
        field: value
        for field in (
            "bootstrap_servers",
            "topic_prefix",
            "group_id",
            "max_in_flight",
            "graphs",
            "langgraph_json",
            "partitions",
            "replication_factor",
            "log_level",
        )
        if (value := getattr(args, field, None)) is not None
    }
    return Settings(**overrides)


def registry_from(settings: Any) -> Any:
    from graphwire.graphs.registry import GraphRegistry

    return GraphRegistry.from_sources(
        builtins=settings.builtin_graphs,
        specs=settings.graphs,
        langgraph_json=settings.langgraph_json,
    )


def json_object(flag: str, text: str | None) -> Any:
    """The JSON object a flag gives (None without the flag), or a GraphwireError saying what
    to fix."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GraphwireError(
            f'{flag} is not valid JSON ({exc}); pass an object like \'{{"text": "hi"}}\''
        ) from None
    if not isinstance(value, dict):
        raise GraphwireError(f"{flag} must be a JSON object, not a {type(value).__name__}")
    return value


def tune_gc(young_threshold: int) -> None:
    """Freeze what start-up allocated out of the collector, and collect the young generation
    every ``young_threshold`` allocations instead of 700 (0: leave Python's settings)."""
    if young_threshold:
        gc.collect()
        gc.freeze()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)
