"""graphwire events as Agent Server SSE frames, byte for byte, and as the official SDK's own
decoder reads them; ``Last-Event-ID`` resumes; the ``wait``/``join`` body."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, message_chunk_to_message
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.sse import BytesLineDecoder, SSEDecoder

from graphwire.processors.gateway.agentapi.errors import Unprocessable
from graphwire.processors.gateway.agentapi.streams import (
    HEARTBEAT,
    RunStream,
    debug_payload,
    frame,
    metadata_frame,
    parse_last_event_id,
    wait_body,
)
from graphwire.topics.models import Event, Result

RUN = "0193a1b2-0000-7000-8000-000000000001"
THREAD = "6f1c0a5e-0000-4000-8000-000000000001"
BASE = 2**32  # the first event's position (attempt 1, try 0)


def ev(i: int, type_: str, data: Any = None, *, node: str | None = None,
       ns: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """Event ``i`` of the run as it is on the events topic."""
    return {"request_id": RUN, "seq": BASE + i, "type": type_, "graph": "chat", "node": node,
            "ns": list(ns), "data": data, "ts": 1.0, "metadata": {}, **extra}


def result(status: str, **fields: Any) -> Result:
    """The run's result message."""
    return Result.model_validate({"request_id": RUN, "graph": "chat", "status": status,
                                  "duration_ms": 1.0, **fields})


def run_frames(stream: RunStream, events: list[dict[str, Any]],
               end: Result | None = None) -> list[bytes]:
    """Every frame of ``events`` then of the end."""
    out = []
    for event in events:
        out += stream.feed(event)
    return out + stream.finish(end)


def sdk_decode(body: bytes, piece: int = 7) -> list[tuple[str, Any, str | None]]:
    """``body`` read by the SDK's own line and SSE decoders, ``piece`` bytes at a time."""
    lines, sse = BytesLineDecoder(), SSEDecoder()
    out = []
    decoded = [line for i in range(0, len(body), piece) for line in lines.decode(body[i:i + piece])]
    for line in [*decoded, *lines.flush()]:
        part = sse.decode(bytes(line))
        if part is not None:
            out.append((part.event, part.data, part.id))
    return out


STARTED = ev(0, "run_started", {"thread_id": THREAD, "worker": "w", "attempt": 1,
                                "resumed": False})


def test_frames_are_the_agent_servers_bytes() -> None:
    """A frame is ``event: name\\r\\ndata: json\\r\\n[id: n\\r\\n]\\r\\n`` with one-line JSON
    (a newline in a value stays escaped); the heartbeat is a comment frame."""
    assert frame("values", {"a": "x\ny"}, 7) == (
        b'event: values\r\ndata: {"a":"x\\ny"}\r\nid: 7\r\n\r\n')
    assert frame("custom", None) == b"event: custom\r\ndata: null\r\n\r\n"
    assert metadata_frame(RUN, 2) == (
        b'event: metadata\r\ndata: {"run_id":"' + RUN.encode() + b'","attempt":2}\r\n\r\n')
    assert HEARTBEAT == b": heartbeat\r\n\r\n"


def test_each_mode_becomes_its_frame() -> None:
    """``run_started`` opens with ``metadata``; ``node``, ``values``, ``custom``, ``task``,
    ``checkpoint`` and ``debug`` events become ``updates`` (cached writes flagged as LangGraph
    does), ``values``, ``custom``, ``tasks``, ``checkpoints`` and ``debug`` frames whose id is
    the event's seq; ``effect`` and ``run_finished`` of a success add nothing."""
    stream = RunStream(RUN, ["values", "updates", "custom", "tasks", "checkpoints", "debug"])
    task = {"id": "t1", "name": "a", "input": {}, "triggers": ["start:a"]}
    events = [
        STARTED,
        ev(1, "task", task, node="a"),
        ev(2, "custom", {"progress": 1}),
        ev(3, "node", {"x": 1}, node="a"),
        ev(4, "node", {"x": 2}, node="b", cached=True),
        ev(5, "values", {"x": 2}),
        ev(6, "checkpoint", {"values": {"x": 2}, "next": []}),
        ev(7, "debug", {"step": 1, "type": "task", "payload": {"name": "a"}}),
        ev(8, "effect", {"name": "send", "outcome": "called"}),
        ev(9, "run_finished", {"status": "success", "duration_ms": 3.0}),
    ]
    frames = run_frames(stream, events, result("success", output={"x": 2}))
    s = BASE
    assert frames == [
        b'event: metadata\r\ndata: {"run_id":"%s","attempt":1}\r\nid: %d\r\n\r\n'
        % (RUN.encode(), s),
        b'event: tasks\r\ndata: {"id":"t1","name":"a","input":{},"triggers":["start:a"]}\r\n'
        b"id: %d\r\n\r\n" % (s + 1),
        b'event: custom\r\ndata: {"progress":1}\r\nid: %d\r\n\r\n' % (s + 2),
        b'event: updates\r\ndata: {"a":{"x":1}}\r\nid: %d\r\n\r\n' % (s + 3),
        b'event: updates\r\ndata: {"b":{"x":2},"__metadata__":{"cached":true}}\r\n'
        b"id: %d\r\n\r\n" % (s + 4),
        b'event: values\r\ndata: {"x":2}\r\nid: %d\r\n\r\n' % (s + 5),
        b'event: checkpoints\r\ndata: {"values":{"x":2},"next":[]}\r\nid: %d\r\n\r\n' % (s + 6),
        b'event: debug\r\ndata: {"step":1,"type":"task","payload":{"name":"a"}}\r\n'
        b"id: %d\r\n\r\n" % (s + 7),
    ]
    assert stream.last_values == {"x": 2}


def test_only_the_modes_asked_for_are_sent() -> None:
    """With ``values`` alone, node, custom and task events send nothing (``metadata`` always
    opens the stream)."""
    stream = RunStream(RUN, ["values"])
    frames = run_frames(stream, [STARTED, ev(1, "node", {"x": 1}, node="a"), ev(2, "custom", 1),
                                 ev(3, "task", {}), ev(4, "values", {"x": 1})])
    assert [f.split(b"\r\n")[0] for f in frames] == [b"event: metadata", b"event: values"]


def test_a_checkpoints_debug_payload_gains_checkpoint_ids() -> None:
    """A ``debug`` checkpoint payload gains ``checkpoint``/``parent_checkpoint`` from its
    configs, and a task's ``state`` config becomes its ``checkpoint``, as the Agent Server
    sends them."""
    conf = {"configurable": {"thread_id": THREAD, "checkpoint_ns": "", "checkpoint_id": "c2"}}
    payload = {"config": conf, "parent_config": None, "values": {},
               "tasks": [{"id": "t", "name": "sub", "state": conf}, {"id": "u", "name": "n"}]}
    assert debug_payload({"step": 1, "type": "checkpoint", "payload": payload}) == {
        "step": 1, "type": "checkpoint", "payload": {
            **payload,
            "checkpoint": {"checkpoint_id": "c2", "thread_id": THREAD, "checkpoint_ns": ""},
            "parent_checkpoint": None,
            "tasks": [{"id": "t", "name": "sub", "checkpoint": conf["configurable"]},
                      {"id": "u", "name": "n"}],
        }}


INTERRUPTS = [
    ev(1, "values", {"x": 1}),
    ev(2, "interrupt", {"id": "i1", "value": "ok?", "node": "ask", "ns": []}, node="ask"),
    ev(3, "interrupt", {"id": "i2", "value": 2, "node": "ask", "ns": [],
                        "response_schema": {"type": "integer"}}, node="ask"),
    ev(4, "values", {"x": 1, "__interrupt__": [{"value": "ok?", "id": "i1",
                                                "response_schema": None}]}),
    ev(5, "run_finished", {"status": "interrupted", "duration_ms": 1.0}),
]
GROUP = (b'{"__interrupt__":[{"value":"ok?","id":"i1","response_schema":null},'
         b'{"value":2,"id":"i2","response_schema":{"type":"integer"}}]}')


def test_interrupts_of_one_step_are_one_updates_frame() -> None:
    """Consecutive interrupt events become one ``updates`` ``{"__interrupt__": [...]}`` frame
    with the last one's id, as LangGraph streams one chunk; the ``values`` that follows is
    sent as it is."""
    frames = run_frames(RunStream(RUN, ["updates", "values"]), INTERRUPTS)
    assert frames[1:3] == [
        b"event: updates\r\ndata: " + GROUP + b"\r\nid: %d\r\n\r\n" % (BASE + 3),
        b'event: values\r\ndata: {"x":1,"__interrupt__":[{"value":"ok?","id":"i1",'
        b'"response_schema":null}]}\r\nid: %d\r\n\r\n' % (BASE + 4),
    ]


def test_without_updates_interrupts_come_as_values() -> None:
    """Without ``updates`` the interrupts are a ``values`` frame, as the Agent Server
    forwards them; a stream's end sends interrupts still grouped."""
    frames = run_frames(RunStream(RUN, ["values"]), INTERRUPTS[:3])
    assert frames[1] == b"event: values\r\ndata: " + GROUP + b"\r\nid: %d\r\n\r\n" % (BASE + 3)


def test_a_breakpoint_stop_is_an_empty_interrupt_update() -> None:
    """A run that stops at a breakpoint ends with ``updates`` ``{"__interrupt__": []}`` (id
    of its ``run_finished``) when ``updates`` was asked, and nothing more otherwise."""
    finished = ev(2, "run_finished", {"status": "interrupted", "duration_ms": 1.0,
                                      "next": ["b"], "breakpoint": "before"})
    with_updates = run_frames(RunStream(RUN, ["updates"]), [STARTED, finished])
    assert with_updates[1:] == [
        b'event: updates\r\ndata: {"__interrupt__":[]}\r\nid: %d\r\n\r\n' % (BASE + 2)]
    assert len(run_frames(RunStream(RUN, ["values"]), [STARTED, finished])) == 1


def test_subgraph_frames_are_named_with_their_namespace() -> None:
    """An event from a subgraph is named ``mode|ns1|ns2``; its interrupt too."""
    ns = ("outer:1", "inner:2")
    frames = run_frames(RunStream(RUN, ["updates", "values", "custom"]), [
        ev(1, "node", {"y": 1}, node="leaf", ns=ns), ev(2, "values", {"y": 1}, ns=ns[:1]),
        ev(3, "custom", "c", ns=ns), ev(4, "interrupt", {"id": "i", "value": 1}, ns=ns[:1]),
        ev(5, "interrupt", {"id": "j", "value": 2})])
    assert [f.split(b"\r\n")[0] for f in frames] == [
        b"event: updates|outer:1|inner:2", b"event: values|outer:1",
        b"event: custom|outer:1|inner:2", b"event: updates|outer:1", b"event: updates"]


def chunks() -> list[AIMessageChunk]:
    """A streamed tool-calling answer, as a chat model yields it."""
    return [
        AIMessageChunk(content="Hel", id="m1"),
        AIMessageChunk(content="lo", id="m1", tool_call_chunks=[
            {"name": "search", "args": '{"q": ', "id": "call1", "index": 0}]),
        AIMessageChunk(content="", id="m1", tool_call_chunks=[
            {"name": None, "args": '"x"}', "id": None, "index": 0}],
            usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
            chunk_position="last"),
    ]


META = {"langgraph_node": "model", "langgraph_step": 1, "tags": []}


def test_messages_tuple_sends_each_chunk_with_its_metadata() -> None:
    """``messages-tuple`` sends ``[chunk, metadata]`` per message event (``messages|ns`` from
    a subgraph), the chunk as LangChain dumps it; asked with ``messages`` too, only the tuple
    form is sent, as the Agent Server does."""
    first = chunks()[0].model_dump()
    frames = run_frames(RunStream(RUN, ["messages-tuple", "messages"]), [
        ev(1, "message", first, node="model", langgraph=META),
        ev(2, "message", first, node="model", ns=("sub:1",), langgraph=META)])
    assert frames == [frame("messages", [first, META], BASE + 1),
                      frame("messages|sub:1", [first, META], BASE + 2)]


def test_messages_partial_is_the_whole_message_as_langchain_adds_chunks() -> None:
    """``messages`` sends ``messages/metadata`` once per message id, then per chunk a
    ``messages/partial`` holding the whole message so far: exactly LangChain's own
    ``chunk + chunk`` made a message (``message_chunk_to_message``), as the Agent Server
    sends it; a message that did not stream is ``messages/complete``."""
    parts = chunks()
    whole = AIMessage(content="Hi", id="m2")
    events = [ev(i + 1, "message", c.model_dump(), node="model", langgraph=META)
              for i, c in enumerate(parts)]
    events.append(ev(4, "message", whole.model_dump(), node="model", langgraph=META))
    frames = run_frames(RunStream(RUN, ["messages"]), events)
    so_far = [parts[0], parts[0] + parts[1], parts[0] + parts[1] + parts[2]]
    assert frames == [
        frame("messages/metadata", {"m1": {"metadata": META}}, BASE + 1),
        frame("messages/partial", [message_chunk_to_message(so_far[0]).model_dump()], BASE + 1),
        frame("messages/partial", [message_chunk_to_message(so_far[1]).model_dump()], BASE + 2),
        frame("messages/partial", [message_chunk_to_message(so_far[2]).model_dump()], BASE + 3),
        frame("messages/metadata", {"m2": {"metadata": META}}, BASE + 4),
        frame("messages/complete", [whole.model_dump()], BASE + 4),
    ]
    final = sdk_decode(frames[3])[0][1][0]
    assert (final["type"], final["content"], final["tool_calls"]) == (
        "ai", "Hello", [{"name": "search", "args": {"q": "x"}, "id": "call1",
                         "type": "tool_call"}])


def test_last_event_id_resumes_after_it_with_whole_messages() -> None:
    """With ``after`` (a ``Last-Event-ID``) the frames of events at or before it are
    withheld, yet the first ``messages/partial`` after it is still the whole message; a copy
    of an event (same seq) sends nothing; ``-1`` replays everything."""
    parts = chunks()
    events = [STARTED, *(ev(i + 1, "message", c.model_dump(), langgraph=META)
                         for i, c in enumerate(parts))]
    resumed = RunStream(RUN, ["messages"], after=BASE + 2)
    frames = run_frames(resumed, [*events, events[2]])
    assert frames == [frame("messages/partial", [message_chunk_to_message(
        parts[0] + parts[1] + parts[2]).model_dump()], BASE + 3)]
    assert len(run_frames(RunStream(RUN, ["messages"], after=-1), events)) == 5


def test_event_models_and_dicts_translate_alike() -> None:
    """An ``Event`` model (as the gateway's client gives them) gives the same frames as its
    dict on the topic."""
    node = ev(1, "node", {"x": 1}, node="a", cached=True)
    assert (RunStream(RUN, ["updates"]).feed(Event.model_validate(node))
            == RunStream(RUN, ["updates"]).feed(node))


@pytest.mark.parametrize(("status", "error", "data"), [
    ("error", {"type": "ValueError", "message": "bad"}, {"error": "ValueError", "message": "bad"}),
    ("timeout", {"type": "Timeout", "message": "took over 5 s"},
     {"error": "Timeout", "message": "took over 5 s"}),
    ("cancelled", {"type": "Cancelled", "message": "cancelled by the caller"},
     {"error": "Cancelled", "message": "cancelled by the caller"}),
])
def test_a_failed_run_ends_with_an_error_frame(
    status: str, error: dict[str, str], data: dict[str, str]
) -> None:
    """A run that ends ``error``, ``timeout`` or ``cancelled`` ends its stream with ``error``
    ``{"error": type, "message"}`` carrying its ``run_finished``'s id; a client that resumes
    after that id does not get it again."""
    events = [STARTED, ev(1, "run_finished", {"status": status, "duration_ms": 1.0})]
    end = result(status, error=error)
    assert run_frames(RunStream(RUN, ["values"]), events, end)[1:] == [
        frame("error", data, BASE + 1)]
    assert run_frames(RunStream(RUN, ["values"], after=BASE + 1), events, end) == []


def test_a_rejected_run_without_events_still_gets_its_error() -> None:
    """A request rejected before it ran (no events) gets an ``error`` frame without an id."""
    end = result("rejected", error={"type": "NothingToResume", "message": "no interrupt"})
    assert RunStream(RUN, ["values"]).finish(end) == [
        b'event: error\r\ndata: {"error":"NothingToResume","message":"no interrupt"}\r\n\r\n']


def test_the_sdks_own_decoder_reads_every_frame_back() -> None:
    """The SDK's ``BytesLineDecoder`` + ``SSEDecoder``, fed the stream in 7-byte pieces,
    give back exactly each frame's (event, data, id); the heartbeat gives nothing."""
    events = [STARTED, ev(1, "node", {"a": "x\r\ny"}, node="n"), *INTERRUPTS[1:3],
              ev(4, "values", {"é": [1, 2.5, None, True]}), ev(5, "custom", "line\nbreak")]
    stream = RunStream(RUN, ["updates", "values", "custom"])
    body = HEARTBEAT.join(run_frames(stream, events)) + HEARTBEAT
    assert sdk_decode(body) == [
        ("metadata", {"run_id": RUN, "attempt": 1}, str(BASE)),
        ("updates", {"n": {"a": "x\r\ny"}}, str(BASE + 1)),
        ("updates", {"__interrupt__": [
            {"value": "ok?", "id": "i1", "response_schema": None},
            {"value": 2, "id": "i2", "response_schema": {"type": "integer"}}]}, str(BASE + 3)),
        ("values", {"é": [1, 2.5, None, True]}, str(BASE + 4)),
        ("custom", "line\nbreak", str(BASE + 5)),
    ]


async def test_the_sdk_streams_and_joins_these_frames() -> None:
    """``runs.stream`` over these frames yields the (event, data) pairs they carry, and
    ``join_stream`` sends ``Last-Event-ID``, which reads back as the position to resume
    after."""
    body = b"".join(run_frames(RunStream(RUN, ["values", "updates"]), [
        STARTED, ev(1, "node", {"x": 1}, node="a"), ev(2, "values", {"x": 1})]))
    seen: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("last-event-id"))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = LangGraphClient(httpx.AsyncClient(transport=httpx.MockTransport(handle),
                                               base_url="http://gw"))
    parts = [(p.event, p.data) async for p in client.runs.stream(
        THREAD, "chat", input={}, stream_mode=["values", "updates"])]
    assert parts == [("metadata", {"run_id": RUN, "attempt": 1}), ("updates", {"a": {"x": 1}}),
                     ("values", {"x": 1})]
    async for _ in client.runs.join_stream(THREAD, RUN, last_event_id=str(BASE + 1)):
        pass
    assert (seen, parse_last_event_id(seen[1])) == ([None, str(BASE + 1)], BASE + 1)


@pytest.mark.parametrize(("header", "after"), [
    (None, None), ("", None), ("-1", -1), ("-", -1), ("4294967301", 4294967301)])
def test_last_event_id_header(header: str | None, after: int | None) -> None:
    """Absent/empty is None, ``-1`` (or ``-``) replays the run, a position resumes after it."""
    assert parse_last_event_id(header) == after


def test_a_last_event_id_that_is_no_position_is_422() -> None:
    """A ``Last-Event-ID`` that is no position of this stream is refused with 422."""
    with pytest.raises(Unprocessable) as caught:
        parse_last_event_id("1724342400000-0")
    assert str(caught.value) == (
        "Invalid last-event-id: must be an event id from this stream, or -1 to replay the run")


STATE = {"x": 1}


@pytest.mark.parametrize(("end", "last_values", "body"), [
    (result("success", output={"x": 2}), STATE, {"x": 2}),
    (result("success"), STATE, STATE),
    (result("success"), None, {}),
    (result("interrupted", interrupts=[
        {"id": "i1", "value": "ok?", "node": "ask", "ns": []},
        {"id": "i1", "value": "ok?", "node": "ask", "ns": []}]),
     {**STATE, "__interrupt__": [{"value": "stale", "id": "i0", "response_schema": None}]},
     {"x": 1, "__interrupt__": [{"value": "ok?", "id": "i1", "response_schema": None}]}),
    (result("interrupted", next=["b"], breakpoint="before"), STATE, STATE),
    (result("error", error={"type": "ValueError", "message": "bad"}), STATE,
     {"__error__": {"error": "ValueError", "message": "bad"}}),
    (result("cancelled", error={"type": "Cancelled", "message": "by a later run"}), STATE,
     {"__error__": {"error": "Cancelled", "message": "by a later run"}}),
])
def test_wait_body(end: Result, last_values: Any, body: Any) -> None:
    """``wait``/``join`` answer the final state (the output, else the last values), the state
    with its pending interrupts (each once), or ``{"__error__": {error, message}}``."""
    assert wait_body(end, last_values) == body
