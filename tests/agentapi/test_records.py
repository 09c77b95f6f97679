"""The Agent Server records in PostgreSQL, as the runs routes use them: runs of a thread, their
status, a thread's state after a run, and owner scoping (the operator's ``None`` sees all)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from graphwire.processors.gateway.agentapi import records
from graphwire.processors.gateway.agentapi.errors import Conflict
from graphwire.processors.gateway.agentapi.ids import default_assistant_id, new_id, new_run_id
from graphwire.processors.gateway.agentapi.runwrites import RunWrites
from graphwire.processors.gateway.pool import BoundedPool
from tests.conftest import TEST_DATABASE_URL

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(prefix: str, worker_env: dict[str, str]) -> AsyncIterator[BoundedPool]:
    """The records tables in this test's schema (dropped after it, with ``worker_env``)."""
    pool = await asyncpg.create_pool(TEST_DATABASE_URL, min_size=0, max_size=2,
                                     server_settings={"search_path": f'"{prefix}"'})
    bounded = BoundedPool(pool, 5)
    await records.setup(bounded, prefix)
    await records.setup(bounded, prefix)  # idempotent
    try:
        yield bounded
    finally:
        await bounded.close()


async def test_runs_and_thread_state_as_the_runs_routes_record_them(db: BoundedPool) -> None:
    """Two runs on a thread list newest first; ``active_runs`` has the pending and running
    ones oldest first; ``set_run_status`` changes one; a second run with the same id is a
    Conflict; ``set_thread_state`` stamps metadata and sets status, values and interrupts,
    which ``search_threads`` filters on; another owner sees neither thread nor run, the
    operator (None) sees both; ``delete_thread`` removes its runs."""
    tid = new_id()
    thread = await records.create_thread(db, thread_id=tid, owner="a", metadata={"k": 1})
    first, second = new_run_id(), new_run_id()
    assistant = default_assistant_id("echo")
    writes = RunWrites(db)
    made = await writes.create_run(run_id=first, thread_id=tid, assistant_id=assistant,
                                   owner="a", kwargs={"input": {"text": "x"}},
                                   multitask_strategy="enqueue")
    await writes.create_run(run_id=second, thread_id=tid, assistant_id=assistant, owner="a")
    with pytest.raises(Conflict):
        await writes.create_run(run_id=first, thread_id=tid, assistant_id=assistant, owner="a")
    running = await writes.set_run_status(first, "running")
    active = await records.active_runs(db, tid)
    await writes.set_run_status(second, "success")
    listed = await records.list_runs(db, tid, "a")
    only_success = await records.list_runs(db, tid, "a", status="success")
    await records.set_thread_state(db, tid, status="interrupted", values={"text": "x"},
                                   interrupts={"t1": [{"id": "i1", "value": "ok?"}]},
                                   metadata={"graph_id": "echo", "assistant_id": assistant})
    after = await records.get_thread(db, tid, "a")
    by_values, total = await records.search_threads(db, "a", values={"text": "x"},
                                                    status="interrupted")
    hidden = (await records.get_thread(db, tid, "b"), await records.get_run(db, first, "b"))
    seen = (await records.get_thread(db, tid, None), await records.get_run(db, first, None,
                                                                           thread_id=tid))
    await records.delete_thread(db, tid, "a")
    gone = (await records.get_thread(db, tid, None), await records.list_runs(db, tid, None))
    assert (thread["status"], made["status"], made["kwargs"], made["multitask_strategy"]) == (
        "idle", "pending", {"input": {"text": "x"}}, "enqueue")
    assert (made["run_id"], made["thread_id"], made["assistant_id"]) == (first, tid, assistant)
    assert running is not None and running["status"] == "running"
    assert [(r["run_id"], r["status"]) for r in active] == [(first, "running"),
                                                            (second, "pending")]
    assert [r["run_id"] for r in listed] == [second, first]
    assert [r["run_id"] for r in only_success] == [second]
    assert after is not None
    assert (after["status"], after["values"], after["interrupts"], after["metadata"]) == (
        "interrupted", {"text": "x"}, {"t1": [{"id": "i1", "value": "ok?"}]},
        {"k": 1, "graph_id": "echo", "assistant_id": assistant})
    assert ([t["thread_id"] for t in by_values], total) == ([tid], 1)
    assert hidden == (None, None)
    assert seen[0] == after and seen[1] is not None and seen[1]["status"] == "running"
    assert gone == (None, [])


class Counting:
    """The pool, counting the statements sent through ``fetch``."""

    def __init__(self, db: BoundedPool) -> None:
        self.db, self.statements = db, 0

    async def fetch(self, query: str, *args: object) -> object:
        self.statements += 1
        return await self.db.fetch(query, *args)


async def test_concurrent_run_writes_go_in_groups_each_caller_its_own_row(
    db: BoundedPool,
) -> None:
    """20 runs created at once: fewer statements than runs, each caller its own record; a
    repeated id in the same group is a Conflict for its caller alone; 20 status changes at
    once (one run twice: the later wins) likewise; an unknown run's status change is None."""
    counting = Counting(db)
    writes = RunWrites(counting)
    ids = [new_run_id() for _ in range(20)]
    assistant = default_assistant_id("echo")

    async def create(run_id: str, i: int) -> object:
        try:
            return await writes.create_run(run_id=run_id, thread_id=None,
                                           assistant_id=assistant, owner="a", kwargs={"i": i})
        except Conflict as exc:
            return str(exc)

    made = await asyncio.gather(*(create(rid, i) for i, rid in enumerate(ids)),
                                create(ids[3], 99))
    created = counting.statements
    changed = await asyncio.gather(*(writes.set_run_status(rid, "success") for rid in ids[:19]),
                                   writes.set_run_status(ids[0], "error"),
                                   writes.set_run_status(new_run_id(), "success"))
    assert [(r["run_id"], r["kwargs"], r["status"]) for r in made[:20]] == [  # type: ignore[index]
        (rid, {"i": i}, "pending") for i, rid in enumerate(ids)]
    assert made[20] == f"Run {ids[3]} already exists"
    assert 1 <= created < 20
    assert [r["status"] for r in changed[1:19]] == ["success"] * 18  # type: ignore[index]
    assert changed[0]["status"] == changed[19]["status"] == "error"  # type: ignore[index]
    assert changed[20] is None
    assert counting.statements - created < 21
    assert (await records.get_run(db, ids[0], None))["status"] == "error"  # type: ignore[index]
