"""The test database and Redis: their URLs, one way to connect, and the ``db`` fixture."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from graphwire.processors.audit.db import server_settings

TEST_DATABASE_URL = os.environ.get(
    "GRAPHWIRE_TEST_DATABASE_URL", "postgresql://127.0.0.1:5432/test"
)
TEST_REDIS_URL = os.environ.get("GRAPHWIRE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@asynccontextmanager
async def connect(schema: str | None = None, url: str = TEST_DATABASE_URL) -> AsyncIterator[Any]:
    """An asyncpg connection to the test database (or ``url``), closed on exit; with ``schema``
    it is the only schema on the search_path, as the audit processors connect."""
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
