"""graphwire: run LangGraph graphs in production on Kafka.

The public API, the one thing users import::

    from graphwire import GraphwireClient, Client, RunError

``GraphwireClient`` (asyncio) and ``Client`` (blocking) submit requests and read their events and
results; the errors are what ``result(raise_on_error=True)`` raises. The message models are here
too, for services that build or read messages themselves. Everything else (``graphwire.topics``,
``graphwire.graphs``, ``graphwire.processors``) is internal: its module paths may move.

Names are imported on first use, so ``import graphwire`` stays cheap and a graph module that
imports only ``graphwire.graphs`` does not pull in the Kafka client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graphwire.topics.client import GraphwireClient
    from graphwire.topics.crons import Cron, CronError, CronSpec
    from graphwire.topics.errors import (
        DependencyUnavailable,
        GraphwireError,
        InvalidRequest,
        RunError,
        RunFailed,
        RunRejected,
        RunTimedOut,
    )
    from graphwire.topics.models import Event, EventType, Request, Result, Status
    from graphwire.topics.syncclient import Client

_EXPORTS = {
    "GraphwireClient": "graphwire.topics.client",
    "Client": "graphwire.topics.syncclient",
    "GraphwireError": "graphwire.topics.errors",
    "DependencyUnavailable": "graphwire.topics.errors",
    "InvalidRequest": "graphwire.topics.errors",
    "RunFailed": "graphwire.topics.errors",
    "RunError": "graphwire.topics.errors",
    "RunRejected": "graphwire.topics.errors",
    "RunTimedOut": "graphwire.topics.errors",
    "Request": "graphwire.topics.models",
    "Result": "graphwire.topics.models",
    "Event": "graphwire.topics.models",
    "EventType": "graphwire.topics.models",
    "Status": "graphwire.topics.models",
    # crons (client.crons returns and raises these)
    "Cron": "graphwire.topics.crons",
    "CronSpec": "graphwire.topics.crons",
    "CronError": "graphwire.topics.crons",
}

__all__ = [
    "Client",
    "Cron",
    "CronError",
    "CronSpec",
    "DependencyUnavailable",
    "Event",
    "EventType",
    "GraphwireClient",
    "GraphwireError",
    "InvalidRequest",
    "Request",
    "Result",
    "RunError",
    "RunFailed",
    "RunRejected",
    "RunTimedOut",
    "Status",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'graphwire' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
