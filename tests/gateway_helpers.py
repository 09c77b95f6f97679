"""A gateway served by uvicorn inside the test's event loop, on a free port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import orjson
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from graphwire.processors.dev.broker import free_port
from graphwire.processors.gateway.app import create_app
from graphwire.processors.gateway.auth import Principal, hash_key
from graphwire.processors.settings import Settings
from tests.helpers.waiting import eventually

KEY_A = "gw_test_key_a_0123456789abcdef"  # pipeline, echo, slow, approval
KEY_LIMITED = "gw_test_key_limited_0123456789"  # 5 requests per minute
KEY_ECHO = "gw_test_key_echo_only_012345678"  # echo only
JWT_SECRET = "jwt-test-secret-that-is-long-enough-for-hs256"
KEYS = [
    {"name": "svc-a", "key_sha256": hash_key(KEY_A),
     "graphs": ["pipeline", "echo", "slow", "approval"]},
    {"name": "svc-limited", "key_sha256": hash_key(KEY_LIMITED), "graphs": ["*"],
     "rate_per_minute": 5},
    {"name": "svc-echo", "key_sha256": hash_key(KEY_ECHO), "graphs": ["echo"]},
]
A = {"X-API-Key": KEY_A}
SCOPE_A = Principal("api_key", "svc-a", frozenset(), 1).scope  # the namespace of svc-a's ids


def token(sub: str, graphs: list[str], *, expires_in: float = 300, secret: str = JWT_SECRET) -> str:
    claims = {"sub": sub, "graphs": graphs, "exp": int(time.time() + expires_in)}
    return jwt.encode(claims, secret, algorithm="HS256")


def gateway_settings(worker_env: dict[str, str], **overrides: Any) -> Settings:
    env = {k.removeprefix("GRAPHWIRE_").lower(): v for k, v in worker_env.items()}
    fields: dict[str, Any] = {
        **env,
        "gateway_api_keys": SecretStr(orjson.dumps(KEYS).decode()),
        "gateway_jwt_secret": SecretStr(JWT_SECRET),
        "gateway_ops_port": 0,  # many gateways per run: no fixed ops port
        **overrides,
    }
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


@asynccontextmanager
async def serve_app(
    settings: Settings, client_timeout: float = 60
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Run the gateway app on a free port; yields the app and an httpx client for it."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                            lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    def started() -> bool:
        if task.done():
            task.result()  # it stopped: raise why
        return server.started

    try:
        await eventually(started, 30, what="the gateway serving", interval=0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     timeout=client_timeout) as http:
            yield app, http
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Run the gateway app on a free port; yields an httpx client for it."""
    async with serve_app(settings) as (_app, http):
        yield http
