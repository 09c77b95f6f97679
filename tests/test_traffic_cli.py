"""``graphwire submit --file`` and ``graphwire tail`` against a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from graphwire.topics.specs import TopicNames
from tests.helpers import ROOT
from tests.helpers import graphwire as run_cli
from tests.kafka_helpers import WorkerProcess, wait_for_members

pytestmark = pytest.mark.integration


@pytest.fixture
def env(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> Iterator[dict[str, str]]:
    process = WorkerProcess(worker_env, log_path=tmp_path / "worker.log").start()
    try:
        yield {**os.environ, **worker_env}
    finally:
        process.stop()


def graphwire(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``graphwire ARGS`` with ``env``, up to three minutes (:func:`tests.helpers.graphwire`)."""
    return run_cli(*args, env=env, timeout=180)


async def test_submit_file_runs_every_line_and_summarises(
    env: dict[str, str], bootstrap: str, tmp_path: Path
) -> None:
    """`submit pipeline --file --json` with 30 pipeline lines, one echo line, a blank line and an
    unknown graph prints 32 results (the 30 texts lowercased, the unknown one rejected), exits 1,
    and summarises 32 requests, 31 done, 1 rejected, 1 error, p50 and p99 latency and a full
    32/32 progress bar."""
    await wait_for_members(bootstrap, env["GRAPHWIRE_GROUP_ID"], 1)
    lines = [json.dumps({"text": f"Line {i}"}) for i in range(30)]
    lines += [json.dumps({"graph": "echo", "input": {"text": "x"}, "request_id": "f-echo"}),
              "", json.dumps({"graph": "nope", "input": {}})]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = graphwire(env, "submit", "pipeline", "--file", str(path), "--json")
    assert done.returncode == 1, done.stderr  # one request was rejected
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == 32
    assert sorted(r["output"]["text"] for r in results if r["graph"] == "pipeline") == sorted(
        f"line {i}" for i in range(30)
    )
    assert [r["status"] for r in results if r["graph"] == "nope"] == ["rejected"]
    summary = dict(
        line.split(None, 1) for line in done.stderr.splitlines()
        if line and not line.startswith("[") and "latency" not in line
    )
    assert (summary["requests"].strip(), summary["done"].strip()) == ("32", "31")
    assert (summary["rejected"].strip(), summary["errors"].strip()) == ("1", "1")
    assert "p50 latency" in done.stderr and "p99 latency" in done.stderr
    assert "[##############################] 32/32" in done.stderr


def test_submit_file_names_the_bad_line(env: dict[str, str], tmp_path: Path) -> None:
    """`submit --file` exits 1 naming "FILE:2: not JSON" for a broken second line, and
    "FILE:1: no 'graph' in the line" when no graph is given on the command line or in the line."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{not json\n')
    done = graphwire(env, "submit", "pipeline", "--file", str(path))
    assert done.returncode == 1
    assert f"graphwire: error: {path}:2: not JSON" in done.stderr
    done = graphwire(env, "submit", "--file", str(path))
    assert f"{path}:1: no 'graph' in the line" in done.stderr


async def test_tail_follows_events_and_results(
    env: dict[str, str], bootstrap: str, topics: TopicNames
) -> None:
    """`tail --graph echo --json --limit 2` shows only echo runs: the results of t-echo-1 and
    t-echo-2 in order and t-echo-1's events run_started, node, run_finished in seq order; `tail
    --from-beginning --limit 3` shows t-pipe with "result success"."""
    await wait_for_members(bootstrap, env["GRAPHWIRE_GROUP_ID"], 1)
    tail = subprocess.Popen(  # noqa: ASYNC220 (a child we read line by line)
        [sys.executable, "-m", "graphwire", "tail", "--graph", "echo", "--json", "--limit", "2"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert tail.stderr is not None
    assert tail.stderr.readline().startswith("following")  # positioned: produce now
    for graph, rid in (("pipeline", "t-pipe"), ("echo", "t-echo-1"), ("echo", "t-echo-2")):
        graphwire(env, "submit", graph, "--input", '{"text": "x"}', "--request-id", rid, "--wait")
    out, _ = tail.communicate(timeout=60)
    objects = [json.loads(line) for line in out.splitlines()]
    assert {o["graph"] for o in objects} == {"echo"}
    assert [(o["request_id"], o["kind"]) for o in objects if o["kind"] == "result"] == [
        ("t-echo-1", "result"), ("t-echo-2", "result")
    ]
    first = [o for o in objects if o["request_id"] == "t-echo-1"]
    # events in seq order; the result is another topic, so it may come before or after them
    assert [o["type"] for o in first if o["kind"] == "event"] == [
        "run_started", "node", "run_finished"
    ]
    human = graphwire(env, "tail", "--from-beginning", "--limit", "3")
    assert human.returncode == 0, human.stderr
    assert "t-pipe" in human.stdout and "result success" in human.stdout
