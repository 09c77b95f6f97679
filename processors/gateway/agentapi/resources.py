"""What the Agent Server routes need beyond the gateway's own: the graph registry, the
checkpointer (thread state), the graphs' store and the records tables. One ``AgentResources``
per gateway (``Gateway.agent``), started and stopped with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from graphwire.processors.gateway.agentapi import assistantrecords, records
from graphwire.processors.gateway.agentapi.errors import NotFound, Unavailable

if TYPE_CHECKING:
    from graphwire.graphs.registry import GraphRegistry
    from graphwire.processors.gateway.auth import Principal
    from graphwire.processors.runner.checkpoints import CheckpointStore
    from graphwire.processors.runner.pgstore import GroupCommitStore
    from graphwire.processors.settings import Settings

log = logging.getLogger(__name__)

CHECKPOINT_POOL_SIZE = 4
"""Connections the gateway holds for reading and updating thread state."""


class AgentResources:
    """The registry (loaded on first use), the checkpoint store and the records pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db: Any = None
        """The gateway's PostgreSQL pool (``BoundedPool``) with the records tables, or None."""
        self.checkpoints: CheckpointStore | None = None
        self._registry: GraphRegistry | None = None
        self._registry_error: str | None = None
        self._defaults_stored = False
        self.default_assistants: dict[str, dict[str, Any]] = {}
        """Default assistants by id, as read once (``assistants.resolve``)."""
        self._lock = asyncio.Lock()

    async def start(self, db: Any) -> None:
        """Create the records tables on ``db`` and open the checkpointer; either may fail (the
        routes that need it answer 503, the rest of the gateway serves)."""
        from graphwire.processors.runner.checkpoints import CheckpointStore

        if db is not None:
            try:
                await records.setup(db, self.settings.audit_schema)
                self.db = db
            except Exception as exc:
                log.warning("Agent Server records unavailable (%s: %s)", type(exc).__name__, exc)
        if self.settings.checkpoints:
            key = self.settings.checkpoint_encryption_key
            store = CheckpointStore(
                self.settings.database_url.get_secret_value(),
                schema=self.settings.checkpoint_schema, pool_size=CHECKPOINT_POOL_SIZE,
                encryption_key=key.get_secret_value() if key else None,
                store=self.settings.store)
            try:
                await store.start()
                if store.store is not None:  # the runners sweep expired items, not the gateway
                    await store.store.stop_ttl_sweeper()
                self.checkpoints = store
            except Exception as exc:
                log.warning("thread state unavailable: %s", exc)

    async def stop(self) -> None:
        """Close the checkpointer (the records pool is the gateway's). Idempotent."""
        if self.checkpoints is not None:
            store, self.checkpoints = self.checkpoints, None
            await store.stop()

    def records(self) -> Any:
        """The records pool, or 503 naming what to fix."""
        if self.db is None:
            raise Unavailable("the Agent Server records need PostgreSQL: check "
                              "GRAPHWIRE_DATABASE_URL (the gateway could not reach it)")
        return self.db

    def saver(self) -> Any:
        """The checkpointer (``GroupCommitSaver``), or 503 naming what to fix."""
        if self.checkpoints is None or self.checkpoints.saver is None:
            raise Unavailable("thread state needs the checkpoints: GRAPHWIRE_CHECKPOINTS=true and "
                              "a reachable GRAPHWIRE_DATABASE_URL")
        return self.checkpoints.saver

    def store(self) -> GroupCommitStore:
        """The graphs' long-term memory store (``runtime.store``), or 503 naming what to fix."""
        if self.checkpoints is None or self.checkpoints.store is None:
            raise Unavailable("the store needs the checkpoints and the store: "
                              "GRAPHWIRE_CHECKPOINTS=true, GRAPHWIRE_STORE=true and a reachable "
                              "GRAPHWIRE_DATABASE_URL")
        return self.checkpoints.store

    def registry(self) -> GraphRegistry:
        """The graphs this gateway knows (the runners' settings), loaded once; 503 if they do
        not load."""
        if self._registry is None and self._registry_error is None:
            from graphwire.graphs.registry import GraphRegistry

            try:
                self._registry = GraphRegistry.from_sources(
                    builtins=self.settings.builtin_graphs, specs=self.settings.graphs,
                    langgraph_json=self.settings.langgraph_json)
            except Exception as exc:  # a user's graph module that raises: no 500 per request
                self._registry_error = f"the gateway could not load the graphs ({exc})"
        if self._registry is None:
            raise Unavailable(self._registry_error or "no graphs")
        return self._registry

    def graph(self, graph_id: str) -> Any:
        """The compiled graph ``graph_id``; 404 when it is not registered."""
        registry = self.registry()
        if graph_id not in registry.names():
            raise NotFound(f"Graph {graph_id!r} not found")
        return registry.get(graph_id)

    def durable(self, graph_id: str) -> Any:
        """The graph on the checkpointer, to read and update thread state."""
        return self.graph(graph_id).copy(update={"checkpointer": self.saver()})

    async def defaults_stored(self) -> Any:
        """The records pool, once every registered graph's default assistant is in it."""
        db = self.records()
        if not self._defaults_stored:
            async with self._lock:
                if not self._defaults_stored:
                    await assistantrecords.ensure_default_assistants(db, self.registry().names())
                    self._defaults_stored = True
        return db

    def owner(self, principal: Principal) -> str | None:
        """The owner a caller's rows are filtered on: its scope, or None (every row) for the
        operator (``Principal.operator``; everyone while ``GRAPHWIRE_GATEWAY_AUTH=false``)."""
        if getattr(principal, "operator", False) or not self.settings.gateway_auth:
            return None
        return principal.scope
