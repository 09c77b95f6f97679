"""Send requests to a running runner one at a time and read each one's result and events."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from graphwire.topics.specs import TopicNames
from tests.kafka_helpers import Collector, encode, produce

_BOOKENDS = ("run_started", "run_finished")


class Turns:
    """``async with Turns(bootstrap, topics) as turns: result, events = await turns.send(body)``:
    each body is produced keyed by its thread (else its id) and its result awaited; ``events``
    are its events in ``seq`` order without ``run_started``/``run_finished``."""

    def __init__(self, bootstrap: str, topics: TopicNames) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self._out = Collector(bootstrap, topics.results, topics.events, topics.dlq)

    async def __aenter__(self) -> Turns:
        await self._out.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._out.__aexit__(*exc)

    async def send(
        self, body: dict[str, Any], timeout: float = 60.0
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        rid = body["request_id"]
        key = (body.get("thread_id") or rid).encode()
        await produce(self._bootstrap, self._topics.requests, [(key, encode(body))])
        results = self._topics.results
        await self._out.wait_until(
            lambda: any(r["request_id"] == rid for r in self._out.values(results)), timeout)
        result = next(r for r in self._out.values(results) if r["request_id"] == rid)
        def finished() -> bool:
            return any(e["request_id"] == rid and e["type"] == "run_finished"
                       for e in self._out.values(self._topics.events))

        if result["status"] != "rejected":
            await self._out.wait_until(finished, timeout)
        else:  # refused at intake: no events at all (a refusal after the claim has bookends)
            with contextlib.suppress(AssertionError):
                await self._out.wait_until(finished, 1.0)
        events = sorted((e for e in self._out.values(self._topics.events)
                         if e["request_id"] == rid and e["type"] not in _BOOKENDS),
                        key=lambda e: e["seq"])
        return result, events

    def dead_letters(self, request_id: str) -> list[str]:
        """The reasons (``x-graphwire-error``) of the dead letters of ``request_id``."""
        reasons = []
        for record in self._out.records[self._topics.dlq]:
            body = orjson.loads(record.value) if record.value else None
            if isinstance(body, dict) and body.get("request_id") == request_id:
                reasons += [v.decode() for k, v in record.headers if k == "x-graphwire-error"]
        return reasons
