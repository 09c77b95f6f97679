"""The run-control part of ``graphwire dev --demo``: double-texting, cancel, time travel."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from graphwire.topics.client import GraphwireClient

Show = Callable[[GraphwireClient, str], Awaitable[str]]


async def run_control_demo(
    client: GraphwireClient, show: Show, thread: str, database_url: str, schema: str | None
) -> tuple[bool, list[str]]:
    """Three requests on a busy thread (one rejected, one cancelled), then a fork from an
    earlier checkpoint; (all as expected, ids)."""
    busy = f"{thread}-busy"
    first = await client.submit("slow", {"seconds": 1.0}, thread_id=busy)
    queued = await client.submit("slow", {"seconds": 0.2}, thread_id=busy)
    rejected = await client.submit("slow", {"seconds": 0.2}, thread_id=busy,
                                   multitask_strategy="reject")
    print(f"\n>>> reject: a third request on busy thread {busy}, multitask_strategy 'reject'",
          flush=True)
    ok = await show(client, rejected) == "rejected"
    await client.cancel(queued, reason="demo")
    print(f"\n>>> cancel {queued} (queued behind {first}): it runs nothing", flush=True)
    ok &= await show(client, queued) == "cancelled"
    ok &= (await client.result(first, timeout=60)).status == "success"

    travel = f"{thread}-travel"
    original = await client.submit("pipeline", {"text": "Time Travel"}, thread_id=travel)
    ok &= (await client.result(original, timeout=60)).status == "success"
    history = await client.history(travel, database_url=database_url, schema=schema)
    print(f"\n>>> history: graphwire history {travel} --graph pipeline", flush=True)
    for c in history:
        print(f"  {c.checkpoint_id} step {c.step} {c.source}: ran {','.join(c.ran) or '-'}, "
              f"next {','.join(c.next) or '-'}", flush=True)
    after = next(c for c in history if c.ran == ["normalize"])
    fork = await client.submit("pipeline", None, thread_id=travel,
                               checkpoint_id=after.checkpoint_id,
                               command={"update": {"text": "forked text"}})
    print(f"\n>>> fork: from {after.checkpoint_id} (after normalize), text edited", flush=True)
    ok &= await show(client, fork) == "success"
    return ok, [first, queued, rejected, original, fork]
