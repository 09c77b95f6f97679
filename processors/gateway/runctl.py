"""Run control over HTTP: ``POST /workflow/cancel/{request_id}`` and
``GET /workflow/threads/{thread_id}/history`` (a caller sees only its own runs and threads)."""

# no ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime
import contextlib
from typing import Any, Literal

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from graphwire.processors.gateway.agentapi.deps import Caller, GatewayDep
from graphwire.processors.gateway.auth import Principal
from graphwire.processors.gateway.errors import Conflict, NotFound, Unavailable, Unprocessable
from graphwire.topics.errors import DependencyUnavailable
from graphwire.topics.history import read_history


class CancelAccepted(BaseModel):
    """A cancel on its way to the run."""

    request_id: str
    action: Literal["interrupt", "rollback"]
    state: Literal["running", "pending", "sent"] = Field(
        description="running: it stops at its next step boundary; pending: not started, it "
                    "runs nothing when reached; sent: no Redis to check")
    status_url: str


class Checkpoint(BaseModel):
    """One checkpoint of a thread (pass ``checkpoint_id`` in a run to fork from it)."""

    checkpoint_id: str
    parent_checkpoint_id: str | None
    step: int | None
    source: str | None
    created_at: str | None
    request_id: str | None
    ran: list[str]
    next: list[str]


async def cancel_run(
    gw: Any, request_id: str, principal: Principal,
    action: Literal["interrupt", "rollback"], reason: str | None,
) -> CancelAccepted:
    """Send a cancel for the caller's run ``request_id``: 404 for another caller's or an unknown
    run, 409 for a finished one, 503 when Kafka or Redis cannot take it (the API route and the
    inspector's button both use this)."""
    gw.own(request_id, principal)
    audit = await _audit_status(gw, request_id)
    if audit is not None and audit != "accepted":
        raise Conflict(f"{request_id} already finished ({audit}): nothing to cancel")
    pending = audit == "accepted" or gw.client.watching(request_id)
    try:
        outcome = await gw.client.cancel(request_id, action, reason=reason, force=pending)
    except DependencyUnavailable as exc:
        raise Unavailable.retry(str(exc)) from None
    except KafkaError as exc:  # the control message could not be produced
        raise Unavailable.retry(f"Kafka refused the cancel ({type(exc).__name__}); retry",
                                ) from None
    except ValueError as exc:  # the Control model refused it (an over-long id)
        raise Unprocessable(str(exc).splitlines()[0]) from None
    if outcome.state == "finished":
        raise Conflict(f"{request_id} already finished ({outcome.status}): nothing to cancel")
    if outcome.state == "unknown":
        raise NotFound(f"unknown request {request_id!r}")
    return CancelAccepted(request_id=request_id, action=action, state=outcome.state,
                          status_url=f"/workflow/status/{request_id}")


router = APIRouter()


@router.post("/workflow/cancel/{request_id}", status_code=202, response_model=CancelAccepted,
             responses={404: {"description": "no such run of this caller"},
                        409: {"description": "the run already finished"}})
async def cancel(
    request_id: str, principal: Caller, gw: GatewayDep,
    action: Literal["interrupt", "rollback"] = "interrupt",
    reason: str | None = Query(default=None, max_length=200),
) -> CancelAccepted:
    """Cancel a run wherever it is; ``interrupt`` keeps its progress, ``rollback``
    deletes it. Its result becomes ``cancelled``."""
    return await cancel_run(gw, request_id, principal, action, reason)


@router.get("/workflow/threads/{thread_id}/history", response_model=list[Checkpoint],
            responses={404: {"description": "no checkpoint on this caller's thread"}})
async def history(
    thread_id: str, principal: Caller, gw: GatewayDep,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[Checkpoint]:
    """The thread's checkpoints, newest first: id, step, the nodes that ran, next, time."""
    thread = await gw.thread_of(principal, thread_id)
    settings = gw.settings
    try:
        found = await read_history(settings.database_url.get_secret_value(), thread,
                                   schema=settings.checkpoint_schema, limit=limit)
    except DependencyUnavailable as exc:
        raise Unavailable.retry(str(exc)) from None
    if not found:
        raise NotFound(f"no checkpoint on thread {thread_id!r}")
    return [Checkpoint(**c.as_dict()) for c in found]


async def _audit_status(gw: Any, request_id: str) -> str | None:
    """The run's status in the audit table (``accepted``: seen, not finished), if it is there."""
    if gw.db is None:
        return None
    with contextlib.suppress(Exception):
        status = await gw.db.fetchval(
            "SELECT status FROM graphwire_runs WHERE request_id = $1", request_id
        )
        return str(status) if status is not None else None
    return None
