"""The gateway's domain errors, and the one table that maps them to HTTP statuses.

The service (``Gateway``), the routers and the inspector raise these, never ``HTTPException``;
``install`` answers each as ``{"detail": message}`` with the status ``STATUS`` gives its class
(the nearest listed ancestor), plus its headers (``Retry-After``, ``WWW-Authenticate``), as
httpx maps transport errors at its boundary::

    ApiError                 400  the request cannot be served as sent
     +-- BadRequest          400  it contradicts itself
     +-- Unauthorized        401  who are you? (``WWW-Authenticate: Bearer``)
     +-- Forbidden           403  you may not
     +-- NotFound            404  no such thing, or not the caller's (no hint that it exists)
     +-- Conflict            409  it exists already, finished already, or was shown already
     +-- Unprocessable       422  a field graphwire cannot honour (the field is named)
     +-- TooManyRequests     429  over a rate limit or a cap (``Retry-After``)
     +-- Unavailable         503  a dependency does not answer: retry (``Retry-After``)
    PoolBusy                 503  every PostgreSQL connection stayed busy (``Retry-After: 5``)

The Agent Server API (``agentapi.errors``) raises the same classes.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from graphwire.processors.gateway.pool import PoolBusy

RETRY_AFTER_S = 5
"""What ``Unavailable`` and ``PoolBusy`` answers ask a client to wait, in seconds."""


class ApiError(Exception):
    """A refusal the client can act on; its message is the response's ``detail``."""

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers: dict[str, str] | None = dict(headers) if headers else None

    @property
    def status(self) -> int:
        """The HTTP status ``STATUS`` gives this error's class."""
        return status_of(type(self))


class BadRequest(ApiError):
    """The request contradicts itself (e.g. a resume without a thread)."""


class Unauthorized(ApiError):
    """No credentials, or credentials this gateway does not accept."""


class Forbidden(ApiError):
    """The caller is known but may not do this (a graph it may not run, a cross-site POST)."""


class NotFound(ApiError):
    """No such run, thread, cron or item, or not the caller's."""


class Conflict(ApiError):
    """It exists already, it finished already, or the thread is busy and the run asked to be
    rejected."""


class Unprocessable(ApiError):
    """A field graphwire cannot honour, or a malformed id or value (the field is named)."""


class TooManyRequests(ApiError):
    """Over the caller's rate limit or one of its caps; ``Retry-After`` says when to retry."""


class Unavailable(ApiError):
    """A dependency (Kafka, Redis, PostgreSQL) does not answer; the client may retry."""

    @classmethod
    def retry(cls, message: str) -> Unavailable:
        """The error with ``Retry-After: 5``."""
        return cls(message, headers={"Retry-After": str(RETRY_AFTER_S)})


STATUS: dict[type[Exception], int] = {
    ApiError: 400,
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Unprocessable: 422,
    TooManyRequests: 429,
    Unavailable: 503,
    PoolBusy: 503,
}
"""The one table of the gateway's errors and their HTTP statuses."""


def status_of(kind: type[Exception]) -> int:
    """The status of ``kind``: its own entry in ``STATUS``, else its nearest ancestor's."""
    for ancestor in kind.__mro__:
        if ancestor in STATUS:
            return STATUS[ancestor]
    return 500


async def _answer(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ApiError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=exc.headers)
    # PoolBusy: not ours to subclass, but a 503 the client may retry
    return JSONResponse({"detail": str(exc)}, status_code=status_of(type(exc)),
                        headers={"Retry-After": str(RETRY_AFTER_S)})


def install(app: FastAPI) -> None:
    """Answer every ``ApiError`` (and ``PoolBusy``) as ``{"detail": message}`` with its
    status and headers."""
    app.add_exception_handler(ApiError, _answer)
    app.add_exception_handler(PoolBusy, _answer)
