"""Per-principal caps the rate limit cannot give: how many runs one caller has going at once,
and how many streams it holds open, across every gateway replica.

Both are slots in Redis: a sorted set per caller scope whose members are what holds a slot (a
request_id, a stream's id) scored by when the slot expires. One Lua script drops expired slots,
counts, and takes the new ones (all or none) in one round trip, on Redis's clock:

- a run's slot is taken before its request is produced and given back when a gateway's client
  sees its result (``run_finished``); a result no gateway saw (a replica restarted) frees the
  slot after ``GRAPHWIRE_GATEWAY_RUN_SLOT_TTL_S``, and before refusing a caller its slots are
  checked against the runners' done markers, so a finished run never holds one for long;
- a stream's slot is held while the stream is open (its TTL is the longest a stream lasts).

Over a cap the caller gets 429 with the reason and ``Retry-After``; Redis not answering is 503,
as for the rate limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from graphwire.processors.gateway.auth import Principal
from graphwire.processors.gateway.errors import TooManyRequests, Unavailable
from graphwire.processors.runner.redisbatch import RedisBatcher
from graphwire.topics.runstatus import read_run_state

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_AFTER_S = 5  # runs and streams end at no known time: look again soon
HELD_KEPT = 100_000
"""Runs whose slot key a gateway remembers (the oldest are forgotten: their TTL frees them)."""

# KEYS[1] the caller's slots. ARGV: limit, ttl_ms, then the members to hold.
# -> {1, used} taken | {0, used} refused. A member held already is refreshed, not counted twice
# (the same request_id submitted again is one run).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local used = redis.call('ZCARD', KEYS[1])
local new = 0
for i = 3, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then new = new + 1 end
end
if used + new > tonumber(ARGV[1]) then return {0, used} end
local ttl = tonumber(ARGV[2])
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, used + new}
"""


@dataclass(frozen=True, slots=True)
class Taken:
    """The outcome of taking slots: ``allowed``, and how many the caller held before."""

    allowed: bool
    used: int


class PrincipalCaps:
    """Concurrent runs and open streams per caller scope, counted in Redis."""

    def __init__(self, redis: Redis, namespace: str, *, max_runs: int, run_ttl_s: float,
                 max_streams: int, stream_ttl_s: float,
                 batcher: RedisBatcher | None = None) -> None:
        """``batcher``: the takes of concurrent requests share its round trips (one of its
        own when not given)."""
        self._redis = redis
        self._batcher = batcher or RedisBatcher(redis)
        self._batcher.add_script("take_slots", _TAKE)
        self._ns = namespace
        self.max_runs = max_runs
        self.max_streams = max_streams
        self._run_ttl_ms = int(run_ttl_s * 1000)
        self._stream_ttl_ms = int(stream_ttl_s * 1000)
        self._releasing: set[asyncio.Task[None]] = set()  # the one task freeing slots
        self._finished: list[str] = []  # runs whose slots it frees next
        # the slot key of each run this gateway took one for: an Agent Server run's id (a
        # UUID) does not carry its caller's scope as graphwire's ids do (``scope.rest``)
        self._held: OrderedDict[str, str] = OrderedDict()

    def _key(self, kind: str, scope: str) -> str:
        return f"{self._ns}:slots:{kind}:{scope}"

    async def _take(self, key: str, limit: int, ttl_ms: int, members: list[str]) -> Taken:
        reply = await self._batcher.script("take_slots", [key], [limit, ttl_ms, *members])
        allowed, used = cast(list[int], reply)
        return Taken(bool(allowed), int(used))

    # -- runs --------------------------------------------------------------------------------

    async def take_runs(self, principal: Principal, request_ids: list[str]) -> None:
        """Hold a run slot for each of ``request_ids`` (all or none); 429 over the cap."""
        key = self._key("runs", principal.scope)
        taken = await _answering(self._take(key, self.max_runs, self._run_ttl_ms, request_ids))
        if not taken.allowed and await _answering(self._forget_finished(key)) > 0:
            taken = await _answering(
                self._take(key, self.max_runs, self._run_ttl_ms, request_ids))
        if taken.allowed:
            for rid in request_ids:
                self._held[rid] = key
            while len(self._held) > HELD_KEPT:  # results never seen: their TTL frees them
                self._held.popitem(last=False)
        if not taken.allowed:
            more = f"{len(request_ids)} more runs" if len(request_ids) > 1 else "another run"
            raise TooManyRequests(
                f"{taken.used} runs of {principal.name} are not finished, the limit is "
                f"{self.max_runs} at once; wait for one to finish before starting {more}",
                headers={"Retry-After": str(RETRY_AFTER_S)})

    async def _forget_finished(self, key: str) -> int:
        """Give back the slots of runs the runners marked done; how many were freed."""
        members: list[Any] = await self._redis.zrange(key, 0, -1)
        held = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        states = await asyncio.gather(
            *(read_run_state(self._redis, self._ns, rid) for rid in held),
            return_exceptions=True)
        done = [rid for rid, state in zip(held, states, strict=True)
                if not isinstance(state, BaseException) and state is not None
                and state.state == "done"]
        if done:
            await self._redis.zrem(key, *done)
        return len(done)

    async def release_runs(self, request_ids: Iterable[str]) -> None:
        """Give back the slots of ``request_ids`` (their scope is their prefix)."""
        by_key: dict[str, list[str]] = {}
        for rid in request_ids:
            key = self._held.pop(rid, None)
            scope, dot, _ = rid.partition(".")
            if key is None and dot:
                key = self._key("runs", scope)
            if key is not None:
                by_key.setdefault(key, []).append(rid)
        for key, members in by_key.items():
            await self._redis.zrem(key, *members)

    def run_finished(self, request_id: str) -> None:
        """The client saw ``request_id``'s result: free its slot (in the background, together
        with the others finished meanwhile: one round trip per caller; a failure leaves them
        to the TTL)."""
        self._finished.append(request_id)
        if not self._releasing:
            task = asyncio.get_running_loop().create_task(self._release_finished())
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _release_finished(self) -> None:
        while self._finished:
            batch, self._finished = self._finished, []
            try:
                await self.release_runs(batch)
            except (RedisError, OSError) as exc:
                log.warning("could not free the run slots of %d runs (%s); their TTL will",
                            len(batch), type(exc).__name__)

    async def runs_held(self, scope: str) -> int:
        """Run slots held by ``scope`` now (expired ones included until the next take)."""
        return int(await self._redis.zcard(self._key("runs", scope)))

    # -- streams -----------------------------------------------------------------------------

    async def take_stream(self, principal: Principal) -> str:
        """Hold a stream slot; returns its id for ``release_stream``. 429 over the cap."""
        slot = uuid.uuid4().hex
        taken = await _answering(self._take(self._key("streams", principal.scope),
                                            self.max_streams, self._stream_ttl_ms, [slot]))
        if not taken.allowed:
            raise TooManyRequests(
                f"{principal.name} has {taken.used} streams open, the limit is "
                f"{self.max_streams}; close one (or poll /workflow/status) before opening "
                "another", headers={"Retry-After": str(RETRY_AFTER_S)})
        return slot

    async def release_stream(self, principal: Principal, slot: str) -> None:
        with contextlib.suppress(RedisError, OSError):  # else the slot's TTL frees it
            await self._redis.zrem(self._key("streams", principal.scope), slot)

    async def guard(self, principal: Principal, slot: str,
                    body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``body``, then the stream's slot given back (also when the client goes away)."""
        try:
            async for chunk in body:
                yield chunk
        finally:
            await self.release_stream(principal, slot)
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()

    async def stop(self) -> None:
        """Wait for slots being given back."""
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)


async def _answering(call: Awaitable[T]) -> T:
    """Await ``call``; Redis not answering is 503 (the caller may retry), as for the rate
    limiter."""
    try:
        return await call
    except (RedisError, OSError) as exc:
        log.warning("the limits' Redis does not answer: %s", type(exc).__name__)
        raise Unavailable.retry(
            "the gateway's Redis does not answer; retry in a few seconds") from None
