"""One run at a time per key, in arrival order; any number of keys at once."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class KeyQueue(Generic[T]):
    """Runs ``handler(item)`` for submitted items: sequential per key, concurrent across keys.

    A handler that returns ``False`` (or raises) left its item unfinished: the key's queued
    items are dropped, to be redelivered in order, rather than run ahead of it.

    Each key with work has one task that drains its queue, so items of a key never overlap and
    run in submission order. A group (the partition) collects the tasks of its keys so that a
    revoke can drop what has not started and wait for what has.
    """

    def __init__(self, handler: Callable[[T], Awaitable[bool | None]]) -> None:
        self._handler = handler
        self._queues: dict[tuple[Hashable, Hashable], deque[T]] = {}
        self._tasks: dict[Hashable, set[asyncio.Task[None]]] = {}
        self._current: dict[tuple[Hashable, Hashable], T] = {}

    def submit(self, group: Hashable, key: Hashable, item: T) -> None:
        """Queue ``item`` behind earlier items of ``key`` (within ``group``), or start it."""
        slot = (group, key)
        queue = self._queues.get(slot)
        if queue is not None:
            queue.append(item)
            return
        self._queues[slot] = deque()
        self._current[slot] = item  # ahead of the next item of its key from now, not from
        # when its task first runs (a later message of the same fetch must see it)
        task = asyncio.create_task(self._drain(slot, item))
        tasks = self._tasks.setdefault(group, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _drain(self, slot: tuple[Hashable, Hashable], item: T) -> None:
        queue = self._queues[slot]
        try:
            while True:
                self._current[slot] = item
                try:
                    finished = await self._handler(item)
                except Exception:  # the handler ends every item itself; this is a bug guard
                    log.exception("handler raised; the item stays uncommitted")
                    finished = False
                if finished is False:  # an unfinished item must not be overtaken by its key
                    queue.clear()
                if not queue:
                    return
                item = queue.popleft()
        finally:
            del self._queues[slot]
            self._current.pop(slot, None)

    def ahead(self, group: Hashable, key: Hashable) -> list[T]:
        """The items a new item of ``key`` would wait for: the running one, then the queued
        ones (empty when the key is idle)."""
        queue = self._queues.get((group, key))
        if queue is None:
            return []
        current = self._current.get((group, key))
        return [current, *queue] if current is not None else list(queue)

    def running(self, group: Hashable | None = None) -> set[asyncio.Task[None]]:
        """Tasks working on ``group`` (or on every group)."""
        if group is not None:
            return set(self._tasks.get(group, ()))
        return {task for tasks in self._tasks.values() for task in tasks}

    def drop_queued(self, group: Hashable | None = None) -> int:
        """Forget items not yet started (of ``group``, or all); returns how many were dropped."""
        dropped = 0
        for (g, _key), queue in self._queues.items():
            if group is None or g == group:
                dropped += len(queue)
                queue.clear()
        return dropped

    async def drain(self, group: Hashable | None, timeout: float) -> int:
        """Wait up to ``timeout`` s for running tasks, then cancel the rest; returns cancelled."""
        tasks = self.running(group)
        if not tasks:
            return 0
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        if group is not None:
            self._tasks.pop(group, None)
        return len(pending)
