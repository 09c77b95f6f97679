"""DedupStore: an exactly-once *effect* per request_id over at-least-once delivery (Redis).

The writing side of the run-status layout (lease, done marker, tries per request_id), whose
keys and marker format are defined in ``graphwire.topics.runstatus`` for every reader.

Order of effects in the runner: publish result -> ``complete()`` (done marker) -> the offset
becomes committable. A crash between the first two publishes the result again on redelivery
(consumers dedupe on request_id); a crash after the second is a duplicate that runs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Self

from redis.asyncio import Redis
from redis.exceptions import RedisError

from graphwire.topics.errors import DependencyUnavailable, GraphwireError
from graphwire.topics.runstatus import RunState, read_run_state, run_keys

log = logging.getLogger(__name__)

# KEYS: lease, done, tries. ARGV: owner, lease_ms, ttl_s.
# -> {"done", status} | {"busy", owner} | {"acquired", attempt}
_ACQUIRE = """
local done = redis.call('GET', KEYS[2])
if done then return {'done', done} end
if redis.call('GET', KEYS[1]) == ARGV[1] then  -- ours already (a retry or a restarted owner)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  local again = redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  return {'acquired', tostring(again)}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local attempt = redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  return {'acquired', tostring(attempt)}
end
return {'busy', redis.call('GET', KEYS[1]) or ''}
"""

# KEYS: lease. ARGV: owner, lease_ms. -> 1 renewed, 0 lost
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease, done. ARGV: owner, status, ttl_s. Marks done, frees the lease if still ours.
_COMPLETE = """
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: lease. ARGV: owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseLost(GraphwireError):
    """Our lease expired and another worker may own the request now: do not publish."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of ``acquire``."""

    state: Literal["acquired", "done", "busy"]
    attempt: int = 0
    """1 for the first start of this request_id, 2 after one redelivery, ..."""
    detail: str = ""
    """``done``: the final status; ``busy``: the lease's owner."""


class DedupStore:
    """Leases and done markers per request_id in Redis; every call is one round trip."""

    def __init__(
        self,
        redis_url: str,
        *,
        namespace: str = "graphwire",
        lease_ms: int = 30_000,
        done_ttl_s: int = 7 * 24 * 3600,
    ) -> None:
        self._url = redis_url
        self._ns = namespace
        self.lease_ms = lease_ms
        self.done_ttl_s = done_ttl_s
        self._redis: Redis | None = None
        self._scripts: dict[str, object] = {}
        self._held: dict[str, str] = {}
        self._on_lost: dict[str, Callable[[], None]] = {}
        self._lost: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and load the scripts; raises ``DependencyUnavailable`` if Redis is down."""
        if self._redis is not None:
            return
        self._redis = Redis.from_url(self._url, socket_timeout=5, socket_connect_timeout=5)
        for name, body in (
            ("acquire", _ACQUIRE),
            ("renew", _RENEW),
            ("complete", _COMPLETE),
            ("release", _RELEASE),
        ):
            self._scripts[name] = self._redis.register_script(body)
        await self.ping()

    async def stop(self) -> None:
        """Disconnect. Idempotent."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
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
        """The connection (shared with the result cache)."""
        assert self._redis is not None, "start() first"
        return self._redis

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
        return [keys.lease, keys.done, keys.tries]

    async def _call(self, name: str, keys: list[str], args: list[object]) -> object:
        script = self._scripts[name]
        try:
            return await script(keys=keys, args=args)  # type: ignore[operator]
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(
                f"Redis call failed ({type(exc).__name__}: {exc}); the request stays "
                "uncommitted until Redis answers"
            ) from exc

    async def acquire(self, request_id: str, owner: str) -> Claim:
        """Take the lease unless the request is done or another live owner holds it."""
        reply = await self._call(
            "acquire", self._keys(request_id), [owner, self.lease_ms, self.done_ttl_s]
        )
        assert isinstance(reply, list)
        state, detail = reply[0].decode(), reply[1].decode()
        if state == "acquired":
            return Claim("acquired", attempt=int(detail))
        return Claim("done" if state == "done" else "busy", detail=detail)

    async def renew(self, request_id: str, owner: str) -> bool:
        """Extend our lease; False if it was lost (expired and taken by another worker)."""
        keys = self._keys(request_id)[:1]
        return bool(await self._call("renew", keys, [owner, self.lease_ms]))

    async def complete(self, request_id: str, owner: str, status: str) -> None:
        """Write the done marker and free the lease."""
        keys = self._keys(request_id)[:2]
        await self._call("complete", keys, [owner, status, self.done_ttl_s])

    async def release(self, request_id: str, owner: str) -> None:
        """Free our lease without marking done (the request will run again)."""
        await self._call("release", self._keys(request_id)[:1], [owner])

    async def forget(self, request_id: str) -> None:
        """Drop the done marker and attempt count: the request may run again (dlq replay)."""
        _lease, done, tries = self._keys(request_id)
        try:
            await self.client.delete(done, tries)
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(f"Redis does not answer ({exc})") from exc

    async def lookup(self, request_id: str) -> RunState | None:
        """What Redis knows of a request (``graphwire.topics.runstatus.read_run_state``)."""
        return await read_run_state(self.client, self._ns, request_id)

    def hold(self, request_id: str, owner: str, on_lost: Callable[[], None] | None = None) -> None:
        """Keep renewing our lease on ``request_id`` until ``let_go`` (one renewer for all).

        If a renewal finds the lease gone (it expired and was taken), ``on_lost`` is called
        and ``lost(request_id)`` turns true: the run must stop and publish nothing.
        """
        self._held[request_id] = owner
        if on_lost is not None:
            self._on_lost[request_id] = on_lost
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_held())

    def let_go(self, request_id: str) -> None:
        """Stop renewing the lease on ``request_id``."""
        self._held.pop(request_id, None)
        self._on_lost.pop(request_id, None)
        self._lost.discard(request_id)

    def lost(self, request_id: str) -> bool:
        """True once a renewal found our lease on ``request_id`` gone."""
        return request_id in self._lost

    async def _renew_held(self) -> None:
        """Every third of a lease, renew every held lease in one pipelined round trip."""
        interval = self.lease_ms / 3000
        while self._held:
            await asyncio.sleep(interval)
            held = list(self._held.items())
            if not held:
                continue
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    script = self._scripts["renew"]
                    for request_id, owner in held:
                        await script(  # type: ignore[operator]
                            keys=self._keys(request_id)[:1],
                            args=[owner, self.lease_ms],
                            client=pipe,
                        )
                    renewed = await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("could not renew %d leases: %s", len(held), exc)
                continue
            for (request_id, _owner), ok in zip(held, renewed, strict=True):
                if not ok and request_id in self._held:
                    log.error(
                        "lease on %s was lost: stopping the run, publishing nothing", request_id
                    )
                    self._lost.add(request_id)
                    callback = self._on_lost.get(request_id)
                    if callback is not None:
                        callback()
