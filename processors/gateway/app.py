"""The HTTP gateway (``graphwire gateway``): the production guide's FastAPI endpoints, with Kafka
behind them.

One ``GraphwireClient`` per process produces requests and reads results and events for every
HTTP request. Callers authenticate with an API key or a JWT (``auth``), are rate limited per
principal in Redis, and are recorded in the request's ``metadata.principal`` (and so in the audit
table).
"""


import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from graphwire.processors.gateway import agentapi, legacy
from graphwire.processors.gateway.agentapi import errors as agentapi_errors
from graphwire.processors.gateway.agentapi.resources import AgentResources
from graphwire.processors.gateway.auth import (
    ID_BUDGET,
    Authenticator,
    AuthError,
    Principal,
    RateLimiter,
)
from graphwire.processors.gateway.crons import add_cron_routes
from graphwire.processors.gateway.guard import BrowserGuard, allowed_hosts
from graphwire.processors.gateway.limits import PrincipalCaps
from graphwire.processors.gateway.models import (
    Accepted,
    BatchRequest,
    BatchResponse,
    BodyLimit,
    GatewayMetrics,
    Measure,
    RunStatus,
    WorkflowRequest,
)
from graphwire.processors.gateway.ops import OpsServer, Readiness, is_ready
from graphwire.processors.gateway.pool import BoundedPool, PoolBusy
from graphwire.processors.gateway.runctl import add_routes as add_runctl_routes
from graphwire.processors.gateway.sse import event_stream
from graphwire.processors.gateway.webhookkey import add_routes as add_webhook_key_routes
from graphwire.processors.settings import Settings
from graphwire.processors.webhooks.policy import WebhookPolicy
from graphwire.topics.client import GraphwireClient
from graphwire.topics.codec import principal_header
from graphwire.topics.errors import DependencyUnavailable, GraphwireError
from graphwire.topics.models import Request as RunRequest
from graphwire.topics.models import Result
from graphwire.topics.runstatus import read_run_state

log = logging.getLogger(__name__)


class Gateway:
    """What the routes share: settings, the Kafka client, Redis, PostgreSQL, metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.auth = Authenticator(settings)
        self.metrics = GatewayMetrics()
        redis_url = settings.redis_url.get_secret_value()
        self.client = GraphwireClient(
            settings.bootstrap_servers,
            topic_prefix=settings.topic_prefix,
            redis_url=redis_url if settings.dedup else None,
            max_kept_bytes=settings.gateway_max_kept_bytes,
            **settings.kafka_security(),
        )
        # the run-status layout the runner writes (read only here), and the rate limiter's
        self.redis = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.limiter: RateLimiter | None = None
        from graphwire.processors.gateway.ui.routes import LIVE_MAX_S

        self.caps = PrincipalCaps(  # concurrent runs and streams per caller, in Redis
            self.redis, settings.topic_prefix, max_runs=settings.gateway_max_concurrent_runs,
            run_ttl_s=settings.gateway_run_slot_ttl_s, max_streams=settings.gateway_max_streams,
            stream_ttl_s=max(settings.gateway_wait_timeout_s, LIVE_MAX_S) + 60)
        self.client.add_result_listener(lambda result: self.caps.run_finished(result.request_id))
        self.db: Any = None
        self.webhooks = WebhookPolicy(settings.webhook_allowed_hosts)  # the runners' rules
        self.agent = AgentResources(settings)  # Agent Server API: graphs, checkpoints, records

    async def start(self) -> None:
        if not self.settings.gateway_auth:
            log.warning("GRAPHWIRE_GATEWAY_AUTH=false: anyone who reaches %s may run every graph "
                        "and read every run, as one anonymous caller; for development only",
                        self.settings.gateway_bind_host)
        await self.client.start()
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(
                f"Redis does not answer ({exc}); check GRAPHWIRE_REDIS_URL"
            ) from exc
        self.limiter = RateLimiter(self.redis, self.settings.topic_prefix)
        with contextlib.suppress(Exception):  # optional: status fallback and SSE backfill
            pool = await asyncpg.create_pool(
                self.settings.database_url.get_secret_value(), min_size=0,
                max_size=self.settings.gateway_db_pool_size, timeout=5, command_timeout=10,
                server_settings={"search_path": f'"{self.settings.audit_schema}"'}  # never public
                if self.settings.audit_schema else None,
            )
            self.db = BoundedPool(pool, self.settings.gateway_db_acquire_timeout_s)
        await self.agent.start(self.db)  # Agent Server API: its tables, the checkpointer

    async def stop(self) -> None:
        await self.agent.stop()
        await self.client.stop()
        await self.caps.stop()
        await self.redis.aclose()
        if self.db is not None:
            await self.db.close()

    async def principal(self, request: Request) -> Principal:
        """Authenticate and rate limit (FastAPI dependency)."""
        try:
            principal = self.auth.authenticate(request.headers)
        except AuthError as exc:
            self.metrics.auth_failures.labels(str(exc.status)).inc()
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            raise HTTPException(exc.status, str(exc), headers=headers) from None
        await self.charge(principal, 1)
        return principal

    async def charge(self, principal: Principal, cost: int) -> None:
        """Count ``cost`` requests against the principal's rate limit; 429 over it, 503 when
        Redis (which keeps the count) does not answer."""
        assert self.limiter is not None
        try:
            decision = await self.limiter.check(principal, cost)
        except (RedisError, OSError) as exc:  # an outage, not our bug: the caller may retry
            log.warning("rate limiter unavailable: %s", type(exc).__name__)
            raise HTTPException(
                503, "the rate limiter's Redis does not answer; retry in a few seconds",
                headers={"Retry-After": "5"},
            ) from None
        if not decision.allowed:
            self.metrics.rate_limited.inc()
            raise HTTPException(
                429,
                f"rate limit of {principal.rate_per_minute} requests per minute reached",
                headers={"Retry-After": str(decision.retry_after_s)},
            )

    def allow(self, body: WorkflowRequest, principal: Principal) -> None:
        if not principal.may_run(body.workflow_name):
            self.metrics.auth_failures.labels("403").inc()
            raise HTTPException(403, f"{principal.name} may not run {body.workflow_name!r}")

    async def prepare(
        self, body: WorkflowRequest, principal: Principal, idempotency_key: str | None
    ) -> RunRequest:
        """The run to produce, checked (403, 422) but not sent. Its request_id and thread_id
        are the caller's namespaced (``<scope>.<id>``): one caller can neither read nor resume
        nor pre-empt another's."""
        self.allow(body, principal)
        request_id = body.request_id
        if idempotency_key:
            if request_id and request_id != idempotency_key:
                raise HTTPException(422, "Idempotency-Key and request_id differ; send one")
            request_id = idempotency_key
        if body.webhook is not None and (refusal := self.webhooks.refusal(body.webhook)):
            raise HTTPException(422, f"webhook: {refusal}")
        scope = principal.scope
        metadata = {**body.metadata, "principal": principal.as_metadata()}
        try:
            return self.client.build_request(
                body.workflow_name, body.input_data,
                request_id=f"{scope}.{request_id or uuid.uuid4().hex}",
                thread_id=await self.thread_of(principal, body.thread_id),
                command=body.command,
                config=body.config.model_dump(exclude_defaults=True),
                stream=body.stream, metadata=metadata, timeout_s=body.timeout_s,
                multitask_strategy=body.multitask_strategy, checkpoint_id=body.checkpoint_id,
                webhook=body.webhook,
                after_seconds=body.after_seconds, run_at=body.run_at, context=body.context,
                interrupt_before=body.interrupt_before, interrupt_after=body.interrupt_after,
                subgraphs=body.subgraphs,
            )
        except ValueError as exc:  # the contract's validation (pydantic)
            raise HTTPException(422, _contract_error(exc)) from None

    async def submit(
        self, body: WorkflowRequest, principal: Principal, idempotency_key: str | None,
        *, keep_events: bool = False,
    ) -> str:
        """Check and produce the run (``prepare``), holding one of the caller's run slots
        until its result is seen; returns its request_id. Its events are kept in memory only
        with ``keep_events`` (a stream reads them)."""
        request = await self.prepare(body, principal, idempotency_key)
        return (await self.submit_all([request], principal, keep_events=keep_events))[0]

    async def thread_of(self, principal: Principal, thread_id: str | None) -> str | None:
        """The stored id of the caller's thread: under its scope, or under its legacy scope
        when the thread has runs there and none under the current one (``legacy``)."""
        if thread_id is None:
            return None
        return await legacy.thread_of(self.db, principal, thread_id)

    async def submit_all(self, requests: list[RunRequest], principal: Principal,
                         *, keep_events: bool = False) -> list[str]:
        """Produce checked runs after taking a run slot for each (429 over the caller's
        concurrent-run cap: none is produced); a slot is given back if its run was not."""
        ids = [request.request_id for request in requests]
        await self.caps.take_runs(principal, ids)
        sent = 0
        try:
            for request in requests:
                await self.client.submit_request(
                    request, keep_events=keep_events, headers=[_principal(principal)])
                sent += 1
        finally:
            if sent < len(ids):
                with contextlib.suppress(RedisError, OSError):
                    await self.caps.release_runs(ids[sent:])
        return ids

    async def wait(self, request_id: str, timeout: float) -> Response:
        """The result as JSON (already validated by the client: no second pass here)."""
        try:
            result = await self.client.result(request_id, timeout=timeout)
            return Response(orjson.dumps(result.model_dump(mode="json")),
                            media_type="application/json")
        except DependencyUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        except TimeoutError:  # accepted and still running: say where to look, do not invite a
            # retry (without an Idempotency-Key a retried POST would start a second run)
            body = Accepted.of(request_id).model_dump()
            return JSONResponse(body, status_code=202)

    def own(self, request_id: str, principal: Principal) -> None:
        """404 (not 403: no hint that it exists) for another caller's run."""
        if not principal.owns(request_id):
            raise HTTPException(404, f"unknown request {request_id!r}")

    async def status(self, request_id: str) -> RunStatus:
        """Redis (the runner's lease and done marker) first, then the audit table."""
        with contextlib.suppress(GraphwireError):
            found = await read_run_state(self.redis, self.settings.topic_prefix, request_id)
            if found is not None:
                return RunStatus(request_id=request_id, source="redis", status=found.status,
                                 attempts=found.attempts or None)
        if self.db is not None:
            try:
                row = await self.db.fetchrow(
                    "SELECT status, attempts, requested_at, finished_at FROM graphwire_runs "
                    "WHERE request_id = $1", request_id,
                )
                if row is not None:
                    return RunStatus(request_id=request_id, source="postgresql", **dict(row))
                due = await self.db.fetchval(  # accepted to run later (graphwire scheduler)
                    "SELECT due_at FROM graphwire_schedules WHERE request_id = $1 "
                    "AND fired_at IS NULL", request_id,
                )
                if due is not None:
                    return RunStatus(request_id=request_id, source="postgresql",
                                     status="scheduled", run_at=due)
            except PoolBusy:  # not "unknown": the caller may retry (503 by the app's handler)
                raise
            except Exception:  # no audit tables: Redis alone answered
                pass
        raise HTTPException(404, f"unknown request {request_id!r}")

    async def readiness(self) -> dict[str, str]:
        """Kafka (the reader runs), Redis (answers) and PostgreSQL (answers; optional)."""
        deps = {"kafka": "ok" if self.client.reading else "the result reader is not running"}
        try:
            await asyncio.wait_for(self.redis.ping(), 2)
            deps["redis"] = "ok"
        except Exception as exc:
            deps["redis"] = f"{type(exc).__name__}: {exc}"
        deps["postgresql"] = "unavailable (status from Redis only)"
        if self.db is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.db.fetchval("SELECT 1"), 2)
                deps["postgresql"] = "ok"
        return deps


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway's FastAPI app.

    ``uvicorn graphwire.processors.gateway.app:create_app --factory`` serves it."""
    settings = settings or Settings()
    gw = Gateway(settings)
    readiness = Readiness(gw.readiness)
    ops = OpsServer(readiness, gw.metrics.registry, host=settings.gateway_ops_host,
                    port=settings.gateway_ops_port)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            await ops.start()
            yield
        finally:
            await ops.stop()
            await _app.state.ui.stop()
            await gw.stop()

    app = FastAPI(
        title="graphwire gateway",
        summary="Run LangGraph graphs over HTTP; Kafka behind it.",
        version="1",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN, on the inspector's origin
        docs_url="/docs" if settings.gateway_docs else None,
        redoc_url="/redoc" if settings.gateway_docs else None,
    )
    app.state.gateway = gw
    agentapi_errors.install(app)
    app.include_router(agentapi.build_router())  # the LangGraph Agent Server API
    origins = [o.strip() for o in settings.gateway_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Idempotency-Key",
                                          "Content-Type", "Last-Event-ID"])
    app.add_middleware(BodyLimit, max_bytes=settings.gateway_max_body_bytes)
    app.add_middleware(BrowserGuard, trusted_origins=frozenset(origins), hosts=allowed_hosts(
        settings.gateway_allowed_hosts, auth=settings.gateway_auth,
        bound=settings.gateway_bind_host))

    app.add_middleware(Measure, metrics=gw.metrics)

    @app.exception_handler(PoolBusy)
    async def pool_busy(_request: Request, exc: PoolBusy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    Caller = Annotated[Principal, Depends(gw.principal)]
    IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=ID_BUDGET)]
    Wait = Annotated[float | None, Query(gt=0, le=600, description="seconds (default setting)")]

    @app.post("/workflow/execute", status_code=202, response_model=Accepted | Result,
              responses={200: {"model": Result},
                         202: {"model": Accepted,
                               "description": "accepted (with wait: no result in time yet)"}})
    async def execute(
        body: WorkflowRequest, caller: Caller,
        idempotency_key: IdemKey = None,
        wait: Annotated[bool, Query(description="wait for the result")] = False,
        timeout: Wait = None,
    ) -> Accepted | Response:
        """Submit a run; 202 with its id, or (``wait=true``) 200 with the result (202 when it
        did not come within ``timeout``: poll ``status_url``)."""
        rid = await gw.submit(body, caller, idempotency_key)
        if wait:
            return await gw.wait(rid, timeout or settings.gateway_wait_timeout_s)
        return Accepted.of(rid)

    @app.post("/workflow/invoke", response_model=Result)
    async def invoke(body: WorkflowRequest, caller: Caller, idempotency_key: IdemKey = None,
                     timeout: Wait = None) -> Response:
        """Submit a run and wait for its result."""
        rid = await gw.submit(body, caller, idempotency_key)
        return await gw.wait(rid, timeout or settings.gateway_wait_timeout_s)

    @app.get("/workflow/status/{request_id}", response_model=RunStatus)
    async def status(request_id: str, caller: Caller) -> RunStatus:
        """Where a run is: Redis (live) first, then the audit table."""
        gw.own(request_id, caller)
        return await gw.status(request_id)

    @app.post("/workflow/stream", response_class=StreamingResponse,
              responses={200: {"content": {"text/event-stream": {}}}})
    async def stream(body: WorkflowRequest, caller: Caller,
                     idempotency_key: IdemKey = None) -> StreamingResponse:
        """Submit a run and stream its events (``id:`` = seq), then its result."""
        slot = await gw.caps.take_stream(caller)
        try:
            rid = await gw.submit(body, caller, idempotency_key, keep_events=True)
        except BaseException:
            await gw.caps.release_stream(caller, slot)
            raise
        return _sse(gw, rid, -1, caller, slot)

    @app.get("/workflow/stream/{request_id}", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def restream(request_id: str, caller: Caller,
                       last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                       ) -> StreamingResponse:
        """Stream a run's events from after ``Last-Event-ID`` (reconnects miss nothing).
        404 when neither this gateway, Redis nor the audit table knows the request."""
        gw.own(request_id, caller)
        valid = last_event_id and re.fullmatch(r"[0-9]{1,16}", last_event_id)  # seq < 2**53
        after = int(last_event_id) if valid and last_event_id else -1
        if not gw.client.watching(request_id):
            await gw.status(request_id)  # raises 404 for an unknown request
        return _sse(gw, request_id, after, caller, await gw.caps.take_stream(caller))

    @app.post("/workflow/batch", response_model=BatchResponse)
    async def batch(body: BatchRequest, caller: Caller, timeout: Wait = None) -> BatchResponse:
        """Submit many runs; with ``wait`` gather their results."""
        if len(body.requests) > settings.gateway_max_batch:
            raise HTTPException(422, f"at most {settings.gateway_max_batch} requests per batch")
        # all or nothing: check every run (403, 422) before charging for or submitting any
        checked = []
        for index, item in enumerate(body.requests):
            try:
                checked.append(await gw.prepare(item, caller, None))
            except HTTPException as exc:
                raise HTTPException(exc.status_code, f"requests[{index}]: {exc.detail}; "
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

    add_runctl_routes(app, gw)  # cancel, thread history
    add_cron_routes(app, gw, gw.principal)
    add_webhook_key_routes(app, gw)  # POST /workflow/webhooks/signing-key

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Whether this gateway can take runs (each dependency's state: the ops port's)."""
        deps = await readiness()
        ok = is_ready(deps)
        body: dict[str, Any] = {"ready": ok}
        if not settings.gateway_ops_port:
            body["dependencies"] = deps
        return JSONResponse(body, status_code=200 if ok else 503)

    if not settings.gateway_ops_port:  # no ops port: metrics on the API's, as before

        @app.get("/metrics", response_class=Response)
        async def metrics() -> Response:
            return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # the run inspector (/ui): pages, their JSON (/ui/api), static files; same authentication
    from graphwire.processors.gateway.ui import mount as mount_ui

    app.state.ui = mount_ui(app, gw, gw.principal)
    return app


def _sse(gw: Gateway, request_id: str, after: int, caller: Principal,
         slot: str) -> StreamingResponse:
    """The run's SSE stream, holding the caller's stream ``slot`` while it is open."""
    gw.client.watch(request_id, events=True)
    body = event_stream(gw.client, gw.db, request_id, after, gw.settings.gateway_wait_timeout_s)
    return StreamingResponse(
        gw.caps.guard(caller, slot, body),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _contract_error(exc: ValueError) -> str:
    """The first thing the contract refused, as one line: ``field: what is wrong``."""
    if not isinstance(exc, ValidationError) or not exc.errors():
        return str(exc).splitlines()[0] if str(exc) else "invalid request"
    first = exc.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {message}" if where else message


def _principal(principal: Principal) -> tuple[str, bytes]:
    """The ``x-graphwire-principal`` header: runners give the graph this caller's identity."""
    return principal_header(principal.kind, principal.name, principal.scope)
