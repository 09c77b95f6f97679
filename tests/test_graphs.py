"""The registry's sources and the built-in graphs, run without Kafka."""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from typing_extensions import TypedDict

from graphwire.graphs.chat import ScriptedChatModel, add
from graphwire.graphs.execution import RunOutcome, run_graph
from graphwire.graphs.registry import GraphLoadError, GraphRegistry, UnknownGraphName


async def _run(
    graph: Any, input: dict[str, Any] | None = None, **kw: Any
) -> tuple[RunOutcome, list[tuple[str, Any, Any]]]:
    events: list[tuple[str, Any, Any]] = []

    async def emit(type_: str, node: str | None, data: Any, ns: list[str] | None = None,
                   extra: dict[str, Any] | None = None) -> None:
        assert ns == [], "the top graph's events carry ns []"
        events.append((type_, node, data))

    outcome = await run_graph(
        graph,
        input=input,
        command=kw.pop("command", None),
        config=kw.pop("config", {}),
        stream=kw.pop("stream", ["updates"]),
        timeout_s=kw.pop("timeout_s", None),
        emit=emit,
    )
    return outcome, events


def test_builtins_are_registered_with_their_nodes() -> None:
    """echo, pipeline, slow and chat, with nodes in declaration order."""
    r = GraphRegistry.from_sources()
    assert r.names() == ["approval", "chat", "echo", "pipeline", "slow"]
    assert [r.nodes(n) for n in r.names()] == [
        ["draft", "review", "publish"],
        ["agent", "tools"],
        ["echo"],
        ["normalize", "tokenize", "count"],
        ["wait"],
    ]
    with pytest.raises(UnknownGraphName):
        r.get("nope")


def test_graphs_from_env_specs_stategraph_and_factory() -> None:
    """GRAPHWIRE_GRAPHS entries: a StateGraph is compiled, a factory is called."""
    r = GraphRegistry.from_sources(
        builtins=False,
        specs="failing=tests.sample_graphs:failing, upper = tests.sample_graphs:make_upper",
    )
    assert r.names() == ["failing", "upper"]
    assert r.nodes("upper") == ["upper"]
    assert r.get("upper").invoke({"text": "abc"}) == {"text": "ABC"}


def test_langgraph_json_project_is_served_unchanged(tmp_path: Path) -> None:
    """A LangGraph CLI project: './agent.py:graph' paths relative to langgraph.json."""
    (tmp_path / "helpers.py").write_text("SUFFIX = '!'\n")
    (tmp_path / "agent.py").write_text(
        "from typing import TypedDict\n"
        "from langgraph.graph import StateGraph, START, END\n"
        "from helpers import SUFFIX\n"
        "class S(TypedDict):\n    text: str\n"
        "def shout(s: S) -> S:\n    return {'text': s['text'] + SUFFIX}\n"
        "b = StateGraph(S)\nb.add_node('shout', shout)\nb.add_edge(START, 'shout')\n"
        "b.add_edge('shout', END)\ngraph = b.compile()\n"
    )
    (tmp_path / "langgraph.json").write_text(
        json.dumps({"dependencies": ["."], "graphs": {"agent": "./agent.py:graph"}})
    )
    r = GraphRegistry.from_sources(builtins=False, langgraph_json=tmp_path / "langgraph.json")
    assert r.names() == ["agent"]
    assert r.get("agent").invoke({"text": "hi"}) == {"text": "hi!"}


@pytest.mark.parametrize(
    ("specs", "fragment"),
    [
        ("justaname", "must look like 'name=package.module:attr'"),
        ("x=tests.sample_graphs", "must look like 'package.module:attr'"),
        ("x=no_such_module_zz:graph", "cannot import module 'no_such_module_zz'"),
        ("x=tests.sample_graphs:missing", "has no attribute 'missing'"),
        ("x=tests.sample_graphs:State", "not a compiled graph, StateGraph or a factory"),
    ],
)
def test_bad_graph_specs_say_what_to_fix(specs: str, fragment: str) -> None:
    """Each misconfiguration is a GraphLoadError naming the problem."""
    with pytest.raises(GraphLoadError, match=fragment):
        GraphRegistry.from_sources(builtins=False, specs=specs)


async def test_pipeline_outcome_and_node_events() -> None:
    """pipeline: three node events in order and the documented output."""
    outcome, events = await _run(
        GraphRegistry.from_sources().get("pipeline"), {"text": "Hello World"}
    )
    assert outcome.status == "success"
    assert outcome.output == {"text": "hello world", "tokens": ["hello", "world"], "count": 2}
    assert events == [
        ("node", "normalize", {"text": "hello world"}),
        ("node", "tokenize", {"tokens": ["hello", "world"]}),
        ("node", "count", {"count": 2}),
    ]


async def test_values_mode_and_no_updates() -> None:
    """stream=["values"] emits each state and no node events."""
    _, events = await _run(
        GraphRegistry.from_sources().get("echo"), {"text": "a"}, stream=["values"]
    )
    assert events == [("values", None, {"text": "a"}), ("values", None, {"text": "a"})]


async def test_chat_streams_tokens_tool_progress_and_answer() -> None:
    """chat with messages+custom: a tool call, the tool's custom event, then streamed tokens."""
    outcome, events = await _run(
        GraphRegistry.from_sources().get("chat"),
        {"messages": [{"role": "user", "content": "What is 19 + 23?"}]},
        stream=["custom", "messages"],
    )
    assert outcome.status == "success"
    assert outcome.output["messages"][-1].content == "The answer is 42."
    assert ("custom", None, {"tool": "add", "a": 19, "b": 23}) in events
    tokens = [
        d["content"] for t, n, d in events if t == "message" and n == "agent" and d["content"]
    ]
    assert tokens == ["The ", "answer ", "is ", "42."]
    calls = [
        d["tool_call_chunks"][0]
        for t, _, d in events if t == "message" and d.get("tool_call_chunks")
    ]
    assert [(c["name"], json.loads(c["args"])) for c in calls] == [("add", {"a": 19, "b": 23})]


@pytest.mark.timeout(60, method="signal")
def test_chat_model_answers_a_200000_digit_message_and_adds_exactly() -> None:
    """The chat model's reply to 200,000 digits (minutes of regex backtracking with the GIL held
    before) is an echo; ``a + b`` of up to 18 digits a side is a tool call with exact ints.

    It runs in the main thread so that the signal timeout can stop a regex that backtracks."""
    model = ScriptedChatModel().bind_tools([add])
    digits = "1" * 200_000
    assert model.invoke([HumanMessage(digits)]).content == f"You said: {digits}"
    call = model.invoke([HumanMessage("999999999999999999 + -123456789012345678?")])
    assert [(c["name"], c["args"]) for c in call.tool_calls] == [
        ("add", {"a": 999999999999999999, "b": -123456789012345678})
    ]
    for text in ("1" * 19 + " + 1", "1 + 2" + "3" * 18, "x" * 1000 + " 1 + 2", "y" * 997 + "1+23"):
        assert model.invoke([HumanMessage(text)]).content == f"You said: {text}"


async def test_chat_graph_adds_18_digit_numbers_exactly() -> None:
    """Through the graph: the tool gets both 18-digit ints and the answer is their exact sum."""
    outcome, events = await _run(
        GraphRegistry.from_sources().get("chat"),
        {"messages": [{"role": "user", "content": "999999999999999999+-123456789012345678"}]},
        stream=["custom"],
    )
    assert events == [
        ("custom", None, {"tool": "add", "a": 999999999999999999, "b": -123456789012345678})
    ]
    assert outcome.output["messages"][-1].content == "The answer is 876543210987654321."


async def test_timeout_and_error_outcomes() -> None:
    """timeout_s gives status timeout; a raising node gives error with its type and message."""
    r = GraphRegistry.from_sources(specs="failing=tests.sample_graphs:failing")
    outcome, _ = await _run(r.get("slow"), {"seconds": 5}, timeout_s=0.05)
    assert (outcome.status, outcome.error and outcome.error[0]) == ("timeout", "Timeout")
    outcome, _ = await _run(r.get("failing"), {"text": "xyz"})
    assert (outcome.status, outcome.error) == (
        "error",
        ("ValueError", "cannot handle 'xyz': send a shorter text"),
    )


async def test_interrupt_then_resume_with_a_command() -> None:
    """interrupt() ends the run as interrupted with its value; a resume command finishes it."""

    class S(TypedDict, total=False):
        answer: str

    def ask(state: S) -> S:
        return {"answer": interrupt({"question": "approve?"})}

    b = StateGraph(S)
    b.add_node("ask", ask)
    b.add_edge(START, "ask")
    b.add_edge("ask", END)
    graph = b.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    outcome, events = await _run(graph, {}, config=config)
    assert outcome.status == "interrupted"
    assert [i["value"] for i in outcome.interrupts] == [{"question": "approve?"}]
    assert [e[0] for e in events] == ["interrupt"]
    outcome, events = await _run(graph, None, command={"resume": "yes"}, config=config)
    assert (outcome.status, outcome.output) == ("success", {"answer": "yes"})
    assert events == [("node", "ask", {"answer": "yes"})]


async def test_a_failing_emit_propagates_instead_of_becoming_an_error_outcome() -> None:
    """If publishing an event fails, run_graph raises it: the request is not marked failed."""

    async def emit(type_: str, node: str | None, data: Any, *more: Any) -> None:
        raise ConnectionError("broker gone")

    with pytest.raises(ConnectionError, match="broker gone"):
        await run_graph(
            GraphRegistry.from_sources().get("echo"),
            input={"text": "a"},
            command=None,
            config={},
            stream=["updates"],
            timeout_s=None,
            emit=emit,
        )


async def test_inline_sync_nodes_run_on_the_event_loop_with_their_context() -> None:
    """After inline_sync_nodes, a sync node runs on the loop's own thread (no pool hop), still
    sees its config and stream writer, and gives the same events; async nodes are untouched."""
    import asyncio
    import threading

    from langgraph.config import get_config, get_stream_writer

    from graphwire.graphs.execution import inline_sync_nodes
    from graphwire.graphs.registry import GraphOptions

    class S(TypedDict, total=False):
        n: int
        threads: list[str]

    def add(state: S) -> S:
        get_stream_writer()({"tag": get_config()["configurable"]["tag"]})
        where = "loop" if threading.get_ident() == loop_thread else "pool"
        return {"n": state["n"] + 1, "threads": [*state.get("threads", []), where]}

    async def double(state: S) -> S:
        return {"n": state["n"] * 2}

    def build() -> Any:
        builder = StateGraph(S)
        builder.add_node("add", add)
        builder.add_node("double", double)
        builder.add_edge(START, "add")
        builder.add_edge("add", "double")
        builder.add_edge("double", END)
        return builder.compile()

    loop_thread = threading.get_ident()
    assert asyncio.get_running_loop() is not None
    config = {"configurable": {"tag": "t1"}}
    modes = ["updates", "custom"]
    pooled, pooled_events = await _run(build(), {"n": 1}, config=config, stream=modes)
    graph = build()
    assert inline_sync_nodes(graph) == ["add"]
    inlined, inlined_events = await _run(graph, {"n": 1}, config=config, stream=modes)
    assert pooled.output == {"n": 4, "threads": ["pool"]}
    assert inlined.output == {"n": 4, "threads": ["loop"]}
    assert [e[:2] for e in inlined_events] == [e[:2] for e in pooled_events] == [
        ("custom", None), ("node", "add"), ("node", "double")]
    assert inlined_events[0][2] == {"tag": "t1"}
    assert inline_sync_nodes(graph) == []  # idempotent: nothing left to change
    assert GraphOptions.of(GraphRegistry.from_sources().get("pipeline")).sync_nodes == "inline"
    assert GraphOptions.of(GraphRegistry.from_sources().get("slow")).sync_nodes is None


async def test_nodes_are_timed_from_their_steps_start_without_callbacks() -> None:
    """``on_node`` gets each node as its update arrives, in order, timed from its step's start:
    two nodes of one step that sleep 0.05 and 0.1 s read about that (each from the step's start,
    not from the other's end); a node of the next step that sleeps 0.02 s reads about 0.02 s.
    With no ``updates`` events asked for (``stream=[]``) the nodes are still timed."""
    import asyncio

    class S(TypedDict):
        seen: Annotated[list[str], operator.add]

    def sleeper(name: str, seconds: float) -> Any:
        async def node(state: S) -> S:
            await asyncio.sleep(seconds)
            return {"seen": [name]}
        return node

    builder = StateGraph(S)
    builder.add_node("short", sleeper("short", 0.05))
    builder.add_node("long", sleeper("long", 0.1))
    builder.add_node("after", sleeper("after", 0.02))
    builder.add_edge(START, "short")
    builder.add_edge(START, "long")
    builder.add_edge(["short", "long"], "after")
    builder.add_edge("after", END)
    timed: list[tuple[str, float]] = []

    async def emit(*_event: Any) -> None:
        raise AssertionError("no events were asked for")

    outcome = await run_graph(builder.compile(), input={"seen": []}, command=None, config={},
                              stream=[], timeout_s=None, emit=emit,
                              on_node=lambda node, seconds: timed.append((node, seconds)))
    assert outcome.status == "success"
    assert [node for node, _ in timed] == ["short", "long", "after"]
    seconds = dict(timed)
    assert 0.05 <= seconds["short"] < 0.09
    assert 0.1 <= seconds["long"] < 0.14
    assert 0.02 <= seconds["after"] < 0.06


def test_a_nodes_own_log_lines_carry_the_node_without_callbacks() -> None:
    """A line logged inside a node's code gets ``node`` from LangChain's context (the run has no
    callbacks); a line logged outside any node gets none."""
    import asyncio
    import logging

    from graphwire.processors.logs import ContextFilter

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tests.node_log")
    handler = Keep()
    handler.addFilter(ContextFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    class S(TypedDict):
        text: str

    async def shout(state: S) -> S:
        logger.info("inside")
        return {"text": state["text"].upper()}

    builder = StateGraph(S)
    builder.add_node("shout", shout)
    builder.add_edge(START, "shout")
    graph = builder.compile()
    try:
        asyncio.run(graph.ainvoke({"text": "a"}))
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    assert [(r.getMessage(), getattr(r, "node", None)) for r in records] == [
        ("inside", "shout"), ("outside", None)]
