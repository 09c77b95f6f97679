"""One way to wait in a test: poll a check until it holds, or fail saying what never happened."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def describe(check: Callable[[], Any]) -> str:
    """A readable name for ``check``: its source line for a lambda, else its qualified name."""
    name = getattr(check, "__qualname__", repr(check))
    if "<lambda>" in name:
        try:
            return inspect.getsource(check).strip()
        except (OSError, TypeError):
            pass
    return name


async def eventually(
    check: Callable[[], Any],
    timeout: float = 30.0,
    *,
    what: str | Callable[[], str] | None = None,
    until: Callable[[Any], object] = bool,
    interval: float = 0.1,
    ignore: type[BaseException] | tuple[type[BaseException], ...] = (),
    wake: asyncio.Event | None = None,
) -> Any:
    """Call ``check()`` (sync, async, or returning an awaitable) every ``interval`` seconds until
    ``until(value)`` holds (by default: the value is truthy); return that value.

    After ``timeout`` seconds fail the test with an ``AssertionError`` naming ``what`` was awaited
    (a string, or a callable for a description built at failure time; by default the check's
    source) and the last value seen. An exception of a type in ``ignore`` counts as "not yet"
    and is reported as the last value. With ``wake``, an event set when something changed, the
    wait between checks ends early when it is set.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            last = exc
        else:
            last = value
            if until(value):
                return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            described = what() if callable(what) else what or describe(check)
            raise AssertionError(f"not within {timeout} s: {described}; last value: {last!r}")
        if wake is None:
            await asyncio.sleep(min(interval, remaining))
        else:
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), min(interval, remaining))
            except TimeoutError:
                pass


async def until(
    predicate: Callable[[], object], timeout: float = 30.0, what: str | None = None
) -> None:
    """Wait until the in-memory ``predicate()`` holds, checking every 20 ms (:func:`eventually`)."""
    await eventually(predicate, timeout, what=what, interval=0.02)
