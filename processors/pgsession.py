"""``keep_session``: an asyncpg pool ``reset`` for pools whose users leave no session state.

asyncpg's default reset runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
ALL`` at every release of a pooled connection: one more round trip per query for a pool whose
users take one connection per statement (the gateway's records, the runner's group commits).
With ``reset=keep_session`` asyncpg still rolls back a transaction left open (it always does,
before the pool's reset), and nothing more is sent.

Only for pools whose users never leave session state behind: no ``SET`` outside a
transaction, no ``LISTEN``, no cursor outside a transaction, and session advisory locks only
under a ``try/finally`` that unlocks them (the runner's migration lock).
"""

from __future__ import annotations

from typing import Any


async def keep_session(_conn: Any) -> None:
    """A pool's ``reset``: nothing beyond asyncpg's own rollback of an open transaction."""
