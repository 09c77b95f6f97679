"""The LangGraph Agent Server API, served by the gateway next to ``/workflow``.

Existing LangGraph clients (``langgraph-sdk``, ``@langchain/langgraph-sdk``, ``RemoteGraph``,
``useStream``, agent-chat-ui) talk to graphwire unchanged: assistants are the registered
graphs, threads are graphwire threads, a run is a request on the requests topic whose
``request_id`` is the run id, its stream is read from the events topic, its state from the
checkpointer and its record from PostgreSQL. One router per resource; ``routers`` lists them
and ``create_app`` mounts their routes.
"""

from __future__ import annotations

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    """Every Agent Server route, one router per resource, in matching order: the run routes
    (the hot ones) near the front, and crons before runs (``/runs/crons`` is not a run id)."""
    from graphwire.processors.gateway.agentapi import (
        assistants,
        crons,
        runs,
        state,
        store,
        system,
        threads,
    )

    return [system.router, crons.router, runs.router, threads.router, state.router,
            assistants.router, store.router]

