"""A gateway without authentication in a developer's browser: it says so, listens only on
loopback, serves only its own Host names, and no other web site can make it change state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from graphwire.processors.dev.broker import free_port
from graphwire.topics.specs import TopicNames
from tests.gateway_helpers import A, gateway_settings, serve
from tests.kafka_helpers import ROOT

pytestmark = pytest.mark.integration

EVIL = "https://evil.example"


def _cron(name: str) -> dict[str, object]:
    return {"name": name, "workflow_name": "echo", "schedule": "0 3 * * *"}


def test_auth_off_warns_once_and_listens_on_loopback(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """`graphwire gateway` with GRAPHWIRE_GATEWAY_AUTH=false and no host logs one WARNING
    naming the setting and binds 127.0.0.1 (not 0.0.0.0)."""
    port = free_port()
    env = {**os.environ, **worker_env, "GRAPHWIRE_GATEWAY_AUTH": "false",
           "GRAPHWIRE_GATEWAY_PORT": str(port), "GRAPHWIRE_GATEWAY_OPS_PORT": "0"}
    env.pop("GRAPHWIRE_GATEWAY_HOST", None)
    gateway = subprocess.Popen(
        [sys.executable, "-m", "graphwire", "gateway"], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[dict[str, object]] = []
    try:
        assert gateway.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = gateway.stdout.readline()
            assert line, f"the gateway exited: {lines}"
            if line.startswith("{"):
                lines.append(json.loads(line))
            if "running on" in str(lines[-1:]):
                break
    finally:
        gateway.terminate()
        gateway.wait(30)
        if gateway.stdout is not None:
            gateway.stdout.close()
    warnings = [r for r in lines if r.get("level") == "warning"]
    assert len(warnings) == 1, lines
    assert str(warnings[0]["msg"]).startswith(
        "GRAPHWIRE_GATEWAY_AUTH=false: anyone who reaches 127.0.0.1 may run every graph")
    running = [str(r["msg"]) for r in lines if "running on" in str(r["msg"])]
    assert running == [f"Uvicorn running on http://127.0.0.1:{port} (Press CTRL+C to quit)"]


async def test_auth_off_serves_only_loopback_host_names(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """DNS rebinding: without authentication a request whose Host is another name gets a 400
    before any route; localhost names pass; with authentication any name passes, unless
    GRAPHWIRE_GATEWAY_ALLOWED_HOSTS says otherwise."""
    async with serve(gateway_settings(worker_env, gateway_auth=False)) as http:
        port = http.base_url.port
        codes = {host: (await http.get("/ui/api/runs", headers={"Host": host})).status_code
                 for host in (f"evil.example:{port}", "evil.example", f"localhost:{port}",
                              f"127.0.0.1:{port}", f"[::1]:{port}")}
        refused = await http.get("/health", headers={"Host": f"rebind.evil.example:{port}"})
    assert codes == {f"evil.example:{port}": 400, "evil.example": 400, f"localhost:{port}": 200,
                     f"127.0.0.1:{port}": 200, f"[::1]:{port}": 200}
    assert refused.json()["detail"].startswith("this gateway does not serve that Host name")
    async with serve(gateway_settings(worker_env)) as http:
        assert (await http.get("/health", headers={"Host": "gw.example"})).status_code == 200
    listed = gateway_settings(worker_env, gateway_allowed_hosts="*.example.com")
    async with serve(listed) as http:
        got = [(await http.get("/health", headers={"Host": h})).status_code
               for h in ("api.example.com", "example.com", "api.example.com.evil", "localhost")]
    assert got == [200, 400, 400, 400]


async def test_cross_site_posts_refused_programs_and_same_origin_pass(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """Without authentication, a POST from another site (Origin, or Sec-Fetch-Site:
    cross-site) gets a 403 and changes nothing: cron pause, run cancel, a text/plain run;
    the same POST from a program (no Origin) or from the gateway's own origin works."""
    name = f"c{uuid.uuid4().hex[:8]}"
    async with serve(gateway_settings(worker_env, gateway_auth=False)) as http:
        own = str(http.base_url).rstrip("/")
        assert (await http.post("/crons", json=_cron(name))).status_code == 201
        forged = [
            await http.post(f"/crons/{name}/pause", headers={"Origin": EVIL}),
            await http.post(f"/crons/{name}/pause", headers={"Origin": "null"}),
            await http.post(f"/crons/{name}/pause", headers={"Sec-Fetch-Site": "cross-site"}),
            await http.post("/workflow/cancel/x.y", headers={"Origin": EVIL}),
            await http.post("/workflow/execute", headers={"Origin": EVIL,
                                                          "Content-Type": "text/plain"},
                            content=json.dumps({"workflow_name": "echo", "input_data": {}})),
            await http.delete(f"/crons/{name}", headers={"Origin": EVIL}),
        ]
        assert [r.status_code for r in forged] == [403] * 6
        assert forged[0].json()["detail"].startswith("cross-site request refused")
        assert (await http.get(f"/crons/{name}")).json()["paused"] is False
        read = await http.get(f"/crons/{name}", headers={"Origin": EVIL})
        assert read.status_code == 200  # reads are the CORS policy's business, not a write
        paused = await http.post(f"/crons/{name}/pause",
                                 headers={"Origin": own, "Sec-Fetch-Site": "same-origin"})
        assert (paused.status_code, paused.json()["paused"]) == (200, True)
        resumed = await http.post(f"/crons/{name}/resume")  # curl, httpx: no Origin
        assert (resumed.status_code, resumed.json()["paused"]) == (200, False)
        assert (await http.delete(f"/crons/{name}")).status_code == 204


async def test_cors_origins_may_write_with_a_key(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """An origin listed in GRAPHWIRE_GATEWAY_CORS_ORIGINS may POST (with its key); another
    origin may not, even with a valid key."""
    settings = gateway_settings(worker_env, gateway_cors_origins="https://app.example")
    name = f"c{uuid.uuid4().hex[:8]}"
    async with serve(settings) as http:
        made = await http.post("/crons", json=_cron(name),
                               headers={**A, "Origin": "https://app.example"})
        other = await http.post(f"/crons/{name}/pause", headers={**A, "Origin": EVIL})
        assert (made.status_code, other.status_code) == (201, 403)
        assert (await http.delete(f"/crons/{name}", headers=A)).status_code == 204
