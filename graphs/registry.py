"""The registry that maps graph names to compiled LangGraph graphs.

Sources, later ones overriding earlier ones: the built-in demo graphs (only when asked:
``graphwire dev``, ``--demo-graphs`` or ``GRAPHWIRE_DEMO_GRAPHS``), a ``langgraph.json`` file (its
``graphs`` section, as the LangGraph CLI reads it, so an existing project runs unchanged) and
``GRAPHWIRE_GRAPHS="name=package.module:attr,..."``. An attribute may be a compiled graph, a
``StateGraph`` (compiled here) or a factory returning either.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel

from graphwire.graphs.builtin import build_approval, build_echo, build_pipeline, build_slow
from graphwire.graphs.chat import build_chat

BUILTINS: dict[str, Callable[[], Pregel[Any, Any, Any, Any]]] = {
    "echo": build_echo,
    "pipeline": build_pipeline,
    "slow": build_slow,
    "chat": build_chat,
    "approval": build_approval,
}


@dataclass(frozen=True, slots=True)
class GraphOptions:
    """Per-graph defaults a graph declares with
    ``graph.with_config(metadata={"graphwire": {...}})``; requests may override them."""

    max_attempts: int | None = None
    """Runs of a request whose graph fails with a retriable error (1 = no retry)."""
    cache_ttl_s: float | None = None
    """Cache results of identical requests for this long (None: only when a request asks)."""
    durability: str | None = None
    """``exit``, ``async`` or ``sync``: when checkpoints are written."""
    version: str | None = None
    """Part of the cache key; default: a hash of the graph's structure."""
    sync_nodes: str | None = None
    """``inline``: plain sync nodes run on the worker's event loop, not in a thread (for quick,
    never-blocking nodes; about 1.8x on a 3-node graph of string functions); ``thread``
    (LangGraph's way, the default) otherwise. ``GRAPHWIRE_SYNC_NODES`` can force either."""

    @classmethod
    def of(cls, graph: Pregel[Any, Any, Any, Any]) -> GraphOptions:
        """The options declared in the graph's config metadata (none: all defaults)."""
        metadata = (graph.config or {}).get("metadata") or {}
        declared = metadata.get("graphwire") or {}
        known = {k: v for k, v in declared.items() if k in cls.__slots__}
        return cls(**known)


class GraphLoadError(Exception):
    """A graph source could not be loaded; the message says which and how to fix it."""


class UnknownGraphName(KeyError):
    """No graph of that name is registered."""


def _compile(obj: Any, origin: str) -> Pregel[Any, Any, Any, Any]:
    if isinstance(obj, Pregel):
        return obj
    if isinstance(obj, StateGraph):
        return obj.compile()
    if callable(obj) and not isinstance(obj, type):
        params = inspect.signature(obj).parameters
        built = obj({}) if params else obj()
        if inspect.isawaitable(built):
            raise GraphLoadError(
                f"{origin}: async graph factories are not supported; return "
                "the graph from a plain function"
            )
        if isinstance(built, Pregel | StateGraph):
            return _compile(built, origin)
    raise GraphLoadError(
        f"{origin} is a {type(obj).__name__}, not a compiled graph, StateGraph or a factory "
        "returning one"
    )


def _import_attr(target: str, base_dir: Path | None = None) -> Any:
    """Resolve ``package.module:attr`` or ``./path/file.py:attr`` (relative to ``base_dir``)."""
    module_ref, sep, attr = target.partition(":")
    if not sep or not module_ref or not attr:
        raise GraphLoadError(f"{target!r} must look like 'package.module:attr' or './file.py:attr'")
    if module_ref.endswith(".py") or "/" in module_ref:
        path = ((base_dir or Path.cwd()) / module_ref).resolve()
        if not path.is_file():
            raise GraphLoadError(f"graph file {path} does not exist (from {target!r})")
        name = f"graphwire_user_{path.stem}_{abs(hash(path)) & 0xFFFFFF:x}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise GraphLoadError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent))  # sibling imports, as the LangGraph CLI allows
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise GraphLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(module_ref)
        except ImportError as exc:
            raise GraphLoadError(f"cannot import module {module_ref!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise GraphLoadError(f"module {module_ref!r} has no attribute {attr!r}") from None


def parse_graph_specs(specs: str) -> list[tuple[str, str]]:
    """``"a=pkg.mod:g, b=./f.py:h"`` -> ``[("a", "pkg.mod:g"), ("b", "./f.py:h")]``."""
    pairs = []
    for item in filter(None, (part.strip() for part in specs.split(","))):
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise GraphLoadError(
                f"GRAPHWIRE_GRAPHS entry {item!r} must look like 'name=package.module:attr'"
            )
        pairs.append((name.strip(), target.strip()))
    return pairs


class GraphRegistry:
    """Named compiled graphs; ``get`` is a dict lookup on the hot path."""

    def __init__(self) -> None:
        self._graphs: dict[str, Pregel[Any, Any, Any, Any]] = {}

    def register(self, name: str, graph: Any) -> Pregel[Any, Any, Any, Any]:
        """Add or replace ``name``; compiles a StateGraph and calls a factory."""
        compiled = _compile(graph, f"graph {name!r}")
        self._graphs[name] = compiled
        return compiled

    def get(self, name: str) -> Pregel[Any, Any, Any, Any]:
        """The compiled graph called ``name``; raises ``UnknownGraphName``."""
        try:
            return self._graphs[name]
        except KeyError:
            raise UnknownGraphName(name) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._graphs)

    def nodes(self, name: str) -> list[str]:
        """The node names of a graph, in the order it declares them (no START/END)."""
        drawable = self.get(name).get_graph()
        return [n for n in drawable.nodes if n not in ("__start__", "__end__")]

    def load_builtins(self, names: Iterable[str] | None = None) -> None:
        """Register the built-in deterministic graphs."""
        for name in names or BUILTINS:
            self._graphs[name] = BUILTINS[name]()

    def load_specs(self, specs: str) -> None:
        """Register each ``name=package.module:attr`` of a GRAPHWIRE_GRAPHS string."""
        for name, target in parse_graph_specs(specs):
            self.register(name, _import_attr(target))

    def load_langgraph_json(self, path: str | Path) -> None:
        """Register the ``graphs`` section of a LangGraph CLI ``langgraph.json``."""
        file = Path(path)
        try:
            config = orjson.loads(file.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise GraphLoadError(f"cannot read {file}: {exc}") from exc
        graphs = config.get("graphs") if isinstance(config, dict) else None
        if not isinstance(graphs, dict) or not graphs:
            raise GraphLoadError(f"{file} has no 'graphs' object mapping names to './file.py:attr'")
        for name, target in graphs.items():
            if isinstance(target, dict):  # {"path": "./a.py:g", "description": ...}
                target = target.get("path", "")
            self.register(name, _import_attr(str(target), base_dir=file.parent.resolve()))

    @classmethod
    def from_sources(
        cls,
        *,
        builtins: bool = True,
        specs: str = "",
        langgraph_json: str | Path | None = None,
    ) -> GraphRegistry:
        """A registry loaded from the built-in demo graphs (``builtins``; the CLI passes
        ``Settings.demo_graphs``, off by default), a langgraph.json, and GRAPHWIRE_GRAPHS."""
        registry = cls()
        if builtins:
            registry.load_builtins()
        if langgraph_json:
            registry.load_langgraph_json(langgraph_json)
        if specs:
            registry.load_specs(specs)
        return registry
