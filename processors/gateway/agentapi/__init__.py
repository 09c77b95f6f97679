"""The LangGraph Agent Server API, served by the gateway next to ``/workflow``.

Existing LangGraph clients (``langgraph-sdk``, ``@langchain/langgraph-sdk``, ``RemoteGraph``,
``useStream``, agent-chat-ui) talk to graphwire unchanged: assistants are the registered
graphs, threads are graphwire threads, a run is a request on the requests topic whose
``request_id`` is the run id, its stream is read from the events topic, its state from the
checkpointer and its record from PostgreSQL. One router per resource; ``build_router`` joins
them and ``create_app`` mounts it.
"""

from __future__ import annotations

from fastapi import APIRouter


def build_router() -> APIRouter:
    """Every Agent Server route, one sub-router per resource."""
    router = APIRouter()
    from graphwire.processors.gateway.agentapi import (
        assistants,
        crons,
        runs,
        state,
        store,
        system,
        threads,
    )

    router.include_router(system.router)
    router.include_router(assistants.router)
    router.include_router(threads.router)
    router.include_router(state.router)
    router.include_router(crons.router)  # before runs: /runs/crons is not a run id
    router.include_router(runs.router)
    router.include_router(store.router)
    return router
