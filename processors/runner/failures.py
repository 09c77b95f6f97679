"""Which failures of PostgreSQL and Redis are about the message, not the service.

Only connection-class failures are outages (the runner pauses and retries the same message).
A service that answered "I cannot store this value" (a NUL in a text column, a number out of
range, a key too long for an index, a Redis reply refusing the data) will answer the same on
every retry: that message is bad, and retrying it would stop its partition for good.
"""

from __future__ import annotations

import asyncpg
from asyncpg.exceptions._base import DataError as ClientDataError
from redis.exceptions import DataError as RedisDataError
from redis.exceptions import ResponseError

from graphwire.processors.pgerrors import kind as pg_kind


def pg_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL (or asyncpg encoding an argument) refusing a value: the one
    classifier of ``graphwire.processors.pgerrors``, which the audit sink and the scheduler use
    too. asyncpg's client-side ``DataError`` subclasses ``InterfaceError``, so this must be asked
    before treating an ``InterfaceError`` as a lost connection."""
    return isinstance(exc, asyncpg.PostgresError | ClientDataError) and pg_kind(exc) == "data"


# Replies a healthy Redis gives while it cannot serve (failover, loading, memory, a busy
# script): outages, retried. Any other error reply is about the command's data.
_REDIS_OUTAGE_REPLIES = (
    "BUSY", "LOADING", "MASTERDOWN", "READONLY", "OOM", "TRYAGAIN", "CLUSTERDOWN",
    "NOREPLICAS", "NOAUTH", "NOPERM", "WRONGPASS",
)


def _redis_data_error(exc: BaseException) -> bool:
    if isinstance(exc, RedisDataError):
        return True
    if not isinstance(exc, ResponseError):
        return False
    return not str(exc).upper().startswith(_REDIS_OUTAGE_REPLIES)


def data_error(exc: BaseException | None) -> BaseException | None:
    """The PostgreSQL or Redis data error in ``exc``'s chain of causes, or None.

    Looks through ``__cause__``/``__context__`` because graphwire wraps library errors at the
    boundary (``raise DependencyUnavailable(...) from exc``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if pg_data_error(exc) or _redis_data_error(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def refusal(exc: BaseException) -> str:
    """One sentence for a result or dead letter: which service refused what, and what to do."""
    service = "Redis" if isinstance(exc, ResponseError | RedisDataError) else "PostgreSQL"
    return (
        f"{service} refused this request's data ({type(exc).__name__}: {exc}); it would refuse "
        "it on every retry: fix the request (ids, names and state must be storable text, "
        "without NUL characters) and send it again"
    )
