"""``Streamed``: the head waits for the body's first chunk, a ``Last`` chunk ends the response
(a plain one with ``content-length`` when it is also the first), a client going away cancels
the body. Plain ASGI calls: the messages a server would be sent, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from graphwire.processors.gateway.streamed import Last, Streamed

SCOPE = {"type": "http", "method": "POST", "path": "/runs/wait", "headers": []}


async def answer(response: Streamed,
                 receive: Any = None) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    await response(SCOPE, receive or never, send)
    return sent


def head(message: dict[str, Any]) -> dict[bytes, bytes]:
    assert message["type"] == "http.response.start"
    return dict(message["headers"])


async def test_a_last_first_chunk_is_one_plain_response_and_the_body_is_closed() -> None:
    closed = []

    async def body() -> AsyncIterator[bytes]:
        try:
            yield Last(b'{"count":2}')
            raise AssertionError("the body is not read past its last chunk")
        finally:
            closed.append(True)

    sent = await answer(Streamed(body(), media_type="application/json"))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert head(sent[0])[b"content-length"] == b"11"
    assert head(sent[0])[b"content-type"] == b"application/json"
    assert sent[1] == {"type": "http.response.body", "body": b'{"count":2}', "more_body": False}
    assert closed == [True]


async def test_heartbeats_then_a_last_chunk_are_chunked_and_end_with_it() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"\n"
        yield b"\n"
        yield Last(b"{}")

    sent = await answer(Streamed(body(), media_type="application/json"))
    assert b"content-length" not in head(sent[0])
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [
        (b"\n", True), (b"\n", True), (b"{}", False)]


async def test_a_body_without_last_ends_with_an_empty_chunk() -> None:
    async def body() -> AsyncIterator[str]:
        yield "event: a\n\n"
        yield "event: b\n\n"

    sent = await answer(Streamed(body(), media_type="text/event-stream"))
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 3
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [
        (b"event: a\n\n", True), (b"event: b\n\n", True), (b"", False)]


async def test_an_empty_body_still_sends_its_head() -> None:
    async def body() -> AsyncIterator[bytes]:
        return
        yield b""

    sent = await answer(Streamed(body()))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["more_body"] is False


async def test_a_body_that_fails_first_sends_nothing() -> None:
    async def body() -> AsyncIterator[bytes]:
        raise RuntimeError("no result")
        yield b""

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    try:
        await Streamed(body())(SCOPE, never, send)
    except RuntimeError as exc:
        assert str(exc) == "no result"
    else:
        raise AssertionError("the body's error propagates")
    assert sent == []  # the error handler can still answer 500


async def test_a_disconnect_cancels_the_body_and_runs_its_finally() -> None:
    started, finished = asyncio.Event(), []
    gone = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"\n"
            started.set()
            await asyncio.sleep(30)
            yield Last(b"{}")
        finally:
            finished.append("finally")

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    task = asyncio.ensure_future(answer(Streamed(body()), receive))
    await asyncio.wait_for(started.wait(), 5)
    gone.set()
    sent = await asyncio.wait_for(task, 5)
    assert finished == ["finally"]
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [(b"\n", True)]
