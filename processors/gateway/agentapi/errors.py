"""Domain errors of the Agent Server API and the one table that maps them to HTTP statuses.

Routes and services raise these; ``install`` turns each into ``{"detail": "..."}`` with the
status the official SDK maps to its typed errors (400, 404, 409, 422; 503 while a dependency
is down).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class ApiError(Exception):
    """A refusal the client can act on; its message is the response's ``detail``."""

    status = 400


class BadRequest(ApiError):
    """The request contradicts itself (e.g. a resume without a thread)."""

    status = 400


class NotFound(ApiError):
    """No such assistant, thread, run, cron or item, or not the caller's."""

    status = 404


class Conflict(ApiError):
    """It exists already, or the thread is busy and the run asked to be rejected."""

    status = 409


class Unprocessable(ApiError):
    """A field graphwire cannot honour, or a malformed id or value (the field is named)."""

    status = 422


class Unavailable(ApiError):
    """A dependency (PostgreSQL, the checkpointer, the graphs) is missing or down; retry later."""

    status = 503


def install(app: FastAPI) -> None:
    """Answer every ``ApiError`` as ``{"detail": message}`` with its status."""

    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        status = exc.status if isinstance(exc, ApiError) else 500
        return JSONResponse({"detail": str(exc)}, status_code=status)

    app.add_exception_handler(ApiError, handle)
