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
from fastapi import Depends, FastAPI, HTTPException, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from graphwire.processors.gateway.auth import Principal
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

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,66}$"  # 67 + "<scope>." (13) = CRON_NAME's 80


class CronBody(BaseModel):
    """A cron to define: runs ``workflow_name`` with ``input_data`` on ``schedule``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME, description="the caller's name for it")
    workflow_name: str = Field(min_length=1, max_length=200, description="a registered graph")
    schedule: str = Field(min_length=1, max_length=200,
                          description="cron fields, e.g. '*/5 * * * *' (a 6th is seconds)")
    timezone: str = Field(default="UTC", max_length=100, description="IANA time zone")
    input_data: dict[str, Any] = Field(default_factory=dict)
    thread_id: str | None = Field(default=None, min_length=1, max_length=240)
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
    def of(cls, cron: Cron, scope: str) -> "CronView":
        thread = cron.thread_id.removeprefix(f"{scope}.") if cron.thread_id else None
        return cls(name=cron.name.removeprefix(f"{scope}."), workflow_name=cron.graph,
                   schedule=cron.schedule, timezone=cron.timezone, input_data=cron.input,
                   thread_id=thread, missed=cron.missed, paused=cron.paused,
                   next_at=cron.next_at, last_fired=cron.last_fired,
                   firing_prefix=f"{cron.name}:")


def add_cron_routes(app: FastAPI, gw: Any, caller: Any) -> None:
    """``/crons`` routes on ``app``; ``caller`` is the authenticating dependency."""
    Caller = Annotated[Principal, Depends(caller)]
    Name = Annotated[str, Path(pattern=_NAME)]

    def store() -> CronStore:
        if gw.db is None:
            raise HTTPException(503, "crons need PostgreSQL, which this gateway cannot reach; "
                                "check GRAPHWIRE_DATABASE_URL", headers={"Retry-After": "5"})
        return CronStore(gw.db)

    async def call(operation: Any, scope: str) -> Any:
        """Await ``operation``; its errors as HTTP answers, in the caller's own names."""
        try:
            return await operation
        except (CronExists, TooManyCrons) as exc:
            raise HTTPException(409, str(exc).replace(f"{scope}.", "")) from None
        except UnknownCron as exc:
            raise HTTPException(404, str(exc).replace(f"{scope}.", "")) from None
        except CronError as exc:
            raise HTTPException(422, str(exc).replace(f"{scope}.", "")) from None
        except (asyncpg.DataError, asyncpg.UntranslatableCharacterError) as exc:
            raise HTTPException(422, f"PostgreSQL cannot store it: {exc}") from None
        except (asyncpg.PostgresConnectionError, OSError, asyncpg.InterfaceError):
            raise HTTPException(503, "PostgreSQL does not answer; retry in a few seconds",
                                headers={"Retry-After": "5"}) from None

    @app.post("/crons", status_code=201, response_model=CronView)
    async def add_cron(body: CronBody, who: Caller) -> CronView:
        """Define a cron; each firing is a run ``<name>:<time>`` of this caller."""
        if not who.may_run(body.workflow_name):
            raise HTTPException(403, f"{who.name} may not run {body.workflow_name!r}")
        scope = who.scope
        try:
            spec = cron_spec(
                name=f"{scope}.{body.name}", graph=body.workflow_name, schedule=body.schedule,
                timezone=body.timezone, input=body.input_data,
                thread_id=f"{scope}.{body.thread_id}" if body.thread_id else None,
                metadata={**body.metadata, "principal": {
                    **who.as_metadata(), "rate_per_minute": who.rate_per_minute}},
                missed=body.missed,
            )
            check_min_interval(spec.schedule, spec.timezone,
                               gw.settings.gateway_cron_min_interval_s)
        except InvalidCron as exc:
            raise HTTPException(422, str(exc).replace(f"{scope}.", "")) from None
        cron = await call(store().add(spec, owner=scope, replace=body.replace,
                                      max_per_owner=gw.settings.gateway_max_crons), scope)
        return CronView.of(cron, scope)

    @app.get("/crons", response_model=list[CronView])
    async def list_crons(who: Caller) -> list[CronView]:
        """This caller's crons, by name."""
        found = await call(store().list(owner=who.scope), who.scope)
        return [CronView.of(c, who.scope) for c in found]

    @app.get("/crons/{name}", response_model=CronView)
    async def get_cron(name: Name, who: Caller) -> CronView:
        """One of this caller's crons."""
        cron = await call(store().get(f"{who.scope}.{name}", owner=who.scope), who.scope)
        return CronView.of(cron, who.scope)

    @app.delete("/crons/{name}", status_code=204, response_class=Response)
    async def remove_cron(name: Name, who: Caller) -> Response:
        """Delete one of this caller's crons (firings already produced still run)."""
        await call(store().remove(f"{who.scope}.{name}", owner=who.scope), who.scope)
        return Response(status_code=204)

    @app.post("/crons/{name}/pause", response_model=CronView)
    async def pause_cron(name: Name, who: Caller) -> CronView:
        """Stop firing until resumed."""
        cron = await call(store().pause(f"{who.scope}.{name}", owner=who.scope), who.scope)
        return CronView.of(cron, who.scope)

    @app.post("/crons/{name}/resume", response_model=CronView)
    async def resume_cron(name: Name, who: Caller) -> CronView:
        """Fire again from the next scheduled time."""
        cron = await call(store().resume(f"{who.scope}.{name}", owner=who.scope), who.scope)
        return CronView.of(cron, who.scope)
