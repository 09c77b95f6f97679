"""``/health``, ``/ready`` and (without an ops port) ``/metrics`` on the API's port.

With ``GRAPHWIRE_GATEWAY_OPS_PORT`` set, the ops port (``ops.OpsServer``) serves the details:
here ``/ready`` says only ready or not, and ``metrics_router`` is not mounted.
"""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from graphwire.processors.gateway.agentapi.deps import GatewayDep
from graphwire.processors.gateway.ops import is_ready

router = APIRouter()
metrics_router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/ready")
async def ready(request: Request, gw: GatewayDep) -> JSONResponse:
    """Whether this gateway can take runs (each dependency's state: the ops port's)."""
    deps = await request.app.state.readiness()
    ok = is_ready(deps)
    body: dict[str, Any] = {"ready": ok}
    if not gw.settings.gateway_ops_port:
        body["dependencies"] = deps
    return JSONResponse(body, status_code=200 if ok else 503)


@metrics_router.get("/metrics", response_class=Response)
async def metrics(gw: GatewayDep) -> Response:
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
