"""HealthServer: ``/health``, ``/ready`` and ``/metrics`` for a processor (aiohttp).

``/health`` answers 200 while the process runs. ``/ready`` answers 200 when every dependency
the processor needs answers, else 503 naming the failing one. ``/metrics`` is Prometheus text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Self

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class HealthServer:
    """A small HTTP server bound to ``host:port`` (port 0: disabled)."""

    def __init__(
        self,
        readiness: Callable[[], dict[str, str]],
        registry: CollectorRegistry,
        *,
        host: str = "0.0.0.0",
        port: int = 8080,
    ) -> None:
        self._readiness = readiness
        self._registry = registry
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
        log.info("health and metrics on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening. Idempotent."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _ready(self, _request: web.Request) -> web.Response:
        status = self._readiness()
        failing = {name: why for name, why in status.items() if why != "ok"}
        body = {"ready": not failing, "dependencies": status}
        return web.Response(
            body=orjson.dumps(body), status=503 if failing else 200, content_type="application/json"
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
