"""RedisClaims: an exactly-once *effect* per request_id over at-least-once delivery (Redis).

The writing side of the run-status layout (lease, done marker, tries per request_id), whose
keys and marker format are defined in ``graphwire.topics.runstatus`` for every reader.

Order of effects in the runner: ``keep_result()`` (the result, in Redis) -> publish it ->
``complete()`` (done marker) -> the offset becomes committable. A crash after the first step
makes the redelivery publish that very result again instead of running (so a request_id never
gets two results that differ; consumers dedupe the copies on request_id); a crash after the last
is a duplicate that runs nothing.

The calls of concurrent runs share pipelined round trips (``RedisBatcher``): each call is still
one script, atomic on its own, and each caller gets its own reply or error.

Cancels (``mark_cancel``, from ``<prefix>.control``) leave a marker the claim and the lease
renewals read in the round trips they make anyway (``graphwire.processors.runner.control``).

Deaths, not starts, make a poison message: each start records this process's token in the
``start`` key and a clean end (release or complete) deletes it, so an acquire that finds
another process's token there knows that start's worker died (its lease expired instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Self

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from graphwire.processors.runner.redisbatch import RedisBatcher
from graphwire.topics.errors import DependencyUnavailable, GraphwireError
from graphwire.topics.runstatus import (
    CancelMarker,
    DoneMarker,
    RunState,
    cancel_channel,
    queued_key,
    read_run_state,
    run_keys,
    thread_channel,
    thread_keys,
)

log = logging.getLogger(__name__)

# KEYS: lease, done, tries, start, deaths, result, cancel. ARGV: owner, lease_ms, ttl_s, token.
# -> {"done", status} | {"busy", owner}
#    | {"acquired", attempt, deaths, result, dead_letter, cancel marker, thread busy with}
_CLAIM_CHECK = """
local done = redis.call('GET', KEYS[2])
if done then %(on_done)s return {'done', done} end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {'busy', holder} end
"""

_CLAIM_TAKE = """
-- free, or ours already (a retry after an outage, or a restarted owner of the same name)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local deaths = tonumber(redis.call('GET', KEYS[5]) or '0')
local previous = redis.call('GET', KEYS[4])
if previous and previous ~= ARGV[4] then
  -- the last start neither released nor completed, and no live process of ours made it
  deaths = redis.call('INCR', KEYS[5])
  redis.call('EXPIRE', KEYS[5], ARGV[3])
end
redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[3])
local attempt = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
local kept = redis.call('HMGET', KEYS[6], 'value', 'dead_letter')
local cancel = redis.call('GET', KEYS[7])
return {'acquired', tostring(attempt), tostring(deaths), kept[1] or '', kept[2] or '',
        cancel or '', other}
"""

_ACQUIRE = (_CLAIM_CHECK % {"on_done": ""}) + "local other = ''\n" + _CLAIM_TAKE

# The claim of a turn on a thread: the request's claim above plus the thread lease, in the
# same script. KEYS 8-10: thread lease, turns, alive. ARGV 5-8: request_id, the request
# message's Kafka timestamp (ms), keep_ms (how long a turn keeps its place without a sign of
# life), mode: ``run`` (take the thread when it is free and this turn is the first waiting),
# ``settle`` (same, but do not take it yet: a mis-keyed turn waits for turns produced just
# before it), ``stop`` (as ``run``; a wait also lists the turns ahead, to stop them),
# ``reject`` (thread busy: take the request lease only, to answer ThreadBusy).
# -> as _ACQUIRE, or {"wait", running request_id or '', turns ahead (mode stop)...}, or
#    {"settle"} (mode settle, and the thread would be this turn's)
_THREAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[9], 'NX', ARGV[6], ARGV[5])
redis.call('HSET', KEYS[10], ARGV[5], now + tonumber(ARGV[7]))
redis.call('EXPIRE', KEYS[9], ARGV[3])
redis.call('EXPIRE', KEYS[10], ARGV[3])
-- the first turn in timestamp order that is still alive (a dead one never came back)
local head = ARGV[5]
for _ = 1, 100 do
  head = redis.call('ZRANGE', KEYS[9], 0, 0)[1]
  if head == nil or head == ARGV[5] then head = ARGV[5]; break end
  if tonumber(redis.call('HGET', KEYS[10], head) or '0') >= now then break end
  redis.call('ZREM', KEYS[9], head)
  redis.call('HDEL', KEYS[10], head)
end
local running = redis.call('GET', KEYS[8])
if running == ARGV[5] then running = false end
local other = ''
if running or head ~= ARGV[5] then
  other = running or head
  if ARGV[8] == 'reject' then
    redis.call('ZREM', KEYS[9], ARGV[5])
    redis.call('HDEL', KEYS[10], ARGV[5])
  else
    local reply = {'wait', running or ''}
    if ARGV[8] == 'stop' then
      local rank = redis.call('ZRANK', KEYS[9], ARGV[5])
      if rank and rank > 0 then
        for _, rid in ipairs(redis.call('ZRANGE', KEYS[9], 0, math.min(rank, 100) - 1)) do
          if rid ~= running then table.insert(reply, rid) end
        end
      end
    end
    return reply
  end
elseif ARGV[8] == 'settle' then
  return {'settle'}
else
  redis.call('SET', KEYS[8], ARGV[5], 'PX', ARGV[2])
end
"""

_ACQUIRE_TURN = (
    _CLAIM_CHECK % {"on_done": "redis.call('ZREM', KEYS[9], ARGV[5]); "
                               "redis.call('HDEL', KEYS[10], ARGV[5]);"}
    + _THREAD + _CLAIM_TAKE
)

# KEYS: lease, cancel[, thread lease, alive]. ARGV: owner, lease_ms[, request_id, keep_ms].
# -> 1 renewed, 0 lost, or the cancel marker (renewed; a cancel was asked for): the run learns
# of a cancel in the round trip it makes anyway. A turn holding its thread renews that lease and
# its sign of life with it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if KEYS[3] then
    if redis.call('GET', KEYS[3]) ~= ARGV[3] then return 0 end
    redis.call('PEXPIRE', KEYS[3], ARGV[2])
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('HSET', KEYS[4], ARGV[3], now + tonumber(ARGV[4]))
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return redis.call('GET', KEYS[2]) or 1
end
return 0
"""

# KEYS: done, cancel, lease. ARGV: marker, ttl_s, channel, announcement.
# -> {first, done marker or '', lease or ''}; ``first``: 1 when no cancel was asked for before.
# A done request gets no marker; a marked one is announced on the channel.
_MARK_CANCEL = """
local done = redis.call('GET', KEYS[1])
if done then return {0, done, ''} end
local first = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2])
local lease = redis.call('GET', KEYS[3])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {first and 1 or 0, '', lease or ''}
"""

# KEYS: lease, result. ARGV: owner, value, dead_letter, ttl_s. -> 1 kept, 0 lease lost
_KEEP_RESULT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'value', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], 'dead_letter', ARGV[3]) end
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

# KEYS: lease, done, start, result, cancel[, thread lease, turns, alive]. ARGV: owner, status,
# ttl_s[, request_id, channel, thread_id]. Marks done (the start ended, its kept result is now
# the done marker's pointer; a cancel has nothing left to stop), frees the lease if still ours,
# and the thread with it (announced when other turns wait for it).
_COMPLETE = """
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
if KEYS[6] then
  redis.call('ZREM', KEYS[7], ARGV[4])
  redis.call('HDEL', KEYS[8], ARGV[4])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if KEYS[6] and redis.call('GET', KEYS[6]) == ARGV[4] then
    redis.call('DEL', KEYS[6])
    if redis.call('ZCARD', KEYS[7]) > 0 then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
  end
end
return 1
"""

# KEYS: lease, start[, thread lease, turns, alive]. ARGV: owner, token[, request_id, keep_ms,
# channel, thread_id]. The start ended cleanly (drain, outage): not a death. The thread is
# freed, but the turn keeps its place (keep_ms) for its redelivery.
_RELEASE = """
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if KEYS[3] and redis.call('GET', KEYS[3]) == ARGV[3] then
    redis.call('DEL', KEYS[3])
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if redis.call('ZSCORE', KEYS[4], ARGV[3]) then
      redis.call('HSET', KEYS[5], ARGV[3], now + tonumber(ARGV[4]))
    end
    if redis.call('ZCARD', KEYS[4]) > 1 then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
  end
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseLost(GraphwireError):
    """Our lease expired and another worker may own the request now: do not publish."""


@dataclass(frozen=True, slots=True)
class KeptResult:
    """A result an earlier start kept (and may have published) before it could mark done."""

    value: bytes
    """The result message exactly as it is published."""
    dead_letter: str | None = None
    """The reason of the dead letter published with it, if any."""


@dataclass(frozen=True, slots=True)
class Turn:
    """A request's turn on its thread, claimed together with its request_id."""

    thread_id: str
    timestamp_ms: int
    """The request message's Kafka timestamp: turns waiting for the thread go in this order."""
    mode: Literal["run", "settle", "stop", "reject"] = "run"
    """``run``: take the thread when it is free and no earlier turn waits; ``settle``: not
    yet (a mis-keyed turn gives turns produced just before it time to arrive); ``stop``: as
    run, and a wait lists the turns ahead (interrupt/rollback); ``reject``: when the thread is
    busy take only the request_id (to answer ThreadBusy)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of ``acquire``."""

    state: Literal["acquired", "done", "busy", "wait"]
    attempt: int = 0
    """1 for the first start of this request_id, then one more for every start (a redelivery,
    a retry after an outage): strictly increasing."""
    detail: str = ""
    """``done``: the final status; ``busy``: the lease's owner; ``wait``: ``settle`` when the
    thread is free and this turn first, but it waits out its order window."""
    deaths: int = 0
    """Earlier starts whose worker died during the run (their lease expired, never released)."""
    kept: KeptResult | None = None
    """The result an earlier start kept: publish it again, do not run."""
    cancel: CancelMarker | None = None
    """A cancel asked for before this start: run nothing, the result is ``cancelled``."""
    thread_busy: str | None = None
    """``acquired`` in ``reject`` mode: the thread's run (or first waiting turn) this request
    is rejected for. ``wait``: the request_id running on the thread, if one runs."""
    ahead: tuple[str, ...] = ()
    """``wait`` in ``stop`` mode: the turns waiting ahead of this one."""


@dataclass(frozen=True, slots=True)
class CancelMark:
    """The outcome of ``mark_cancel``."""

    first: bool
    """No cancel of this request was asked for before."""
    done: DoneMarker | None
    """The request already finished: there is nothing to cancel."""
    running_on: str | None
    """The lease owner of the run in progress, if one runs."""


MAX_QUEUED_MARKS = 100_000
"""Queued marks a worker remembers to take back at their claim (older ones expire in Redis)."""


class RedisClaims:
    """Leases and done markers per request_id in Redis; every call is one script, and the
    calls of concurrent runs share round trips."""

    def __init__(
        self,
        redis_url: str,
        *,
        namespace: str = "graphwire",
        lease_ms: int = 30_000,
        done_ttl_s: int = 7 * 24 * 3600,
        keep_ms: int | None = None,
    ) -> None:
        """``keep_ms``: how long a waiting or running turn keeps its place on its thread
        without a sign of life (a claim, a renewal): time for a dead worker's redelivery to
        come (default: two leases)."""
        self._url = redis_url
        self._ns = namespace
        self.lease_ms = lease_ms
        self.done_ttl_s = done_ttl_s
        self.keep_ms = keep_ms if keep_ms is not None else 2 * lease_ms
        self._redis: Redis | None = None
        self._batch: RedisBatcher | None = None
        self._held: dict[str, str] = {}
        self._threads: dict[str, str] = {}  # request_id -> the thread it holds
        self._thread_waits: dict[str, set[asyncio.Event]] = {}
        self._on_lost: dict[str, Callable[[], None]] = {}
        self._on_cancel: dict[str, Callable[[CancelMarker], None]] = {}
        self._lost: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        # This process's mark on the starts it makes: a start marked by anyone else and never
        # ended is a death, even when a restarted worker reuses the same owner name.
        self._token = uuid.uuid4().hex
        self._marking: set[asyncio.Task[None]] = set()  # queued marks being written
        # requests this worker marked queued and has not claimed yet -> the mark's write
        self._queued: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        """Connect and load the scripts; raises ``DependencyUnavailable`` if Redis is down."""
        if self._redis is not None:
            return
        self._redis = Redis.from_url(self._url, socket_timeout=5, socket_connect_timeout=5)
        self._batch = RedisBatcher(
            self._redis,
            {
                "acquire": _ACQUIRE,
                "acquire_turn": _ACQUIRE_TURN,
                "renew": _RENEW,
                "complete": _COMPLETE,
                "release": _RELEASE,
                "keep_result": _KEEP_RESULT,
                "mark_cancel": _MARK_CANCEL,
            },
        )
        await self.ping()

    async def stop(self) -> None:
        """Disconnect. Idempotent."""
        for task in (self._renewer, self._listener):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._listener = None
        if self._marking:  # queued marks not written yet: a cancel then needs --force
            await asyncio.gather(*self._marking, return_exceptions=True)
        if self._batch is not None:
            await self._batch.stop()
            self._batch = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def client(self) -> Redis:
        """The connection (the runs' own calls go through ``batcher``)."""
        assert self._redis is not None, "start() first"
        return self._redis

    @property
    def batcher(self) -> RedisBatcher:
        """The round trips shared by concurrent runs (shared with the result cache)."""
        assert self._batch is not None, "start() first"
        return self._batch

    async def ping(self) -> None:
        """Raise ``DependencyUnavailable`` unless Redis answers."""
        assert self._redis is not None
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(
                f"Redis does not answer ({exc}); check GRAPHWIRE_REDIS_URL"
            ) from exc

    def _keys(self, request_id: str) -> list[str]:
        keys = run_keys(self._ns, request_id)
        return [keys.lease, keys.done, keys.tries, keys.start, keys.deaths, keys.result,
                keys.cancel]

    async def _call(self, name: str, keys: list[str], args: list[object]) -> object:
        try:
            return await self.batcher.script(name, keys, args)
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(
                f"Redis call failed ({type(exc).__name__}: {exc}); the request stays "
                "uncommitted until Redis answers"
            ) from exc

    async def acquire(self, request_id: str, owner: str, turn: Turn | None = None) -> Claim:
        """Take the lease unless the request is done or another live owner holds it.

        With ``turn``, in the same script: also take the thread's lease, unless another turn
        runs on it or an earlier one waits (then ``wait``, nothing taken). A request this
        worker marked queued has its turn now: its mark goes (the lease or the done marker
        speaks for it from here)."""
        marking = self._queued.pop(request_id, None)
        if marking is not None:
            self._in_background(self._unmark_queued(request_id, marking))
        if turn is None:
            keys = self._keys(request_id)
            args: list[object] = [owner, self.lease_ms, self.done_ttl_s, self._token]
            reply = await self._call("acquire", keys, args)
        else:
            tk = thread_keys(self._ns, turn.thread_id)
            keys = [*self._keys(request_id), tk.lease, tk.turns, tk.alive]
            args = [owner, self.lease_ms, self.done_ttl_s, self._token, request_id,
                    turn.timestamp_ms, self.keep_ms, turn.mode]
            reply = await self._call("acquire_turn", keys, args)
        assert isinstance(reply, list)
        state = reply[0].decode()
        if state == "settle":  # free, and this turn first: it waits out its order window
            return Claim("wait", detail="settle")
        if state == "wait":
            running = reply[1].decode() or None
            return Claim("wait", thread_busy=running,
                         ahead=tuple(r.decode() for r in reply[2:]))
        detail = reply[1].decode()
        if state == "acquired":
            value, dead_letter = reply[3], reply[4].decode()
            kept = KeptResult(value, dead_letter or None) if value else None
            cancel = CancelMarker.decode(reply[5]) if reply[5] else None
            busy_with = reply[6].decode() or None
            if turn is not None and busy_with is None:
                self._threads[request_id] = turn.thread_id
            return Claim("acquired", attempt=int(detail), deaths=int(reply[2]), kept=kept,
                         cancel=cancel, thread_busy=busy_with)
        return Claim("done" if state == "done" else "busy", detail=detail)

    async def wait_for_thread(self, thread_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` s for an announcement that ``thread_id`` was freed; True if
        one came (then claim again). Needs ``listen()``; without it this is a plain sleep."""
        event = asyncio.Event()
        waiters = self._thread_waits.setdefault(thread_id, set())
        waiters.add(event)
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiters.discard(event)
            if not waiters:
                self._thread_waits.pop(thread_id, None)

    async def renew(self, request_id: str, owner: str) -> bool:
        """Extend our lease; False if it was lost (expired and taken by another worker)."""
        keys = self._renew_keys(request_id)
        return bool(await self._call("renew", keys, self._renew_args(request_id, owner)))

    def _renew_keys(self, request_id: str) -> list[str]:
        keys = run_keys(self._ns, request_id)
        thread = self._threads.get(request_id)
        if thread is None:
            return [keys.lease, keys.cancel]
        tk = thread_keys(self._ns, thread)
        return [keys.lease, keys.cancel, tk.lease, tk.alive]

    def _renew_args(self, request_id: str, owner: str) -> list[object]:
        if request_id in self._threads:
            return [owner, self.lease_ms, request_id, self.keep_ms]
        return [owner, self.lease_ms]

    async def mark_cancel(self, request_id: str, marker: CancelMarker) -> CancelMark:
        """Record that ``request_id`` is to be cancelled (for ``done_ttl_s``), unless one was
        already; says whether it is done (nothing to cancel) or running, and where."""
        keys = run_keys(self._ns, request_id)
        announcement = orjson.dumps({"request_id": request_id, **orjson.loads(marker.encode())})
        reply = await self._call(
            "mark_cancel", [keys.done, keys.cancel, keys.lease],
            [marker.encode(), self.done_ttl_s, cancel_channel(self._ns), announcement],
        )
        assert isinstance(reply, list)
        done, lease = reply[1], reply[2]
        return CancelMark(
            first=bool(reply[0]),
            done=DoneMarker.decode(done) if done else None,
            running_on=lease.decode() if lease else None,
        )

    def mark_queued(self, request_id: str) -> None:
        """Mark ``request_id`` as fetched and queued behind another run of its key, until its
        claim (in the background: a failure only leaves a cancel of it needing ``--force``)."""
        if self._redis is None:
            return
        self._queued[request_id] = self._in_background(self._mark_queued(request_id))
        while len(self._queued) > MAX_QUEUED_MARKS:  # never claimed here (revoked, refused)
            self._queued.pop(next(iter(self._queued)))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._marking.add(task)
        task.add_done_callback(self._marking.discard)
        return task

    async def _mark_queued(self, request_id: str) -> None:
        assert self._redis is not None
        try:
            await self._redis.set(queued_key(self._ns, request_id), b"1", ex=self.done_ttl_s)
        except (RedisError, OSError) as exc:
            log.info("could not mark %s queued (%s)", request_id, type(exc).__name__)

    async def _unmark_queued(self, request_id: str, marking: asyncio.Task[None]) -> None:
        await asyncio.gather(marking, return_exceptions=True)  # the SET first, then the DEL
        if self._redis is None:
            return
        try:
            await self._redis.delete(queued_key(self._ns, request_id))
        except (RedisError, OSError) as exc:  # it expires with the done marker's TTL
            log.info("could not unmark %s queued (%s)", request_id, type(exc).__name__)

    async def keep_result(
        self, request_id: str, owner: str, value: bytes, dead_letter: str | None
    ) -> None:
        """Keep the result about to be published, so a redelivery publishes this one again.

        Raises ``LeaseLost`` when the lease is no longer ours: then another start owns the
        request, and this one must publish nothing.
        """
        lease, *_, result, _cancel = self._keys(request_id)
        args = [owner, value, dead_letter or "", self.done_ttl_s]
        if not await self._call("keep_result", [lease, result], args):
            raise LeaseLost(f"lease on {request_id} expired before its result was published")

    async def complete(self, request_id: str, owner: str, status: str) -> None:
        """Write the done marker and free the lease (and the thread's, if held)."""
        lease, done, _tries, start, _deaths, result, cancel = self._keys(request_id)
        keys = [lease, done, start, result, cancel]
        args: list[object] = [owner, status, self.done_ttl_s]
        thread = self._threads.get(request_id)
        if thread is not None:
            tk = thread_keys(self._ns, thread)
            keys += [tk.lease, tk.turns, tk.alive]
            args += [request_id, thread_channel(self._ns), thread]
        await self._call("complete", keys, args)
        self._threads.pop(request_id, None)

    async def release(self, request_id: str, owner: str) -> None:
        """Free our lease without marking done (the request will run again): a clean end of
        this start, which is therefore not counted as a death."""
        lease, _done, _tries, start, *_ = self._keys(request_id)
        keys = [lease, start]
        args: list[object] = [owner, self._token]
        thread = self._threads.get(request_id)
        if thread is not None:
            tk = thread_keys(self._ns, thread)
            keys += [tk.lease, tk.turns, tk.alive]
            args += [request_id, self.keep_ms, thread_channel(self._ns), thread]
        await self._call("release", keys, args)
        self._threads.pop(request_id, None)

    async def forget(self, request_id: str) -> None:
        """Drop the done marker, the death count and the kept result: the request may run
        again (dlq replay). The start count (``tries``) stays, so the rerun's attempt number and
        event positions follow the earlier starts' instead of repeating them."""
        keys = run_keys(self._ns, request_id)
        try:
            await self.batcher.command(
                "DEL", keys.done, keys.start, keys.deaths, keys.result, keys.cancel
            )
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(f"Redis does not answer ({exc})") from exc

    async def lookup(self, request_id: str) -> RunState | None:
        """What Redis knows of a request (``graphwire.topics.runstatus.read_run_state``)."""
        return await read_run_state(_BatchedReads(self.batcher), self._ns, request_id)

    def hold(
        self,
        request_id: str,
        owner: str,
        on_lost: Callable[[], None] | None = None,
        on_cancel: Callable[[CancelMarker], None] | None = None,
    ) -> None:
        """Keep renewing our lease on ``request_id`` until ``let_go`` (one renewer for all).

        If a renewal finds the lease gone (it expired and was taken), ``on_lost`` is called
        and ``lost(request_id)`` turns true: the run must stop and publish nothing. If it finds
        a cancel marker, ``on_cancel`` is called with it (at every renewal until let go).
        """
        self._held[request_id] = owner
        if on_lost is not None:
            self._on_lost[request_id] = on_lost
        if on_cancel is not None:
            self._on_cancel[request_id] = on_cancel
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_held())

    def listen_for_cancels(self) -> None:
        """Subscribe to the cancel and freed-thread announcements: a held request's
        ``on_cancel`` is called as soon as a cancel of it is marked (the lease renewals remain
        the backstop), and a turn waiting in ``wait_for_thread`` wakes when its thread frees
        (its bounded retries remain the backstop)."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="graphwire-cancels")

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            pubsub = self.client.pubsub()
            try:
                threads = thread_channel(self._ns).encode()
                await pubsub.subscribe(cancel_channel(self._ns), threads)
                delay = 0.5
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=1.0)
                    if message is None:
                        continue
                    if message["channel"] == threads:
                        self._thread_freed(message["data"])
                    else:
                        self._announced(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("cancel announcements unavailable (%s); lease renewals still see "
                            "cancels; resubscribing in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # untyped in some redis-py

    def _announced(self, data: bytes) -> None:
        try:
            value = orjson.loads(data)
            request_id = value["request_id"]
        except (ValueError, KeyError, TypeError):
            return
        callback = self._on_cancel.get(request_id)
        if callback is not None:
            callback(CancelMarker.decode(data))

    def _thread_freed(self, data: bytes) -> None:
        for event in self._thread_waits.get(data.decode(errors="replace"), ()):
            event.set()

    def let_go(self, request_id: str) -> None:
        """Stop renewing the lease on ``request_id``."""
        self._held.pop(request_id, None)
        self._on_lost.pop(request_id, None)
        self._on_cancel.pop(request_id, None)
        self._threads.pop(request_id, None)
        self._lost.discard(request_id)

    def lost(self, request_id: str) -> bool:
        """True once a renewal found our lease on ``request_id`` gone."""
        return request_id in self._lost

    async def _renew_held(self) -> None:
        """Every third of a lease, renew every held lease, together in the batcher's next
        round trip (with the acquires and done markers of that moment)."""
        interval = self.lease_ms / 3000
        while self._held:
            await asyncio.sleep(interval)
            held = list(self._held.items())
            if not held:
                continue
            script = self.batcher.script
            replies = await asyncio.gather(
                *(
                    script("renew", self._renew_keys(request_id),
                           self._renew_args(request_id, owner))
                    for request_id, owner in held
                ),
                return_exceptions=True,
            )
            failed = [r for r in replies if isinstance(r, BaseException)]
            if failed:  # an outage: these leases are renewed next time, if they still exist
                log.warning("could not renew %d leases: %s", len(failed), failed[0])
            for (request_id, _owner), ok in zip(held, replies, strict=True):
                if isinstance(ok, BaseException):
                    continue
                if isinstance(ok, bytes) and request_id in self._held:
                    on_cancel = self._on_cancel.get(request_id)
                    if on_cancel is not None:
                        on_cancel(CancelMarker.decode(ok))
                    continue
                if not ok and request_id in self._held:
                    log.error(
                        "lease on %s was lost: stopping the run, publishing nothing", request_id
                    )
                    self._lost.add(request_id)
                    callback = self._on_lost.get(request_id)
                    if callback is not None:
                        callback()


class _BatchedReads:
    """The reads ``read_run_state`` makes, sent through the batcher."""

    def __init__(self, batcher: RedisBatcher) -> None:
        self._batcher = batcher

    async def mget(self, *keys: str) -> object:
        return await self._batcher.command("MGET", *keys)
