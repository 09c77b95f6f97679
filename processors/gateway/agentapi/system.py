"""``GET /ok`` and ``GET /info``: liveness and what this server is (agent-chat-ui and LangGraph
Studio check ``/info`` before anything else)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter

router = APIRouter(tags=["system"])


@cache  # reading a distribution's metadata scans site-packages: about 0.5 ms each
def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


@router.get("/ok")
async def ok() -> dict[str, bool]:
    """``{"ok": true}`` while the process serves."""
    return {"ok": True}


@router.get("/info")
async def info() -> dict[str, Any]:
    """The server's version, the LangGraph it runs, and the features it serves."""
    return {
        "version": _version("graphwire") or "0",
        "langgraph_py_version": _version("langgraph"),
        "flags": {"assistants": True, "crons": True, "langsmith": False},
        "host": {"kind": "graphwire", "project_id": None, "revision_id": None,
                 "tenant_id": None},
    }
