"""Who the gateway takes a caller for: JWTs bound to an audience and an age, 128-bit scopes
(with the 48-bit ones of 0.1 still the caller's), and no two API keys sharing a name by mistake."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import asyncpg
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from graphwire.processors.gateway.app import create_app
from graphwire.processors.gateway.auth import hash_key
from graphwire.topics.crons import CronStore, cron_spec
from graphwire.topics.errors import GraphwireError
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL
from tests.gateway_helpers import gateway_settings, serve, token
from tests.helpers import graphwire
from tests.kafka_helpers import Collector

pytestmark = pytest.mark.integration

AUDIENCE, ISSUER = "graphwire-api", "https://idp.example"


def _rsa() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem.decode()


def _rs_token(key: Any, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "u1", "graphs": ["*"], "exp": now + 300, **claims}, key,
                      algorithm="RS256")


def _bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def _scopes(kind: str, name: str) -> tuple[str, str]:
    digest = hashlib.sha256(f"{kind}:{name}".encode()).hexdigest()
    return digest[:32], digest[:12]


async def test_rs256_needs_an_audience_and_tokens_must_carry_it(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """An RS256 key without GRAPHWIRE_GATEWAY_JWT_AUDIENCE refuses to start (unless waived);
    with audience and issuer set, a token lacking or naming another of either is a 401."""
    key, pem = _rsa()
    with pytest.raises(GraphwireError, match="GRAPHWIRE_GATEWAY_JWT_AUDIENCE"):
        create_app(gateway_settings(worker_env, gateway_jwt_public_key=pem))
    create_app(gateway_settings(worker_env, gateway_jwt_public_key=pem,
                                gateway_jwt_any_audience=True))  # waived: starts
    settings = gateway_settings(worker_env, gateway_jwt_public_key=pem,
                                gateway_jwt_audience=AUDIENCE, gateway_jwt_issuer=ISSUER)
    cases = {
        "no aud": _rs_token(key, iss=ISSUER),
        "other aud": _rs_token(key, aud="another-app", iss=ISSUER),
        "no iss": _rs_token(key, aud=AUDIENCE),
        "other iss": _rs_token(key, aud=AUDIENCE, iss="https://other.example"),
        "good": _rs_token(key, aud=AUDIENCE, iss=ISSUER),
    }
    async with serve(settings) as http:
        got = {case: (await http.get("/workflow/status/x.y", headers=_bearer(t))).status_code
               for case, t in cases.items()}
        detail = (await http.get("/workflow/status/x.y", headers=_bearer(cases["no aud"]))).json()
    assert got == {"no aud": 401, "other aud": 401, "no iss": 401, "other iss": 401,
                   "good": 404}  # 404: authenticated, and x.y is not this caller's run
    assert detail == {"detail": "invalid JWT (MissingRequiredClaimError)"}


async def test_jwt_max_age_refuses_old_and_undated_tokens(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """With GRAPHWIRE_GATEWAY_JWT_MAX_AGE_S=60, a token issued 120 s ago is a 401 whatever its
    exp, so is one without iat; one issued now passes."""
    secret = "jwt-test-secret-that-is-long-enough-for-hs256"
    now = int(time.time())

    def signed(**claims: Any) -> str:
        return jwt.encode({"sub": "u1", "graphs": ["*"], "exp": now + 10**8, **claims}, secret,
                          algorithm="HS256")

    async with serve(gateway_settings(worker_env, gateway_jwt_max_age_s=60)) as http:
        answers = [(r.status_code, r.json()["detail"]) for r in [
            await http.get("/workflow/status/x.y", headers=_bearer(t))
            for t in (signed(iat=now - 120), signed(), signed(iat=now))]]
    assert answers == [
        (401, "the JWT was issued more than 60 s ago: get a new one"),
        (401, "invalid JWT (MissingRequiredClaimError)"),
        (404, "unknown request 'x.y'"),
    ]


async def test_new_runs_get_128_bit_scopes_within_the_id_budget(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """A run's id is ``<32 hex>.<caller's id>`` and stays within the contract's 128
    characters: the caller's id (body or Idempotency-Key) may have 95 characters, not 96."""
    sub = f"u-{uuid.uuid4().hex}"
    scope, _ = _scopes("jwt", sub)
    auth = _bearer(token(sub, ["*"]))
    run = {"workflow_name": "echo", "input_data": {}}
    async with serve(gateway_settings(worker_env)) as http:
        ok = await http.post("/workflow/execute", json={**run, "request_id": "r" * 95},
                             headers=auth)
        keyed = await http.post("/workflow/execute", json=run,
                                headers={**auth, "Idempotency-Key": "k" * 95})
        too_long = await http.post("/workflow/execute", json={**run, "request_id": "r" * 96},
                                   headers=auth)
        key_too_long = await http.post("/workflow/execute", json=run,
                                       headers={**auth, "Idempotency-Key": "k" * 96})
    assert ok.json()["request_id"] == f"{scope}.{'r' * 95}"
    assert len(ok.json()["request_id"]) == 128
    assert keyed.json()["request_id"] == f"{scope}.{'k' * 95}"
    assert [too_long.status_code, key_too_long.status_code] == [422, 422]


async def test_runs_threads_and_crons_under_the_legacy_scope_stay_the_callers(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """A caller still reads its runs and manages its crons stored under its 48-bit scope, and
    its old threads continue where they were (new threads get the 128-bit scope); with
    GRAPHWIRE_GATEWAY_LEGACY_SCOPES=false the old ones are no longer its."""
    sub = f"u-{uuid.uuid4().hex}"
    scope, legacy = _scopes("jwt", sub)
    auth = _bearer(token(sub, ["*"]))
    db = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await db.execute("INSERT INTO graphwire_runs (request_id, graph, thread_id, status) "
                         "VALUES ($1, 'echo', $2, 'success')", f"{legacy}.old", f"{legacy}.t1")
        await CronStore(db).add(cron_spec(name=f"{legacy}.nightly", graph="echo",
                                          schedule="0 3 * * *"), owner=legacy)
        async with Collector(worker_env["GRAPHWIRE_BOOTSTRAP_SERVERS"], topics.requests) as seen:
            async with serve(gateway_settings(worker_env)) as http:
                status = await http.get(f"/workflow/status/{legacy}.old", headers=auth)
                crons = await http.get("/crons", headers=auth)
                paused = await http.post("/crons/nightly/pause", headers=auth)
                for thread in ("t1", "t2"):
                    made = await http.post("/workflow/execute", headers=auth, json={
                        "workflow_name": "echo", "input_data": {}, "thread_id": thread})
                    assert made.status_code == 202, made.text
            await seen.wait_count(topics.requests, 2)
        threads = [v["thread_id"] for v in seen.values(topics.requests)]
        assert (status.status_code, status.json()["status"]) == (200, "success")
        assert [c["name"] for c in crons.json()] == ["nightly"]
        assert (paused.status_code, paused.json()["paused"]) == (200, True)
        # two keys, so two partitions: the collector may see them in either order
        assert sorted(threads) == sorted([f"{legacy}.t1", f"{scope}.t2"])
        off = gateway_settings(worker_env, gateway_legacy_scopes=False)
        async with serve(off) as http:
            gone = await http.get(f"/workflow/status/{legacy}.old", headers=auth)
            none = await http.get("/crons", headers=auth)
        assert (gone.status_code, none.json()) == (404, [])
    finally:
        await db.execute("DELETE FROM graphwire_crons WHERE owner = $1", legacy)
        await db.execute("DELETE FROM graphwire_runs WHERE request_id = $1", f"{legacy}.old")
        await db.close()


def test_duplicate_api_key_names_refused_unless_rotation(worker_env: dict[str, str]) -> None:
    """Two keys named alike would share every run, thread and cron: the gateway refuses to
    start, unless the second is marked ``"rotation": true`` (then both are one caller)."""
    def keys(*entries: dict[str, Any]) -> SecretStr:
        return SecretStr(orjson.dumps(list(entries)).decode())

    old = {"name": "svc-x", "key_sha256": hash_key("gw_old_key_0123456789abcdef")}
    new = {"name": "svc-x", "key_sha256": hash_key("gw_new_key_0123456789abcdef")}
    with pytest.raises(GraphwireError) as refused:
        create_app(gateway_settings(worker_env, gateway_api_keys=keys(old, new)))
    assert str(refused.value) == (
        "GRAPHWIRE_GATEWAY_API_KEYS: 2 keys are named 'svc-x', and keys with one name share "
        "all runs, threads and crons: rename one, or mark the key that replaces another "
        '"rotation": true (`graphwire gateway-key NAME --rotation`)')
    app = create_app(gateway_settings(worker_env, gateway_api_keys=keys(
        old, {**new, "rotation": True})))
    auth = app.state.gateway.auth
    callers = [auth.authenticate({"x-api-key": k}) for k in
               ("gw_old_key_0123456789abcdef", "gw_new_key_0123456789abcdef")]
    assert [c.scope for c in callers] == [_scopes("api_key", "svc-x")[0]] * 2


def test_gateway_key_rotation_flag_prints_a_rotation_entry() -> None:
    """`graphwire gateway-key NAME --rotation` prints an entry marked "rotation": true whose
    hash is that of the key it prints."""
    out = graphwire("gateway-key", "svc-x", "--rotation", check=True)
    first, _, entry = out.stdout.splitlines()
    key = first.rsplit(": ", 1)[1]
    assert orjson.loads(entry) == {"name": "svc-x", "key_sha256": hash_key(key),
                                   "graphs": ["*"], "rotation": True}
