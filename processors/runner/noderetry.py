"""Which node's own ``RetryPolicy`` already retried a failure (then the runner does not).

The rule: a node's own ``RetryPolicy`` (``add_node(..., retry_policy=...)``, or the default of
``set_node_defaults(retry_policy=...)``, or the graph's ``retry_policy``) is the retry for that
node's errors; the runner's run-level retries (``max_attempts``) are for the other retriable
failures. Without it a node with ``RetryPolicy(max_attempts=3)`` that keeps failing was called
3 x 3 times.

How the failing node is known: LangGraph 1.2 adds a note to the exception a task raised, at
each level it passes (``During task with name 'inner' and id '...'``, innermost first: a node of
a subgraph, then the subgraph's node in its parent). Read outermost first, each name is a node of
the graph at that level (``graph.nodes``); a node that is a subgraph (``PregelNode.subgraphs``)
leads to the next level. If a node on that path (or its graph) has a retry policy, LangGraph
applied it. A name that is no node there (a functional-API ``@task``, whose policy the graph does
not show) ends the search: the runner retries as before.
"""

from __future__ import annotations

import re
from typing import Any

_TASK_NOTE = re.compile(r"^During task with name '(?P<name>.*)' and id '[^']*'$")


def _task_names(exc: BaseException) -> list[str]:
    """The task names in ``exc``'s notes, outermost first."""
    notes = getattr(exc, "__notes__", None) or []
    names = [m["name"] for note in notes if isinstance(note, str)
             and (m := _TASK_NOTE.match(note))]
    return names[::-1]


def retried_by_node(graph: Any, exc: BaseException | None) -> str | None:
    """The node (``"child/inner"`` inside a subgraph) whose own retry policy LangGraph applied
    to ``exc`` before it ended the run; None when no node on its path has one."""
    if exc is None:
        return None
    levels, path = [graph], []
    for name in _task_names(exc):
        found = [(g, g.nodes[name]) for g in levels if name in getattr(g, "nodes", {})]
        if not found:
            return None
        level, node = found[0]
        path.append(name)
        if node.retry_policy or getattr(level, "retry_policy", None):
            return "/".join(path)
        levels = list(node.subgraphs)
    return None
