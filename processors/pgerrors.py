"""What a PostgreSQL failure means for the message being stored: wait, retry, or refuse it.

One classifier for every processor that writes what came off Kafka (the audit sink, the
scheduler's intake): only an outage is worth waiting for. A data error (a NUL in a text column,
a value out of range, a value too long for an index) is about the message: retrying cannot
help, so the caller isolates the bad one and dead-letters it, and the others go on.
"""

from __future__ import annotations

from typing import Literal

import asyncpg
from asyncpg.exceptions._base import DataError as ClientDataError

Kind = Literal["unavailable", "conflict", "data"]

# SQLSTATE classes worth retrying: the connection (08), the server's resources (53) or state
# (55 object not in prerequisite state, 57 operator intervention, 58 system error, XX internal),
# or a setup an operator can fix (42 missing table or schema, privileges; 3D unknown database;
# 3F unknown schema; 28 authentication). Class 40 (deadlock, serialization) is retried at once.
# Everything else is about the rows: class 22 data exceptions, 23 constraint violations, 54
# program limits (an index row too large: the same row fails forever, however long we wait).
RETRY_CLASSES = frozenset({"08", "53", "55", "57", "58", "42", "3D", "3F", "28", "XX"})


def kind(exc: BaseException) -> Kind:
    """``unavailable`` (wait and retry), ``conflict`` (retry now) or ``data`` (isolate)."""
    if isinstance(exc, ClientDataError):  # asyncpg could not encode an argument (not an outage)
        return "data"
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | ConnectionError):
        return "unavailable"
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str) and state:
        if state.startswith("40"):
            return "conflict"
        return "unavailable" if state[:2] in RETRY_CLASSES else "data"
    if isinstance(exc, asyncpg.PostgresError):
        return "unavailable"
    return "data"  # asyncpg's own encoding errors (OverflowError, ValueError, TypeError)
