"""graphwire's wire contract: message models, codecs, topic specs and topic administration.

Anyone producing to or consuming from graphwire topics, in any language, can read this package
(or the JSON Schema that ``graphwire schema`` writes from it) and know the whole contract. It
imports nothing from ``processors`` or ``graphs``.
"""

from graphwire.topics.errors import (
    DependencyUnavailable,
    GraphwireError,
    InvalidRequest,
    LeftForRedelivery,
    RequestTooLarge,
    UndecodableMessage,
    UnknownGraph,
)
from graphwire.topics.models import ErrorInfo, Event, EventType, Request, Result, Status, StreamMode
from graphwire.topics.specs import TopicNames

__all__ = [
    "DependencyUnavailable",
    "ErrorInfo",
    "Event",
    "EventType",
    "GraphwireError",
    "InvalidRequest",
    "LeftForRedelivery",
    "Request",
    "RequestTooLarge",
    "Result",
    "Status",
    "StreamMode",
    "TopicNames",
    "UndecodableMessage",
    "UnknownGraph",
]
