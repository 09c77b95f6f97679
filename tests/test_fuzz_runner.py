"""Fuzzing the runner's input: every hostile message ends in one result or one dead letter.

NUL and control characters in every string field of a request, dates out of range, deep JSON,
huge fields, non-object JSON, wrong types, reserved configurable keys, hostile headers and
control messages: all produced on one key to one worker (real broker, Redis, PostgreSQL).
Each must end in exactly one result (plus its dead letter when rejected or failed) or exactly
one dead letter; a valid request behind them on the same key then runs, and the worker stays
ready without logging an outage. Deterministic: a fixed list plus mutations from a seeded
``random.Random``.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from graphwire.processors.dev.broker import free_port
from graphwire.topics.specs import TopicNames
from tests.kafka_helpers import Collector, WorkerProcess, produce, ready

pytestmark = pytest.mark.integration

HOSTILE = ["\x00", "a\x00b", "\n", "\r\nINFO forged line", "\x1b[31mred", "\u2028", "\u202e",
           "\x7f", "\t", "", "x" * 300, "\U0001f600" * 70, "\ufeff", "\x9b"]
"""Strings no id may hold (and a few an id may: emoji, a BOM-free long one)."""

Message = tuple[bytes | None, list[tuple[str, bytes]]]


def _body(rid: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"request_id": rid, "graph": "echo", "input": {"text": "x"}}
    body.update(fields)
    return body


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``body`` with ``value`` at the dotted ``path`` (a key ending in '[]' is a one-item list)."""
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    if last.endswith("[]"):
        node[last[:-2]] = [value]
    elif last == "<key>":
        node[value] = 1
    else:
        node[last] = value
    return body


STRING_FIELDS = [
    "request_id", "graph", "thread_id", "checkpoint_id", "webhook", "multitask_strategy",
    "durability", "stream[]", "config.tags[]", "config.configurable.<key>",
    "config.configurable.user", "metadata.<key>", "metadata.note", "input.text", "run_at",
]


def _messages() -> list[Message]:
    """Every hostile request and control message, in the order they are produced."""
    out: list[Message] = []
    n = 0

    def add(body: dict[str, Any] | bytes | None, headers: list[tuple[str, bytes]] | None = None,
            ) -> None:
        value = body if isinstance(body, bytes | None) else orjson.dumps(body)
        out.append((value, headers or []))

    def rid() -> str:
        nonlocal n
        n += 1
        return f"f-{n}"

    for field in STRING_FIELDS:  # each hostile string in each string field
        for bad in HOSTILE:
            own = rid()
            if field == "request_id":
                add(_body(own + bad))
                continue
            body = _body(own)
            if field == "checkpoint_id":
                body["thread_id"] = f"t-{own}"
            add(_set(body, field, bad))
    for when in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                 "2020-01-01T00:00:00Z", "2026-13-45T00:00:00Z", "not a date", 1e20, -1):
        add(_body(rid(), run_at=when))
    for delay in (-1, 1e300, "NaN", "inf", "-inf", [], "1e999"):
        add(_body(rid(), after_seconds=delay))
    deep = b"[" * 300 + b"]" * 300
    add(b'{"request_id":"%s","graph":"echo","input":{"d":%s}}' % (rid().encode(), deep))
    add(b'{"request_id":"%s","graph":"echo","input":{},"metadata":{"d":%s}}'
        % (rid().encode(), deep))
    add(b'{"request_id":"%s","graph":"echo","input":{"d":%s}}'
        % (rid().encode(), b"[" * 1100 + b"]" * 1100))  # orjson refuses: dead letter only
    huge = "y" * (1024 * 1024 + 10)
    add(_body(rid(), input={"text": huge}))  # request_id first: rejected
    add(b'{"input":{"text":"%s"},"request_id":"%s"}' % (huge.encode(), rid().encode()))
    add(_body(rid(), metadata={"k" * 100_000: 1, "v": ["z" * 1000] * 2000}))
    for raw in (b"[]", b"1", b'"s"', b"null", b"", b"\xff\xfe{", b'{"request_id": "x"', None,
                b"NaN", b'{"request_id":"%s","graph":"echo","input":{"n":1e400}}' % rid().encode(),
                b'{"request_id":"%s","graph":"echo","input":{"n":%d}}' % (rid().encode(), 2**70),
                b'{"request_id":"\\ud800","graph":"echo","input":{}}'):
        add(raw)
    for field, wrong in (("request_id", 5), ("graph", 5), ("input", []), ("input", "s"),
                         ("thread_id", 5), ("timeout_s", "x"), ("timeout_s", -1),
                         ("config", []), ("config", {"configurable": []}),
                         ("config", {"recursion_limit": -1}), ("stream", "updates"),
                         ("max_attempts", 0), ("metadata", []), ("cache", {"ttl_s": -1}),
                         ("command", {"resume": 1, "other": 2}), ("extra_field", 1),
                         ("command", "resume")):
        add(_body(rid(), **{field: wrong}))
    for key in ("__pregel_checkpointer", "__graphwire_fresh_thread__", "thread_id", "checkpoint_id",
                "checkpoint_ns", "checkpoint_map", "langgraph_auth_user",
                "langgraph_auth_user_id", "langgraph_auth_permissions", "__x"):
        add(_body(rid(), thread_id="t-reserved", config={"configurable": {key: None}}))
    for name, value in (("reply-to", b"\x00"), ("reply-to", b"a\nb"), ("reply-to", b"x" * 300),
                        ("x-graphwire-principal", b"\x00"),
                        ("x-graphwire-principal", b'{"kind":"a","name":"\\n","scope":"s"}'),
                        ("traceparent", b"\x00\xff")):
        add(_body(rid()), [(name, value)])
    rng = random.Random(21)  # mutations: a few hostile characters anywhere in a string field
    alphabet = [chr(c) for c in (*range(0, 32), 127, 0x85, 0x2028, 0x2029, 0x202E, 0xFEFF)]
    for _ in range(40):
        field = rng.choice(STRING_FIELDS[1:])
        letters = [*alphabet, "a", "b", "/", "."]
        text = "".join(rng.choice(letters) for _ in range(rng.randint(1, 12)))
        body = _body(rid())
        if field == "checkpoint_id":
            body["thread_id"] = "t-random"
        add(_set(body, field, text))
    return out


CONTROLS: list[bytes | None] = [
    orjson.dumps({"type": "cancel", "request_id": "a\x00b"}),
    orjson.dumps({"type": "cancel", "request_id": "a\nb"}),
    orjson.dumps({"type": "cancel", "request_id": "x" * 200}),
    orjson.dumps({"type": "explode", "request_id": "r"}),
    b"[]", b"\xff", None,
]


async def _watch_ready(port: int, done: asyncio.Event, seen: list[int]) -> None:
    while not done.is_set():
        try:
            seen.append((await ready(port))[0])
        except Exception:  # not listening yet
            pass
        await asyncio.sleep(0.25)


def _request_id(value: bytes | None) -> str | None:
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    rid = body.get("request_id") if isinstance(body, dict) else None
    return rid if isinstance(rid, str) else None


async def test_every_hostile_message_ends_in_one_result_or_one_dead_letter(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """~330 hostile requests and 7 hostile cancels on one key: per message exactly one result
    (with one dead letter iff rejected or error) or else exactly one dead letter; the valid
    request produced after them on the same key succeeds; /ready answers 200 throughout; the
    log has no outage and fewer than 3 lines per message."""
    messages = _messages()
    port = free_port()
    log = tmp_path / "worker.log"
    env = {**worker_env, "GRAPHWIRE_HTTP_PORT": str(port)}
    after = orjson.dumps(_body("after", input={"text": "still here"}))
    async with Collector(bootstrap, topics.results, topics.dlq) as out:
        await produce(bootstrap, topics.control, [(b"c", value) for value in CONTROLS])
        await produce(bootstrap, topics.requests,
                      [(b"fuzz", value, headers) for value, headers in messages]
                      + [(b"fuzz", after)])
        worker = WorkerProcess(env, log_path=log).start()
        done, seen = asyncio.Event(), list[int]()
        watcher = asyncio.create_task(_watch_ready(port, done, seen))
        try:
            await out.wait_until(
                lambda: any(r["request_id"] == "after" for r in out.values(topics.results)),
                timeout=240,
            )
            await asyncio.sleep(1.0)  # a late duplicate would show now
        finally:
            done.set()
            await watcher
            worker.stop()
    results = out.values(topics.results)
    by_id = Counter(r["request_id"] for r in results)
    assert [rid for rid, count in by_id.items() if count > 1] == []
    status = {r["request_id"]: r["status"] for r in results}
    assert status.pop("after") == "success"
    sources = Counter(dict(r.headers)["x-graphwire-source"].decode()
                      for r in out.records[topics.dlq])
    assert [s for s, count in sources.items() if count > 1] == []
    endings = []
    for offset, (value, _headers) in enumerate(messages):
        rid = _request_id(value)
        result = status.pop(rid, None) if rid is not None else None
        dead = sources.pop(f"{topics.requests}/0/{offset}", 0) + sum(
            sources.pop(f"{topics.requests}/{p}/{offset}", 0) for p in range(1, 4))
        endings.append((result, dead))
        if result is None:
            assert dead == 1, (offset, value and value[:200])
        else:
            assert dead == (1 if result in ("rejected", "error") else 0), (offset, result)
    assert status == {}  # no result for anything not produced
    assert sorted(sources) == sorted(f"{topics.control}/0/{i}" for i in range(len(CONTROLS)))
    kinds = Counter("dead letter only" if r is None else r for r, _ in endings)
    assert sum(kinds.values()) == len(messages)
    # input [] and "s" reach the graph (any JSON is a valid input) and echo, a StateGraph, raises
    assert dict(kinds) == {"success": 110, "rejected": 176, "error": 3, "dead letter only": 26}
    assert seen and set(seen) == {200}
    lines = log.read_text(errors="replace").splitlines()
    assert [line for line in lines if "dependency unavailable" in line] == []
    assert [line for line in lines if "internal error" in line] == []
    assert len(lines) < 3 * (len(messages) + len(CONTROLS)) + 20
