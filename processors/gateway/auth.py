"""Who is calling the gateway, what they may run, and how often.

- API keys: ``X-API-Key: <key>``. Settings hold only the SHA-256 of each key (keys are long
  random strings, so a fast hash is enough), with the graphs it may run and its rate limit.
  ``graphwire gateway-key NAME`` makes a key and prints its settings entry.
- JWTs: ``Authorization: Bearer <token>``, HS256 (a shared secret) or RS256 (a public key);
  ``sub`` names the principal, ``graphs`` lists what it may run (``["*"]`` for all), ``exp``
  is required. ``aud`` and ``iss`` are required when their settings are set, and an RS256 key
  (often an identity provider's, shared by many apps) needs an audience. ``iat`` is required
  with a maximum token age.
- Scopes: a caller's runs, threads and crons are ``<scope>.<id>``, the scope being 128 bits of
  SHA-256 of its kind and name (32 hex). graphwire 0.1 used 48 bits (12 hex); while
  ``GRAPHWIRE_GATEWAY_LEGACY_SCOPES`` is on, ids under that scope are the caller's too.
- Operators: an API key entry with ``"role": "operator"``, a JWT whose role claim
  (``GRAPHWIRE_GATEWAY_JWT_ROLE_CLAIM``, default ``role``; a string or a list of strings) holds
  ``operator``, and everyone when ``GRAPHWIRE_GATEWAY_AUTH=false``: an operator sees and acts
  on every run (status, stream, cancel, the inspector), also runs produced to Kafka directly
  (ids under no caller's scope). Its own runs still get its scope.
- Rate limits: a sliding window per principal in Redis, checked and recorded atomically by one
  Lua script (so every gateway replica shares the count, on Redis's clock).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import jwt
import orjson
from pydantic import BaseModel, Field, ValidationError
from redis.asyncio import Redis

from graphwire.processors.runner.redisbatch import RedisBatcher
from graphwire.topics.errors import GraphwireError


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    kind: str  # "api_key" | "jwt" | "anonymous"
    name: str
    graphs: frozenset[str]
    rate_per_minute: int
    legacy_scopes: bool = False
    """Ids under the 48-bit scope of graphwire 0.1 are this caller's too."""
    operator: bool = False
    """Sees and acts on every run, whoever made it (``sees``); its own still get its scope."""

    @property
    def scope(self) -> str:
        """A stable name for this caller's runs, threads and crons (``<scope>.<id>``)."""
        return self._digest()[:SCOPE_HEX]

    @property
    def legacy_scope(self) -> str:
        """The 48-bit scope graphwire 0.1 gave this caller."""
        return self._digest()[:LEGACY_SCOPE_HEX]

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes whose ids are this caller's, the current one first."""
        return (self.scope, self.legacy_scope) if self.legacy_scopes else (self.scope,)

    def owns(self, namespaced: str) -> bool:
        """Whether ``<scope>.<id>`` (a request, thread or cron name) is this caller's."""
        scope, dot, _ = namespaced.partition(".")
        return bool(dot) and scope in self.scopes

    def sees(self, request_id: str) -> bool:
        """Whether this caller may read and act on ``request_id``: its own, or any for an
        operator (also ids produced to Kafka directly, under no caller's scope)."""
        return self.operator or self.owns(request_id)

    def local(self, namespaced: str) -> str:
        """The caller's own id of one of its namespaced ids (its scope removed)."""
        scope, dot, rest = namespaced.partition(".")
        return rest if dot and scope in self.scopes else namespaced

    def _digest(self) -> str:
        return hashlib.sha256(f"{self.kind}:{self.name}".encode()).hexdigest()

    def may_run(self, graph: str) -> bool:
        return "*" in self.graphs or graph in self.graphs

    def as_metadata(self) -> dict[str, str]:
        """What the request's metadata (and so the audit table) records of the caller."""
        return {"type": self.kind, "name": self.name}


SCOPE_HEX = 32  # 128 bits: no second preimage within reach, whoever picks the names
LEGACY_SCOPE_HEX = 12
OPERATOR = "operator"
"""The role (of an API key, or in a JWT's role claim) that makes a caller an operator."""
ID_BUDGET = 128 - SCOPE_HEX - 1
"""What is left of the contract's 128-character request id for the caller's own id."""


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
    rotation: bool = False
    """This key replaces another of the same name (both work until the old one is removed)."""
    role: Literal["operator"] | None = None
    """``operator``: the key's caller sees and acts on every run (``Principal.operator``)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(
    name: str, graphs: list[str], rate_per_minute: int | None = None, *, rotation: bool = False,
    operator: bool = False,
) -> tuple[str, dict[str, Any]]:
    """A fresh API key and the settings entry that accepts it (``operator``: with
    ``"role": "operator"``)."""
    key = "gw_" + secrets.token_urlsafe(32)
    entry: dict[str, Any] = {"name": name, "key_sha256": hash_key(key), "graphs": graphs}
    if rate_per_minute:
        entry["rate_per_minute"] = rate_per_minute
    if rotation:
        entry["rotation"] = True
    if operator:
        entry["role"] = "operator"
    return key, entry


def _check_names(where: str, keys: list[ApiKey]) -> None:
    """Refuse two keys of one name (they would be one caller) unless all but one are marked
    as rotations; refuse one key listed twice."""
    names: dict[str, list[ApiKey]] = {}
    for item in keys:
        names.setdefault(item.name, []).append(item)
    for name, same in names.items():
        if sum(not k.rotation for k in same) > 1:
            raise GraphwireError(
                f"{where}: {len(same)} keys are named {name!r}, and keys with one name share "
                "all runs, threads and crons: rename one, or mark the key that replaces "
                'another "rotation": true (`graphwire gateway-key NAME --rotation`)')
    if len({k.key_sha256 for k in keys}) < len(keys):
        raise GraphwireError(f"{where}: a key_sha256 is listed twice; keep one entry per key")


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
        self._max_age_s: float | None = settings.gateway_jwt_max_age_s
        self._legacy_scopes: bool = settings.gateway_legacy_scopes
        self._role_claim: str = settings.gateway_jwt_role_claim
        if (settings.gateway_jwt_public_key and not self._audience
                and not settings.gateway_jwt_any_audience):
            raise GraphwireError(
                "an RS256 key (GRAPHWIRE_GATEWAY_JWT_PUBLIC_KEY) needs "
                "GRAPHWIRE_GATEWAY_JWT_AUDIENCE: without one, every token its issuer signs for "
                "any other app is accepted here; set the audience your identity provider puts "
                "in this API's tokens (or GRAPHWIRE_GATEWAY_JWT_ANY_AUDIENCE=true if this key "
                "signs tokens for this gateway only)"
            )
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
        _check_names(" and ".join(where for where, _ in sources), raw)
        return {item.key_sha256: item for item in raw}

    def authenticate(self, headers: Any) -> Principal:
        if not self.enabled:
            return Principal("anonymous", "anonymous", frozenset({"*"}), self.default_rate,
                             self._legacy_scopes, operator=True)
        key = headers.get("x-api-key")
        if key:
            found = self._keys.get(hash_key(key))
            if found is None or not hmac.compare_digest(found.key_sha256, hash_key(key)):
                raise AuthError(401, "unknown API key")
            return Principal("api_key", found.name, frozenset(found.graphs),
                             found.rate_per_minute or self.default_rate, self._legacy_scopes,
                             operator=found.role == "operator")
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token:
            return self._from_jwt(token.strip())
        raise AuthError(401, "send an API key (X-API-Key) or a JWT (Authorization: Bearer ...)")

    def _from_jwt(self, token: str) -> Principal:
        if not self._jwt_keys:
            raise AuthError(401, "this gateway does not accept JWTs; send an API key")
        last: Exception | None = None
        required = ["exp", "sub", "iat"] if self._max_age_s is not None else ["exp", "sub"]
        for algorithm, key in self._jwt_keys:
            try:
                claims = jwt.decode(
                    token, key, algorithms=[algorithm], audience=self._audience,
                    issuer=self._issuer, options={"require": required},
                )
            except jwt.ExpiredSignatureError:
                raise AuthError(401, "the JWT has expired") from None
            except jwt.PyJWTError as exc:  # invalid token, or a key of the wrong kind
                last = exc
                continue
            if self._max_age_s is not None and time.time() - int(claims["iat"]) > self._max_age_s:
                raise AuthError(401, f"the JWT was issued more than {self._max_age_s:g} s ago: "
                                     "get a new one")
            graphs = claims.get("graphs", [])
            if isinstance(graphs, str):
                graphs = [graphs]
            if not isinstance(graphs, list) or not all(isinstance(g, str) for g in graphs):
                raise AuthError(401, "the JWT's 'graphs' claim must be a list of graph names")
            role = claims.get(self._role_claim)
            roles = [role] if isinstance(role, str) else role if isinstance(role, list) else []
            return Principal("jwt", str(claims["sub"]), frozenset(graphs), self.default_rate,
                             self._legacy_scopes, operator=OPERATOR in roles)
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

    def __init__(self, redis: Redis, namespace: str, window_ms: int = 60_000,
                 batcher: RedisBatcher | None = None) -> None:
        """``batcher``: the checks of concurrent requests share its round trips (one of its
        own when not given)."""
        self._batcher = batcher or RedisBatcher(redis)
        self._batcher.add_script("rate_window", _SLIDING_WINDOW)
        self._ns = namespace
        self._window_ms = window_ms

    async def check(self, principal: Principal, cost: int = 1) -> Decision:
        """Count ``cost`` requests (all or none) against the principal's window."""
        key = f"{self._ns}:ratelimit:{principal.kind}:{principal.name}"
        reply = await self._batcher.script(
            "rate_window", [key],
            [principal.rate_per_minute, self._window_ms, uuid.uuid4().hex, cost])
        allowed, remaining, retry_ms = cast(list[int], reply)
        return Decision(bool(allowed), int(remaining), max(1, -(-int(retry_ms) // 1000)))
