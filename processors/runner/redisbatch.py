"""RedisBatcher: the Redis calls of concurrent runs share round trips (group commit).

Every run makes a few Redis calls of its own (acquire, keep_result, complete, a renewal now and
then). At 64 runs in flight, one round trip each means 64 connections busy with one tiny
command, and a syscall pair per call on both ends. The batcher sends what is queued as one
pipeline (one write, one read) and, while that round trip is in flight, queues the next calls;
when it returns, they go out together. Nothing waits for a timer: a lone call goes out on the
next loop iteration, and batches grow only under load.

Each caller still awaits its own answer: its reply, or its own error (a script error stays
with its command; a connection failure fails every call of that round trip). Calls are sent in
the order they were made, so the calls of one run (always awaited one after the other) keep
their order.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import NoScriptError


@dataclass(slots=True)
class _Call:
    args: tuple[object, ...]
    future: asyncio.Future[object] = field(repr=False)


class BatcherStopped(ConnectionError):
    """The batcher stopped before this call's round trip was made or answered."""


class RedisBatcher:
    """Queue Redis commands and Lua scripts; send what is queued in one pipelined round trip."""

    def __init__(self, redis: Redis, scripts: Mapping[str, str] | None = None) -> None:
        self._redis = redis
        self._bodies: dict[str, str] = {}
        self._shas: dict[str, str] = {}
        self._queue: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None
        self.round_trips = 0
        """Pipelines sent (the script loads after a Redis restart included)."""
        self.calls = 0
        """Commands sent."""
        for name, body in (scripts or {}).items():
            self.add_script(name, body)

    def add_script(self, name: str, body: str) -> None:
        """Make a Lua script callable by ``name`` (sent as EVALSHA, loaded when Redis lacks it)."""
        self._bodies[name] = body
        self._shas[name] = hashlib.sha1(body.encode()).hexdigest()

    async def script(self, name: str, keys: list[str], args: list[object]) -> object:
        """Run the script ``name`` in the next round trip and return its reply."""
        return await self.command("EVALSHA", self._shas[name], len(keys), *keys, *args)

    async def command(self, *args: object) -> object:
        """Send one command (``"GET", key``) in the next round trip and return its reply,
        parsed as ``Redis.execute_command`` parses it. Raises what Redis raised for it."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(args, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def stop(self) -> None:
        """Stop sending: calls still queued or in flight fail with ``BatcherStopped``."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        self._fail(self._queue, BatcherStopped("the Redis connection is closing"))
        self._queue = []

    async def _flush(self) -> None:
        while self._queue:
            # a caller cancelled before its call went out: send nothing for it, as before
            batch = [call for call in self._queue if not call.future.done()]
            self._queue = []
            if not batch:
                continue
            try:
                replies = await self._send(batch)
            except asyncio.CancelledError:
                self._fail(batch, BatcherStopped("the Redis connection is closing"))
                raise
            except Exception as exc:  # every caller of this round trip gets it
                self._fail(batch, exc)
                continue
            for call, reply in zip(batch, replies, strict=True):
                if call.future.done():  # its caller was cancelled
                    continue
                if isinstance(reply, Exception):
                    call.future.set_exception(reply)
                else:
                    call.future.set_result(reply)

    async def _send(self, batch: list[_Call]) -> list[object]:
        replies = await self._pipeline(batch)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # Redis restarted (or flushed its scripts): a NOSCRIPT command ran nothing, so
            # loading the scripts and sending those commands again runs each exactly once
            await self._load_scripts()
            again = await self._pipeline([batch[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, batch: list[_Call]) -> list[object]:
        self.round_trips += 1
        self.calls += len(batch)
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in batch:
                pipe.execute_command(*call.args)
            return list(await pipe.execute(raise_on_error=False))

    async def _load_scripts(self) -> None:
        self.round_trips += 1
        async with self._redis.pipeline(transaction=False) as pipe:
            for body in self._bodies.values():
                pipe.script_load(body)
            await pipe.execute()

    @staticmethod
    def _fail(batch: list[_Call], exc: BaseException) -> None:
        for call in batch:
            if not call.future.done():
                call.future.set_exception(exc)
