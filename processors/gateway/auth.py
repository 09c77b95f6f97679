"""Who is calling the gateway, what they may run, and how often.

- API keys: ``X-API-Key: <key>``. Settings hold only the SHA-256 of each key (keys are long
  random strings, so a fast hash is enough), with the graphs it may run and its rate limit.
  ``graphwire gateway-key NAME`` makes a key and prints its settings entry.
- JWTs: ``Authorization: Bearer <token>``, HS256 (a shared secret) or RS256 (a public key);
  ``sub`` names the principal, ``graphs`` lists what it may run (``["*"]`` for all), ``exp``
  is required.
- Rate limits: a sliding window per principal in Redis, checked and recorded atomically by one
  Lua script (so every gateway replica shares the count, on Redis's clock).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
from pydantic import BaseModel, Field, ValidationError
from redis.asyncio import Redis

from graphwire.topics.errors import GraphwireError


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    kind: str  # "api_key" | "jwt" | "anonymous"
    name: str
    graphs: frozenset[str]
    rate_per_minute: int

    @property
    def scope(self) -> str:
        """A short stable name for this caller's runs and threads (``<scope>.<id>``)."""
        return hashlib.sha256(f"{self.kind}:{self.name}".encode()).hexdigest()[:12]

    def may_run(self, graph: str) -> bool:
        return "*" in self.graphs or graph in self.graphs

    def as_metadata(self) -> dict[str, str]:
        """What the request's metadata (and so the audit table) records of the caller."""
        return {"type": self.kind, "name": self.name}


class AuthError(Exception):
    """401 (who are you?) or 403 (you may not); ``str()`` is safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiKey(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    graphs: list[str] = Field(default_factory=lambda: ["*"])
    rate_per_minute: int | None = Field(default=None, ge=1)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(
    name: str, graphs: list[str], rate_per_minute: int | None = None
) -> tuple[str, dict[str, Any]]:
    """A fresh API key and the settings entry that accepts it."""
    key = "gw_" + secrets.token_urlsafe(32)
    entry: dict[str, Any] = {"name": name, "key_sha256": hash_key(key), "graphs": graphs}
    if rate_per_minute:
        entry["rate_per_minute"] = rate_per_minute
    return key, entry


class Authenticator:
    """Turns request headers into a Principal, or raises AuthError."""

    def __init__(self, settings: Any) -> None:
        self.enabled: bool = settings.gateway_auth
        self.default_rate: int = settings.gateway_rate_per_minute
        self._keys = self._load_keys(settings)
        self._jwt_keys: list[tuple[str, Any]] = []
        if settings.gateway_jwt_secret is not None:
            secret = settings.gateway_jwt_secret.get_secret_value()
            if len(secret.encode()) < 32:
                raise GraphwireError(
                    "GRAPHWIRE_GATEWAY_JWT_SECRET must be at least 32 bytes (HS256 needs a "
                    "key as long as its hash); generate one with `openssl rand -hex 32`"
                )
            self._jwt_keys.append(("HS256", secret))
        if settings.gateway_jwt_public_key:
            pem = settings.gateway_jwt_public_key
            if not pem.lstrip().startswith("-----BEGIN"):
                pem = Path(pem).read_text()
            self._jwt_keys.append(("RS256", pem))
        self._audience = settings.gateway_jwt_audience
        self._issuer = settings.gateway_jwt_issuer
        if self.enabled and not self._keys and not self._jwt_keys:
            raise GraphwireError(
                "the gateway has no credentials to accept: set GRAPHWIRE_GATEWAY_API_KEYS (or "
                "_FILE; `graphwire gateway-key NAME` makes one) or GRAPHWIRE_GATEWAY_JWT_SECRET "
                "/ _PUBLIC_KEY, or GRAPHWIRE_GATEWAY_AUTH=false for development"
            )

    @staticmethod
    def _load_keys(settings: Any) -> dict[str, ApiKey]:
        raw: list[Any] = []
        sources = []
        if settings.gateway_api_keys is not None:
            text = settings.gateway_api_keys.get_secret_value()
            sources.append(("GRAPHWIRE_GATEWAY_API_KEYS", text))
        if settings.gateway_api_keys_file:
            path = Path(settings.gateway_api_keys_file)
            sources.append((str(path), path.read_text()))
        for where, text in sources:
            try:
                loaded = orjson.loads(text)
                if not isinstance(loaded, list):
                    raise ValueError("expected a JSON list")
                raw += [ApiKey.model_validate(item) for item in loaded]
            except (ValueError, ValidationError) as exc:
                raise GraphwireError(
                    f"{where}: not a JSON list of {{name, key_sha256, graphs, rate_per_minute}} "
                    f"({str(exc).splitlines()[0]})"
                ) from None
        return {item.key_sha256: item for item in raw}

    def authenticate(self, headers: Any) -> Principal:
        if not self.enabled:
            return Principal("anonymous", "anonymous", frozenset({"*"}), self.default_rate)
        key = headers.get("x-api-key")
        if key:
            found = self._keys.get(hash_key(key))
            if found is None or not hmac.compare_digest(found.key_sha256, hash_key(key)):
                raise AuthError(401, "unknown API key")
            return Principal("api_key", found.name, frozenset(found.graphs),
                             found.rate_per_minute or self.default_rate)
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token:
            return self._from_jwt(token.strip())
        raise AuthError(401, "send an API key (X-API-Key) or a JWT (Authorization: Bearer ...)")

    def _from_jwt(self, token: str) -> Principal:
        if not self._jwt_keys:
            raise AuthError(401, "this gateway does not accept JWTs; send an API key")
        last: Exception | None = None
        for algorithm, key in self._jwt_keys:
            try:
                claims = jwt.decode(
                    token, key, algorithms=[algorithm], audience=self._audience,
                    issuer=self._issuer, options={"require": ["exp", "sub"]},
                )
            except jwt.ExpiredSignatureError:
                raise AuthError(401, "the JWT has expired") from None
            except jwt.PyJWTError as exc:  # invalid token, or a key of the wrong kind
                last = exc
                continue
            graphs = claims.get("graphs", [])
            if isinstance(graphs, str):
                graphs = [graphs]
            if not isinstance(graphs, list) or not all(isinstance(g, str) for g in graphs):
                raise AuthError(401, "the JWT's 'graphs' claim must be a list of graph names")
            return Principal("jwt", str(claims["sub"]), frozenset(graphs), self.default_rate)
        raise AuthError(401, f"invalid JWT ({type(last).__name__})")


# KEYS[1] the principal's window. ARGV: limit, window_ms, unique member, cost.
# -> {1, remaining, 0} allowed | {0, 0, retry_after_ms} refused. Redis's clock, one round trip.
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
local cost = tonumber(ARGV[4])
if used + cost <= tonumber(ARGV[1]) then
  for i = 1, cost do redis.call('ZADD', KEYS[1], now, ARGV[3] .. ':' .. i) end
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, tonumber(ARGV[1]) - used - cost, 0}
end
if used == 0 then return {0, 0, window} end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after_s: int


class RateLimiter:
    """Sliding-window rate limit per principal (requests per minute)."""

    def __init__(self, redis: Redis, namespace: str, window_ms: int = 60_000) -> None:
        self._script = redis.register_script(_SLIDING_WINDOW)
        self._ns = namespace
        self._window_ms = window_ms

    async def check(self, principal: Principal, cost: int = 1) -> Decision:
        """Count ``cost`` requests (all or none) against the principal's window."""
        key = f"{self._ns}:ratelimit:{principal.kind}:{principal.name}"
        allowed, remaining, retry_ms = await self._script(
            keys=[key],
            args=[principal.rate_per_minute, self._window_ms, uuid.uuid4().hex, cost],
        )
        return Decision(bool(allowed), int(remaining), max(1, -(-int(retry_ms) // 1000)))
