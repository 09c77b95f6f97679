"""The test database: one way to connect, the ``db`` fixture, and waiting for rows.

Its URL is ``tests.conftest.TEST_DATABASE_URL``: the harness variables are read there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from graphwire.processors.audit.db import server_settings
from tests.helpers.waiting import eventually


@asynccontextmanager
async def connect(schema: str | None = None, url: str | None = None) -> AsyncIterator[Any]:
    """An asyncpg connection to the test database (or ``url``), closed on exit; with ``schema``
    it is the only schema on the search_path, as the audit processors connect."""
    if url is None:
        from tests.conftest import TEST_DATABASE_URL  # imported late: conftest imports us

        url = TEST_DATABASE_URL
    conn = await asyncpg.connect(url, server_settings=server_settings(schema) if schema else None)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def db(prefix: str) -> AsyncIterator[Any]:
    """A connection to the test database with this test's schema (named like its topic prefix,
    also its audit and checkpoint schema) alone on the search_path."""
    async with connect(prefix) as conn:
        yield conn


async def wait_rows(db: Any, sql: str, want: int, timeout: float = 60.0) -> None:
    """Wait until ``sql`` (a count) returns ``want`` (a missing table counts as -1); fail with
    the last count."""

    async def count() -> int:
        try:
            return int(await db.fetchval(sql))
        except asyncpg.UndefinedTableError:
            return -1

    await eventually(count, timeout, what=f"{sql} = {want}", until=lambda got: got == want,
                     interval=0.2)
