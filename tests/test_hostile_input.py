"""Hostile input to the runner (issue 21): no single message stops a worker.

A request PostgreSQL or Redis cannot store is a bad message (a ``rejected`` result and a dead
letter, the offset moves on), never a dependency outage; the contract refuses ids no processor
can store; deep JSON is refused at decode; a request's ``timeout_s`` is capped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from typing_extensions import TypedDict

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.dev.broker import free_port
from graphwire.processors.runner.runner import GraphRunner
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.helpers import runner_for
from tests.kafka_helpers import Collector, WorkerProcess, encode, produce, ready, request

pytestmark = pytest.mark.integration


async def _ready_until(port: int, done: asyncio.Event, seen: list[int]) -> None:
    """Record the status of the worker's ``/ready`` every 0.2 s until ``done``."""
    while not done.is_set():
        try:
            status, _ = await ready(port)
            seen.append(status)
        except Exception:  # not listening yet
            pass
        await asyncio.sleep(0.2)


async def test_ids_postgresql_cannot_store_are_rejected_not_an_outage(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """A NUL in thread_id, checkpoint_id or configurable.checkpoint_ns: each request gets one
    ``rejected`` result and one dead letter; the valid request behind them on the same key
    succeeds; /ready stays 200; no outage is logged and each bad request has at most 2 lines."""
    port = free_port()
    log = tmp_path / "worker.log"
    env = {**worker_env, "GRAPHWIRE_HTTP_PORT": str(port)}
    bad = [
        request("nul-thread", "echo", input={"text": "x"}, thread_id="a\u0000b"),
        request("nul-checkpoint", "echo", thread_id="t-nul", checkpoint_id="\u0000"),
        request("nul-ns", "echo", input={"text": "x"}, thread_id="t-ns",
                config={"configurable": {"checkpoint_ns": "\u0000"}}),
    ]
    good = request("after", "echo", input={"text": "fine"}, thread_id="t-good")
    async with Collector(bootstrap, topics.results, topics.dlq) as out:
        await produce(bootstrap, topics.requests,
                      [(b"k", encode(body)) for body in [*bad, good]])
        worker = WorkerProcess(env, log_path=log).start()
        done, seen = asyncio.Event(), list[int]()
        watcher = asyncio.create_task(_ready_until(port, done, seen))
        try:
            await out.wait_count(topics.results, 4, timeout=60)
            await asyncio.sleep(1.0)  # anything more would show now
        finally:
            done.set()
            await watcher
            worker.stop()
    # results are keyed by request_id: their order across partitions is not the requests'
    results = sorted((r["request_id"], r["status"]) for r in out.values(topics.results))
    assert results == [("after", "success"), ("nul-checkpoint", "rejected"),
                       ("nul-ns", "rejected"), ("nul-thread", "rejected")]
    dead = [r.key for r in out.records[topics.dlq]]
    assert dead == [b"k", b"k", b"k"]
    assert seen and set(seen) == {200}
    lines = log.read_text(errors="replace").splitlines()
    assert [line for line in lines if "dependency unavailable" in line] == []
    for rid in ("nul-thread", "nul-checkpoint", "nul-ns"):
        assert len([line for line in lines if rid in line]) <= 2, rid


BASE = {"request_id": "r1", "graph": "echo", "input": {"text": "x"}}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"request_id": "r\u0000"}, "request_id: request_id must contain only printable "
         "characters (found U+0000); no NUL, control characters or newlines"),
        ({"thread_id": "a\nb"}, "thread_id: thread_id must contain only printable characters "
         "(found U+000A); no NUL, control characters or newlines"),
        ({"thread_id": "t", "checkpoint_id": "\u001b[31m"}, "checkpoint_id: checkpoint_id must "
         "contain only printable characters (found U+001B); no NUL, control characters or "
         "newlines"),
        ({"graph": "echo\r\nINFO forged"}, "graph: String should match pattern "
         "'^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$'"),
        ({"run_at": "0001-01-01T00:00:00+14:00"}, "run_at: run_at must be within a year in the "
         "past and a year and a day ahead (got 0001-01-01T00:00:00+14:00); for later runs, "
         "schedule a cron"),
        ({"after_seconds": 1e300}, "after_seconds: Input should be less than or equal to "
         "31622400"),
        ({"config": {"configurable": {"__graphwire_fresh_thread__": True}}},
         "config.configurable: config.configurable key '__graphwire_fresh_thread__' is "
         "reserved (keys starting with '__' are LangGraph's and graphwire's internals); leave "
         "it out"),
        ({"config": {"configurable": {"thread_id": "someone-elses"}}}, "config.configurable: "
         "config.configurable key 'thread_id' is reserved: set the request's 'thread_id' "
         "(the Kafka key of its thread)"),
        ({"config": {"configurable": {"checkpoint_id": "1"}}}, "config.configurable: "
         "config.configurable key 'checkpoint_id' is reserved: set the request's "
         "'checkpoint_id' to run from a checkpoint"),
        ({"config": {"configurable": {"langgraph_auth_user_id": "admin"}}},
         "config.configurable: config.configurable key 'langgraph_auth_user_id' is reserved: "
         "graphwire sets it from the gateway's caller; leave it out"),
    ],
)
def test_the_contract_refuses_what_no_processor_can_store(
    fields: dict[str, object], reason: str
) -> None:
    """Ids with NUL, newline or escape characters, graph names outside their set, dates out
    of range and reserved configurable keys: refused at decode with a reason naming the field."""
    from graphwire.topics.codec import decode_request
    from graphwire.topics.errors import InvalidRequest, UndecodableMessage

    with pytest.raises((InvalidRequest, UndecodableMessage)) as caught:
        decode_request(encode({**BASE, **fields}), max_bytes=1 << 20)
    expected = reason if "request_id" not in fields else (
        "request has no usable request_id; set 'request_id' to 1..128 printable characters")
    assert str(caught.value) == (expected if "request_id" in fields
                                 else f"invalid request: {reason}")


def test_a_cancel_with_a_control_character_in_its_request_id_is_refused() -> None:
    """Control.request_id has the request's character set."""
    from pydantic import ValidationError

    from graphwire.topics.models import Control

    with pytest.raises(ValidationError) as caught:
        Control(request_id="a\u0000")
    assert caught.value.errors()[0]["msg"] == (
        "Value error, request_id must contain only printable characters (found U+0000); no NUL, "
        "control characters or newlines"
    )


def test_json_nested_deeper_than_200_levels_is_refused_at_decode_with_its_request_id() -> None:
    """300 levels (orjson decodes it, but could never encode its result): InvalidRequest with
    the request_id and the limit; 200 levels in all decode."""
    from graphwire.topics.codec import MAX_DEPTH, decode_request
    from graphwire.topics.errors import InvalidRequest

    def nested(levels: int) -> bytes:  # the request object and input are levels 1 and 2
        inner = levels - 2
        return (b'{"request_id":"deep","graph":"echo","input":{"x":' + b"[" * inner
                + b"]" * inner + b',"s":"[[[{{"}}')

    assert decode_request(nested(MAX_DEPTH), max_bytes=1 << 20).request_id == "deep"
    with pytest.raises(InvalidRequest) as caught:
        decode_request(nested(300), max_bytes=1 << 20)
    assert (caught.value.request_id, str(caught.value)) == (
        "deep",
        "request nests objects and arrays more than 200 levels deep, which its result could "
        "not be encoded with; flatten the input (or send it as a string)",
    )


def test_the_size_is_checked_before_parsing() -> None:
    """Over the limit and not even JSON (cut off): RequestTooLarge, with the request_id read
    from the top level of its first 4 KiB (not from a nested 'request_id'); without one there,
    UndecodableMessage (dead letter only)."""
    from graphwire.topics.codec import decode_request
    from graphwire.topics.errors import RequestTooLarge, UndecodableMessage

    cut = b'{"input": {"request_id": "nested"}, "request_id": "big", "x": "' + b"y" * 3000
    with pytest.raises(RequestTooLarge) as caught:
        decode_request(cut, max_bytes=1024)
    assert (caught.value.request_id, str(caught.value)) == (
        "big",
        f"request is {len(cut)} bytes, over the limit of 1024 bytes; send large data by "
        "reference (a URL or object key) or raise GRAPHWIRE_MAX_REQUEST_BYTES",
    )
    late = b'{"x": "' + b"y" * 5000 + b'", "request_id": "late"}'
    with pytest.raises(UndecodableMessage) as undecodable:
        decode_request(late, max_bytes=1024)
    assert str(undecodable.value).endswith(
        "(and no request_id in its first 4096 bytes to reject it with)")


async def test_max_run_s_is_the_default_and_the_cap_of_timeout_s(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """GRAPHWIRE_MAX_RUN_S=1: a 30 s sleep asking timeout_s=600, and one giving none, both end
    ``timeout`` with a message naming the setting; the first's run_started says it was capped;
    a request asking 0.5 s keeps its own timeout and message."""
    async with runner_for(settings, max_run_s=1.0):
        await produce(bootstrap, topics.requests, [
            (b"a", encode(request("asks-more", "slow", input={"seconds": 30}, timeout_s=600))),
            (b"b", encode(request("asks-none", "slow", input={"seconds": 30}))),
            (b"c", encode(request("asks-less", "slow", input={"seconds": 30}, timeout_s=0.5))),
        ])
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await out.wait_count(topics.results, 3, timeout=60)
    results = {r["request_id"]: (r["status"], r["error"]["message"])
               for r in out.values(topics.results)}
    assert results == {
        "asks-more": ("timeout", "the run took longer than 1s, this worker's GRAPHWIRE_MAX_RUN_S "
                      "(the request asked for timeout_s=600); make the graph faster, split the "
                      "work, or have the operator raise GRAPHWIRE_MAX_RUN_S"),
        "asks-none": ("timeout", "the run took longer than 1s, this worker's GRAPHWIRE_MAX_RUN_S "
                      "(the request gave no timeout_s); make the graph faster, split the work, "
                      "or have the operator raise GRAPHWIRE_MAX_RUN_S"),
        "asks-less": ("timeout", "the run took longer than timeout_s=0.5; raise timeout_s or "
                      "make the graph faster"),
    }
    started = {e["request_id"]: (e["data"]["timeout_s"], e["data"].get("timeout_capped"))
               for e in out.values(topics.events) if e["type"] == "run_started"}
    assert started == {"asks-more": (1.0, {"asked": 600.0, "max_run_s": 1.0}),
                       "asks-none": (1.0, None), "asks-less": (0.5, None)}


async def test_reply_to_refuses_the_control_topic_and_topics_the_allow_list_does_not_match(
    bootstrap: str, topics: TopicNames, settings: Settings, prefix: str
) -> None:
    """GRAPHWIRE_REPLY_TO_ALLOWED=<prefix>.replies.*: a reply-to on it gets its copy; one on
    <prefix>.control gets none (the run goes on, its result on results only); one on another
    topic is rejected before it runs, with the reason, and dead-lettered."""
    allowed = settings.model_copy(update={"reply_to_allowed": f" {prefix}.replies.* ,"})
    replies, elsewhere = f"{prefix}.replies.a", f"{prefix}-payments.commands"

    def echo(rid: str, topic: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        body = encode(request(rid, "echo", input={"text": rid}))
        return rid.encode(), body, [("reply-to", topic.encode())]

    async with GraphRunner(allowed, GraphRegistry.from_sources()):
        await produce(bootstrap, topics.requests, [
            echo("to-replies", replies), echo("to-control", topics.control),
            echo("to-elsewhere", elsewhere),
        ])
        async with Collector(bootstrap, topics.results, topics.dlq, topics.control) as out:
            await out.wait_count(topics.results, 3, timeout=60)
            await out.wait_count(topics.dlq, 1, timeout=10)
            async with Collector(bootstrap, replies) as copies:
                await copies.wait_count(replies, 1, timeout=30)
            await asyncio.sleep(1.0)  # a copy on control would show by now
    results = {r["request_id"]: (r["status"], r["error"] and r["error"]["message"])
               for r in out.values(topics.results)}
    assert results == {
        "to-replies": ("success", None),
        "to-control": ("success", None),
        "to-elsewhere": ("rejected", f"invalid request: reply-to topic {elsewhere!r} is not "
                         f"allowed here: use a topic matching GRAPHWIRE_REPLY_TO_ALLOWED "
                         f"({prefix}.replies.*), or leave reply-to out and read "
                         f"{topics.results}"),
    }
    assert [r["request_id"] for r in copies.values(replies)] == ["to-replies"]
    assert out.records[topics.control] == []
    assert [r.key for r in out.records[topics.dlq]] == [b"to-elsewhere"]


class WhoState(TypedDict, total=False):
    """State of ``whoami``: who the graph was told its caller is."""

    user_id: str
    identity: str
    scope: str
    runtime_identity: str


def _who(state: WhoState, config: RunnableConfig, runtime: Runtime[Any]) -> WhoState:
    configurable = config["configurable"]
    user = configurable.get("langgraph_auth_user")
    info = runtime.server_info
    return {
        "user_id": configurable.get("langgraph_auth_user_id", "none"),
        "identity": user["identity"] if user is not None else "none",
        "scope": user.scope if user is not None else "none",
        "runtime_identity": info.user.identity if info and info.user else "none",
    }


_who_builder = StateGraph(WhoState)
_who_builder.add_node("who", _who)
_who_builder.add_edge(START, "who")
_who_builder.add_edge("who", END)
whoami = _who_builder.compile()


async def test_graphs_read_the_gateways_caller_and_a_producer_cannot_forge_it(
    bootstrap: str, topics: TopicNames, settings: Settings, worker_env: dict[str, str]
) -> None:
    """Through the gateway, a run of JWT subject tenant-b sees langgraph_auth_user_id
    'jwt:tenant-b' (config and runtime.server_info.user); a raw request without the header sees
    none; one setting langgraph_auth_user_id itself is rejected; a malformed header too."""
    from graphwire.processors.gateway.auth import Principal
    from tests.gateway_helpers import gateway_settings, serve, token

    registry = GraphRegistry.from_sources(specs="whoami=tests.test_hostile_input:whoami")
    scope = Principal("jwt", "tenant-b", frozenset(), 0).scope
    forged = request("forged", "whoami", input={},
                     config={"configurable": {"langgraph_auth_user_id": "jwt:admin"}})
    async with GraphRunner(settings, registry):
        async with serve(gateway_settings(worker_env)) as http:
            bearer = {"Authorization": f"Bearer {token('tenant-b', ['whoami'])}"}
            via_gateway = await http.post("/workflow/execute?wait=true", headers=bearer,
                                          json={"workflow_name": "whoami", "input_data": {}})
        await produce(bootstrap, topics.requests, [
            (b"raw", encode(request("raw", "whoami", input={}))),
            (b"forged", encode(forged)),
            (b"bad-header", encode(request("bad-header", "whoami", input={})),
             [("x-graphwire-principal", b'{"kind": "jwt"}')]),
        ])
        async with Collector(bootstrap, topics.results) as out:
            await out.wait_count(topics.results, 4, timeout=60)
    assert via_gateway.status_code == 200, via_gateway.text
    assert via_gateway.json()["output"] == {
        "user_id": "jwt:tenant-b", "identity": "jwt:tenant-b", "scope": scope,
        "runtime_identity": "jwt:tenant-b",
    }
    results = {r["request_id"]: r for r in out.values(topics.results)}
    assert results["raw"]["output"] == {"user_id": "none", "identity": "none", "scope": "none",
                                        "runtime_identity": "none"}
    assert (results["forged"]["status"], results["forged"]["error"]["message"]) == (
        "rejected", "invalid request: config.configurable: config.configurable key "
        "'langgraph_auth_user_id' is reserved: graphwire sets it from the gateway's caller; "
        "leave it out")
    assert (results["bad-header"]["status"], results["bad-header"]["error"]["message"]) == (
        "rejected", "invalid request: header x-graphwire-principal must be a JSON object of "
        "printable strings 'kind', 'name' and 'scope' (1..256 characters each), as the gateway "
        "sets it; fix or drop it")


async def test_one_classifier_tells_postgresql_data_errors_from_outages() -> None:
    """Real asyncpg failures: a NUL in text (22021), an int4 out of range refused by asyncpg
    before sending (its client DataError, an InterfaceError subclass), and a value too long for
    an index (54000) are data errors, not outages; a connection to a closed port and a closed
    connection are outages. The checkpointer, the effect log and the runner's reads all ask
    ``is_outage``, so the client DataError can no longer pause a partition forever."""
    import asyncpg

    from graphwire.processors.pgerrors import kind
    from graphwire.processors.runner.failures import data_error, pg_data_error
    from graphwire.processors.runner.pgsaver import is_outage
    from tests.conftest import TEST_DATABASE_URL

    conn = await asyncpg.connect(TEST_DATABASE_URL)
    failures: dict[str, BaseException] = {}
    try:
        for name, sql, args in [
            ("nul", "SELECT $1::text", ("a\x00b",)),
            ("int4", "SELECT $1::int4", (2**40,)),
            ("index", "CREATE TEMP TABLE t (v text PRIMARY KEY); INSERT INTO t "
                      "SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i", ()),
        ]:
            try:
                await (conn.execute(sql) if not args else conn.fetchval(sql, *args))
            except Exception as exc:
                failures[name] = exc
    finally:
        await conn.close()
    try:
        await asyncpg.connect(f"postgresql://127.0.0.1:{free_port()}/test", timeout=5)
    except Exception as exc:
        failures["refused"] = exc
    try:
        await conn.fetchval("SELECT 1")
    except Exception as exc:
        failures["closed"] = exc

    assert sorted(failures) == ["closed", "index", "int4", "nul", "refused"]
    assert isinstance(failures["int4"], asyncpg.DataError)  # refused by asyncpg, never sent
    # asyncpg's other DataError (its client-side one) subclasses InterfaceError, which the
    # connection errors include: before this classifier it counted as an outage
    from asyncpg.exceptions._base import DataError as ClientDataError

    failures["client"] = ClientDataError("invalid input for query argument $1")
    assert isinstance(failures["client"], asyncpg.InterfaceError)
    verdict = {name: (kind(exc), pg_data_error(exc), is_outage(exc))
               for name, exc in failures.items()}
    assert verdict == {
        "nul": ("data", True, False),
        "int4": ("data", True, False),
        "client": ("data", True, False),
        "index": ("data", True, False),
        "refused": ("unavailable", False, True),
        "closed": ("unavailable", False, True),
    }
    wrapped = RuntimeError("writing the checkpoint failed")
    wrapped.__cause__ = failures["int4"]
    assert data_error(wrapped) is failures["int4"]  # found through graphwire's wrapping
    assert data_error(failures["closed"]) is None
