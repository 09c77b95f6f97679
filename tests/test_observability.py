"""What a runner exposes to operators: the guide's metrics and graphwire's, on /metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from graphwire.processors.dev.broker import free_port
from graphwire.topics.specs import TopicNames
from tests.kafka_helpers import Collector, WorkerProcess, encode, produce, request, samples

pytestmark = pytest.mark.integration


async def test_llm_node_and_lag_metrics_after_real_runs(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """After one chat run and two pipeline runs the worker's /metrics count 2 successful LLM
    requests of "graphwire-scripted" (its 2 AI messages) with their summed input and output
    tokens, 2 durations per pipeline node, 2 for the chat agent and 1 for its tools, 2 successful
    pipeline executions, and a consumer lag of 0 on every requests partition."""
    port = free_port()
    worker = WorkerProcess({**worker_env, "GRAPHWIRE_HTTP_PORT": str(port)},
                           log_path=tmp_path / "worker.log").start()
    try:
        async with Collector(bootstrap, topics.results) as out:
            chat = {"messages": [{"role": "user", "content": "What is 19 + 23?"}]}
            await produce(bootstrap, topics.requests, [
                (b"c1", encode(request("c1", "chat", input=chat))),
                (b"p1", encode(request("p1"))),
                (b"p2", encode(request("p2"))),
            ])
            await out.wait_count(topics.results, 3, timeout=60)
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/metrics"
        ) as response:
            m = samples(await response.text())
    finally:
        worker.stop()
    chat_result = next(r for r in out.values(topics.results) if r["request_id"] == "c1")
    ai = [msg for msg in chat_result["output"]["messages"] if msg["type"] == "ai"]
    model = "graphwire-scripted"
    assert m[f'langgraph_llm_requests_total{{model="{model}",status="success"}}'] == len(ai) == 2
    assert m[f'langgraph_llm_tokens_total{{model="{model}",type="input"}}'] == sum(
        msg["usage_metadata"]["input_tokens"] for msg in ai
    )
    assert m[f'langgraph_llm_tokens_total{{model="{model}",type="output"}}'] == sum(
        msg["usage_metadata"]["output_tokens"] for msg in ai
    )
    for node in ("normalize", "tokenize", "count"):
        assert m[f'graphwire_node_duration_seconds_count{{graph="pipeline",node="{node}"}}'] == 2
    assert m['graphwire_node_duration_seconds_count{graph="chat",node="agent"}'] == 2
    assert m['graphwire_node_duration_seconds_count{graph="chat",node="tools"}'] == 1
    assert m['langgraph_workflow_executions_total{status="success",workflow_name="pipeline"}'] == 2
    lags = {k: v for k, v in m.items() if k.startswith("graphwire_consumer_lag_records{")}
    assert lags and set(lags.values()) == {0.0}
    assert all(f'topic="{topics.requests}"' in k for k in lags)


async def test_json_logs_carry_request_graph_node_and_trace(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """At DEBUG, a pipeline request with a traceparent logs exactly one "run success in ..." JSON
    line with graph pipeline, the request's trace id and level debug, and one "node NAME took
    ..." line per node (normalize, tokenize, count, in order), each with that trace id."""
    import orjson

    log = tmp_path / "worker.log"
    worker = WorkerProcess({**worker_env, "GRAPHWIRE_LOG_LEVEL": "DEBUG"}, log_path=log).start()
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        async with Collector(bootstrap, topics.results) as out:
            await produce(bootstrap, topics.requests, [
                (b"t1", encode(request("t1")), [("traceparent", f"00-{trace}-00f067aa0ba902b7-01"
                                                 .encode())]),
            ])
            await out.wait_count(topics.results, 1, timeout=60)
            await asyncio.sleep(0.3)
    finally:
        worker.stop()
    lines = [orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == "t1"]
    run = [line for line in mine if line["msg"].startswith("run success in ")]
    assert len(run) == 1
    assert (run[0]["graph"], run[0]["trace_id"], run[0]["level"]) == ("pipeline", trace, "debug")
    nodes = [line for line in mine if line["msg"].startswith("node ")]
    assert [line["node"] for line in nodes] == ["normalize", "tokenize", "count"]
    assert all(line["msg"].startswith(f"node {line['node']} took ") for line in nodes)
    assert all(line["trace_id"] == trace for line in nodes)


async def test_requests_naming_unknown_graphs_share_one_label(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """Rejected requests for unregistered graphs count under workflow_name="unknown" (one
    series however many names); registered graphs keep their own label, rejected or not."""
    import uuid

    port = free_port()
    worker = WorkerProcess({**worker_env, "GRAPHWIRE_HTTP_PORT": str(port)},
                           log_path=tmp_path / "worker.log").start()
    names = [f"nope-{uuid.uuid4().hex}" for _ in range(40)]
    messages = [(f"u{i}".encode(), encode(request(f"u{i}", name)))
                for i, name in enumerate(names)]
    # invalid requests (neither input nor command): one naming a random graph, one pipeline
    messages += [(b"bad1", encode(request("bad1", f"nope-{uuid.uuid4().hex}", input=None))),
                 (b"bad2", encode(request("bad2", "pipeline", input=None))),
                 (b"ok1", encode(request("ok1")))]
    try:
        async with Collector(bootstrap, topics.results) as out:
            await produce(bootstrap, topics.requests, messages)
            await out.wait_count(topics.results, 43, timeout=60)
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/metrics"
        ) as response:
            m = samples(await response.text())
    finally:
        worker.stop()
    statuses = sorted((r["graph"], r["status"]) for r in out.values(topics.results))
    assert statuses.count(("pipeline", "success")) == 1
    assert [s for s in statuses if s[0] in names] == [(n, "rejected") for n in sorted(names)]
    executions = {k: v for k, v in m.items()
                  if k.startswith("langgraph_workflow_executions_total{")}
    assert executions == {
        'langgraph_workflow_executions_total{status="rejected",workflow_name="unknown"}': 41.0,
        'langgraph_workflow_executions_total{status="rejected",workflow_name="pipeline"}': 1.0,
        'langgraph_workflow_executions_total{status="success",workflow_name="pipeline"}': 1.0,
    }
    assert m['graphwire_dead_letters_total{reason="unknown_graph"}'] == 40
    assert m['graphwire_dead_letters_total{reason="invalid"}'] == 2


async def test_model_names_from_runs_are_capped_in_labels() -> None:
    """The first MAX_MODEL_LABELS model names get their own series, every later one counts
    under model="other" (a graph may take its model from the request)."""
    import uuid

    from langchain_core.outputs import LLMResult

    from graphwire.processors.metrics import MAX_MODEL_LABELS, RunnerMetrics
    from graphwire.processors.runner.callbacks import RunCallbacks

    metrics = RunnerMetrics()
    callbacks = RunCallbacks(metrics, "chat")
    names = [f"model-{i}" for i in range(MAX_MODEL_LABELS + 30)] + ["model-0"]
    for name in names:
        run_id = uuid.uuid4()
        callbacks.on_chat_model_start({}, [], run_id=run_id,
                                      metadata={"ls_model_name": name})
        callbacks.on_llm_end(LLMResult(generations=[]), run_id=run_id)
    counts = {s.labels["model"]: s.value for s in metrics.llm_requests.collect()[0].samples
              if s.name == "langgraph_llm_requests_total"}
    assert counts == {**{f"model-{i}": 1.0 for i in range(1, MAX_MODEL_LABELS)},
                      "model-0": 2.0, "other": 30.0}
