"""The gateway's shape (issue 24): one table maps its domain errors to statuses, CORS lets a
browser use the Agent Server API's methods and headers, and who counts as an operator."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import orjson
import pytest
from fastapi import FastAPI
from pydantic import SecretStr, ValidationError

from graphwire.processors.gateway import errors
from graphwire.processors.gateway.agentapi import errors as agentapi_errors
from graphwire.processors.gateway.app import create_app
from graphwire.processors.gateway.auth import ApiKey, Authenticator, Principal, hash_key, new_key
from graphwire.processors.gateway.pool import PoolBusy
from graphwire.processors.settings import Settings
from tests.helpers import graphwire

SECRET = "jwt-test-secret-that-is-long-enough-for-hs256"


def settings(**fields: Any) -> Settings:
    """Gateway settings with an HS256 secret, no env file, no ops port."""
    base: dict[str, Any] = {"gateway_jwt_secret": SecretStr(SECRET), "gateway_ops_port": 0}
    return Settings(_env_file=None, **{**base, **fields})  # type: ignore[call-arg]


def test_the_error_table_gives_each_error_its_status() -> None:
    """Each gateway error has its status from ``STATUS``; a subclass takes its nearest listed
    ancestor's, an exception outside the table 500; agentapi.errors names the same classes."""
    kinds = [errors.ApiError, errors.BadRequest, errors.Unauthorized, errors.Forbidden,
             errors.NotFound, errors.Conflict, errors.Unprocessable, errors.TooManyRequests,
             errors.Unavailable, PoolBusy]
    assert [errors.status_of(k) for k in kinds] == [400, 400, 401, 403, 404, 409, 422, 429,
                                                    503, 503]

    class Gone(errors.NotFound):
        """A subclass not in the table."""

    assert (errors.status_of(Gone), Gone("x").status, errors.status_of(KeyError)) == (
        404, 404, 500)
    assert (agentapi_errors.NotFound, agentapi_errors.ApiError, agentapi_errors.install) == (
        errors.NotFound, errors.ApiError, errors.install)


async def test_installed_errors_answer_detail_status_and_headers() -> None:
    """An app with ``install`` answers each raised error as ``{"detail": message}`` with its
    status and headers: Retry-After 5 on ``Unavailable.retry`` and PoolBusy, the
    WWW-Authenticate an Unauthorized carries, none on a plain NotFound."""
    app = FastAPI()
    errors.install(app)
    raised: dict[str, Exception] = {
        "missing": errors.NotFound("unknown request 'x'"),
        "busy": errors.Unavailable.retry("Redis does not answer"),
        "who": errors.Unauthorized("unknown API key", headers={"WWW-Authenticate": "Bearer"}),
        "pool": PoolBusy("all 2 PostgreSQL connections stayed busy"),
        "slow": errors.TooManyRequests("rate limit", headers={"Retry-After": "7"}),
    }

    @app.get("/{name}")
    async def fail(name: str) -> None:
        raise raised[name]

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        got = {name: await http.get(f"/{name}") for name in raised}
    answers = {name: (r.status_code, r.json(), r.headers.get("retry-after"),
                      r.headers.get("www-authenticate")) for name, r in got.items()}
    assert answers == {
        "missing": (404, {"detail": "unknown request 'x'"}, None, None),
        "busy": (503, {"detail": "Redis does not answer"}, "5", None),
        "who": (401, {"detail": "unknown API key"}, None, "Bearer"),
        "pool": (503, {"detail": "all 2 PostgreSQL connections stayed busy"}, "5", None),
        "slow": (429, {"detail": "rate limit"}, "7", None),
    }


async def test_cors_allows_the_agent_api_methods_and_headers_and_exposes_its_own() -> None:
    """With an allowed origin: a preflight for DELETE with x-api-key, Last-Event-ID and Prefer
    is allowed (GET, POST, PUT, PATCH, DELETE listed), and an answer exposes Content-Location,
    Location and the X-Pagination headers; another origin is not allowed."""
    app = create_app(settings(gateway_cors_origins="https://app.example"))
    transport = httpx.ASGITransport(app=app)
    origin = {"Origin": "https://app.example"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        preflight = await http.options("/workflow/cancel/x", headers={
            **origin, "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "x-api-key, last-event-id, prefer"})
        health = await http.get("/health", headers=origin)
        other = await http.get("/health", headers={"Origin": "https://evil.example"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.headers["access-control-allow-methods"] == "GET, POST, PUT, PATCH, DELETE"
    allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"]
               .split(",")}
    assert {"x-api-key", "last-event-id", "prefer", "authorization", "idempotency-key",
            "content-type"} <= allowed
    assert health.headers["access-control-expose-headers"] == (
        "Content-Location, Location, X-Pagination-Total, X-Pagination-Next")
    assert "access-control-allow-origin" not in other.headers


def _bearer(claims: dict[str, Any]) -> dict[str, str]:
    body = {"sub": "person", "graphs": ["echo"], "exp": int(time.time() + 300), **claims}
    return {"authorization": f"Bearer {jwt.encode(body, SECRET, algorithm='HS256')}"}


def test_who_is_an_operator() -> None:
    """A key with ``"role": "operator"`` is an operator, one without is not; a JWT is one when
    its role claim is ``operator`` or a list holding it (not ``viewer``, not a list without it,
    not a missing claim); ``GRAPHWIRE_GATEWAY_JWT_ROLE_CLAIM`` names another claim; with
    auth off the anonymous caller is one. An operator sees ids of any scope, others their own."""
    keys = [{"name": "ops", "key_sha256": hash_key("gw_ops_key_0123456789"), "graphs": ["*"],
             "role": "operator"},
            {"name": "svc", "key_sha256": hash_key("gw_svc_key_0123456789"), "graphs": ["*"]}]
    auth = Authenticator(settings(gateway_api_keys=SecretStr(orjson.dumps(keys).decode())))
    ops = auth.authenticate({"x-api-key": "gw_ops_key_0123456789"})
    svc = auth.authenticate({"x-api-key": "gw_svc_key_0123456789"})
    assert (ops.operator, svc.operator) == (True, False)
    roles = ["operator", "viewer", ["viewer"], ["viewer", "operator"], None]
    assert [auth.authenticate(_bearer({"role": r} if r else {})).operator for r in roles] == [
        True, False, False, True, False]
    groups = Authenticator(settings(gateway_jwt_role_claim="groups"))
    assert [groups.authenticate(_bearer(c)).operator for c in (
        {"groups": ["operator"]}, {"role": "operator"})] == [True, False]
    anonymous = Authenticator(settings(gateway_auth=False)).authenticate({})
    assert (anonymous.kind, anonymous.operator) == ("anonymous", True)
    assert [(p.sees("k-1"), p.sees(f"{svc.scope}.r1"), p.sees(f"{ops.scope}.r1"))
            for p in (ops, svc)] == [(True, True, True), (False, True, False)]
    assert Principal("api_key", "x", frozenset(), 1).operator is False


def test_operator_keys_are_made_and_other_roles_refused() -> None:
    """``new_key(..., operator=True)`` and ``graphwire gateway-key NAME --operator`` give an
    entry with ``"role": "operator"``; an entry with another role is refused."""
    _key, entry = new_key("ops", ["*"], operator=True)
    assert entry["role"] == "operator" and ApiKey.model_validate(entry).role == "operator"
    out = graphwire("gateway-key", "ops", "--operator", check=True)
    first, _, line = out.stdout.splitlines()
    key = first.rsplit(": ", 1)[1]
    assert orjson.loads(line) == {"name": "ops", "key_sha256": hash_key(key), "graphs": ["*"],
                                  "role": "operator"}
    with pytest.raises(ValidationError):
        ApiKey.model_validate({**entry, "role": "admin"})
