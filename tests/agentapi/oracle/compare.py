"""Compare two servers' answers: ids and timestamps normalised, then every difference listed.

``normalise`` replaces each UUID (also inside strings such as ``lc_run--<uuid>``) by
``<id:N>``, numbered in order of first appearance (dict keys visited sorted), so "the same id
as before" survives and which id it was does not (ids the same on both servers, such as the
default assistants' uuid5, are kept); an ISO timestamp becomes ``<time>`` plus its
offset form, so a timestamp without an offset still shows. ``differences`` lists every path
where two normalised answers differ.
"""

from __future__ import annotations

import re
from typing import Any

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HASH = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")  # interrupt ids (xxh3 of a task path)
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(Z|[+-]\d\d:\d\d)?$")


class Normaliser:
    """One numbering of ids for one server's transcript."""

    def __init__(self, keep: frozenset[str] = frozenset()) -> None:
        self.ids: dict[str, str] = {k: k for k in keep}
        self.count = 0

    def _id(self, match: re.Match[str]) -> str:
        if match[0] not in self.ids:
            self.ids[match[0]] = f"<id:{self.count}>"
            self.count += 1
        return self.ids[match[0]]

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {self(k) if isinstance(k, str) else k: self(value[k])
                    for k in sorted(value, key=str)}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        if isinstance(value, str):
            time = TIME.match(value)
            if time:
                return f"<time{time[1] or ' without offset'}>"
            return HASH.sub(self._id, UUID.sub(self._id, value))
        return value


def normalise(value: Any, keep: frozenset[str] = frozenset()) -> Any:
    """``value`` with ids (but those in ``keep``) and timestamps normalised (a fresh
    numbering)."""
    return Normaliser(keep)(value)


SERVER_STAMPS = frozenset({
    # langgraph dev's own: its deployment, its auth, its assistant record, the run's attempt
    "langgraph_version", "langgraph_api_version", "langgraph_plan", "langgraph_host",
    "langgraph_api_url", "langgraph_request_id", "langgraph_auth_user_id", "user_id",
    "created_by", "run_attempt",
    # graphwire's own: the Kafka request id (the run id through the Agent Server API)
    "graphwire_request_id",
    # the graph's graphwire options (``with_config(metadata={"graphwire": ...})``): LangGraph
    # copies a graph's config metadata into every checkpoint, graphwire's runner consumes them
    "graphwire",
})
"""Keys each server stamps of its own into checkpoint and message metadata (README, "Use your
LangGraph clients": what differs); LangGraph's keys (source, step, parents, langgraph_node,
...) and the run's (run_id, thread_id, graph_id, assistant_id) are compared."""


def without_stamps(value: Any, stamps: frozenset[str] = SERVER_STAMPS) -> Any:
    """``value`` with ``stamps`` removed from the metadata of each thread state (a dict with
    ``values``, ``next`` and ``metadata``) and of each ``messages`` stream event
    (``["messages", [message, metadata]]``)."""
    if isinstance(value, dict):
        out = {k: without_stamps(v, stamps) for k, v in value.items()}
        if {"values", "next", "metadata"} <= out.keys() and isinstance(out["metadata"], dict):
            out["metadata"] = {k: v for k, v in out["metadata"].items() if k not in stamps}
        return out
    if isinstance(value, list | tuple):
        if (len(value) == 2 and value[0] == "messages" and isinstance(value[1], list | tuple)
                and len(value[1]) == 2 and isinstance(value[1][1], dict)):
            message, metadata = value[1]
            return ["messages", [without_stamps(message, stamps),
                                 {k: v for k, v in metadata.items() if k not in stamps}]]
        return [without_stamps(v, stamps) for v in value]
    return value


def differences(oracle: Any, graphwire: Any, path: str = "") -> list[str]:
    """Every place where ``graphwire`` differs from ``oracle`` (both normalised), one line each:
    ``path: oracle <value> != graphwire <value>``, ``path: only the oracle has KEY``, ..."""
    if isinstance(oracle, dict) and isinstance(graphwire, dict):
        found = [f"{path or '.'}: only the oracle has {k!r}" for k in oracle if k not in graphwire]
        found += [f"{path or '.'}: only graphwire has {k!r}" for k in graphwire
                  if k not in oracle]
        for key in oracle:
            if key in graphwire:
                found += differences(oracle[key], graphwire[key], f"{path}.{key}")
        return found
    if isinstance(oracle, list) and isinstance(graphwire, list):
        if len(oracle) != len(graphwire):
            return [f"{path or '.'}: oracle {short(oracle)} != graphwire {short(graphwire)}"]
        found = []
        for index, (a, b) in enumerate(zip(oracle, graphwire, strict=True)):
            found += differences(a, b, f"{path}[{index}]")
        return found
    if oracle != graphwire or type(oracle) is not type(graphwire):
        return [f"{path or '.'}: oracle {short(oracle)} != graphwire {short(graphwire)}"]
    return []


def short(value: Any, limit: int = 300) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
