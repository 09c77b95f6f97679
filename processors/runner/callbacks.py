"""LangChain callbacks on every run: LLM calls and tokens per model; with tracing, node spans.

One handler per run (it knows the graph). It only counts: no payloads are kept, so nothing a
graph handles reaches the metrics.

Node durations come from the run's stream (``run_graph``'s ``on_node``, see ``node_timer``),
and a node's log lines get its name from LangChain's own context (``processors.logs``), so
without tracing the handler takes no chain events (``ModelCallbacks``, ``ignore_chain``):
LangChain skips it for the several chain starts and ends of every node, which cost a trivial
graph about 6% of its speed. With tracing, ``RunCallbacks`` takes them for the node spans.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult

from graphwire.processors.logs import bind
from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner import tracing

log = logging.getLogger(__name__)


def _model(serialized: dict[str, Any] | None, metadata: dict[str, Any] | None,
           kwargs: dict[str, Any]) -> str:
    params = kwargs.get("invocation_params") or {}
    for value in (
        (metadata or {}).get("ls_model_name"),
        params.get("model"),
        params.get("model_name"),
        (serialized or {}).get("name"),
    ):
        if isinstance(value, str) and value:
            return value[:100]
    return "unknown"


class ModelCallbacks(BaseCallbackHandler):
    """Feeds ``langgraph_llm_*`` for one run.

    Sync methods with ``run_inline``: LangChain's async manager then calls them directly on
    the loop (no executor hop, no coroutine per event), and its sync manager (a sync node in
    an executor thread) calls them in that thread. An async handler there would cost a
    thread-pool hop plus a fresh event loop per event, with the caller blocked on it. They
    only count and never wait, so calling them on the loop cannot block it.
    """

    run_inline = True
    ignore_chain = True

    def __init__(self, metrics: RunnerMetrics, graph: str) -> None:
        self.metrics = metrics
        self.graph = graph
        self._models: dict[UUID, str] = {}

    def on_chat_model_start(self, serialized: dict[str, Any], messages: Any, *,
                                  run_id: UUID, metadata: dict[str, Any] | None = None,
                                  **kwargs: Any) -> None:
        self._models[run_id] = self.metrics.model_label(_model(serialized, metadata, kwargs))

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *,
                           run_id: UUID, metadata: dict[str, Any] | None = None,
                           **kwargs: Any) -> None:
        self._models[run_id] = self.metrics.model_label(_model(serialized, metadata, kwargs))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        model = self._models.pop(run_id, "unknown")
        self.metrics.llm_requests.labels(model, "success").inc()
        usage: dict[str, int] = {}
        for generations in response.generations:
            for generation in generations:
                found = getattr(getattr(generation, "message", None), "usage_metadata", None)
                if found:
                    for kind in ("input_tokens", "output_tokens"):
                        usage[kind] = usage.get(kind, 0) + int(found.get(kind, 0) or 0)
        if not usage:
            token_usage = (response.llm_output or {}).get("token_usage") or {}
            usage = {"input_tokens": int(token_usage.get("prompt_tokens", 0) or 0),
                     "output_tokens": int(token_usage.get("completion_tokens", 0) or 0)}
        for kind, count in usage.items():
            if count:
                self.metrics.llm_tokens.labels(model, kind.removesuffix("_tokens")).inc(count)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.metrics.llm_requests.labels(self._models.pop(run_id, "unknown"), "error").inc()



class RunCallbacks(ModelCallbacks):
    """``ModelCallbacks`` and a span per node, timed and logged as ``node_timer`` does."""

    ignore_chain = False

    def __init__(self, metrics: RunnerMetrics, graph: str) -> None:
        super().__init__(metrics, graph)
        self._nodes: dict[UUID, tuple[str, float, Any]] = {}

    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *,
                             run_id: UUID, metadata: dict[str, Any] | None = None,
                             **kwargs: Any) -> None:
        node = (metadata or {}).get("langgraph_node")
        if node is not None and kwargs.get("name") == node:  # the node itself, not its parts
            span = tracing.start_node_span(self.graph, str(node))
            self._nodes[run_id] = (str(node), time.perf_counter(), span)
            bind(node=str(node))  # this node's task: its log lines carry the node

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._node_done(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID,
                             **kwargs: Any) -> None:
        interrupted = type(error).__name__ in ("GraphInterrupt", "NodeInterrupt")
        self._node_done(run_id, None if interrupted else error)

    def _node_done(self, run_id: UUID, error: BaseException | None = None) -> None:
        found = self._nodes.pop(run_id, None)
        if found is not None:
            node, started, span = found
            tracing.end_span(span, error)
            seconds = time.perf_counter() - started
            self.metrics.node_finished(self.graph, node, seconds)
            log.debug("node %s took %.1f ms", node, seconds * 1000)


def run_callbacks(metrics: RunnerMetrics, graph: str) -> ModelCallbacks:
    """The run's handler: with node spans when tracing is on."""
    return RunCallbacks(metrics, graph) if tracing.enabled() else ModelCallbacks(metrics, graph)


def node_timer(metrics: RunnerMetrics, graph: str) -> Callable[[str, float], None] | None:
    """``run_graph``'s ``on_node`` for the run, or None when ``RunCallbacks`` times them."""
    if tracing.enabled():
        return None
    debug = log.isEnabledFor(logging.DEBUG)

    def finished(node: str, seconds: float) -> None:
        metrics.node_finished(graph, node, seconds)
        if debug:
            log.debug("node %s took %.1f ms", node, seconds * 1000, extra={"node": node})

    return finished
