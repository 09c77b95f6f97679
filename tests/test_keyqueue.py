"""KeyQueue: sequential per key, concurrent across keys, revocable."""

import asyncio

from graphwire.processors.runner.keyqueue import KeyQueue


async def test_items_of_one_key_run_in_order_and_keys_run_concurrently() -> None:
    """Key a's items never overlap and keep order; key b runs while a is running."""
    log: list[str] = []
    gate = asyncio.Event()

    async def handler(item: str) -> None:
        log.append(f"start {item}")
        if item == "a1":
            await gate.wait()
        log.append(f"end {item}")

    s: KeyQueue[str] = KeyQueue(handler)
    s.submit("p", "a", "a1")
    s.submit("p", "a", "a2")
    s.submit("p", "b", "b1")
    await asyncio.sleep(0.01)
    assert log == ["start a1", "start b1", "end b1"]
    gate.set()
    await s.drain(None, timeout=1)
    assert log == ["start a1", "start b1", "end b1", "end a1", "start a2", "end a2"]


async def test_drop_queued_and_drain_cancel_what_did_not_finish() -> None:
    """Revoking a group drops its queued items and cancels running ones after the grace."""
    started: list[str] = []

    async def handler(item: str) -> None:
        started.append(item)
        await asyncio.sleep(10)

    s: KeyQueue[str] = KeyQueue(handler)
    for item in ("x1", "x2", "x3"):
        s.submit("p0", "x", item)
    s.submit("p1", "y", "y1")
    await asyncio.sleep(0.01)
    assert s.drop_queued("p0") == 2
    assert await s.drain("p0", timeout=0.05) == 1
    assert started == ["x1", "y1"]
    assert len(s.running("p1")) == 1
    assert await s.drain(None, timeout=0.01) == 1


async def test_an_unfinished_item_is_not_overtaken_by_its_key() -> None:
    """A handler that raises or returns False drops its key's queue; other keys go on."""
    seen: list[str] = []

    async def handler(item: str) -> bool:
        seen.append(item)
        if item == "k1":
            raise RuntimeError("bug")
        return item != "j1"

    s: KeyQueue[str] = KeyQueue(handler)
    for key, items in (("k", ["k1", "k2"]), ("j", ["j1", "j2"]), ("m", ["m1", "m2"])):
        for item in items:
            s.submit("p", key, item)
    await s.drain(None, timeout=1)
    assert seen == ["k1", "j1", "m1", "m2"]


async def test_an_item_is_ahead_of_its_keys_next_from_its_submit() -> None:
    """Two items of one key submitted in one go (one fetch): the second sees the first ahead
    of it before the first's task has run (double-texting decides on ``ahead``)."""
    started: list[str] = []

    async def handler(item: str) -> None:
        started.append(item)

    s: KeyQueue[str] = KeyQueue(handler)
    assert s.ahead("p", "a") == []
    s.submit("p", "a", "a1")
    assert (s.ahead("p", "a"), started) == (["a1"], [])
    s.submit("p", "a", "a2")
    assert s.ahead("p", "a") == ["a1", "a2"]
    await s.drain(None, timeout=1)
    assert (s.ahead("p", "a"), started) == ([], ["a1", "a2"])
