"""Domain errors of the Agent Server API: the gateway's own (``graphwire.processors.gateway.
errors``), whose one table maps each to an HTTP status.

Routes and services raise these; ``install`` turns each into ``{"detail": "..."}`` with the
status the official SDK maps to its typed errors (400, 404, 409, 422; 503 while a dependency
is down).
"""

from __future__ import annotations

from graphwire.processors.gateway.errors import (
    STATUS,
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unprocessable,
    install,
)

__all__ = ["STATUS", "ApiError", "BadRequest", "Conflict", "Forbidden", "NotFound",
           "TooManyRequests", "Unauthorized", "Unavailable", "Unprocessable", "install"]
