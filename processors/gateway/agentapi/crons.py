"""``/runs/crons`` and ``/threads/{thread_id}/runs/crons``: crons on graphwire's scheduler.

A cron is two rows: graphwire's own cron (``graphwire_crons``, named
``<caller scope>.agent-<cron_id>`` and owned by the caller's scope, so the caller's ``/crons``
lists it too) which ``graphwire scheduler`` fires, and its Agent Server record
(``agent_crons``: id, assistant, thread, payload, metadata, user). The body is a run-create
body (``runmodels``: the same fields, the same 422s) plus ``schedule``, ``timezone``,
``end_time``, ``enabled`` and ``on_run_completed``; it is mapped onto the request every firing
carries (``CronSpec.template``) once, when the cron is created or patched.

Each firing is an Agent Server run: its request_id is a UUIDv7 of its scheduled time
(``firing_uuid``: the same firing always gets the same id) and the scheduler records it in
``agent_runs`` (``pending``, metadata ``cron_id`` and ``scheduled_at``) as it schedules it, so
``runs.list`` of the cron's thread and ``runs.get`` find it; its status is brought up to date
from Redis when read, as for every run.

A stateless cron's firings run on no thread (``on_run_completed: delete``, the default: nothing
to delete); ``keep`` is refused. A caller sees and changes only its own crons; an operator,
every cron made here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from graphwire.processors.gateway.agentapi import records
from graphwire.processors.gateway.agentapi.assistants import resolve
from graphwire.processors.gateway.agentapi.body import Body, json_response, paged, parse, read_json
from graphwire.processors.gateway.agentapi.deps import Caller, GatewayDep
from graphwire.processors.gateway.agentapi.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
    Unprocessable,
)
from graphwire.processors.gateway.agentapi.ids import iso, new_id, new_run_id, parse_uuid
from graphwire.processors.gateway.agentapi.runmodels import parse_run_create, to_request
from graphwire.processors.gateway.agentapi.state import owned_thread
from graphwire.processors.gateway.agentapi.store import identity
from graphwire.processors.gateway.auth import Principal
from graphwire.topics.codec import dumps, loads
from graphwire.topics.crons import (
    Cron,
    CronError,
    CronExists,
    CronStore,
    TooManyCrons,
    UnknownCron,
    check_min_interval,
    cron_spec,
)

router = APIRouter(tags=["crons"])

CRON_FIELDS = ("schedule", "timezone", "end_time", "enabled", "on_run_completed")
"""The body's cron fields; the rest is the run every firing makes."""
NOT_FOR_CRONS = {
    "command": "a cron starts runs; it cannot resume one",
    "checkpoint_id": "every firing runs from the thread's latest state",
    "checkpoint": "every firing runs from the thread's latest state",
    "if_not_exists": "a thread cron needs its thread to exist when it is created",
    "on_completion": "use on_run_completed",
    "on_disconnect": "a firing has no client to disconnect",
    "after_seconds": "the schedule says when a firing runs",
}
"""Run-create fields a cron's firings cannot have, with why."""
SORTS = ("cron_id", "assistant_id", "thread_id", "next_run_date", "end_time", "created_at",
         "updated_at")
_SORT_COLUMN = {"next_run_date": "g.next_at"}
_SELECT = (
    "SELECT a.cron_id, a.assistant_id, a.thread_id, a.on_run_completed, a.end_time, "
    "g.schedule, g.timezone, a.created_at, a.updated_at, a.payload, a.user_id, "
    "g.next_at AS next_run_date, a.metadata, NOT g.paused AS enabled, g.name "
    "FROM agent_crons a JOIN graphwire_crons g ON g.name = a.name"
)


class CronSearch(Body):
    """``POST /runs/crons/search`` and ``/count``."""

    assistant_id: str | None = None
    thread_id: str | None = None
    enabled: bool | None = None
    metadata: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    sort_by: Literal["cron_id", "assistant_id", "thread_id", "next_run_date", "end_time",
                     "created_at", "updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None


def _name(scope: str, cron_id: str) -> str:
    """The graphwire cron of an Agent Server cron."""
    return f"{scope}.agent-{cron_id}"


def _shape(row: Any) -> dict[str, Any]:
    """A joined row as the API's ``Cron``."""
    out: dict[str, Any] = {}
    for key, value in dict(row).items():
        if key == "name":
            continue
        if key.endswith("_id") and key != "user_id" and value is not None:
            value = str(value)
        elif isinstance(value, datetime):
            value = iso(value)
        elif key in ("payload", "metadata") and isinstance(value, str | bytes):
            value = loads(value)
        out[key] = value
    return out


def _end_time(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise Unprocessable(f"end_time: {value!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _db(gw: Any) -> Any:
    return gw.agent.records()


async def _call(operation: Any) -> Any:
    """Await a ``CronStore`` operation; its errors as the API's."""
    try:
        return await operation
    except (CronExists, TooManyCrons) as exc:
        raise Conflict(str(exc)) from None
    except UnknownCron as exc:
        raise NotFound(str(exc)) from None
    except CronError as exc:
        raise Unprocessable(str(exc)) from None
    except OSError:
        raise Unavailable.retry("PostgreSQL does not answer; retry in a few seconds") from None


async def _spec(gw: Any, caller: Principal, request: Request, payload: dict[str, Any], *,
                name: str, thread_id: str | None) -> tuple[Any, dict[str, Any], str | None]:
    """The graphwire cron of ``payload`` (checked as a run body), its assistant, and its
    ``on_run_completed``. 422 for what a firing cannot carry."""
    for field, why in NOT_FOR_CRONS.items():
        if payload.get(field) is not None:
            raise Unprocessable(f"{field} is not supported on a cron: {why}; leave it out")
    schedule = payload.get("schedule")
    if not isinstance(schedule, str) or not schedule.strip():
        raise Unprocessable("schedule: required, a cron schedule like '*/5 * * * *'")
    completed = payload.get("on_run_completed")
    if thread_id is not None and completed is not None:
        raise Unprocessable("on_run_completed is for stateless crons; a thread cron's runs "
                            "stay on its thread")
    if completed not in (None, "delete", "keep"):
        raise Unprocessable("on_run_completed: use 'delete' or 'keep'")
    if completed == "keep":
        raise Unprocessable("on_run_completed 'keep' is not supported: a stateless cron's "
                            "firings run on no thread, so there is none to keep; create the "
                            "cron on a thread (POST /threads/{thread_id}/runs/crons)")
    run_body = {k: v for k, v in payload.items() if k not in CRON_FIELDS}
    if run_body.get("input") is None and thread_id is None:
        run_body["input"] = {}  # a stateless firing has no state to continue: empty input
    run = parse_run_create(run_body)
    assistant = await resolve(gw, caller, run.assistant_id)
    graph = str(assistant["graph_id"])
    if not caller.may_run(graph):
        raise Forbidden(f"{caller.name} may not run {graph!r}")
    fields = to_request(run, run_id=new_run_id(), thread_id=thread_id, graph=graph,
                        assistant=assistant, base_url=str(request.base_url))
    template = {k: v for k, v in fields.items()
                if k not in ("request_id", "graph", "thread_id", "metadata", "input")}
    inputs = fields.get("input")
    if not isinstance(inputs, dict):
        template["input"] = inputs
    enabled = payload.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise Unprocessable("enabled: a boolean")
    timezone = payload.get("timezone") or "UTC"
    try:
        spec = cron_spec(
            name=name, graph=graph, schedule=schedule, timezone=timezone,
            input=inputs if isinstance(inputs, dict) else {}, thread_id=thread_id,
            metadata={**fields.get("metadata", {}), "principal": {
                **caller.as_metadata(), "rate_per_minute": caller.rate_per_minute}},
            template=template, run_ids="uuid7", end_at=_end_time(payload.get("end_time")))
        check_min_interval(spec.schedule, spec.timezone, gw.settings.gateway_cron_min_interval_s)
    except CronError as exc:
        raise Unprocessable(str(exc).replace(name, "the cron")) from None
    return spec, assistant, "delete" if thread_id is None else None


async def _create(gw: Any, caller: Principal, request: Request,
                  thread_id: str | None) -> Response:
    payload = await read_json(request)
    if not isinstance(payload, dict):
        raise Unprocessable("the cron body must be a JSON object")
    if thread_id is not None:
        thread_id = str((await owned_thread(gw, caller, thread_id))["thread_id"])
    cron_id = new_id()
    scope = caller.scope
    spec, assistant, completed = await _spec(gw, caller, request, payload,
                                             name=_name(scope, cron_id), thread_id=thread_id)
    db = _db(gw)
    async with db.acquire() as conn, conn.transaction():
        await _call(CronStore(conn).add(spec, owner=scope,
                                        max_per_owner=gw.settings.gateway_max_crons))
        if payload.get("enabled") is False:
            await CronStore(conn).pause(spec.name, owner=scope)
        await conn.execute(
            "INSERT INTO agent_crons (cron_id, name, owner, assistant_id, thread_id, user_id, "
            "payload, metadata, on_run_completed, end_time) VALUES ($1, $2, $3, $4, $5, $6, "
            "$7::jsonb, $8::jsonb, $9, $10)", cron_id, spec.name, scope,
            assistant["assistant_id"], thread_id, identity(caller), dumps(payload).decode(),
            dumps(payload.get("metadata") or {}).decode(), completed, spec.end_at)
    if thread_id is not None:  # as a run does: its firings' graph is the thread's
        await records.set_thread_state(db, thread_id, metadata={
            "graph_id": spec.graph, "assistant_id": str(assistant["assistant_id"])})
    return json_response(await _get(gw, caller, cron_id))


async def _row(gw: Any, caller: Principal, cron_id: str) -> Any:
    """The caller's cron (any for the operator), joined; 404/422."""
    cid = parse_uuid(cron_id, "cron")
    row = await _db(gw).fetchrow(
        _SELECT + " WHERE a.cron_id = $1 AND ($2::text IS NULL OR a.owner = $2)", cid,
        gw.agent.owner(caller))
    if row is None:
        raise NotFound(f"Cron {cid} not found")
    return row


async def _get(gw: Any, caller: Principal, cron_id: str) -> dict[str, Any]:
    return _shape(await _row(gw, caller, cron_id))


@router.post("/runs/crons")
async def create(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """A stateless cron: each firing a run on no thread."""
    return await _create(gw, caller, request, None)


@router.post("/threads/{thread_id}/runs/crons")
async def create_for_thread(thread_id: str, request: Request, gw: GatewayDep,
                            caller: Caller) -> Response:
    """A cron on the caller's thread: each firing a run on it (enqueued by default)."""
    return await _create(gw, caller, request, thread_id)


@router.get("/runs/crons/{cron_id}")
async def get(cron_id: str, gw: GatewayDep, caller: Caller) -> Response:
    """One cron."""
    return json_response(await _get(gw, caller, cron_id))


@router.patch("/runs/crons/{cron_id}")
async def patch(cron_id: str, request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """Change a cron: its schedule, time zone, end, enabled, or the run its firings make
    (fields merged into its payload; ``end_time: null`` clears the end)."""
    changes = await read_json(request)
    if not isinstance(changes, dict):
        raise Unprocessable("the cron body must be a JSON object")
    if not changes:
        raise BadRequest("Request body cannot be empty")
    if "assistant_id" in changes:
        raise Unprocessable("assistant_id cannot change: create another cron")
    row = await _row(gw, caller, cron_id)
    old = loads(row["payload"]) if isinstance(row["payload"], str | bytes) else row["payload"]
    payload = {**old, **changes}
    if row["thread_id"] is not None:
        payload.pop("on_run_completed", None)
    name, owner = row["name"], row["name"].split(".", 1)[0]
    thread_id = str(row["thread_id"]) if row["thread_id"] else None
    spec, _assistant, _completed = await _spec(gw, caller, request, payload, name=name,
                                               thread_id=thread_id)
    db = _db(gw)
    async with db.acquire() as conn, conn.transaction():
        cron: Cron = await _call(CronStore(conn).add(spec, owner=owner, replace=True))
        enabled = payload.get("enabled")
        if enabled is False and not cron.paused:
            await CronStore(conn).pause(name, owner=owner)
        elif enabled is True and cron.paused:
            await CronStore(conn).resume(name, owner=owner)
        await conn.execute(
            "UPDATE agent_crons SET payload = $2::jsonb, metadata = $3::jsonb, end_time = $4, "
            "updated_at = now() WHERE cron_id = $1", row["cron_id"], dumps(payload).decode(),
            dumps(payload.get("metadata") or {}).decode(), spec.end_at)
    return json_response(await _get(gw, caller, cron_id))


@router.delete("/runs/crons/{cron_id}", status_code=204)
async def delete(cron_id: str, gw: GatewayDep, caller: Caller) -> Response:
    """Delete a cron (204); firings already scheduled still run."""
    row = await _row(gw, caller, cron_id)
    async with _db(gw).acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM graphwire_crons WHERE name = $1", row["name"])
        await conn.execute("DELETE FROM agent_crons WHERE cron_id = $1", row["cron_id"])
    return Response(status_code=204)


def _where(gw: Any, caller: Principal, body: CronSearch) -> tuple[str, list[Any]]:
    clauses, args = ["($1::text IS NULL OR a.owner = $1)"], [gw.agent.owner(caller)]
    if body.assistant_id is not None:
        args.append(parse_uuid(body.assistant_id, "assistant"))
        clauses.append(f"a.assistant_id = ${len(args)}")
    if body.thread_id is not None:
        args.append(parse_uuid(body.thread_id, "thread"))
        clauses.append(f"a.thread_id = ${len(args)}")
    if body.enabled is not None:
        args.append(not body.enabled)
        clauses.append(f"g.paused = ${len(args)}")
    if body.metadata:
        args.append(dumps(body.metadata).decode())
        clauses.append(f"a.metadata @> ${len(args)}::jsonb")
    return " WHERE " + " AND ".join(clauses), args


@router.post("/runs/crons/search")
async def search(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """A page of the caller's crons matching the filters, with ``X-Pagination-*``."""
    body = await parse(request, CronSearch)
    fields = ("cron_id", "assistant_id", "thread_id", "on_run_completed", "end_time",
              "schedule", "timezone", "created_at", "updated_at", "payload", "user_id",
              "next_run_date", "metadata", "enabled")
    unknown = [f for f in body.select or [] if f not in fields]
    if unknown:
        raise Unprocessable(f"select: unknown field {unknown[0]!r}")
    where, args = _where(gw, caller, body)
    sort = body.sort_by or "created_at"
    column = _SORT_COLUMN.get(sort, f"a.{sort}")
    order = "ASC" if body.sort_order == "asc" else "DESC"
    db = _db(gw)
    total = await db.fetchval("SELECT count(*) FROM agent_crons a JOIN graphwire_crons g "
                              "ON g.name = a.name" + where, *args)
    rows = await db.fetch(
        f"{_SELECT}{where} ORDER BY {column} {order}, a.cron_id LIMIT {body.limit} "
        f"OFFSET {body.offset}", *args)
    crons = [_shape(r) for r in rows]
    if body.select:
        crons = [{k: c[k] for k in body.select} for c in crons]
    return paged(crons, body.offset, int(total))


@router.post("/runs/crons/count")
async def count(request: Request, gw: GatewayDep, caller: Caller) -> Response:
    """How many of the caller's crons match."""
    body = await parse(request, CronSearch)
    where, args = _where(gw, caller, body)
    total = await _db(gw).fetchval("SELECT count(*) FROM agent_crons a JOIN graphwire_crons g "
                                   "ON g.name = a.name" + where, *args)
    return json_response(int(total))
