"""The Agent Server run-create body: what the official SDK and RemoteGraph send, how each field
becomes graphwire's request, and the 400/422 for each field graphwire cannot honour."""

from __future__ import annotations

import json
import operator
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

import httpx
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import StateGraph
from langgraph.pregel.remote import RemoteGraph
from langgraph.types import Command, Send
from langgraph_sdk.client import LangGraphClient

from graphwire.graphs.execution import _command
from graphwire.processors.gateway.agentapi.errors import ApiError, BadRequest, Unprocessable
from graphwire.processors.gateway.agentapi.runmodels import (
    CONFIGURABLE_AND_CONTEXT,
    RESUME_WITHOUT_THREAD,
    RunCreate,
    graphwire_modes,
    normalize_modes,
    parse_run_create,
    to_request,
)
from graphwire.topics.models import Request

THREAD = "6f1c0a5e-0000-4000-8000-000000000001"
RUN = "0193a1b2-0000-7000-8000-000000000001"
CP = "1f1eff7b-b79d-69f9-8000-c892de421b07"


class Captured:
    """The JSON bodies the SDK posted through an in-memory transport (no server)."""

    def __init__(self, sse: bytes = b"") -> None:
        self.bodies: list[dict[str, Any]] = []
        self.sse = sse

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        if request.url.path.endswith("/stream"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=self.sse)
        return httpx.Response(200, json={})

    def client(self) -> LangGraphClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self.handle), base_url="http://gw")
        return LangGraphClient(http)


STAMPS = {"graph_id": "chat", "run_id": RUN, "thread_id": THREAD}
"""The run's ids in LangGraph's config metadata, as the Agent Server stamps them (an assistant
record adds its ``assistant_id``; a stateless run has no ``thread_id``)."""


def mapped(body: dict[str, Any], thread_id: str | None = THREAD, **kwargs: Any) -> dict[str, Any]:
    return to_request(parse_run_create(body), run_id=RUN, thread_id=thread_id, graph="chat",
                      **kwargs)


async def drain(stream: AsyncIterator[Any]) -> None:
    async for _ in stream:
        pass


async def test_every_sdk_stream_field_maps_onto_the_request() -> None:
    """``runs.stream`` with every field the SDK has becomes one graphwire request: modes
    mapped (``messages-tuple`` → ``messages``), ``stream_subgraphs`` → ``subgraphs``, config
    and context mirrored, the defaults kept; the result validates as a ``Request``."""
    captured = Captured()
    client = captured.client()
    await drain(client.runs.stream(
        THREAD, "chat", input={"messages": [{"role": "user", "content": "hi"}]},
        stream_mode=["values", "updates", "messages-tuple", "custom", "tasks", "checkpoints",
                     "debug"],
        stream_subgraphs=True, stream_resumable=True, metadata={"k": 1},
        config={"tags": ["b", "a"], "recursion_limit": 7, "configurable": {"model": "m"}},
        interrupt_before=["tools"], interrupt_after="*", multitask_strategy="reject",
        if_not_exists="create", on_disconnect="cancel", after_seconds=3,
        webhook="https://hooks.example.com/done", durability="sync", strict_resume=True,
    ))
    body = parse_run_create(captured.bodies[0])
    request = to_request(body, run_id=RUN, thread_id=THREAD, graph="chat")
    assert (body.if_not_exists, body.on_disconnect, body.stream_resumable, body.modes) == (
        "create", "cancel", True,
        ["values", "updates", "messages-tuple", "custom", "tasks", "checkpoints", "debug"])
    assert request == {
        "request_id": RUN, "graph": "chat",
        "input": {"messages": [{"role": "user", "content": "hi"}]}, "thread_id": THREAD,
        "config": {"configurable": {"model": "m"}, "tags": ["a", "b"], "recursion_limit": 7,
                   "metadata": STAMPS},
        "context": {"model": "m"}, "interrupt_before": ["tools"], "interrupt_after": "*",
        "subgraphs": True,
        "stream": ["updates", "values", "messages", "custom", "tasks", "checkpoints", "debug"],
        "metadata": {"k": 1}, "durability": "sync", "multitask_strategy": "reject",
        "webhook": "https://hooks.example.com/done", "after_seconds": 3.0,
    }
    assert Request.model_validate(request).key == THREAD


async def test_sdk_defaults_give_a_values_stream_enqueued_on_the_thread() -> None:
    """The bodies the SDK sends with no options (``stream``: ``stream_mode "values"`` and
    ``false`` flags; ``wait``: input only) become a ``values`` request, ``enqueue`` on a
    thread, no strategy without one; a ``wait`` publishes no step events unless its body names
    ``stream_mode`` or ``stream_resumable`` (its answer is its result)."""
    captured = Captured()
    client = captured.client()
    await drain(client.runs.stream(THREAD, "chat", input={"a": 1}))
    await client.runs.wait(None, "chat", input={"a": 1})
    stream_body, wait_body = captured.bodies
    assert stream_body == {"input": {"a": 1}, "stream_mode": "values", "stream_subgraphs": False,
                           "stream_resumable": False, "assistant_id": "chat"}
    assert mapped(stream_body) == {
        "request_id": RUN, "graph": "chat", "input": {"a": 1}, "thread_id": THREAD,
        "config": {"metadata": STAMPS}, "subgraphs": False, "stream": ["values"],
        "metadata": {}, "multitask_strategy": "enqueue"}
    assert mapped(wait_body, thread_id=None) == {
        "request_id": RUN, "graph": "chat", "input": {"a": 1},
        "config": {"metadata": {"graph_id": "chat", "run_id": RUN}},
        "subgraphs": False, "stream": ["values"], "metadata": {}}
    assert mapped(wait_body, thread_id=None, wait=True)["stream"] == []
    assert mapped({**wait_body, "stream_mode": "updates"}, wait=True)["stream"] == ["updates"]
    assert mapped({**wait_body, "stream_resumable": True}, wait=True)["stream"] == ["values"]


def test_context_is_mirrored_into_configurable_and_back() -> None:
    """A ``context`` is also the ``configurable`` (less keys graphwire reserves); a
    ``configurable`` is also the context, keeping only the keys the graph's context schema
    names (all without a schema)."""
    schema = {"properties": {"user": {"type": "string"}}}
    assert (mapped({"assistant_id": "chat", "input": 1, "context": {"user": "u", "thread_id": "t"}})
            ["config"]) == {"configurable": {"user": "u"}, "metadata": STAMPS}
    by_context = mapped({"assistant_id": "chat", "input": 1,
                         "context": {"user": "u", "other": 2}}, context_schema=schema)
    assert (by_context["context"], by_context["config"]) == (
        {"user": "u"}, {"configurable": {"user": "u"}, "metadata": STAMPS})
    by_config = mapped({"assistant_id": "chat", "input": 1,
                        "config": {"configurable": {"user": "u", "model": "m"}}},
                       context_schema=schema)
    assert (by_config["context"], by_config["config"]) == (
        {"user": "u"}, {"configurable": {"user": "u", "model": "m"}, "metadata": STAMPS})


def test_the_assistants_config_and_context_are_merged_under_the_body() -> None:
    """An assistant's configurable, context, tags and recursion limit apply unless the body
    sets them; tags are joined and sorted (LangChain's ``merge_configs``)."""
    assistant = {"config": {"configurable": {"model": "a", "temp": 1}, "tags": ["z"],
                            "recursion_limit": 9},
                 "context": {"tone": "dry"}}
    request = mapped({"assistant_id": "chat", "input": 1,
                      "config": {"configurable": {"model": "b"}, "tags": ["a"]}},
                     assistant=assistant)
    assert (request["config"], request["context"]) == (
        {"configurable": {"model": "b", "temp": 1}, "tags": ["a", "z"], "recursion_limit": 9,
         "metadata": STAMPS},
        {"tone": "dry", "model": "b"})


def test_checkpoint_dict_and_configurable_checkpoint_keys_fork_the_thread() -> None:
    """``checkpoint_id``, ``checkpoint.checkpoint_id`` and ``configurable.checkpoint_id`` all
    become the request's ``checkpoint_id``; the thread's own id and the caller's namespace
    keys are taken out of ``configurable``."""
    assert mapped({"assistant_id": "chat", "checkpoint_id": CP})["checkpoint_id"] == CP
    request = mapped({"assistant_id": "chat", "input": None,
                      "checkpoint": {"thread_id": THREAD, "checkpoint_ns": "",
                                     "checkpoint_id": CP, "checkpoint_map": {}},
                      "config": {"configurable": {"thread_id": THREAD, "model": "m"}}})
    assert (request["checkpoint_id"], request["config"]) == (
        CP, {"configurable": {"model": "m"}, "metadata": STAMPS})


async def test_remotegraph_as_a_parent_graphs_node_sends_a_body_that_maps() -> None:
    """RemoteGraph running as a node of a local graph streams on the parent's thread with
    ``if_not_exists: create``, ``updates`` added to its modes and the parent's config
    metadata: the body maps (that metadata into the run's)."""
    captured = Captured(sse=b'event: values\r\ndata: {"a": "remote"}\r\n\r\n')
    remote = RemoteGraph("chat", client=captured.client())

    class State(TypedDict):
        a: str

    builder = StateGraph(State)
    builder.add_node("remote", remote)
    builder.add_edge("__start__", "remote")
    await builder.compile(checkpointer=InMemorySaver()).ainvoke(
        {"a": "x"}, {"configurable": {"thread_id": THREAD, "user": "u"}, "tags": ["t"]})
    body = captured.bodies[0]
    assert (body["if_not_exists"], body["stream_mode"], "checkpoint" in body) == (
        "create", ["values", "updates"], False)
    request = mapped(body)
    config = dict(request["config"])
    run_metadata = config.pop("metadata")
    assert (request["stream"], config, request["metadata"]["langgraph_node"]) == (
        ["updates", "values"], {"configurable": {"user": "u"}, "tags": ["t"]}, "remote")
    # the parent's config metadata reaches LangGraph's, under the run's own ids
    assert run_metadata == {**body["config"]["metadata"], **STAMPS}
    assert "checkpoint_id" not in request


def test_commands_map_resume_update_goto_and_send() -> None:
    """A command keeps ``resume``/``update``/``goto`` (Send objects and ``[key, value]``
    pairs as sent); RemoteGraph's ``goto: []`` and ``graph: null`` are left out; a command
    replaces an empty input; the runner reads Send and pairs as LangGraph's server does."""
    sends = [{"node": "work", "input": {"x": 1}}, "done"]
    request = mapped({"assistant_id": "chat", "input": {},
                      "command": {"goto": sends, "update": [["a", 1], ["a", 2]]}})
    assert (request["command"], "input" in request) == (
        {"goto": sends, "update": [["a", 1], ["a", 2]]}, False)
    assert mapped({"assistant_id": "chat", "command": {"resume": "yes", "goto": [],
                                                       "graph": None}})["command"] == {
        "resume": "yes"}
    assert [parse_run_create({"assistant_id": "a", "command": c}).resume_requested
            for c in ({"resume": 0}, {"resume": None, "goto": "x"}, None)] == [True, False, False]
    assert _command(request["command"]) == Command(
        goto=[Send("work", {"x": 1}), "done"], update=[("a", 1), ("a", 2)])
    assert _command({"goto": {"node": "work", "input": 2}}) == Command(goto=[Send("work", 2)])


class Tally(TypedDict):
    """A state whose ``items`` add up (a reducer)."""

    items: Annotated[list[Any], operator.add]


async def test_the_runners_command_sends_and_applies_pairs_in_langgraph() -> None:
    """LangGraph runs the runner's command built from the Agent Server form: a ``Send``
    ``{node, input}`` runs that node with that input, and ``[key, value]`` pairs each go
    through the reducer in turn."""

    def work(arg: dict[str, Any]) -> dict[str, Any]:
        return {"items": [f"work:{arg['x']}"]}

    builder = StateGraph(Tally)
    builder.add_node("work", work)
    builder.add_node("idle", lambda state: {})
    builder.add_edge("__start__", "idle")
    graph = builder.compile(checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "t"}}
    await graph.ainvoke({"items": []}, config)
    command = mapped({"assistant_id": "chat", "command": {
        "update": [["items", [1]], ["items", [2]]],
        "goto": [{"node": "work", "input": {"x": 7}}]}})["command"]
    final = await graph.ainvoke(_command(command), config)
    assert final == {"items": [1, 2, "work:7"]}


@pytest.mark.parametrize(("body", "durability"), [
    ({}, None), ({"durability": "exit"}, "exit"), ({"checkpoint_during": True}, "async"),
    ({"checkpoint_during": False}, "exit"), ({"checkpoint_during": False, "durability": "sync"},
                                             "sync"),
])
def test_durability_and_the_deprecated_checkpoint_during(
    body: dict[str, Any], durability: str | None
) -> None:
    """``durability`` passes through; the deprecated ``checkpoint_during`` true/false is
    ``async``/``exit`` unless ``durability`` is given."""
    assert mapped({"assistant_id": "chat", "input": 1, **body}).get("durability") == durability


def test_a_path_webhook_is_resolved_on_the_server() -> None:
    """A ``/path`` webhook is joined to ``base_url``; without one it is refused."""
    assert mapped({"assistant_id": "chat", "input": 1, "webhook": "/hooks/done"},
                  base_url="https://gw.example.com/")["webhook"] == (
        "https://gw.example.com/hooks/done")


def test_stream_modes_normalise_and_map() -> None:
    """Client modes keep their order without repeats (default ``values``); graphwire's
    ``stream`` is in its own order, ``messages-tuple`` read as ``messages``."""
    assert normalize_modes(None) == normalize_modes([]) == ["values"]
    assert normalize_modes(["updates", "messages", "updates"]) == ["updates", "messages"]
    assert graphwire_modes(["messages-tuple", "messages", "custom"]) == ["messages", "custom"]
    assert RunCreate(assistant_id="a", stream_mode="debug").modes == ["debug"]


REFUSALS: list[tuple[dict[str, Any], str | None, type[ApiError], str]] = [
    ({"stream_mode": "events"}, THREAD, Unprocessable,
     "stream_mode 'events' is not supported: graphwire streams LangGraph's stream modes, not "
     "astream_events; use 'messages-tuple' for tokens and 'tasks' or 'debug' for node runs"),
    ({"stream_mode": ["values", "tools"]}, THREAD, Unprocessable,
     "stream_mode 'tools' is not supported: it belongs to the v2 event streaming endpoints, "
     "which graphwire does not serve"),
    ({"stream_mode": "lifecycle"}, THREAD, Unprocessable,
     "stream_mode 'lifecycle' is not supported: it belongs to the v2 event streaming "
     "endpoints, which graphwire does not serve"),
    ({"stream_mode": "nope"}, THREAD, Unprocessable,
     "stream_mode: Input should be 'values', 'messages', 'updates', 'events', 'tasks', "
     "'checkpoints', 'debug', 'custom', 'messages-tuple', 'tools' or 'lifecycle' or input "
     "should be a valid list"),
    ({"feedback_keys": ["score"]}, THREAD, Unprocessable,
     "feedback_keys is not supported: graphwire has no LangSmith feedback URLs; leave it out"),
    ({"langsmith_tracer": {"project_name": "p"}}, THREAD, Unprocessable,
     "langsmith_tracer is not supported: graphwire traces with OpenTelemetry, not to a "
     "LangSmith project; leave it out"),
    ({"strict_resume": False}, THREAD, Unprocessable,
     "strict_resume false is not supported: graphwire always refuses a resume that answers no "
     "pending interrupt; leave it out"),
    ({"surprise": 1, "also": 2}, THREAD, Unprocessable,
     "unknown run field 'also', 'surprise': graphwire does not know it; leave it out"),
    ({"multitask_strategy": "later"}, THREAD, Unprocessable,
     "multitask_strategy: Input should be 'reject', 'interrupt', 'rollback' or 'enqueue'"),
    ({"if_not_exists": "maybe"}, THREAD, Unprocessable,
     "if_not_exists: Input should be 'reject' or 'create'"),
    ({"on_completion": "archive"}, None, Unprocessable,
     "on_completion: Input should be 'delete' or 'keep'"),
    ({"on_disconnect": "stop"}, THREAD, Unprocessable,
     "on_disconnect: Input should be 'continue' or 'cancel'"),
    ({"after_seconds": -1}, THREAD, Unprocessable,
     "after_seconds: Input should be greater than or equal to 0"),
    ({"after_seconds": 10**9}, THREAD, Unprocessable,
     "after_seconds: Input should be less than or equal to 31622400"),
    ({"durability": "never"}, THREAD, Unprocessable,
     "durability: Input should be 'sync', 'async' or 'exit'"),
    ({"webhook": "/hooks/done"}, THREAD, Unprocessable,
     "webhook '/hooks/done' is a path on this server: give an absolute http(s) URL"),
    ({"webhook": "ftp://x.example.com/"}, THREAD, Unprocessable,
     "webhook: webhook must be an http:// or https:// URL with a host"),
    ({"config": {"configurable": {"a": 1}}, "context": {"b": 2}}, THREAD, BadRequest,
     CONFIGURABLE_AND_CONTEXT),
    ({"input": None, "command": {"resume": "yes"}}, None, BadRequest, RESUME_WITHOUT_THREAD),
    ({"input": {"a": 1}, "command": {"resume": "yes"}}, THREAD, Unprocessable,
     "give 'input' or 'command', not both: a command replaces the input (send input null)"),
    ({"command": {"resume": 1, "graph": "__parent__"}}, THREAD, Unprocessable,
     "command.graph is not supported: a run's command takes resume, update and goto"),
    ({"command": {"goto": [{"node": "a", "arg": 1}]}}, THREAD, Unprocessable,
     "command.goto takes node names and Send objects {'node': name, 'input': value}"),
    ({"config": {"run_name": "x"}}, THREAD, Unprocessable,
     "config.run_name is not supported: a run's config takes tags, recursion_limit, "
     "configurable, max_concurrency, metadata"),
    ({"config": {"tags": "a"}}, THREAD, Unprocessable, "config.tags must be a list of strings"),
    ({"config": {"configurable": []}}, THREAD, Unprocessable,
     "config.configurable must be an object"),
    ({"config": {"recursion_limit": 0}}, THREAD, Unprocessable,
     "config.recursion_limit: Input should be greater than or equal to 1"),
    ({"config": {"configurable": {"__pregel_x": 1}}}, THREAD, Unprocessable,
     "config.configurable: config.configurable key '__pregel_x' is reserved (keys starting "
     "with '__' are LangGraph's and graphwire's internals); leave it out"),
    ({"checkpoint_id": "not-a-uuid"}, THREAD, Unprocessable,
     "Invalid checkpoint ID: must be a UUID"),
    ({"checkpoint_id": CP}, None, Unprocessable,
     "checkpoint_id needs a thread: fork a thread's checkpoint with "
     "POST /threads/{thread_id}/runs"),
    ({"checkpoint_id": CP, "checkpoint": {"checkpoint_id": RUN}}, THREAD, Unprocessable,
     "checkpoint_id and checkpoint.checkpoint_id name different checkpoints; give one"),
    ({"checkpoint": {"thread_id": RUN}}, THREAD, Unprocessable,
     f"checkpoint.thread_id '{RUN}' is not this run's thread ('{THREAD}')"),
    ({"checkpoint": {"step": 1}}, THREAD, Unprocessable,
     "checkpoint.step is not supported: a checkpoint takes thread_id, checkpoint_ns, "
     "checkpoint_id, checkpoint_map"),
    ({"interrupt_before": "all"}, THREAD, Unprocessable,
     "interrupt_before: Input should be '*' or input should be a valid list"),
    ({"checkpoint": {"checkpoint_ns": "sub:1", "checkpoint_id": CP}}, THREAD, Unprocessable,
     "checkpoint.checkpoint_ns 'sub:1' is not supported: graphwire runs from a thread's "
     "top-level checkpoints"),
    ({"input": None}, None, Unprocessable,
     "give 'input' or 'command': a null input continues a thread's run (from a "
     "breakpoint), so it needs 'thread_id'"),
]


@pytest.mark.parametrize(("fields", "thread_id", "error", "message"), REFUSALS)
def test_each_field_graphwire_cannot_honour_is_refused_by_name(
    fields: dict[str, Any], thread_id: str | None, error: type[ApiError], message: str
) -> None:
    """Each unsupported value, unknown field or contradiction is refused with its status
    (422, or the Agent Server's 400s) and a message naming the field."""
    with pytest.raises(ApiError) as caught:
        mapped({"assistant_id": "chat", "input": {"a": 1}, **fields}, thread_id=thread_id)
    assert (type(caught.value), _unordered(str(caught.value))) == (error, _unordered(message))


def _unordered(message: str) -> tuple[str, frozenset[str]]:
    """A pydantic message with its alternatives as a set: pydantic caches a ``Literal``'s or a
    union's schema under an equal type built elsewhere first (``Literal`` equality ignores
    order), so the order of "'a', 'b' or 'c'" depends on what was imported before."""
    field, _, rest = message.partition(": Input should be ")
    if not rest:
        return message, frozenset()
    parts = rest.replace(" or input should be ", ", ").replace(" or ", ", ").split(", ")
    return field, frozenset(parts)


@pytest.mark.parametrize(("body", "message"), [
    ([], "the run body must be a JSON object"),
    ({"input": 1}, "assistant_id: Field required"),
])
def test_a_body_that_is_not_a_run_is_refused(body: Any, message: str) -> None:
    """A body that is not an object, or has no ``assistant_id``, is a 422."""
    with pytest.raises(Unprocessable) as caught:
        parse_run_create(body)
    assert str(caught.value) == message
