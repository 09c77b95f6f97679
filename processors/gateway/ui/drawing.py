"""A run's graph and timeline as SVG geometry, computed on the server (no layout script in the
browser, no inline styles: the Content-Security-Policy allows neither).

The graph is LangGraph's own structure (``get_graph()``): nodes ranked top-down by their
shortest distance from ``__start__``; edges that go back up (loops) curve around the right.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from typing import Any

from graphwire.processors.gateway.ui.models import Bar, Drawing, DrawnEdge, DrawnNode

START, END = "__start__", "__end__"
NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 140.0, 34.0, 40.0, 56.0, 20.0
TIMELINE_W, BAR_H = 600.0, 22.0


def _ranks(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, list[str]] = {n: [] for n in nodes}
    for source, target in edges:
        out.setdefault(source, []).append(target)
    rank = {START: 0} if START in out else {}
    queue = deque(rank)
    while queue:
        node = queue.popleft()
        for target in out.get(node, []):
            if target not in rank:
                rank[target] = rank[node] + 1
                queue.append(target)
    deepest = max((r for n, r in rank.items() if n != END), default=-1)
    for node in nodes:  # unreachable from __start__: below everything else, above __end__
        rank.setdefault(node, deepest + 1)
    if END in rank:  # __end__ at the bottom, below every node that can reach it
        rank[END] = max((r for n, r in rank.items() if n != END), default=-1) + 1
    rows = {r: i for i, r in enumerate(sorted(set(rank.values())))}  # no empty rows
    rank = {n: rows[r] for n, r in rank.items()}
    return rank


def draw(graph: Any, visited: Sequence[str], finished: bool) -> Drawing:
    """Lay out ``graph.get_graph()``; ``visited`` are the nodes the run ran, in order."""
    drawable = graph.get_graph()
    names = list(drawable.nodes)
    pairs = [(e.source, e.target, bool(e.conditional)) for e in drawable.edges]
    rank = _ranks(names, [(s, t) for s, t, _ in pairs])
    rows: dict[int, list[str]] = {}
    for name in names:
        rows.setdefault(rank[name], []).append(name)
    widest = max((len(r) for r in rows.values()), default=1)
    width = 2 * MARGIN + widest * NODE_W + (widest - 1) * GAP_X + 60  # room for loop curves
    height = 2 * MARGIN + len(rows) * NODE_H + (len(rows) - 1) * GAP_Y
    centre: dict[str, tuple[float, float]] = {}
    for r, row in rows.items():
        span = len(row) * NODE_W + (len(row) - 1) * GAP_X
        left = (width - 60 - span) / 2
        for i, name in enumerate(row):
            centre[name] = (left + i * (NODE_W + GAP_X) + NODE_W / 2,
                            MARGIN + r * (NODE_H + GAP_Y) + NODE_H / 2)
    path = [START, *visited, *([END] if finished else [])]
    taken = set(itertools.pairwise(path))
    order: dict[str, list[int]] = {}
    for i, name in enumerate(visited, start=1):
        order.setdefault(name, []).append(i)
    nodes = [DrawnNode(id=n, x=centre[n][0] - NODE_W / 2, y=centre[n][1] - NODE_H / 2,
                       visited=n in path, order=order.get(n, [])) for n in names]
    edges = [DrawnEdge(source=s, target=t, conditional=c, taken=(s, t) in taken,
                       path=_edge(centre[s], centre[t], rank[t] <= rank[s]))
             for s, t, c in pairs]
    return Drawing(width=width, height=height, nodes=nodes, edges=edges)


def _edge(a: tuple[float, float], b: tuple[float, float], back: bool) -> str:
    (x1, y1), (x2, y2) = a, b
    if a == b:  # a node that loops on itself: a small loop on its right side
        side = x1 + NODE_W / 2
        return (f"M{side:.1f},{y1 - 8:.1f} C{side + 36:.1f},{y1 - 30:.1f} "
                f"{side + 36:.1f},{y1 + 30:.1f} {side:.1f},{y1 + 8:.1f}")
    if back:  # up (a loop): out of the right side, around, into the right side
        out = max(x1, x2) + NODE_W / 2 + 40
        return (f"M{x1 + NODE_W / 2:.1f},{y1:.1f} C{out:.1f},{y1:.1f} {out:.1f},{y2:.1f} "
                f"{x2 + NODE_W / 2:.1f},{y2:.1f}")
    y1, y2 = y1 + NODE_H / 2, y2 - NODE_H / 2
    mid = (y1 + y2) / 2
    return f"M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}"


def no_drawing(note: str) -> Drawing:
    """An empty drawing that says why."""
    return Drawing(width=0, height=0, nodes=[], edges=[], note=note)


def bars(events: Sequence[Any], total_ms: float) -> list[Bar]:
    """One bar per node event: from the event before it to it, scaled to the timeline."""
    scale = TIMELINE_W / total_ms if total_ms > 0 else 0.0
    found = []
    for i, event in enumerate(e for e in events if e.type == "node"):
        start = event.offset_ms - (event.duration_ms or 0.0)
        found.append(Bar(label=event.node or "?", x=start * scale,
                         width=max(2.0, (event.duration_ms or 0.0) * scale),
                         y=i * (BAR_H + 6), duration_ms=event.duration_ms or 0.0))
    return found
