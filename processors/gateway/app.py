"""The HTTP gateway (``graphwire gateway``): the production guide's FastAPI endpoints, with Kafka
behind them.

One ``GraphwireClient`` per process produces requests and reads results and events for every
HTTP request. Callers authenticate with an API key or a JWT (``auth``), are rate limited per
principal in Redis, and are recorded in the request's ``metadata.principal`` (and so in the audit
table).

``Gateway`` is the service the routes share (``app.state.gateway``); it raises the domain errors
of ``errors``, whose one table maps them to statuses. The routes live in module-level routers,
one per resource: ``workflow``, ``runctl``, ``crons``, ``webhookkey``, ``health``, ``ui`` and the
Agent Server API (``agentapi``); ``create_app`` only assembles them.
"""


import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from graphwire.processors.gateway import (
    agentapi,
    crons,
    health,
    legacy,
    runctl,
    ui,
    webhookkey,
    workflow,
)
from graphwire.processors.gateway.agentapi import errors as agentapi_errors
from graphwire.processors.gateway.agentapi.resources import AgentResources
from graphwire.processors.gateway.auth import Authenticator, AuthError, Principal, RateLimiter
from graphwire.processors.gateway.errors import (
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from graphwire.processors.gateway.guard import BrowserGuard, allowed_hosts
from graphwire.processors.gateway.limits import PrincipalCaps
from graphwire.processors.gateway.models import (
    Accepted,
    BodyLimit,
    GatewayMetrics,
    Measure,
    RunStatus,
    WorkflowRequest,
)
from graphwire.processors.gateway.ops import OpsServer, Readiness
from graphwire.processors.gateway.pool import BoundedPool, PoolBusy
from graphwire.processors.pgsession import keep_session
from graphwire.processors.runner.redisbatch import RedisBatcher
from graphwire.processors.settings import Settings
from graphwire.processors.webhooks.policy import WebhookPolicy
from graphwire.topics.client import GraphwireClient
from graphwire.topics.codec import principal_header
from graphwire.topics.errors import DependencyUnavailable, GraphwireError
from graphwire.topics.models import Request as RunRequest
from graphwire.topics.runstatus import read_run_state

log = logging.getLogger(__name__)

CORS_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
CORS_HEADERS = ["Authorization", "X-API-Key", "Idempotency-Key", "Content-Type", "Last-Event-ID",
                "Prefer"]
CORS_EXPOSED = ["Content-Location", "Location", "X-Pagination-Total", "X-Pagination-Next"]
"""What a browser on a GRAPHWIRE_GATEWAY_CORS_ORIGINS origin may send, and may read of the
answers (the Agent Server API's stream and pagination headers, as LangGraph's SDKs read them)."""


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
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            **settings.kafka_security(),
        )
        # the run-status layout the runner writes (read only here), and the rate limiter's
        self.redis = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        # the rate limit and slot scripts of concurrent requests share round trips
        self.redis_batch = RedisBatcher(self.redis)
        self.limiter: RateLimiter | None = None
        from graphwire.processors.gateway.ui.routes import LIVE_MAX_S

        self.caps = PrincipalCaps(  # concurrent runs and streams per caller, in Redis
            self.redis, settings.topic_prefix, max_runs=settings.gateway_max_concurrent_runs,
            run_ttl_s=settings.gateway_run_slot_ttl_s, max_streams=settings.gateway_max_streams,
            stream_ttl_s=max(settings.gateway_wait_timeout_s, LIVE_MAX_S) + 60,
            batcher=self.redis_batch)
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
        self.limiter = RateLimiter(self.redis, self.settings.topic_prefix,
                                   batcher=self.redis_batch)
        with contextlib.suppress(Exception):  # optional: status fallback and SSE backfill
            pool = await asyncpg.create_pool(
                self.settings.database_url.get_secret_value(), min_size=0,
                max_size=self.settings.gateway_db_pool_size, timeout=5, command_timeout=10,
                reset=keep_session,
                server_settings={"search_path": f'"{self.settings.audit_schema}"'}  # never public
                if self.settings.audit_schema else None,
            )
            self.db = BoundedPool(pool, self.settings.gateway_db_acquire_timeout_s)
        await self.agent.start(self.db)  # Agent Server API: its tables, the checkpointer

    async def stop(self) -> None:
        await self.agent.stop()
        await self.client.stop()
        await self.caps.stop()
        await self.redis_batch.stop()
        await self.redis.aclose()
        if self.db is not None:
            await self.db.close()

    async def principal(self, request: Request) -> Principal:
        """Authenticate and rate limit (FastAPI dependency)."""
        try:
            principal = self.auth.authenticate(request.headers)
        except AuthError as exc:
            self.metrics.auth_failures.labels(str(exc.status)).inc()
            if exc.status == 401:
                raise Unauthorized(str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
            raise Forbidden(str(exc)) from None
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
            raise Unavailable.retry(
                "the rate limiter's Redis does not answer; retry in a few seconds") from None
        if not decision.allowed:
            self.metrics.rate_limited.inc()
            raise TooManyRequests(
                f"rate limit of {principal.rate_per_minute} requests per minute reached",
                headers={"Retry-After": str(decision.retry_after_s)},
            )

    def allow(self, body: WorkflowRequest, principal: Principal) -> None:
        if not principal.may_run(body.workflow_name):
            self.metrics.auth_failures.labels("403").inc()
            raise Forbidden(f"{principal.name} may not run {body.workflow_name!r}")

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
                raise Unprocessable("Idempotency-Key and request_id differ; send one")
            request_id = idempotency_key
        if body.webhook is not None and (refusal := self.webhooks.refusal(body.webhook)):
            raise Unprocessable(f"webhook: {refusal}")
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
            raise Unprocessable(_contract_error(exc)) from None

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
            raise Unavailable(str(exc)) from None
        except TimeoutError:  # accepted and still running: say where to look, do not invite a
            # retry (without an Idempotency-Key a retried POST would start a second run)
            body = Accepted.of(request_id).model_dump()
            return JSONResponse(body, status_code=202)

    def own(self, request_id: str, principal: Principal) -> None:
        """404 (not 403: no hint that it exists) for another caller's run (an operator sees
        every run)."""
        if not principal.sees(request_id):
            raise NotFound(f"unknown request {request_id!r}")

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
            except PoolBusy:  # not "unknown": the caller may retry (503 by the errors table)
                raise
            except Exception:  # no audit tables: Redis alone answered
                pass
        raise NotFound(f"unknown request {request_id!r}")

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
    """The gateway's FastAPI app: settings, lifespan, middleware and the routers (one per
    resource; each reads the ``Gateway`` from ``app.state.gateway``).

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
    app.state.readiness = readiness
    agentapi_errors.install(app)  # the gateway's one table of errors and statuses (errors.py)
    mount(app, *agentapi.routers())  # the LangGraph Agent Server API
    origins = [o.strip() for o in settings.gateway_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=CORS_METHODS,
                           allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED)
    app.add_middleware(BodyLimit, max_bytes=settings.gateway_max_body_bytes)
    app.add_middleware(BrowserGuard, trusted_origins=frozenset(origins), hosts=allowed_hosts(
        settings.gateway_allowed_hosts, auth=settings.gateway_auth,
        bound=settings.gateway_bind_host))
    app.add_middleware(Measure, metrics=gw.metrics)

    mount(app, workflow.router)  # execute, invoke, status, stream, batch
    mount(app, runctl.router)  # cancel, thread history
    mount(app, crons.router)
    mount(app, webhookkey.router)  # POST /workflow/webhooks/signing-key
    mount(app, health.router)  # /health, /ready
    if not settings.gateway_ops_port:  # no ops port: metrics on the API's, as before
        mount(app, health.metrics_router)
    ui.mount(app, gw)  # the run inspector (/ui): pages, their JSON (/ui/api), static files
    return app


def mount(app: FastAPI, *routers: APIRouter) -> None:
    """Add the routes of prefix-less routers to the app's own list, in order.

    ``include_router`` (FastAPI 0.165) keeps a router as one lazily matched entry that walks
    its routes' versions on every request: half the cost of matching a request to one of the
    gateway's 80 routes (measured 79 -> 40 us for ``POST /runs/wait``). The routes themselves
    carry their tags and dependencies, so nothing else changes."""
    for router in routers:
        assert not router.prefix and not router.dependencies, "include_router() this one"
        app.router.routes.extend(router.routes)


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
