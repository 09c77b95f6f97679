"""The ``/workflow`` routes: submit a run (``execute``, ``invoke``, ``stream``, ``batch``), read
where it is (``status``) and stream its events again (``stream/{request_id}``).

A caller reads and streams only its own runs; an operator (``Principal.operator``) any run,
also those produced to Kafka directly.
(No ``from __future__ import annotations``: FastAPI reads the routes' local ``Annotated``.)
"""

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response

from graphwire.processors.gateway.agentapi.deps import Caller, GatewayDep
from graphwire.processors.gateway.auth import ID_BUDGET, Principal
from graphwire.processors.gateway.errors import ApiError, Unprocessable
from graphwire.processors.gateway.models import (
    Accepted,
    BatchRequest,
    BatchResponse,
    RunStatus,
    WorkflowRequest,
)
from graphwire.processors.gateway.sse import event_stream
from graphwire.processors.gateway.streamed import Streamed
from graphwire.topics.models import Result

router = APIRouter()

IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=ID_BUDGET)]
Wait = Annotated[float | None, Query(gt=0, le=600, description="seconds (default setting)")]


@router.post("/workflow/execute", status_code=202, response_model=Accepted | Result,
             responses={200: {"model": Result},
                        202: {"model": Accepted,
                              "description": "accepted (with wait: no result in time yet)"}})
async def execute(
    body: WorkflowRequest, caller: Caller, gw: GatewayDep,
    idempotency_key: IdemKey = None,
    wait: Annotated[bool, Query(description="wait for the result")] = False,
    timeout: Wait = None,
) -> Accepted | Response:
    """Submit a run; 202 with its id, or (``wait=true``) 200 with the result (202 when it
    did not come within ``timeout``: poll ``status_url``)."""
    rid = await gw.submit(body, caller, idempotency_key)
    if wait:
        answer: Response = await gw.wait(rid, timeout or gw.settings.gateway_wait_timeout_s)
        return answer
    return Accepted.of(rid)


@router.post("/workflow/invoke", response_model=Result)
async def invoke(body: WorkflowRequest, caller: Caller, gw: GatewayDep,
                 idempotency_key: IdemKey = None, timeout: Wait = None) -> Response:
    """Submit a run and wait for its result."""
    rid = await gw.submit(body, caller, idempotency_key)
    answer: Response = await gw.wait(rid, timeout or gw.settings.gateway_wait_timeout_s)
    return answer


@router.get("/workflow/status/{request_id}", response_model=RunStatus)
async def status(request_id: str, caller: Caller, gw: GatewayDep) -> RunStatus:
    """Where a run is: Redis (live) first, then the audit table."""
    gw.own(request_id, caller)
    found: RunStatus = await gw.status(request_id)
    return found


@router.post("/workflow/stream", response_class=Streamed,
             responses={200: {"content": {"text/event-stream": {}}}})
async def stream(body: WorkflowRequest, caller: Caller, gw: GatewayDep,
                 idempotency_key: IdemKey = None) -> Streamed:
    """Submit a run and stream its events (``id:`` = seq), then its result."""
    slot = await gw.caps.take_stream(caller)
    try:
        rid = await gw.submit(body, caller, idempotency_key, keep_events=True)
    except BaseException:
        await gw.caps.release_stream(caller, slot)
        raise
    return _sse(gw, rid, -1, caller, slot)


@router.get("/workflow/stream/{request_id}", response_class=Streamed,
            responses={200: {"content": {"text/event-stream": {}}}})
async def restream(request_id: str, caller: Caller, gw: GatewayDep,
                   last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                   ) -> Streamed:
    """Stream a run's events from after ``Last-Event-ID`` (reconnects miss nothing).
    404 when neither this gateway, Redis nor the audit table knows the request."""
    gw.own(request_id, caller)
    valid = last_event_id and re.fullmatch(r"[0-9]{1,16}", last_event_id)  # seq < 2**53
    after = int(last_event_id) if valid and last_event_id else -1
    if not gw.client.watching(request_id):
        await gw.status(request_id)  # raises 404 for an unknown request
    return _sse(gw, request_id, after, caller, await gw.caps.take_stream(caller))


@router.post("/workflow/batch", response_model=BatchResponse)
async def batch(body: BatchRequest, caller: Caller, gw: GatewayDep,
                timeout: Wait = None) -> BatchResponse:
    """Submit many runs; with ``wait`` gather their results."""
    settings = gw.settings
    if len(body.requests) > settings.gateway_max_batch:
        raise Unprocessable(f"at most {settings.gateway_max_batch} requests per batch")
    # all or nothing: check every run (403, 422) before charging for or submitting any
    checked = []
    for index, item in enumerate(body.requests):
        try:
            checked.append(await gw.prepare(item, caller, None))
        except ApiError as exc:
            raise type(exc)(f"requests[{index}]: {exc}; "
                            "nothing in this batch was submitted") from None
    if len(body.requests) > 1:  # each run counts against the rate limit
        await gw.charge(caller, len(body.requests) - 1)
    ids = await gw.submit_all(checked, caller)
    if not body.wait:
        return BatchResponse(request_ids=ids)
    limit = timeout or settings.gateway_wait_timeout_s
    outcomes = await asyncio.gather(*(gw.client.result(r, timeout=limit) for r in ids),
                                    return_exceptions=True)
    results = [o if isinstance(o, Result) else None for o in outcomes]
    return BatchResponse(request_ids=ids, results=results)


def _sse(gw: Any, request_id: str, after: int, caller: Principal,
         slot: str) -> Streamed:
    """The run's SSE stream, holding the caller's stream ``slot`` while it is open."""
    gw.client.watch(request_id, events=True)
    body = event_stream(gw.client, gw.db, request_id, after, gw.settings.gateway_wait_timeout_s)
    return Streamed(
        gw.caps.guard(caller, slot, body),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
