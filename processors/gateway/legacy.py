"""The 48-bit scopes of graphwire 0.1: what a caller stored under them stays its own.

graphwire 0.1 namespaced a caller's ids with 12 hex digits of SHA-256 (``<12 hex>.<id>``); now
it uses 32 (128 bits). The old ids cannot be renamed in place: callers hold them (they poll the
status of ids the API gave them), and they live in Kafka messages in flight, Redis leases and
done markers, checkpoints, audit rows and crons. So while ``GRAPHWIRE_GATEWAY_LEGACY_SCOPES`` is
on (the default for this release), a caller owns the ids under both scopes:

- reads and actions on an id check both (``Principal.owns``): status, stream, cancel, history,
  the inspector's run pages, and crons by name (pause, resume, remove, list);
- a thread continues where it is: under the legacy scope when it has runs there and none
  under the new one (``thread_of``), so a conversation begun on 0.1 keeps its state;
- everything new (runs, threads, crons) gets the new scope.

Switch it off once the old ids have aged out (``GRAPHWIRE_AUDIT_RETENTION_DAYS``): until then
a 48-bit scope is within reach of a targeted second preimage (about 2**48 hashes), the weakness
the new scope closes.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from graphwire.processors.gateway.auth import Principal
from graphwire.processors.gateway.errors import Unavailable


async def thread_of(db: Any, principal: Principal, thread_id: str) -> str:
    """The stored id of the caller's thread ``thread_id`` (see the module's docstring)."""
    current = f"{principal.scope}.{thread_id}"
    if not principal.legacy_scopes or db is None:
        return current
    old = f"{principal.legacy_scope}.{thread_id}"
    try:
        row = await db.fetchrow(
            "SELECT EXISTS (SELECT 1 FROM graphwire_runs WHERE thread_id = $1) AS current, "
            "EXISTS (SELECT 1 FROM graphwire_runs WHERE thread_id = $2) AS old", current, old)
    except (asyncpg.DataError, asyncpg.UntranslatableCharacterError):
        return current  # PostgreSQL cannot hold that id: no run of the caller has it
    except asyncpg.UndefinedTableError:
        return current  # no audit tables: no record of old threads to continue
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        raise Unavailable.retry(
            "PostgreSQL does not answer, so the gateway cannot tell whether this thread "
            "continues one of graphwire 0.1; retry in a few seconds") from None
    return old if row["old"] and not row["current"] else current
