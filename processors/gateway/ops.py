"""The gateway's operational endpoints, on their own port (``GRAPHWIRE_GATEWAY_OPS_PORT``) as
every other processor's are: ``/health``, ``/ready`` naming each dependency, ``/metrics``.

The API's port is the one an Ingress exposes, so with an ops port it keeps only ``/health`` and a
``/ready`` that says ready or not: no Prometheus counters, no error text with internal hosts.
Readiness is checked at most once a second however often it is asked (a Redis PING and a
PostgreSQL ``SELECT 1``), so anonymous callers cannot turn it into load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Dependencies = dict[str, str]


def is_ready(deps: Dependencies) -> bool:
    """Kafka and Redis answer (PostgreSQL is optional: status falls back to Redis only)."""
    return deps.get("kafka") == "ok" and deps.get("redis") == "ok"


class Readiness:
    """The gateway's dependencies, checked at most every ``max_age_s`` (one check at a time)."""

    def __init__(self, check: Callable[[], Awaitable[Dependencies]], max_age_s: float = 1.0):
        self._check, self._max_age_s = check, max_age_s
        self._last: tuple[float, Dependencies] | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> Dependencies:
        async with self._lock:
            if self._last is None or time.monotonic() - self._last[0] > self._max_age_s:
                self._last = (time.monotonic(), await self._check())
            return self._last[1]


class OpsServer:
    """``/health``, ``/ready`` and ``/metrics`` on ``host:port`` (aiohttp; port 0: none)."""

    def __init__(self, readiness: Readiness, registry: CollectorRegistry, *, host: str,
                 port: int) -> None:
        self._readiness, self._registry = readiness, registry
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen (no-op when port is 0). Safe to call twice."""
        if self._runner is not None or self.port == 0:
            return
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("gateway health, readiness and metrics on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening. Idempotent."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _ready(self, _request: web.Request) -> web.Response:
        deps = await self._readiness()
        ok = is_ready(deps)
        return web.Response(body=orjson.dumps({"ready": ok, "dependencies": deps}),
                            status=200 if ok else 503, content_type="application/json")

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
