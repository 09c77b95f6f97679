"""Side effects at most once: stable idempotency keys and a journal of intent and outcome.

A checkpoint protects the nodes that finished. A node that dies half way is run again from its
start, and so is every external call it made. ``once`` records the call's intent before it makes
it and the result after (in the worker's PostgreSQL journal), so a re-run of the node returns
the recorded result instead of calling again, or, when the worker died during the call, raises
``EffectInDoubt`` naming the key::

    from graphwire import effect_key, once

    async def charge(state):
        receipt = await once("charge", pay, state["amount"], key=effect_key("charge"))
        return {"receipt": receipt}

``effect_key(name)`` is the key of the next ``once(name, ...)`` in this node execution (inside
that call, of the call itself). It is made of the thread (the request's ``thread_id``, else its
``request_id``), the node's place in the graph (namespace, LangGraph step and task path) and the
call's number among this node execution's calls of ``name``; so it is the same on every retry,
redelivery, resume and worker, and differs for another request, thread turn, node, loop
iteration or call. The step and path (not LangGraph's task id, which hangs on a checkpoint id
that a crash under ``durability="async"`` may not have saved) keep it stable.

Nothing here knows Kafka or PostgreSQL: the runner binds a journal (``bind_effects``) around
each run. Outside a worker (a plain ``ainvoke``) ``once`` simply calls.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.tools import tool as make_tool
from langgraph.config import get_config

from graphwire.topics.errors import GraphwireError

log = logging.getLogger(__name__)

__all__ = [
    "EffectInDoubt",
    "EffectJournal",
    "EffectResultNotJSON",
    "bind_effects",
    "effect_key",
    "once",
    "once_tool",
]


class EffectInDoubt(GraphwireError):
    """An earlier execution recorded the intent of this call but not its outcome: the worker
    died (or was cut off) during the call, so nobody knows whether the effect happened.

    Operator action: look the key up at the target; pass ``retry_in_doubt=True`` to ``once``
    when the target dedupes on the key, so it is safe to call again."""

    retriable = False

    def __init__(self, name: str, key: str, calls: int) -> None:
        super().__init__(
            f"effect {name!r} (key {key}) is in doubt: an earlier attempt started it {calls} "
            f"time(s) and never recorded the outcome; check the target for key {key}, or pass "
            "retry_in_doubt=True to once() if the target dedupes on the key"
        )
        self.name = name
        self.key = key
        self.calls = calls


class EffectResultNotJSON(GraphwireError, TypeError):
    """``fn`` returned something orjson cannot encode; the journal stores JSON, never pickle."""


@dataclass(frozen=True, slots=True)
class EffectIntent:
    """What ``once`` asks the journal to record before it calls."""

    key: str
    thread_id: str
    request_id: str
    name: str
    node: str
    retry_in_doubt: bool


@dataclass(frozen=True, slots=True)
class EffectRecord:
    """What the journal knew about a key when the intent was recorded."""

    state: Literal["call", "done", "in_doubt"]
    """``call``: recorded now, go ahead; ``done``: the result is ``result``; ``in_doubt``: an
    intent without an outcome (and no ``retry_in_doubt``)."""
    calls: int
    """Times the effect has been started, this one included when ``state == "call"``."""
    result: Any = None


class EffectJournal(Protocol):
    """Durable intent and outcome per key (the worker's is PostgreSQL, processors/runner)."""

    async def begin(self, intent: EffectIntent) -> EffectRecord:
        """Record the intent (or find what an earlier execution recorded) durably."""
        ...

    async def finish(self, key: str, result: bytes | None, error: str | None) -> None:
        """Record the outcome: ``result`` (JSON bytes) on success, else ``error`` (the call
        raised: a later execution calls again with the same key)."""
        ...


Emit = Callable[[str, str | None, Any], Awaitable[None]]


@dataclass(slots=True)
class _Scope:
    """One try of one request's run, as the runner binds it."""

    journal: EffectJournal | None
    thread_id: str
    request_id: str
    namespace: str
    emit: Emit | None
    counters: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)


_SCOPE: ContextVar[_Scope | None] = ContextVar("graphwire_effect_scope", default=None)
_ACTIVE: ContextVar[tuple[str, str] | None] = ContextVar("graphwire_effect_active", default=None)
# Outside a worker: call numbers per node execution, bounded (no run ends to clear them).
_LOCAL_COUNTERS: OrderedDict[tuple[str, int], dict[str, int]] = OrderedDict()
_warned_no_journal = False


@contextlib.contextmanager
def bind_effects(
    journal: EffectJournal | None,
    *,
    thread_id: str,
    request_id: str,
    namespace: str = "",
    emit: Emit | None = None,
) -> Iterator[None]:
    """Around one try of a run: ``once`` journals to ``journal`` and reports through ``emit``
    (``emit("effect", node, data)``). Call numbers start again at every try, as nodes do."""
    token = _SCOPE.set(_Scope(journal, thread_id, request_id, namespace, emit))
    try:
        yield
    finally:
        _SCOPE.reset(token)


@dataclass(frozen=True, slots=True)
class _Site:
    """Where in the graph a call is made."""

    node: str
    material: list[Any]
    execution: tuple[str, int]


def _site() -> _Site:
    try:
        config = get_config()
    except RuntimeError:
        raise GraphwireError(
            "effect_key() and once() work inside a graph node, task or tool: call them from "
            "the code a LangGraph graph runs"
        ) from None
    metadata = config.get("metadata") or {}
    configurable = config.get("configurable") or {}
    full_ns = str(metadata.get("langgraph_checkpoint_ns") or configurable.get("checkpoint_ns", ""))
    # The task id of this level hangs on a checkpoint id; the step and path do not. Parent
    # levels keep theirs: a subgraph's steps start again at each call, its parent's task id
    # tells the calls apart.
    *parents, own = full_ns.split("|")
    node = str(metadata.get("langgraph_node") or own.split(":")[0])
    runtime = configurable.get("__pregel_runtime")
    info = getattr(runtime, "execution_info", None)
    attempt = int(getattr(info, "node_attempt", 1) or 1)
    material = [
        parents,
        own.split(":")[0],
        metadata.get("langgraph_step"),
        metadata.get("langgraph_path"),
    ]
    return _Site(node, material, (full_ns, attempt))


def _counters(scope: _Scope | None, execution: tuple[str, int]) -> dict[str, int]:
    if scope is not None:
        return scope.counters.setdefault(execution, {})
    found = _LOCAL_COUNTERS.get(execution)
    if found is None:
        found = _LOCAL_COUNTERS[execution] = {}
        while len(_LOCAL_COUNTERS) > 10_000:
            _LOCAL_COUNTERS.popitem(last=False)
    return found


def _thread(scope: _Scope | None) -> tuple[str, str]:
    if scope is not None:
        return scope.namespace, scope.thread_id
    configurable = get_config().get("configurable") or {}
    return "", str(configurable.get("thread_id", ""))


def _key(name: str, site: _Site, scope: _Scope | None, number: int) -> str:
    namespace, thread = _thread(scope)
    material = orjson.dumps([namespace, thread, *site.material, name, number])
    return "gw-" + hashlib.sha256(material).hexdigest()[:32]


def effect_key(name: str | None = None) -> str:
    """The idempotency key of the next ``once(name, ...)`` in this node execution (inside that
    call: of the call itself; without ``name``, inside a ``once`` call or a ``once_tool``: of
    that call). Stable across retries, redeliveries, resumes and workers."""
    active = _ACTIVE.get()
    if active is not None and name in (None, active[0]):
        return active[1]
    if name is None:
        raise GraphwireError(
            "effect_key() without a name works inside a once() call or a once_tool; "
            "elsewhere say which call: effect_key('charge')"
        )
    site = _site()
    scope = _SCOPE.get()
    return _key(name, site, scope, _counters(scope, site.execution).get(name, 0))


def _encode(name: str, result: Any) -> bytes:
    try:
        return orjson.dumps(result)
    except TypeError as exc:
        raise EffectResultNotJSON(
            f"once({name!r}) got a result orjson cannot encode ({exc}); return JSON values "
            "(dict, list, str, int, float, bool, None; e.g. model.model_dump(mode='json'))"
        ) from None


async def once(
    name: str,
    fn: Callable[..., Any],
    /,
    *args: Any,
    retry_in_doubt: bool = False,
    **kwargs: Any,
) -> Any:
    """Call ``fn(*args, **kwargs)`` (awaited if it returns an awaitable) at most once per
    ``effect_key(name)``; a re-run returns the recorded result.

    The result must be JSON; what ``once`` returns is the JSON value (a tuple comes back as a
    list), the same on the first call as on a replay. If ``fn`` raises, the effect counts as not
    done and a later execution calls again with the same key. ``EffectInDoubt`` when an
    earlier execution died during the call, unless ``retry_in_doubt=True`` (the target dedupes
    on the key): then it calls again with the same key."""
    site = _site()
    scope = _SCOPE.get()
    counters = _counters(scope, site.execution)
    number = counters.get(name, 0)
    counters[name] = number + 1
    key = _key(name, site, scope, number)
    journal = scope.journal if scope is not None else None
    if scope is None or journal is None:
        _warn_unjournaled(scope)
        return orjson.loads(_encode(name, await _call(name, key, fn, args, kwargs)))
    if key in scope.in_flight:
        raise GraphwireError(
            f"two once({name!r}) calls of one node execution got the same key {key} at once; "
            "give concurrent calls distinct names"
        )
    scope.in_flight.add(key)
    try:
        record = await journal.begin(EffectIntent(
            key, scope.thread_id, scope.request_id, name, site.node, retry_in_doubt
        ))
        if record.state == "done":
            await _report(scope, site, name, key, "replayed", record.calls)
            return record.result
        if record.state == "in_doubt":
            await _report(scope, site, name, key, "in_doubt", record.calls)
            raise EffectInDoubt(name, key, record.calls)
        try:
            result = await _call(name, key, fn, args, kwargs)
        except Exception as exc:
            await journal.finish(key, None, f"{type(exc).__name__}: {exc}"[:1000])
            await _report(scope, site, name, key, "failed", record.calls)
            raise
        # the effect happened: a result that is not JSON leaves the intent open (in doubt),
        # never "failed", which would call again
        encoded = _encode(name, result)
        await journal.finish(key, encoded, None)
        await _report(scope, site, name, key, "called", record.calls)
        return orjson.loads(encoded)
    finally:
        scope.in_flight.discard(key)


async def _call(
    name: str, key: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    token = _ACTIVE.set((name, key))
    try:
        result = fn(*args, **kwargs)
        if isinstance(result, Awaitable):
            result = await result
    finally:
        _ACTIVE.reset(token)
    return result


async def _report(
    scope: _Scope, site: _Site, name: str, key: str, outcome: str, calls: int
) -> None:
    if scope.emit is not None:
        data = {"name": name, "key": key, "outcome": outcome, "calls": calls}
        await scope.emit("effect", site.node, data)


def _warn_unjournaled(scope: _Scope | None) -> None:
    global _warned_no_journal
    if scope is not None and not _warned_no_journal:
        _warned_no_journal = True
        log.warning(
            "once(): no effect journal (GRAPHWIRE_CHECKPOINTS=false), so a re-run of a node "
            "calls its effects again; turn checkpoints on for at-most-once effects"
        )


def once_tool(
    tool: BaseTool | Callable[..., Any] | None = None, *, retry_in_doubt: bool = False
) -> Any:
    """Make a LangChain tool's calls run through ``once``, keyed by the model's tool call id.

    Use it over ``@tool`` (``once_tool(add)``) or as the decorator itself (``@once_tool`` or
    ``@once_tool(retry_in_doubt=True)`` on a function). The tool keeps its name, description
    and arguments; its output must be JSON."""
    if tool is None:
        return lambda t: once_tool(t, retry_in_doubt=retry_in_doubt)
    inner = tool if isinstance(tool, BaseTool) else make_tool(tool)
    if inner.response_format != "content":
        raise GraphwireError(
            f"once_tool({inner.name!r}): response_format={inner.response_format!r} is not "
            "supported; journal the content only (response_format='content')"
        )
    return _OnceTool(
        name=inner.name,
        description=inner.description,
        args_schema=inner.args_schema or inner.tool_call_schema,
        coroutine=_journaled(inner, retry_in_doubt),
        return_direct=inner.return_direct,
        handle_tool_error=inner.handle_tool_error,
        handle_validation_error=inner.handle_validation_error,
        metadata=inner.metadata,
        tags=inner.tags,
    )


_TOOL_CALL: ContextVar[str | None] = ContextVar("graphwire_tool_call", default=None)


class _OnceTool(StructuredTool):
    """A StructuredTool that passes the model's tool call id on to its journaled coroutine."""

    async def arun(self, tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        token = _TOOL_CALL.set(kwargs.get("tool_call_id"))
        try:
            return await super().arun(tool_input, *args, **kwargs)
        finally:
            _TOOL_CALL.reset(token)

    def run(self, tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        raise GraphwireError(
            f"once_tool {self.name!r} is async: run the graph with ainvoke/astream (the worker "
            "does)"
        )


def _journaled(inner: BaseTool, retry_in_doubt: bool) -> Callable[..., Awaitable[Any]]:
    async def call(**arguments: Any) -> Any:
        # the config (callbacks, stream writer) reaches inner through the context
        call_id = _TOOL_CALL.get()
        name = f"tool:{inner.name}" + (f":{call_id}" if call_id else "")
        return await once(name, inner.ainvoke, arguments, retry_in_doubt=retry_in_doubt)

    return call
