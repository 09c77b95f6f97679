"""What the Agent Server routes share: the gateway service and the authenticated caller."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from graphwire.processors.gateway.auth import Principal

if TYPE_CHECKING:
    from graphwire.processors.gateway.app import Gateway


def gateway(request: Request) -> Gateway:
    """The app's ``Gateway`` (settings, Kafka client, Redis, PostgreSQL, metrics)."""
    found: Any = request.app.state.gateway
    return found  # type: ignore[no-any-return]


async def caller(request: Request) -> Principal:
    """The authenticated, rate-limited caller (``x-api-key``, a bearer JWT, or anonymous with
    ``GRAPHWIRE_GATEWAY_AUTH=false``)."""
    return await gateway(request).principal(request)


GatewayDep = Annotated[Any, Depends(gateway)]
"""The ``Gateway`` (typed ``Any``: the app module imports this package)."""
Caller = Annotated[Principal, Depends(caller)]
