"""retried_by_node: which node's own RetryPolicy LangGraph applied to a run's failure (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.func import entrypoint, task
from langgraph.types import RetryPolicy

from graphwire.processors.runner.noderetry import retried_by_node
from tests.fidelity.test_retry_policy import GRAPHS, QUICK


async def _raised(graph: Any, payload: Any) -> BaseException:
    with pytest.raises(ConnectionError) as info:
        await graph.ainvoke(payload)
    return info.value


@task(retry_policy=RetryPolicy(max_attempts=2, **QUICK))
async def failing_task(n: int) -> int:
    raise ConnectionError(f"down {n}")


@entrypoint()
async def functional(n: int) -> int:
    return await failing_task(n)


async def test_the_node_path_that_owns_the_policy_is_named_from_langgraphs_task_notes() -> None:
    """A node's policy gives "work", a builder default too, a subgraph's inner node
    "child/inner"; a node without a policy, an exception without notes and None give None."""
    found = {name: retried_by_node(graph, await _raised(graph, {"tag": name}))
             for name, graph in GRAPHS.items() if name != "flaky"}
    assert found == {"policy3": "work", "default2": "work", "nested2": "child/inner",
                     "plain": None}
    assert retried_by_node(GRAPHS["plain"], ConnectionError("no notes")) is None
    assert retried_by_node(GRAPHS["plain"], None) is None


async def test_a_functional_task_policy_is_not_seen_so_the_runner_still_retries() -> None:
    """The known gap: a functional-API ``@task(retry_policy=...)`` is not a node of the graph,
    so its failure names no policy (None) and the runner's retries apply as before."""
    exc = await _raised(functional, 1)
    assert [n.split(" and id")[0] for n in exc.__notes__] == [
        "During task with name 'failing_task'", "During task with name 'functional'"]
    assert retried_by_node(functional, exc) is None
