"""The run inspector's routes: ``/ui/api/...`` (JSON, in the OpenAPI document), ``/ui/...``
(page shells, no data, no key needed) and ``/ui/fragments/...`` (the pages' HTML, rendered from
the same models as the JSON, with the same authentication).

A page shell loads its fragment with htmx; ``static/ui.js`` adds the API key (typed once, kept in
sessionStorage) to every request, and asks for it on a 401.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from graphwire.processors.gateway.agentapi.deps import Caller, GatewayDep
from graphwire.processors.gateway.errors import ApiError, NotFound, Unprocessable
from graphwire.processors.gateway.runctl import CancelAccepted, cancel_run
from graphwire.processors.gateway.streamed import Streamed
from graphwire.processors.gateway.ui import queries
from graphwire.processors.gateway.ui.inspector import THREAD_TURNS, Inspector
from graphwire.processors.gateway.ui.models import (
    DeadLettersPage,
    Overview,
    Replayed,
    ResumeBody,
    Resumed,
    RunDetail,
    RunsPage,
    ThreadDetail,
)
from graphwire.processors.gateway.ui.security import (
    CSRF_COOKIE,
    UiHeaders,
    check_csrf,
    csrf_token,
)

HERE = Path(__file__).parent
LIVE_POLL_S = 1.0
LIVE_MAX_S = 300.0  # then the browser reconnects (and re-authenticates)
RENDER_CAP_BYTES = 20_000  # of one JSON value on a thread page (the run's page shows it all)
PAGES = {"overview": "Overview", "runs": "Runs", "dead-letters": "Dead letters"}


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pretty"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2,
                                                   default=str).decode()
    env.filters["capped"] = _capped
    env.filters["seg"] = lambda v: quote(str(v), safe="")  # one path segment, "/" and all
    env.filters["when"] = lambda v: v.strftime("%Y-%m-%d %H:%M:%S") if v else "-"
    env.filters["ms"] = lambda v: "-" if v is None else f"{v:,.1f} ms"
    return env


def _capped(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` bytes (UTF-8), saying how much was left out."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    kept = raw[:limit].decode("utf-8", "ignore")
    return f"{kept}\n… {len(raw) - len(kept.encode()):,} more bytes: open the run"


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise Unprocessable("the time is out of range") from None


async def _inspector(request: Request) -> Inspector:
    """The app's ``Inspector`` (made by ``mount``; ``async``: no thread hop per request)."""
    found: Inspector = request.app.state.ui
    return found


Insp = Annotated[Inspector, Depends(_inspector)]
RunId = Annotated[str, PathParam(min_length=1, max_length=300)]
Limit = Annotated[int, Query(ge=1, le=200)]
api = APIRouter(prefix="/ui/api", tags=["run inspector"])
pages = APIRouter(prefix="/ui", include_in_schema=False)
ENV = _templates()


async def run_filter(
    principal: Caller, inspector: Insp,
    graph: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(max_length=40)] = None,
    thread: Annotated[str | None, Query(max_length=300,
                                        description="the caller's thread id")] = None,
    since: Annotated[datetime | None, Query(description="runs seen at or after")] = None,
    until: Annotated[datetime | None, Query(description="runs seen before")] = None,
) -> queries.RunFilter:
    """The Runs page's filter, within the caller's scope (every run, for an operator)."""
    return queries.RunFilter(
        scope=inspector.scope(principal), graph=graph or None, status=status or None,
        thread_id=inspector.owned_thread(principal, thread) if thread else None,
        since=_utc(since), until=_utc(until))


Filter = Annotated[queries.RunFilter, Depends(run_filter)]
Cursor = Annotated[str | None, Query(max_length=1000, description="from next_cursor")]
TurnLimit = Annotated[int, Query(ge=1, le=THREAD_TURNS)]


def _shown(principal: Any) -> str:
    """The scope the pages strip from the ids they show: the caller's own; none for an
    operator, who sees every caller's runs and so their whole ids."""
    return "" if principal.operator else str(principal.scope)


# -- JSON --------------------------------------------------------------------------------------

@api.get("/runs", response_model=RunsPage)
async def runs(principal: Caller, flt: Filter, inspector: Insp, cursor: Cursor = None,
               limit: Limit = 50) -> RunsPage:
    """The caller's runs, newest first, filtered; keyset pages (``next_cursor``)."""
    return await inspector.runs(principal, flt, cursor, limit)


@api.get("/runs/{request_id:path}", response_model=RunDetail)
async def run(request_id: RunId, principal: Caller, inspector: Insp) -> RunDetail:
    """One run: its events (timeline), graph drawing with the path taken, thread turns."""
    return await inspector.run(principal, request_id)


@api.post("/runs/{request_id:path}/resume", response_model=Resumed, status_code=202,
          dependencies=[Depends(check_csrf)])
async def resume(request_id: RunId, body: ResumeBody, principal: Caller,
                 inspector: Insp) -> Resumed:
    """Resume the interrupted thread of this run with ``resume`` (needs the page's
    ``X-CSRF-Token``)."""
    return await inspector.resume(principal, request_id, body.resume)


@api.post("/runs/{request_id:path}/cancel", response_model=CancelAccepted, status_code=202,
          dependencies=[Depends(check_csrf)],
          responses={404: {"description": "no such run of this caller"},
                     409: {"description": "the run already finished"}})
async def cancel(request_id: RunId, principal: Caller, gw: GatewayDep) -> CancelAccepted:
    """Cancel this run at its next step boundary, keeping its progress (the API's
    ``POST /workflow/cancel/{request_id}``; needs the page's ``X-CSRF-Token``)."""
    return await cancel_run(gw, request_id, principal, "interrupt", "cancelled in the UI")


@api.get("/threads/{thread_id:path}", response_model=ThreadDetail)
async def thread(thread_id: RunId, principal: Caller, inspector: Insp, cursor: Cursor = None,
                 limit: TurnLimit = THREAD_TURNS) -> ThreadDetail:
    """A page of a thread's turns in order (``next_cursor``) and its checkpoint history
    (newest first)."""
    return await inspector.thread(principal, thread_id, cursor, limit)


@api.get("/dead-letters", response_model=DeadLettersPage)
async def dead_letters(principal: Caller, inspector: Insp,
                       before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
                       limit: Limit = 50) -> DeadLettersPage:
    """The caller's dead letters, newest first; keyset pages (``next_before``)."""
    return await inspector.dead_letters(principal, before, limit)


@api.post("/dead-letters/{letter_id}/replay", response_model=Replayed,
          dependencies=[Depends(check_csrf)])
async def replay(letter_id: Annotated[int, PathParam(ge=1, le=2**63 - 1)],
                 principal: Caller, inspector: Insp) -> Replayed:
    """Re-produce the dead letter's original bytes to the requests topic (needs the
    page's ``X-CSRF-Token``)."""
    return await inspector.replay(principal, letter_id)


@api.get("/overview", response_model=Overview)
async def overview(principal: Caller, inspector: Insp) -> Overview:
    """Throughput, error rate, p50/p99 per graph over the last hour; consumer lag."""
    return await inspector.overview(principal)


@api.get("/live", include_in_schema=False)
async def live(request: Request, principal: Caller, inspector: Insp,
               gw: GatewayDep) -> Streamed:
    """SSE: ``event: changed`` whenever the caller's newest run or newest result moves
    (429 when the caller holds its maximum of open streams)."""
    slot = await gw.caps.take_stream(principal)
    body = gw.caps.guard(principal, slot,
                         _changes(inspector, request, inspector.scope(principal)))
    return Streamed(body,
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache",
                                      "X-Accel-Buffering": "no"})


# -- HTML --------------------------------------------------------------------------------------

def shell(request: Request, page: str, fragment: str, title: str) -> HTMLResponse:
    """A page's shell (no data): the fragment it loads, and the CSRF token."""
    token, new = csrf_token(request)
    query = request.url.query
    html = ENV.get_template("shell.html").render(
        page=page, title=title, pages=PAGES, csrf=token,
        auth=request.app.state.gateway.settings.gateway_auth,
        fragment=fragment + (f"?{query}" if query else ""))
    response = HTMLResponse(html)
    if new:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict",
                            path="/ui", secure=request.url.scheme == "https")
    return response


def fragment(name: str, **context: Any) -> HTMLResponse:
    """A page's HTML from the template ``name``."""
    return HTMLResponse(ENV.get_template(name).render(**context))


@pages.get("")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@pages.get("/")
async def overview_page(request: Request) -> HTMLResponse:
    return shell(request, "overview", "/ui/fragments/overview", "Overview")


@pages.get("/runs")
async def runs_page(request: Request) -> HTMLResponse:
    return shell(request, "runs", "/ui/fragments/runs", "Runs")


@pages.get("/runs/{request_id:path}")
async def run_page(request: Request, request_id: RunId) -> HTMLResponse:
    return shell(request, "runs", f"/ui/fragments/runs/{quote(request_id, safe='')}",
                 "Run")


@pages.get("/threads/{thread_id:path}")
async def thread_page(request: Request, thread_id: RunId) -> HTMLResponse:
    return shell(request, "runs", f"/ui/fragments/threads/{quote(thread_id, safe='')}",
                 "Thread")


@pages.get("/dead-letters")
async def dead_letters_page(request: Request) -> HTMLResponse:
    return shell(request, "dead-letters", "/ui/fragments/dead-letters", "Dead letters")


@pages.get("/fragments/overview")
async def overview_fragment(principal: Caller, inspector: Insp) -> HTMLResponse:
    return fragment("overview.html", o=await inspector.overview(principal))


@pages.get("/fragments/runs")
async def runs_fragment(request: Request, principal: Caller, flt: Filter, inspector: Insp,
                        cursor: Cursor = None, limit: Limit = 50) -> HTMLResponse:
    page = await inspector.runs(principal, flt, cursor, limit)
    args = {k: v for k, v in request.query_params.items() if k not in ("cursor",) and v}
    return fragment("runs.html", page=page, args=args, first=cursor is None,
                    scope=_shown(principal))


@pages.get("/fragments/runs/{request_id:path}")
async def run_fragment(request_id: RunId, principal: Caller, inspector: Insp) -> HTMLResponse:
    try:
        detail = await inspector.run(principal, request_id)
    except NotFound:
        if not inspector.own(principal, request_id):
            raise
        return fragment("pending.html", request_id=request_id)  # the sink is a second behind
    return fragment("run.html", r=detail, scope=_shown(principal))


@pages.get("/fragments/threads/{thread_id:path}")
async def thread_fragment(thread_id: RunId, principal: Caller, inspector: Insp,
                          cursor: Cursor = None,
                          limit: TurnLimit = THREAD_TURNS) -> HTMLResponse:
    return fragment("thread.html",
                    t=await inspector.thread(principal, thread_id, cursor, limit),
                    scope=_shown(principal), cap=RENDER_CAP_BYTES)


@pages.get("/fragments/dead-letters")
async def dead_letters_fragment(principal: Caller, inspector: Insp,
                                before: Annotated[int | None, Query(ge=1)] = None,
                                limit: Limit = 50) -> HTMLResponse:
    return fragment("dead_letters.html",
                    page=await inspector.dead_letters(principal, before, limit))


def mount(app: FastAPI, gw: Any) -> Inspector:
    """Add the inspector (``app.state.ui``; ``await app.state.ui.stop()`` on shutdown), its
    routers, static files and security headers to ``app``, the gateway ``gw``'s."""
    inspector = Inspector(gw)
    app.state.ui = inspector
    app.include_router(api)
    app.include_router(pages)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.add_middleware(UiHeaders)
    return inspector


async def _changes(inspector: Inspector, request: Request,
                   scope: str | None) -> AsyncIterator[bytes]:
    deadline = time.monotonic() + LIVE_MAX_S
    last: tuple[Any, Any] | None = None
    yield b": the caller's runs, live\nretry: 2000\n\n"
    while time.monotonic() < deadline and not await request.is_disconnected():
        try:
            async with inspector.reading() as db:
                now = await queries.latest_change(db, scope)
        except ApiError:
            now = last or (None, None)
        # the first poll says "changed" too: a run recorded between the table's render and
        # this feed's start would otherwise show only at the next change
        if last is None or now != last:
            data = orjson.dumps({"seen": now[0], "finished": now[1]})
            yield b"event: changed\ndata: %s\n\n" % data
        last = now
        await asyncio.sleep(LIVE_POLL_S)
