"""Every example in examples/ runs against the test broker and a real worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from graphwire.topics.specs import TopicNames
from tests.kafka_helpers import ROOT, WorkerProcess, wait_for_members

pytestmark = pytest.mark.integration
EXAMPLES = ROOT / "examples"


@pytest.fixture
def worker(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> Iterator[dict[str, str]]:
    """A worker started as examples/README.md says (``--demo-graphs`` for the demo graphs the
    clients call, ``--config`` for the LangGraph project); yields the examples' env."""
    env = {k: v for k, v in worker_env.items() if k != "GRAPHWIRE_DEMO_GRAPHS"}
    process = WorkerProcess(
        env,
        "--demo-graphs",
        "--config",
        str(EXAMPLES / "langgraph_project" / "langgraph.json"),
        log_path=tmp_path / "worker.log",
    ).start()
    try:
        yield {
            **os.environ,
            "GRAPHWIRE_BOOTSTRAP_SERVERS": bootstrap,
            "GRAPHWIRE_TOPIC_PREFIX": topics.prefix,
        }
    finally:
        process.stop()


def run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_kcat(worker: dict[str, str], tmp_path: Path) -> None:
    """examples/kcat/submit.sh, with the newer librdkafka from the confluent-kafka wheel, exits 0
    and prints a success result whose text is "hello from kcat" and whose request_id starts
    "kcat-" (skipped without kcat)."""
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed (apt-get install kcat; .ci/run installs it)")
    import confluent_kafka

    # Debian's kcat links librdkafka 2.0, which the test broker refuses: load the newer one
    # bundled in the confluent-kafka wheel (under a mangled name) as librdkafka.so.1
    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    (tmp_path / "librdkafka.so.1").symlink_to(next(libs.glob("librdkafka*.so*")))
    env = {**worker, "LD_LIBRARY_PATH": str(tmp_path)}
    done = run(env, "sh", str(EXAMPLES / "kcat" / "submit.sh"), "Hello From Kcat")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["status"], result["output"]["text"]) == ("success", "hello from kcat")
    assert result["request_id"].startswith("kcat-")


def test_confluent_kafka(worker: dict[str, str]) -> None:
    """examples/confluent_kafka_client.py "Big Words" exits 0 and prints a success result with
    output {"text": "big words", "tokens": ["big", "words"], "count": 2}."""
    done = run(worker, sys.executable, str(EXAMPLES / "confluent_kafka_client.py"), "Big Words")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["status"], result["output"]) == (
        "success", {"text": "big words", "tokens": ["big", "words"], "count": 2}
    )


def test_python_client(worker: dict[str, str], bootstrap: str) -> None:
    """examples/python_client.py exits 0 and prints run_started at 2**32, the nodes normalize,
    tokenize, count, run_finished at 2**32 + 4, a success result for "hello world", then 10 lines
    "'Request Number i' -> 'request number i' (3 tokens)" in order."""
    done = run(worker, sys.executable, str(EXAMPLES / "python_client.py"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"event {2**32} run_started")
    assert [line.split()[3] for line in lines[1:4]] == ["normalize", "tokenize", "count"]
    assert lines[4].startswith(f"event {2**32 + 4} run_finished")
    assert lines[5].startswith("result success {'text': 'hello world'")
    assert lines[6:] == [
        f"'Request Number {i}' -> 'request number {i}' (3 tokens)" for i in range(10)
    ]


async def test_langgraph_project_served_unchanged(
    worker: dict[str, str], bootstrap: str, topics: TopicNames, worker_env: dict[str, str]
) -> None:
    """The example LangGraph project's "triage" graph, served by the worker unchanged, answers a
    refund message with success, queue "billing" and the billing team's reply."""
    from graphwire.topics.client import GraphwireClient

    await wait_for_members(bootstrap, worker_env["GRAPHWIRE_GROUP_ID"], 1)
    async with GraphwireClient(bootstrap, topic_prefix=topics.prefix) as client:
        result = await client.invoke(
            "triage", {"message": "I need a refund for my invoice"}, wait_timeout=60
        )
    assert result.status == "success"
    assert result.output == {
        "message": "I need a refund for my invoice",
        "queue": "billing",
        "reply": "Thanks! Your message is with our billing team.",
    }


def test_langgraph_sdk(worker: dict[str, str], worker_env: dict[str, str], bootstrap: str,
                       tmp_path: Path) -> None:
    """examples/langgraph_sdk.py against a gateway (an API key in LANGGRAPH_API_KEY) exits 0
    and prints the chat answer streamed token by token, the pipeline's output, the approval's
    draft at its interrupt and ``published: True`` after the resume."""
    import asyncio

    import httpx

    from graphwire.processors.dev.broker import free_port
    from graphwire.processors.gateway.auth import hash_key

    key = "gw_example_key_0123456789abcdef"
    port = free_port()
    gateway = WorkerProcess({
        **worker_env,
        "GRAPHWIRE_GATEWAY_API_KEYS": json.dumps(
            [{"name": "example", "key_sha256": hash_key(key), "graphs": ["*"]}]),
        "GRAPHWIRE_GATEWAY_HOST": "127.0.0.1",
    }, "--port", str(port), command="gateway", log_path=tmp_path / "gateway.log").start()
    try:
        asyncio.run(wait_for_members(bootstrap, worker_env["GRAPHWIRE_GROUP_ID"], 1))
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            asyncio.run(asyncio.sleep(0.1))
        done = run({**worker, "LANGGRAPH_API_KEY": key}, sys.executable,
                   str(EXAMPLES / "langgraph_sdk.py"), url)
    finally:
        gateway.stop()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "chat: The answer is 5.",
        "pipeline: {'text': 'hello kafka world', 'tokens': ['hello', 'kafka', 'world'], "
        "'count': 3}",
        "asked: Announcing graphwire: a short post, ready for review.",
        "published: True",
    ]
