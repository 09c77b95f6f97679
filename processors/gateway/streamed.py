"""``Streamed``: Starlette's ``StreamingResponse`` that watches for the client's disconnect with
one asyncio task instead of an anyio task group.

Under uvicorn (ASGI spec 2.3) Starlette streams a body in an anyio task group: a cancel scope,
a task for the body and a wrapper for the disconnect listener, per response. Every ``runs.wait``,
``runs.stream`` and ``/workflow/stream`` answer is such a body, and the group was 7% of the
gateway's CPU under ``runs.wait``. Here the body is sent from the request's own task and one
task waits for ``http.disconnect``; when it comes, the body's generator is cancelled (its
``finally`` runs, as with Starlette's: ``on_disconnect: cancel`` relies on it) and the
response ends quietly. A cancel from outside (server shutdown) still propagates.

The response's head waits for the body's first chunk, and a body can mark its last chunk
(``Last``): a ``runs.wait`` answer whose result comes before its first heartbeat is then one
plain response with a ``content-length`` (head and body written back to back, no chunked
framing and no empty closing chunk) instead of a head, a chunk and a terminator, each its own
write to the socket and wake-up of the client. A body that raises before its first chunk
leaves the head unsent, so the error handlers can still answer 500.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send


class Last(bytes):
    """A body's last chunk: the response ends with it (the body is not read further)."""

    __slots__ = ()


class Streamed(StreamingResponse):
    """A streamed body that stops when the client goes away."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        me = asyncio.current_task()
        assert me is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            await self.listen_for_disconnect(receive)
            gone = True
            me.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not gone or me.uncancel() > 0:  # not (only) ours: someone else cancels
                raise
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:  # the generator's finally, as Starlette's cancel scope does
                with contextlib.suppress(Exception):
                    await aclose()
            return
        except OSError:
            gone = True
        finally:
            watcher.cancel()
        if self.background is not None and not gone:
            await self.background()

    async def stream_response(self, send: Send) -> None:
        start: Message | None = {"type": "http.response.start", "status": self.status_code,
                                 "headers": self.raw_headers}
        async for chunk in self.body_iterator:
            if isinstance(chunk, str):
                chunk = chunk.encode(self.charset)
            last = isinstance(chunk, Last)
            if start is not None:
                if last:  # the whole body is known: a plain response
                    start["headers"] = [*self.raw_headers,
                                        (b"content-length", str(len(chunk)).encode())]
                await send(start)
                start = None
            await send({"type": "http.response.body", "body": bytes(chunk),
                        "more_body": not last})
            if last:
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:  # the body's finally runs now, not at collection
                    await aclose()
                return
        if start is not None:
            await send(start)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
