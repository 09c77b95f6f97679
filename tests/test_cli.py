"""The graphwire command line, run as a user runs it (subprocesses, real broker)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from graphwire.topics.specs import TopicNames
from tests.helpers import graphwire
from tests.kafka_helpers import ROOT, Collector, wait_for_members


def test_graphs_lists_names_and_nodes() -> None:
    """`graphwire graphs --demo-graphs` prints each demo graph with its nodes in order."""
    out = graphwire("graphs", "--demo-graphs")
    assert out.returncode == 0
    assert out.stdout.splitlines() == [
        "approval             draft -> review -> publish",
        "chat                 agent -> tools",
        "echo                 echo",
        "pipeline             normalize -> tokenize -> count",
        "slow                 wait",
    ]


NO_GRAPHS = (
    "no graphs to serve: name yours with GRAPHWIRE_GRAPHS=name=package.module:attr (or --graphs) "
    "or GRAPHWIRE_LANGGRAPH_JSON=path/to/langgraph.json (or --config); for the built-in demo "
    "graphs (echo, chat, slow, ...; never in production) add --demo-graphs or set "
    "GRAPHWIRE_DEMO_GRAPHS=true"
)


def test_demo_graphs_are_off_unless_asked_for() -> None:
    """No demo graph by default: `graphwire graphs` lists none and says how to add graphs;
    GRAPHWIRE_DEMO_GRAPHS=true (or its former name GRAPHWIRE_BUILTIN_GRAPHS) turns them on,
    and configured graphs are served alone."""
    out = graphwire("graphs")
    assert (out.returncode, out.stdout, out.stderr) == (0, "", NO_GRAPHS + "\n")
    for variable in ("GRAPHWIRE_DEMO_GRAPHS", "GRAPHWIRE_BUILTIN_GRAPHS"):
        listed = graphwire("graphs", env={variable: "true"})
        assert [line.split()[0] for line in listed.stdout.splitlines()] == [
            "approval", "chat", "echo", "pipeline", "slow"
        ]
    mine = graphwire("graphs", "--graphs", "upper=tests.sample_graphs:make_upper")
    assert mine.stdout.split() == ["upper", "upper"]


def test_worker_without_graphs_exits_with_how_to_add_them() -> None:
    """`graphwire worker` with no graph configured and no demo graphs: exit 1 and one line
    naming GRAPHWIRE_GRAPHS, GRAPHWIRE_LANGGRAPH_JSON and --demo-graphs (nothing served)."""
    out = graphwire("worker", env={"GRAPHWIRE_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, timeout=120)
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == f"graphwire: error: {NO_GRAPHS}\n"


def test_schema_writes_valid_json_schema_files(tmp_path: Path) -> None:
    """`graphwire schema --out DIR` writes request/event/result/control schemas, valid 2020-12."""
    out = graphwire("schema", "--out", str(tmp_path))
    assert out.returncode == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["control.schema.json", "event.schema.json", "request.schema.json",
                     "result.schema.json"]
    for file in files:
        jsonschema.Draft202012Validator.check_schema(json.loads((tmp_path / file).read_text()))


def test_unreachable_broker_is_one_readable_line() -> None:
    """No broker: exit code 3 and one line naming the address and what to check."""
    out = graphwire(
        "submit", "pipeline", "--input", '{"text": "x"}', "--bootstrap-servers", "127.0.0.1:9"
    )
    assert out.returncode == 3
    assert out.stderr.strip().splitlines() == [
        "graphwire: error: cannot reach Kafka at 127.0.0.1:9: is the broker running and is the "
        "address right?"
    ]


def test_bad_input_json_and_bad_settings_say_what_to_fix() -> None:
    """--input that is not JSON and an invalid setting each give one actionable line, exit 1."""
    out = graphwire("submit", "echo", "--input", "{text}", "--bootstrap-servers", "127.0.0.1:9")
    assert out.returncode == 1
    assert "--input is not valid JSON" in out.stderr and "Traceback" not in out.stderr
    out = graphwire("graphs", env={"GRAPHWIRE_MAX_IN_FLIGHT": "zero"})
    assert out.returncode == 1
    assert out.stderr.startswith("graphwire: error: invalid settings or arguments: max_in_flight")


@pytest.mark.integration
def test_topics_ensure_is_idempotent(bootstrap: str, prefix: str) -> None:
    """First run creates the five topics, the second finds them."""
    command = ("topics", "ensure", "--partitions", "3", "--bootstrap-servers", bootstrap)
    first, second = (graphwire(*command, "--topic-prefix", prefix) for _ in range(2))
    assert first.returncode == second.returncode == 0
    assert [line.split() for line in first.stdout.splitlines()] == [
        [f"{prefix}.requests", "created", "partitions=3"],
        [f"{prefix}.events", "created", "partitions=3"],
        [f"{prefix}.results", "created", "partitions=3"],
        [f"{prefix}.dlq", "created", "partitions=1"],
        [f"{prefix}.control", "created", "partitions=1"],
    ]
    assert [line.split()[1] for line in second.stdout.splitlines()] == ["exists"] * 5


@pytest.mark.integration
async def test_submit_stream_with_two_worker_processes(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """`worker --processes 2` serves `submit --stream`; SIGTERM stops both children, exit 0."""
    log = (tmp_path / "workers.log").open("wb")
    workers = subprocess.Popen(  # noqa: ASYNC220 - started once, waited on in a thread
        [sys.executable, "-m", "graphwire", "worker", "--processes", "2"],
        env={**os.environ, **worker_env},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        env = {
            "GRAPHWIRE_BOOTSTRAP_SERVERS": bootstrap,
            "GRAPHWIRE_TOPIC_PREFIX": worker_env["GRAPHWIRE_TOPIC_PREFIX"],
        }
        ok = await asyncio.to_thread(
            graphwire,
            "submit",
            "pipeline",
            "--input",
            '{"text": "Hello World"}',
            "--stream",
            "--request-id",
            "cli-1",
            env=env,
        )
        rejected = await asyncio.to_thread(
            graphwire, "submit", "nope", "--input", "{}", "--wait", "--request-id", "cli-2", env=env
        )
        assert ok.returncode == 0, ok.stderr
        lines = ok.stdout.splitlines()
        events = [json.loads(line) for line in lines[:5]]
        assert [(e["seq"] - 2**32, e["type"], e["node"]) for e in events] == [
            (0, "run_started", None),
            (1, "node", "normalize"),
            (2, "node", "tokenize"),
            (3, "node", "count"),
            (4, "run_finished", None),
        ]
        result = json.loads("\n".join(lines[5:]))
        assert (result["request_id"], result["status"], result["output"]["count"]) == (
            "cli-1",
            "success",
            2,
        )
        assert rejected.returncode == 1
        assert json.loads(rejected.stdout)["status"] == "rejected"
        # both children joined the group: submit more and see two worker ids
        await wait_for_members(bootstrap, worker_env["GRAPHWIRE_GROUP_ID"], 2)
        async with Collector(bootstrap, topics.events) as out:
            for i in range(12):
                await asyncio.to_thread(
                    graphwire,
                    "submit",
                    "echo",
                    "--input",
                    '{"text": "x"}',
                    "--request-id",
                    f"many-{i}",
                    env=env,
                )
            await out.wait_until(
                lambda: sum(v["type"] == "run_finished" for v in out.values(topics.events)) == 13
            )
            ids = {
                v["data"]["worker"] for v in out.values(topics.events) if v["type"] == "run_started"
            }
        assert len(ids) == 2
        workers.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(workers.wait, 60) == 0
    finally:
        if workers.poll() is None:
            workers.send_signal(signal.SIGTERM)
            workers.wait(60)


@pytest.mark.integration
def _dev_demo(env: dict[str, str] | None = None) -> tuple[list[str], str]:
    out = graphwire("dev", "--demo", "--exit-after-demo", env=env, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout.splitlines(), out.stderr


def test_dev_demo_shows_events_and_results_of_each_builtin() -> None:
    """The README's run command (`graphwire dev --demo`): every built-in graph, the approval
    graph interrupted and resumed, run control (reject, cancel, history, fork), every run in
    the audit table, exit code 0."""
    lines, _ = _dev_demo()
    assert [line.split()[1] for line in lines if line.startswith(">>> ")] == [
        "pipeline", "echo", "slow", "chat", "approval", "resume", "reject:", "cancel",
        "history:", "fork:",
    ]
    assert f"  event {2**32 + 2} node tokenize: {{'tokens': ['hello', 'world']}}" in lines
    assert f"  event {2**32 + 2} custom: {{'tool': 'add', 'a': 19, 'b': 23}}" in lines
    results = [line for line in lines if line.startswith("  result ")]
    assert results[:3] == [
        "  result success: {'text': 'hello world', 'tokens': ['hello', 'world'], 'count': 2}",
        "  result success: {'text': 'graphwire'}",
        "  result success: {'seconds': 0.2}",
    ]
    assert results[3].startswith("  result success: {'messages': [")
    assert results[4].startswith("  result interrupted: [{'id': ")
    assert results[5].startswith("  result success: {'topic': 'graphwire', 'draft': ")
    assert results[5].endswith("'approved': True, 'comment': None, 'published': True}")
    assert results[6].startswith("  result rejected: type='ThreadBusy' message=\"thread ")
    assert results[7].startswith("  result cancelled: type='Cancelled' message='cancelled by a "
                                 "cancel request (demo); it had not started")
    assert [line.split(" ", 3)[3] for line in lines if ": ran " in line] == [
        "step 3 loop: ran count, next -", "step 2 loop: ran tokenize, next count",
        "step 1 loop: ran normalize, next tokenize", "step 0 loop: ran -, next normalize",
        "step -1 input: ran -, next -",
    ]
    fork = lines.index(next(line for line in lines if line.startswith(">>> fork:")))
    assert [line.split()[2:4] for line in lines[fork + 1:fork + 5]] == [
        ["run_started:", "{'thread_id':"], ["node", "tokenize:"], ["node", "count:"],
        ["run_finished:", "{'status':"],
    ]
    assert results[8] == (
        "  result success: {'text': 'forked text', 'tokens': ['forked', 'text'], 'count': 2}"
    )
    assert "audit: 11 of 11 runs recorded in PostgreSQL (graphwire runs show REQUEST_ID)" in lines


def test_dev_starts_embedded_redis_and_postgres_when_none_answer() -> None:
    """A laptop without Redis or PostgreSQL: embedded ones, and their data removed at exit."""
    lines, err = _dev_demo({
        "GRAPHWIRE_REDIS_URL": "redis://127.0.0.1:1/0",
        "GRAPHWIRE_DATABASE_URL": "postgresql://127.0.0.1:1/postgres",
    })
    assert "(embedded: Redis, PostgreSQL)" in lines[0]
    assert "audit: 11 of 11 runs recorded in PostgreSQL (graphwire runs show REQUEST_ID)" in lines
    data = Path(lines[1].split(" logs ")[1].strip())
    assert data.name.startswith("graphwire-dev-")
    assert not data.exists()
    assert err.strip().endswith("graphwire dev: stopped")


def test_dev_ctrl_c_stops_everything_and_removes_its_data() -> None:
    """Ctrl-C in a terminal signals the whole process group: children and broker stop in
    order, nothing is left running, the temporary data is gone."""
    import signal
    import socket

    dev = subprocess.Popen(
        [sys.executable, "-m", "graphwire", "dev"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    assert dev.stdout is not None
    lines = []
    while not lines or not lines[-1].startswith("running; Ctrl-C stops everything"):
        line = dev.stdout.readline()
        assert line, f"dev exited early: {dev.wait()} {dev.stderr.read() if dev.stderr else ''}"
        lines.append(line)
    ports = [int(w.rsplit(":", 1)[1].split("/")[0]) for w in lines[1].split() if "http://" in w]
    broker_port = int(lines[0].split()[3].rstrip(",").rsplit(":", 1)[1])
    data = Path(lines[1].split(" logs ")[1].strip())
    os.killpg(dev.pid, signal.SIGINT)
    _, err = dev.communicate(timeout=90)
    assert dev.returncode == 0, err
    assert not data.exists()
    for port in [*ports, broker_port]:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    """The worker's GC setting: threshold N collects the young generation every N allocations,
    start-up objects leave the collector (frozen); 0 changes nothing."""
    import gc

    from graphwire.processors.cli.common import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc(0)
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
        tune_gc(50_000)
        assert gc.get_threshold() == (50_000, before[1], before[2])
        assert gc.get_freeze_count() > 1000  # this process's modules and objects
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_gateway_serves_with_the_gc_tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    """``graphwire gateway`` builds its app, then freezes it out of the collector and raises the
    young threshold (``GRAPHWIRE_GC_YOUNG_THRESHOLD``) before uvicorn serves it."""
    import gc

    import uvicorn

    from graphwire.processors.cli.main import build_parser

    seen: dict[str, object] = {}

    def serve(app: object, **kwargs: object) -> None:
        seen.update(app=app, threshold=gc.get_threshold()[0], frozen=gc.get_freeze_count(),
                    port=kwargs["port"])

    monkeypatch.setattr(uvicorn, "run", serve)
    monkeypatch.setenv("GRAPHWIRE_GATEWAY_AUTH", "false")
    monkeypatch.setenv("GRAPHWIRE_GC_YOUNG_THRESHOLD", "40000")
    before = gc.get_threshold()
    try:
        args = build_parser().parse_args(["gateway", "--port", "18123"])
        assert args.func(args) == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen["threshold"] == 40_000
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 1000
    assert seen["port"] == 18123
