"""``/runs`` and ``/threads/{thread_id}/runs``: create, stream, wait, join, join_stream, get,
list, cancel, cancel_many, delete and batch.

A run is a request on the requests topic whose ``request_id`` is the run id (a UUIDv7),
produced with the caller's principal header and run slot as ``/workflow`` runs are; its record
is a row in ``agent_runs`` (``runbook``), its stream and wait bodies are ``runflow``'s. A
stateless run (``/runs...``) runs on no thread, or on a new kept one with
``on_completion: keep``. ``Idempotency-Key`` on a create returns the run an earlier create with
the same key (of the same caller) made, for as long as done markers are kept.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import Response
from pydantic import Field, ValidationError

from graphwire.processors.gateway.agentapi import kafkaruns, records
from graphwire.processors.gateway.agentapi.assistants import resolve
from graphwire.processors.gateway.agentapi.body import Body, json_response, parse, read_json
from graphwire.processors.gateway.agentapi.deps import Caller, GatewayDep
from graphwire.processors.gateway.agentapi.errors import Conflict, NotFound, Unprocessable
from graphwire.processors.gateway.agentapi.ids import parse_uuid
from graphwire.processors.gateway.agentapi.runbook import ACTIVE, RunBook, path_of
from graphwire.processors.gateway.agentapi.runflow import RunBody
from graphwire.processors.gateway.agentapi.runmodels import (
    RunCreate,
    describe,
    normalize_modes,
    parse_run_create,
)
from graphwire.processors.gateway.agentapi.state import owned_thread
from graphwire.processors.gateway.agentapi.streams import parse_last_event_id
from graphwire.processors.gateway.auth import Principal
from graphwire.processors.gateway.streamed import Streamed

router = APIRouter(tags=["runs"])

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


class CancelMany(Body):
    """``POST /runs/cancel``: runs of a thread by id, or every run of the caller in a status."""

    thread_id: str | None = None
    run_ids: list[str] | None = None
    status: Literal["pending", "running", "all"] | None = None


class ListQuery(Body):
    """``GET /threads/{id}/runs`` query."""

    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    status: Literal["pending", "running", "error", "success", "timeout",
                    "interrupted"] | None = None


def book(gw: Any) -> RunBook:
    """The gateway's ``RunBook`` (made, and its result listener added, on first use)."""
    found: RunBook | None = getattr(gw, "agent_runs", None)
    if found is None:
        found = RunBook(gw)
        gw.agent_runs = found
    return found


def _flag(request: HttpRequest, name: str) -> bool:
    return request.query_params.get(name) in ("true", "True", "1")


async def _start(gw: Any, caller: Principal, request: HttpRequest, thread_id: str | None,
                 raw: Any, *, wait: bool = False,
                 ) -> tuple[dict[str, Any], RunCreate, dict[str, Any] | None]:
    """Create one run from ``raw`` (or find the one its ``Idempotency-Key`` made): its record,
    its body and its thread's record (None when stateless). ``wait``: the run answers
    ``runs.wait``, with its result alone (``runmodels.published_modes``; the gateway's Kafka
    client keeps none of its events in memory: a later ``join_stream`` reads them back from
    the audit table)."""
    body = parse_run_create(raw)
    runs = book(gw)
    key = request.headers.get("Idempotency-Key")
    try:
        assistant = await resolve(gw, caller, body.assistant_id)
    except NotFound:
        if thread_id is not None and body.if_not_exists != "create":
            raise NotFound("Thread or assistant not found.") from None
        raise
    graph_id, assistant_id = str(assistant["graph_id"]), str(assistant["assistant_id"])
    thread = None
    if thread_id is not None:
        thread = await runs.thread_for(caller, thread_id, body, graph_id, assistant_id)
    earlier = await runs.earlier(caller, key)
    if earlier is not None:
        return earlier, body, thread
    tid = thread["thread_id"] if thread else await runs.stateless_thread(
        caller, body, graph_id, assistant_id)
    run_request, run = await runs.create(
        caller, body, assistant=assistant, thread_id=tid, stateless=thread_id is None,
        base_url=str(request.base_url) if body.webhook else None, wait=wait)
    claimed = await runs.claim(caller, key, run["run_id"])
    if claimed is not None:  # another create with the key won the race
        await runs.undo(run)
        return claimed, body, thread
    try:
        await gw.submit_all([run_request], caller, keep_events=not wait)
    except BaseException:
        await runs.undo(run)
        await runs.release(caller, key)
        raise
    return run, body, thread


def _headers(run: dict[str, Any], stateless: bool, tail: str = "") -> dict[str, str]:
    path = path_of(run, stateless)
    headers = {"Content-Location": path}
    if tail:
        headers["Location"] = path + tail
    return headers


async def _create(gw: Any, caller: Principal, request: HttpRequest,
                  thread_id: str | None) -> Response:
    run, _body, _thread = await _start(gw, caller, request, thread_id, await read_json(request))
    return json_response(run, headers=_headers(run, thread_id is None))


async def _stream(gw: Any, caller: Principal, request: HttpRequest,
                  thread_id: str | None) -> Streamed:
    run, body, _thread = await _start(gw, caller, request, thread_id, await read_json(request))
    flow = RunBody(gw, book(gw), run, cancel_on_disconnect=body.on_disconnect == "cancel")
    return Streamed(flow.sse(body.modes, fresh=True), media_type="text/event-stream",
                             headers={**SSE_HEADERS, **_headers(run, thread_id is None,
                                                                "/stream")})


async def _wait(gw: Any, caller: Principal, request: HttpRequest,
                thread_id: str | None) -> Streamed:
    run, body, thread = await _start(gw, caller, request, thread_id, await read_json(request),
                                     wait=True)
    flow = RunBody(gw, book(gw), run, cancel_on_disconnect=body.on_disconnect == "cancel")
    return Streamed(flow.wait(thread), media_type="application/json",
                             headers=_headers(run, thread_id is None, "/join"))


@router.post("/threads/{thread_id}/runs")
async def create(thread_id: str, request: HttpRequest, gw: GatewayDep, caller: Caller) -> Response:
    """A background run on the thread (``pending``), with ``Content-Location``."""
    return await _create(gw, caller, request, thread_id)


@router.post("/runs")
async def create_stateless(request: HttpRequest, gw: GatewayDep, caller: Caller) -> Response:
    """A background run on no thread."""
    return await _create(gw, caller, request, None)


@router.post("/threads/{thread_id}/runs/stream")
async def stream(thread_id: str, request: HttpRequest, gw: GatewayDep,
                 caller: Caller) -> Streamed:
    """Create a run on the thread and stream it (SSE)."""
    return await _stream(gw, caller, request, thread_id)


@router.post("/runs/stream")
async def stream_stateless(request: HttpRequest, gw: GatewayDep,
                           caller: Caller) -> Streamed:
    """Create a run on no thread and stream it (SSE)."""
    return await _stream(gw, caller, request, None)


@router.post("/threads/{thread_id}/runs/wait")
async def wait(thread_id: str, request: HttpRequest, gw: GatewayDep,
               caller: Caller) -> Streamed:
    """Create a run on the thread and answer its final state (newlines until then)."""
    return await _wait(gw, caller, request, thread_id)


@router.post("/runs/wait")
async def wait_stateless(request: HttpRequest, gw: GatewayDep,
                         caller: Caller) -> Streamed:
    """Create a run on no thread and answer its final state."""
    return await _wait(gw, caller, request, None)


@router.post("/runs/batch")
async def batch(request: HttpRequest, gw: GatewayDep, caller: Caller) -> Response:
    """Create stateless runs, one per body; answers their records in order. Every body is
    checked before any run is created."""
    raw = await read_json(request)
    if not isinstance(raw, list) or not raw:
        raise Unprocessable("the batch body must be a non-empty JSON array of runs")
    if len(raw) > gw.settings.gateway_max_batch:
        raise Unprocessable(f"at most {gw.settings.gateway_max_batch} runs per batch")
    for index, item in enumerate(raw):
        try:
            parse_run_create(item)
        except Unprocessable as exc:
            raise Unprocessable(f"[{index}]: {exc}; no run of this batch was created") from None
    if len(raw) > 1:
        await gw.charge(caller, len(raw) - 1)
    made = [(await _start(gw, caller, request, None, item))[0] for item in raw]
    return json_response(made)


async def _owned_run(gw: Any, caller: Principal, thread_id: str | None,
                     run_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The caller's run (on the thread when given), refreshed, and its thread; 404/422."""
    thread = await owned_thread(gw, caller, thread_id) if thread_id is not None else None
    rid = parse_uuid(run_id, "run")
    run = await records.get_run(gw.agent.records(), rid, gw.agent.owner(caller),
                                thread["thread_id"] if thread else None)
    if run is None and kafkaruns.operator(gw, caller):  # a run produced straight to Kafka
        await kafkaruns.quietly(kafkaruns.adopt_run(gw, rid), None)
        run = await records.get_run(gw.agent.records(), rid, None,
                                    thread["thread_id"] if thread else None)
    if run is None:
        raise NotFound(f"Run {rid} not found")
    if thread is None and run["thread_id"]:
        thread = await records.get_thread(gw.agent.records(), run["thread_id"], None)
    return await book(gw).refresh(run), thread


@router.get("/threads/{thread_id}/runs")
async def list_runs(thread_id: str, request: HttpRequest, gw: GatewayDep,
                    caller: Caller) -> Response:
    """The thread's runs, newest first (``limit``, ``offset``, ``status``)."""
    try:
        query = ListQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise Unprocessable(describe(exc)) from None
    if request.query_params.getlist("select"):
        raise Unprocessable("select is not supported on runs: read the whole run")
    thread = await owned_thread(gw, caller, thread_id)
    if kafkaruns.operator(gw, caller):
        await kafkaruns.quietly(kafkaruns.adopt_runs_of(gw, thread["thread_id"]), None)
    rows = await records.list_runs(gw.agent.records(), thread["thread_id"],
                                   gw.agent.owner(caller), limit=query.limit,
                                   offset=query.offset, status=query.status)
    return json_response([await book(gw).refresh(r) for r in rows])


@router.get("/threads/{thread_id}/runs/{run_id}")
@router.get("/runs/{run_id}")
async def get(run_id: str, gw: GatewayDep, caller: Caller,
              thread_id: str | None = None) -> Response:
    """The run's record."""
    run, _thread = await _owned_run(gw, caller, thread_id, run_id)
    return json_response(run)


@router.get("/threads/{thread_id}/runs/{run_id}/join")
@router.get("/runs/{run_id}/join")
async def join(run_id: str, gw: GatewayDep, caller: Caller,
               thread_id: str | None = None) -> Streamed:
    """Wait for the run's end and answer its final state, as ``wait`` does."""
    run, thread = await _owned_run(gw, caller, thread_id, run_id)
    return Streamed(RunBody(gw, book(gw), run).wait(thread),
                             media_type="application/json")


@router.get("/threads/{thread_id}/runs/{run_id}/stream")
@router.get("/runs/{run_id}/stream")
async def join_stream(run_id: str, request: HttpRequest, gw: GatewayDep, caller: Caller,
                      thread_id: str | None = None) -> Streamed:
    """Stream the run (SSE): after ``Last-Event-ID`` (``-1``: the whole run; absent: from
    now on), in ``stream_mode`` (default: the run's own modes)."""
    after = parse_last_event_id(request.headers.get("Last-Event-ID"))
    asked = [m for m in request.query_params.getlist("stream_mode") if m]
    run, _thread = await _owned_run(gw, caller, thread_id, run_id)
    modes = normalize_modes(asked or (run["kwargs"] or {}).get("stream_mode"))
    if after is None:  # live only: what this gateway already saw is not sent again
        seen = gw.client.seen_events(run["run_id"])
        after = seen[-1].seq if seen else None
    flow = RunBody(gw, book(gw), run, cancel_on_disconnect=_flag(request, "cancel_on_disconnect"))
    return Streamed(flow.sse(modes, after=after), media_type="text/event-stream",
                             headers=SSE_HEADERS)


@router.post("/threads/{thread_id}/runs/{run_id}/cancel")
@router.post("/runs/{run_id}/cancel")
async def cancel(run_id: str, request: HttpRequest, gw: GatewayDep, caller: Caller,
                 thread_id: str | None = None) -> Response:
    """Cancel the run (``action``: ``interrupt`` keeps its progress, ``rollback`` deletes it
    and its record); 202 at once, or (``wait``) its final state once it ended."""
    action = request.query_params.get("action") or "interrupt"
    if action not in ("interrupt", "rollback"):
        raise Unprocessable(f"action {action!r}: use 'interrupt' or 'rollback'")
    run, thread = await _owned_run(gw, caller, thread_id, run_id)
    if run["status"] not in ACTIVE:
        raise Conflict(f"Run {run['run_id']} already ended ({run['status']}): nothing to cancel")
    await book(gw).cancel(run, action)
    if not _flag(request, "wait"):
        return Response(status_code=202)
    return Streamed(RunBody(gw, book(gw), run).wait(thread),
                             media_type="application/json")


@router.post("/runs/cancel", status_code=204)
async def cancel_many(request: HttpRequest, gw: GatewayDep, caller: Caller) -> Response:
    """Cancel the caller's active runs: ``{thread_id, run_ids}``, or ``{status}`` (pending,
    running or all). 204."""
    body = await parse(request, CancelMany)
    action = request.query_params.get("action") or "interrupt"
    if action not in ("interrupt", "rollback"):
        raise Unprocessable(f"action {action!r}: use 'interrupt' or 'rollback'")
    if (body.status is None) == (body.run_ids is None):
        raise Unprocessable("give thread_id and run_ids, or status")
    runs = book(gw)
    if body.status is not None:
        statuses = ACTIVE if body.status == "all" else (body.status,)
        targets = await runs.active_of(gw.agent.owner(caller), statuses)
    else:
        if body.thread_id is None:
            raise Unprocessable("run_ids need their thread_id")
        targets = []
        for run_id in body.run_ids or []:
            run, _thread = await _owned_run(gw, caller, body.thread_id, run_id)
            targets.append(run)
    for run in targets:
        if run["status"] in ACTIVE:
            await runs.cancel(run, action)
    return Response(status_code=204)


@router.delete("/threads/{thread_id}/runs/{run_id}", status_code=204)
@router.delete("/runs/{run_id}", status_code=204)
async def delete(run_id: str, gw: GatewayDep, caller: Caller,
                 thread_id: str | None = None) -> Response:
    """Delete a run's record (204); 409 while it is pending or running (cancel it first)."""
    run, _thread = await _owned_run(gw, caller, thread_id, run_id)
    if run["status"] in ACTIVE:
        raise Conflict(f"Run {run['run_id']} is {run['status']}; cancel it before deleting it")
    await records.delete_run(gw.agent.records(), run["run_id"], None)
    return Response(status_code=204)
