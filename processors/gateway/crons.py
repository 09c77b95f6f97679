"""The gateway's cron endpoints: each caller defines and manages its own crons.

A caller's cron is stored as ``<scope>.<name>`` with owner ``<scope>`` (the caller's scope, as
for its runs and threads), so its firings are ``<scope>.<name>:<time>``: the caller reads them
at ``/workflow/status/...`` like its other runs, and never sees another caller's crons.

Limits (``GRAPHWIRE_GATEWAY_MAX_CRONS``, ``GRAPHWIRE_GATEWAY_CRON_MIN_INTERVAL_S``): a caller
has at most so many crons, none firing more often than the minimum interval, and the scheduler
charges each firing to the caller's rate limit (the cron's ``metadata.principal`` carries the
caller's ``rate_per_minute`` for it; ``processors/schedules/leader.py``).
(No ``from __future__ import annotations``: FastAPI reads the routes' local ``Annotated``.)
"""

from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from graphwire.processors.gateway import legacy
from graphwire.processors.gateway.agentapi.deps import Caller as Who
from graphwire.processors.gateway.agentapi.deps import GatewayDep
from graphwire.processors.gateway.auth import SCOPE_HEX, Principal
from graphwire.processors.gateway.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
    Unprocessable,
)
from graphwire.topics.crons import (
    Cron,
    CronError,
    CronExists,
    CronStore,
    InvalidCron,
    TooManyCrons,
    UnknownCron,
    check_min_interval,
    cron_spec,
)

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,46}$"  # 47 + "<scope>." (33) = CRON_NAME's 80
_LEGACY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,66}$"  # 67 + "<legacy scope>." (13) = 80


class CronBody(BaseModel):
    """A cron to define: runs ``workflow_name`` with ``input_data`` on ``schedule``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME, description="the caller's name for it")
    workflow_name: str = Field(min_length=1, max_length=200, description="a registered graph")
    schedule: str = Field(min_length=1, max_length=200,
                          description="cron fields, e.g. '*/5 * * * *' (a 6th is seconds)")
    timezone: str = Field(default="UTC", max_length=100, description="IANA time zone")
    input_data: dict[str, Any] = Field(default_factory=dict)
    thread_id: str | None = Field(default=None, min_length=1, max_length=256 - SCOPE_HEX - 1)
    missed: Literal["run", "skip"] = "run"
    metadata: dict[str, Any] = Field(default_factory=dict)
    replace: bool = Field(default=False, description="redefine the caller's cron of that name")


class CronView(BaseModel):
    """A cron as its owner sees it (names without the caller's scope)."""

    name: str
    workflow_name: str
    schedule: str
    timezone: str
    input_data: dict[str, Any]
    thread_id: str | None
    missed: str
    paused: bool
    next_at: datetime
    last_fired: datetime | None
    firing_prefix: str = Field(description="its firings' request_ids start with this")

    @classmethod
    def of(cls, cron: Cron, who: Principal) -> "CronView":
        thread = who.local(cron.thread_id) if cron.thread_id else None
        return cls(name=who.local(cron.name), workflow_name=cron.graph,
                   schedule=cron.schedule, timezone=cron.timezone, input_data=cron.input,
                   thread_id=thread, missed=cron.missed, paused=cron.paused,
                   next_at=cron.next_at, last_fired=cron.last_fired,
                   firing_prefix=f"{cron.name}:")


router = APIRouter()
Name = Annotated[str, Path(pattern=_LEGACY_NAME)]  # crons made under 0.1 have longer names


def _store(gw: Any) -> CronStore:
    if gw.db is None:
        raise Unavailable.retry("crons need PostgreSQL, which this gateway cannot reach; "
                                "check GRAPHWIRE_DATABASE_URL")
    return CronStore(gw.db)


def _local(message: str, who: Principal) -> str:
    for scope in who.scopes:
        message = message.replace(f"{scope}.", "")
    return message


async def _call(operation: Any, who: Principal) -> Any:
    """Await ``operation``; its errors as the gateway's, in the caller's own names."""
    try:
        return await operation
    except (CronExists, TooManyCrons) as exc:
        raise Conflict(_local(str(exc), who)) from None
    except UnknownCron as exc:
        raise NotFound(_local(str(exc), who)) from None
    except CronError as exc:
        raise Unprocessable(_local(str(exc), who)) from None
    except (asyncpg.DataError, asyncpg.UntranslatableCharacterError) as exc:
        raise Unprocessable(f"PostgreSQL cannot store it: {exc}") from None
    except (asyncpg.PostgresConnectionError, OSError, asyncpg.InterfaceError):
        raise Unavailable.retry("PostgreSQL does not answer; retry in a few seconds") from None


async def _owner_of(gw: Any, name: str, who: Principal) -> str:
    """The caller's scope that holds its cron ``name`` (the current one when none does)."""
    async def exists(scope: str) -> bool:
        try:
            await _store(gw).get(f"{scope}.{name}", owner=scope)
        except UnknownCron:
            return False
        return True

    for scope in who.scopes[1:]:
        if await _call(exists(scope), who):
            return scope
    return who.scope


@router.post("/crons", status_code=201, response_model=CronView)
async def add_cron(body: CronBody, who: Who, gw: GatewayDep) -> CronView:
    """Define a cron; each firing is a run ``<name>:<time>`` of this caller."""
    if not who.may_run(body.workflow_name):
        raise Forbidden(f"{who.name} may not run {body.workflow_name!r}")
    scope = who.scope
    thread = await legacy.thread_of(gw.db, who, body.thread_id) if body.thread_id else None
    try:
        spec = cron_spec(
            name=f"{scope}.{body.name}", graph=body.workflow_name, schedule=body.schedule,
            timezone=body.timezone, input=body.input_data, thread_id=thread,
            metadata={**body.metadata, "principal": {
                **who.as_metadata(), "rate_per_minute": who.rate_per_minute}},
            missed=body.missed,
        )
        check_min_interval(spec.schedule, spec.timezone,
                           gw.settings.gateway_cron_min_interval_s)
    except InvalidCron as exc:
        raise Unprocessable(_local(str(exc), who)) from None
    old = await _owner_of(gw, body.name, who)
    if old != scope:  # the caller's cron of that name from 0.1: replace it, or refuse
        if not body.replace:
            raise Conflict(f"a cron named {body.name!r} exists already: pick "
                           "another name, remove it first, or replace it")
        await _call(_store(gw).remove(f"{old}.{body.name}", owner=old), who)
    cron = await _call(_store(gw).add(spec, owner=scope, replace=body.replace,
                                      max_per_owner=gw.settings.gateway_max_crons), who)
    return CronView.of(cron, who)


@router.get("/crons", response_model=list[CronView])
async def list_crons(who: Who, gw: GatewayDep) -> list[CronView]:
    """This caller's crons, by name."""
    found = [c for scope in who.scopes
             for c in await _call(_store(gw).list(owner=scope), who)]
    return sorted((CronView.of(c, who) for c in found), key=lambda view: view.name)


@router.get("/crons/{name}", response_model=CronView)
async def get_cron(name: Name, who: Who, gw: GatewayDep) -> CronView:
    """One of this caller's crons."""
    scope = await _owner_of(gw, name, who)
    cron = await _call(_store(gw).get(f"{scope}.{name}", owner=scope), who)
    return CronView.of(cron, who)


@router.delete("/crons/{name}", status_code=204, response_class=Response)
async def remove_cron(name: Name, who: Who, gw: GatewayDep) -> Response:
    """Delete one of this caller's crons (firings already produced still run)."""
    scope = await _owner_of(gw, name, who)
    await _call(_store(gw).remove(f"{scope}.{name}", owner=scope), who)
    return Response(status_code=204)


@router.post("/crons/{name}/pause", response_model=CronView)
async def pause_cron(name: Name, who: Who, gw: GatewayDep) -> CronView:
    """Stop firing until resumed."""
    scope = await _owner_of(gw, name, who)
    cron = await _call(_store(gw).pause(f"{scope}.{name}", owner=scope), who)
    return CronView.of(cron, who)


@router.post("/crons/{name}/resume", response_model=CronView)
async def resume_cron(name: Name, who: Who, gw: GatewayDep) -> CronView:
    """Fire again from the next scheduled time."""
    scope = await _owner_of(gw, name, who)
    cron = await _call(_store(gw).resume(f"{scope}.{name}", owner=scope), who)
    return CronView.of(cron, who)
