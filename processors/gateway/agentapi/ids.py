"""Ids and times as the Agent Server API has them: UUID strings and ISO 8601 with an offset."""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime

from uuid_utils.compat import uuid7

from graphwire.processors.gateway.agentapi.errors import Unprocessable

ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
"""LangGraph's namespace for the default assistant ids: ``uuid5(namespace, graph_id)``."""


@functools.lru_cache(maxsize=1024)
def default_assistant_id(graph_id: str) -> str:
    """The id of a graph's default assistant, the same as LangGraph's servers give it."""
    return str(uuid.uuid5(ASSISTANT_NAMESPACE, graph_id))


def new_run_id() -> str:
    """A run id: a UUIDv7 (time-ordered), also the request's ``request_id`` on Kafka."""
    return str(uuid7())


def new_id() -> str:
    """A random UUID (threads, crons, custom assistants)."""
    return str(uuid.uuid4())


def parse_uuid(value: str, what: str) -> str:
    """``value`` in canonical form, or 422 ``Invalid <what> ID: must be a UUID``."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise Unprocessable(f"Invalid {what} ID: must be a UUID") from None


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID (else, where an assistant id goes, it is a graph name)."""
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return True


def iso(moment: datetime | None = None) -> str:
    """``moment`` (default now) as ISO 8601 with its offset, e.g. ``...T15:35:44.18+00:00``."""
    return (moment or datetime.now(UTC)).isoformat()
