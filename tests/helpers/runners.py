"""One way to make an in-process runner in a test, and the fixture that starts them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.runner.runner import GraphRunner
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames


def runner_for(
    settings: Settings, graphs: str | GraphRegistry = "", **changes: Any
) -> GraphRunner:
    """A runner (not started: ``async with`` it) on ``settings`` with ``changes`` applied. It runs
    the built-in graphs plus ``graphs`` (a GRAPHWIRE_GRAPHS spec), or exactly ``graphs`` when
    that is a registry."""
    registry = (
        graphs if isinstance(graphs, GraphRegistry) else GraphRegistry.from_sources(specs=graphs)
    )
    return GraphRunner(settings.model_copy(update=changes) if changes else settings, registry)


StartRunner = Callable[..., Awaitable[GraphRunner]]


@pytest.fixture
async def start_runner(settings: Settings, topics: TopicNames) -> AsyncIterator[StartRunner]:
    """``await start_runner(graphs="", **changes)`` starts a runner of :func:`runner_for` on this
    test's topics and settings; every runner it started stops when the test ends, last first."""
    async with AsyncExitStack() as stack:

        async def start(graphs: str | GraphRegistry = "", **changes: Any) -> GraphRunner:
            return await stack.enter_async_context(runner_for(settings, graphs, **changes))

        yield start
