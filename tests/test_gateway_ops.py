"""The gateway's operational endpoints live on their own port, as every other processor's do:
the API's port tells the Internet nothing about the inside."""

from __future__ import annotations

import httpx
import pytest

from graphwire.processors.dev.broker import free_port
from graphwire.topics.specs import TopicNames
from tests.gateway_helpers import gateway_settings, serve

pytestmark = pytest.mark.integration


async def test_metrics_readiness_detail_and_docs_off_the_api_port(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """With GRAPHWIRE_GATEWAY_OPS_PORT set, the API's port answers /metrics, /docs and /redoc
    with 404 and /ready with ready-or-not only; the ops port has /health, /ready naming each
    dependency, and /metrics. /openapi.json stays on the API's port."""
    ops = free_port()
    async with serve(gateway_settings(worker_env, gateway_ops_port=ops)) as http:
        public = {p: (await http.get(p)).status_code for p in ("/metrics", "/docs", "/redoc")}
        ready = await http.get("/ready")
        schema = await http.get("/openapi.json")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops}", timeout=30) as inside:
            health = await inside.get("/health")
            detail = await inside.get("/ready")
            metrics = await inside.get("/metrics")
    assert public == {"/metrics": 404, "/docs": 404, "/redoc": 404}
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert "/workflow/execute" in schema.json()["paths"]
    assert health.json() == {"status": "alive"}
    assert (detail.status_code, detail.json()) == (200, {"ready": True, "dependencies": {
        "kafka": "ok", "redis": "ok", "postgresql": "ok"}})
    assert ('graphwire_gateway_requests_total{method="GET",route="/ready",status="200"} 1.0'
            in metrics.text)


async def test_docs_only_when_asked(worker_env: dict[str, str], topics: TopicNames) -> None:
    """GRAPHWIRE_GATEWAY_DOCS=true serves Swagger UI at /docs and ReDoc at /redoc."""
    async with serve(gateway_settings(worker_env, gateway_docs=True)) as http:
        codes = [(await http.get(p)).status_code for p in ("/docs", "/redoc")]
    assert codes == [200, 200]
