"""graphwire: run LangGraph graphs in production on Kafka.

The public API, the one thing users import::

    from graphwire import GraphwireClient, Client, RunError

``GraphwireClient`` (asyncio) and ``Client`` (blocking) submit requests and read their events and
results; the errors are what ``result(raise_on_error=True)`` raises. The message models are here
too, for services that build or read messages themselves. Graph authors make side effects at most
once with ``once``, ``once_tool`` and ``effect_key`` (``EffectInDoubt``); webhook receivers
check a delivery with ``verify_webhook``. Everything else
(``graphwire.topics``, ``graphwire.graphs``, ``graphwire.processors``) is internal: its module
paths may move.

Names are imported on first use, so ``import graphwire`` stays cheap and a graph module that
imports only ``graphwire.graphs`` does not pull in the Kafka client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graphwire.graphs.effects import EffectInDoubt, effect_key, once, once_tool
    from graphwire.topics.client import CancelOutcome, GraphwireClient
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
    from graphwire.topics.history import CheckpointInfo
    from graphwire.topics.models import Control, Event, EventType, Request, Result, Status
    from graphwire.topics.syncclient import Client
    from graphwire.topics.webhooks import WebhookSignatureError, sign_webhook, verify_webhook

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
    # run control
    "CancelOutcome": "graphwire.topics.client",
    "CheckpointInfo": "graphwire.topics.history",
    "Control": "graphwire.topics.models",
    # side effects at most once, for graph authors
    "once": "graphwire.graphs.effects",
    "once_tool": "graphwire.graphs.effects",
    "effect_key": "graphwire.graphs.effects",
    "EffectInDoubt": "graphwire.graphs.effects",
    "verify_webhook": "graphwire.topics.webhooks",
    "sign_webhook": "graphwire.topics.webhooks",
    "WebhookSignatureError": "graphwire.topics.webhooks",
    # crons (client.crons returns and raises these)
    "Cron": "graphwire.topics.crons",
    "CronSpec": "graphwire.topics.crons",
    "CronError": "graphwire.topics.crons",
}

__all__ = [
    "CancelOutcome",
    "CheckpointInfo",
    "Client",
    "Control",
    "Cron",
    "CronError",
    "CronSpec",
    "DependencyUnavailable",
    "EffectInDoubt",
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
    "WebhookSignatureError",
    "effect_key",
    "once",
    "once_tool",
    "sign_webhook",
    "verify_webhook",
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
