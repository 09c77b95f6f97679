"""Secrets never reach logs, messages, metrics or the audit record; the graph allow-list holds;
secrets can come from files."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import httpx
import orjson
import pytest

from graphwire.processors.audit.db import server_settings
from graphwire.processors.dev.broker import free_port
from graphwire.processors.gateway.auth import hash_key
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL
from tests.gateway_helpers import token
from tests.helpers import wait_rows
from tests.kafka_helpers import ROOT, Collector, WorkerProcess, encode, produce, request

pytestmark = pytest.mark.integration

PG_PASSWORD = "pg-Sup3r-s3cret-0xC0FFEE"
SASL_PASSWORD = "sasl-Sup3r-s3cret-0xBEEF"
JWT_SECRET = "jwt-Sup3r-s3cret-0xFACADE-long-enough-for-hs256"
API_KEY = "gw_Sup3r_s3cret_api_key_0xDECAF"


def _with_password(url: str) -> tuple[str, str]:
    """The test database URL with a password in it, and that password. With trust auth (this
    machine) one is added: it is sent and ignored; a URL with its own (CI) keeps it."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    netloc = f"{parts.username or 'postgres'}:{PG_PASSWORD}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc)), PG_PASSWORD


async def test_a_full_run_leaks_no_configured_secret(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """A worker, audit sink and gateway at DEBUG run two invokes (API key and JWT), a refused key,
    an undecodable request and an unknown graph; none of the PostgreSQL password, SASL password,
    JWT secret, API key or the refused key appears in any topic record, audit row, /metrics page,
    HTTP answer or log (over 10,000 characters read)."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    database_url, pg_password = _with_password(TEST_DATABASE_URL)
    ports = {"worker": free_port(), "audit": free_port(), "gateway": free_port()}
    ops_port = free_port()  # the gateway's /metrics
    env = {
        **worker_env,
        "GRAPHWIRE_DATABASE_URL": database_url,
        "GRAPHWIRE_SASL_PASSWORD": SASL_PASSWORD,  # configured (PLAINTEXT broker: unused)
        "GRAPHWIRE_GATEWAY_JWT_SECRET": JWT_SECRET,
        "GRAPHWIRE_GATEWAY_API_KEYS": orjson.dumps(
            [{"name": "svc", "key_sha256": hash_key(API_KEY), "graphs": ["*"]}]
        ).decode(),
        "GRAPHWIRE_LOG_LEVEL": "DEBUG",
        "GRAPHWIRE_AUDIT_SCHEMA": prefix,
        "GRAPHWIRE_AUDIT_GROUP_ID": f"{prefix}-audit",
        "GRAPHWIRE_AUDIT_BATCH_WITHIN_S": "0.1",
        "GRAPHWIRE_HTTP_PORT": str(ports["worker"]),
        "GRAPHWIRE_AUDIT_HTTP_PORT": str(ports["audit"]),
        "GRAPHWIRE_GATEWAY_PORT": str(ports["gateway"]),
        "GRAPHWIRE_GATEWAY_OPS_PORT": str(ops_port),
    }
    logs = {name: tmp_path / f"{name}.log" for name in ports}
    procs = [
        WorkerProcess(env, log_path=logs["worker"]).start(),
        WorkerProcess(env, "--migrate", command="audit", log_path=logs["audit"]).start(),
        WorkerProcess(env, command="gateway", log_path=logs["gateway"]).start(),
    ]
    texts: list[str] = []
    try:
        async with Collector(
            bootstrap, topics.requests, topics.events, topics.results, topics.dlq
        ) as out, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{ports['gateway']}", timeout=60
        ) as http:
            for _ in range(200):
                try:
                    if (await http.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            run = {"workflow_name": "pipeline", "input_data": {"text": "Hi"}}
            ok = await http.post("/workflow/invoke", json=run, headers={"X-API-Key": API_KEY})
            assert ok.status_code == 200, ok.text
            bearer = {"Authorization": f"Bearer {token('u', ['*'], secret=JWT_SECRET)}"}
            by_jwt = await http.post("/workflow/invoke", json=run, headers=bearer)
            assert by_jwt.status_code == 200, by_jwt.text
            refused = await http.post("/workflow/invoke", json=run,
                                      headers={"X-API-Key": API_KEY[:-1]})
            assert refused.status_code == 401
            texts += [ok.text, refused.text]
            await produce(bootstrap, topics.requests, [
                (b"bad", b"{not json"),
                (b"u", encode(request("unknown-graph", "nope"))),
            ])
            await out.wait_count(topics.results, 3, timeout=60)
            await out.wait_count(topics.dlq, 2, timeout=60)
            conn = await asyncpg.connect(TEST_DATABASE_URL, server_settings=server_settings(prefix))
            try:
                await wait_rows(conn, "SELECT count(*) FROM graphwire_runs WHERE status <> "
                                      "'accepted'", 3)
                rows = await conn.fetch("SELECT * FROM graphwire_runs")
                letters = await conn.fetch("SELECT * FROM graphwire_dead_letters")
            finally:
                await conn.close()
            async with aiohttp.ClientSession() as session:
                for port in (ports["worker"], ports["audit"], ops_port):
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                        texts.append(await response.text())
    finally:
        for proc in procs:
            proc.terminate(timeout=60)
    for topic, records in out.records.items():
        for record in records:
            texts.append(f"{topic} {record.key!r} {record.value!r} {record.headers!r}")
    texts += [repr(dict(r)) for r in [*rows, *letters]]
    texts += [path.read_text(errors="replace") for path in logs.values()]
    assert sum(len(t) for t in texts) > 10_000  # DEBUG logs and messages were really read
    for secret in (pg_password, SASL_PASSWORD, JWT_SECRET, API_KEY, API_KEY[:-1]):
        leaks = [t[max(0, t.find(secret) - 80): t.find(secret) + 80] for t in texts
                 if secret in t]
        assert leaks == [], f"{secret!r} leaked: {leaks[:3]}"


def test_secrets_from_mounted_files(tmp_path: Path) -> None:
    """GRAPHWIRE_SECRETS_DIR: one file per setting, as Kubernetes mounts a Secret."""
    (tmp_path / "GRAPHWIRE_DATABASE_URL").write_text("postgresql://u:from-file@db:5432/x")
    (tmp_path / "graphwire_gateway_jwt_secret").write_text("jwt-from-file")
    code = ("from graphwire.processors.settings import Settings; s = Settings(); "
            "print(s.database_url.get_secret_value(), s.gateway_jwt_secret.get_secret_value(), "
            "s.database_url)")
    env = {**os.environ, "GRAPHWIRE_SECRETS_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split() == ["postgresql://u:from-file@db:5432/x", "jwt-from-file",
                                   "**********"]


async def test_graph_allow_list_rejects_registered_graphs_not_on_it(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """With GRAPHWIRE_ALLOWED_GRAPHS=echo,pipeline an echo request succeeds and a request for the
    registered graph slow is rejected as UnknownGraph, "unknown graph 'slow': registered graphs
    are echo, pipeline;"."""
    worker = WorkerProcess({**worker_env, "GRAPHWIRE_ALLOWED_GRAPHS": "echo,pipeline"},
                           log_path=tmp_path / "worker.log").start()
    try:
        async with Collector(bootstrap, topics.results) as out:
            await produce(bootstrap, topics.requests, [
                (b"a", encode(request("allowed", "echo", input={"text": "x"}))),
                (b"b", encode(request("refused", "slow", input={"seconds": 0.01}))),
            ])
            await out.wait_count(topics.results, 2, timeout=60)
    finally:
        worker.stop()
    by_id = {r["request_id"]: r for r in out.values(topics.results)}
    assert by_id["allowed"]["status"] == "success"
    refused = by_id["refused"]
    assert (refused["status"], refused["error"]["type"]) == ("rejected", "UnknownGraph")
    assert refused["error"]["message"].startswith(
        "unknown graph 'slow': registered graphs are echo, pipeline;"
    )
