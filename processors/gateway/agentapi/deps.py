"""What the Agent Server routes share: the gateway service and the authenticated caller."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from graphwire.processors.gateway.auth import Principal

if TYPE_CHECKING:
    from graphwire.processors.gateway.app import Gateway


def gateway_of(request: Request) -> Gateway:
    """The app's ``Gateway`` (settings, Kafka client, Redis, PostgreSQL, metrics)."""
    found: Any = request.app.state.gateway
    return found  # type: ignore[no-any-return]


async def gateway(request: Request) -> Gateway:
    """``gateway_of`` as a FastAPI dependency: ``async``, because FastAPI runs a plain
    ``def`` dependency in its thread pool, a thread hop per request for an attribute read."""
    return gateway_of(request)


async def caller(request: Request) -> Principal:
    """The authenticated, rate-limited caller (``x-api-key``, a bearer JWT, or anonymous with
    ``GRAPHWIRE_GATEWAY_AUTH=false``)."""
    return await gateway_of(request).principal(request)


GatewayDep = Annotated[Any, Depends(gateway)]
"""The ``Gateway`` (typed ``Any``: the app module imports this package)."""
Caller = Annotated[Principal, Depends(caller)]
