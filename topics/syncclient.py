"""Client: a blocking facade over ``GraphwireClient`` for scripts and notebooks.

It runs the async client on an event loop in a background thread, so it works where an event
loop already runs (Jupyter) as well as in plain scripts::

    from graphwire.topics.syncclient import Client

    with Client("localhost:9092") as client:
        result = client.invoke("pipeline", {"text": "Hello World"}, wait_timeout=30)
        print(result.status, result.output)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any, Self, TypeVar

from graphwire.topics.client import GraphwireClient
from graphwire.topics.crons import Cron, Crons
from graphwire.topics.models import Event, Result

T = TypeVar("T")


class Client:
    """Blocking ``submit``/``result``/``events``/``invoke``/``resume``; same arguments as
    ``GraphwireClient``."""

    def __init__(self, bootstrap_servers: str, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="graphwire-client", daemon=True
        )
        self._thread.start()
        self._client = GraphwireClient(bootstrap_servers, **kwargs)
        try:
            self._call(self._client.start())
        except BaseException:
            self._shutdown()
            raise

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def submit(self, graph: str, input: Any = None, **kwargs: Any) -> str:
        """Produce a request; returns its request_id."""
        return self._call(self._client.submit(graph, input, **kwargs))

    def result(self, request_id: str, timeout: float | None = None, **kwargs: Any) -> Result:
        """Wait for the result (``raise_on_error=True`` raises on error/rejected/timeout)."""
        return self._call(self._client.result(request_id, timeout, **kwargs))

    def invoke(self, graph: str, input: Mapping[str, Any], **kwargs: Any) -> Result:
        """Submit and wait for the result (``wait_timeout=`` seconds)."""
        return self._call(self._client.invoke(graph, input, **kwargs))

    def resume(self, thread_id: str, value: Any, **kwargs: Any) -> str:
        """Resume an interrupted thread; returns the new request's id."""
        return self._call(self._client.resume(thread_id, value, **kwargs))

    def cancel(self, request_id: str, action: str = "interrupt", **kwargs: Any) -> Any:
        """Cancel a request (``GraphwireClient.cancel``); returns its ``CancelOutcome``."""
        return self._call(self._client.cancel(request_id, action, **kwargs))  # type: ignore[arg-type]  # checked by the Control model

    def history(self, thread_id: str, **kwargs: Any) -> list[Any]:
        """A thread's checkpoints, newest first (``GraphwireClient.history``)."""
        return self._call(self._client.history(thread_id, **kwargs))

    def events(self, request_id: str, timeout: float | None = None) -> Iterator[Event]:
        """The request's events in seq order, ending after ``run_finished``; ``timeout`` bounds
        the wait for each event."""
        stream = self._client.events(request_id)

        async def step() -> Event:
            return await anext(stream)

        try:
            while True:
                future = asyncio.run_coroutine_threadsafe(step(), self._loop)
                try:
                    yield future.result(timeout)
                except StopAsyncIteration:
                    return
                except concurrent.futures.TimeoutError:
                    future.cancel()
                    raise TimeoutError(f"no event of {request_id} within {timeout} s") from None
        finally:
            with contextlib.suppress(RuntimeError, StopAsyncIteration):
                self._call(stream.aclose(), 5)

    @property
    def crons(self) -> SyncCrons:
        """Blocking ``GraphwireClient.crons`` (needs ``database_url=``)."""
        return SyncCrons(self._client.crons, self._call)

    def close(self) -> None:
        """Disconnect and stop the background loop. Idempotent."""
        if self._loop.is_running():
            self._call(self._client.stop())
            self._shutdown()

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncCrons:
    """Blocking ``add``/``list``/``get``/``remove``/``pause``/``resume`` of crons."""

    def __init__(self, crons: Crons, call: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._crons = crons
        self._call = call

    def add(self, name: str, graph: str, schedule: str,
            input: dict[str, Any] | None = None, **kwargs: Any) -> Cron:
        """Define a cron; same arguments as ``Crons.add``."""
        cron: Cron = self._call(self._crons.add(name, graph, schedule, input, **kwargs))
        return cron

    def list(self) -> list[Cron]:
        found: list[Cron] = self._call(self._crons.list())
        return found

    def get(self, name: str) -> Cron:
        cron: Cron = self._call(self._crons.get(name))
        return cron

    def remove(self, name: str) -> None:
        self._call(self._crons.remove(name))

    def pause(self, name: str) -> Cron:
        cron: Cron = self._call(self._crons.pause(name))
        return cron

    def resume(self, name: str) -> Cron:
        cron: Cron = self._call(self._crons.resume(name))
        return cron
