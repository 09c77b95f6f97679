"""A processor's ops endpoints in a test: ``/ready`` and ``/metrics``, read once or awaited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp

from tests.helpers.waiting import eventually


async def ready(port: int) -> tuple[int, Any]:
    """Status and JSON body of a processor's ``/ready`` on ``port``."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/ready") as r:
        return r.status, await r.json()


async def wait_ready(port: int, want: int, timeout: float = 30.0) -> Any:
    """Wait until ``/ready`` answers ``want``; its body (fails the test with the last answer)."""
    _status, body = await eventually(
        lambda: ready(port), timeout, what=f"/ready on {port} answering {want}",
        until=lambda answer: answer[0] == want, ignore=aiohttp.ClientError,
    )
    return body


def samples(text: str) -> dict[str, float]:
    """Prometheus text as ``{'name{labels}': value}``."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def metrics(port: int) -> dict[str, float]:
    """A processor's ``/metrics`` samples by name with labels."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        return samples(await r.text())


async def wait_metric(
    port: int, name: str, predicate: Callable[[float], object], timeout: float = 30.0,
    *, interval: float = 0.05,
) -> float:
    """Wait until the sample ``name`` (with its labels, as :func:`samples` keys it) on ``port``
    is present and satisfies ``predicate``; its value. A port not answering yet is retried."""

    async def value() -> float | None:
        return (await metrics(port)).get(name)

    found: float = await eventually(
        value, timeout, what=f"{name} on {port} meeting the condition",
        until=lambda v: v is not None and predicate(v), interval=interval,
        ignore=(aiohttp.ClientError, OSError),
    )
    return found
