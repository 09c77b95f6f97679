"""The run-create body of the Agent Server API, and its mapping onto graphwire's request.

``RunCreate`` is the body the official SDK sends to ``/runs``, ``/runs/stream``, ``/runs/wait``,
``/runs/batch`` and their ``/threads/{thread_id}/...`` forms. The SDK sends every field it has a
value for, defaults included, so unknown-but-default values are accepted; every field either
maps onto graphwire's contract (``to_request``) or is refused with a 422 naming it. Nothing is
silently dropped.

Errors (``agentapi.errors``): a field graphwire cannot honour, a malformed value or a field the
body should not have is ``Unprocessable`` (422); a body that contradicts itself (a resume
without a thread, both ``config.configurable`` and ``context``) is ``BadRequest`` (400), with
the Agent Server's own messages.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Literal
from urllib.parse import urljoin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from graphwire.processors.gateway.agentapi.errors import BadRequest, Unprocessable
from graphwire.processors.gateway.agentapi.ids import parse_uuid
from graphwire.topics.models import Request, configurable_problem

ClientMode = Literal[
    "values", "messages", "updates", "events", "tasks", "checkpoints", "debug", "custom",
    "messages-tuple", "tools", "lifecycle",
]
"""The stream modes the SDK can name (``langgraph_sdk.schema.StreamMode``)."""

SERVED_MODES: tuple[str, ...] = (
    "values", "updates", "messages", "messages-tuple", "custom", "tasks", "checkpoints", "debug",
)
"""The client stream modes graphwire serves, in the order they are normalised to."""

_GRAPHWIRE_MODE = {
    "values": "values", "updates": "updates", "messages": "messages",
    "messages-tuple": "messages", "custom": "custom", "tasks": "tasks",
    "checkpoints": "checkpoints", "debug": "debug",
}
_GRAPHWIRE_ORDER = ("updates", "values", "messages", "custom", "tasks", "checkpoints", "debug")

_REFUSED_MODES = {
    "events": ("graphwire streams LangGraph's stream modes, not astream_events; use "
               "'messages-tuple' for tokens and 'tasks' or 'debug' for node runs"),
    "tools": "it belongs to the v2 event streaming endpoints, which graphwire does not serve",
    "lifecycle": "it belongs to the v2 event streaming endpoints, which graphwire does not serve",
}

CONFIG_KEYS = ("tags", "recursion_limit", "configurable", "max_concurrency", "metadata")
"""The ``config`` keys a run may set (RemoteGraph sends ``metadata`` too)."""
_COMMAND_KEYS = ("resume", "update", "goto")
_CHECKPOINT_KEYS = ("thread_id", "checkpoint_ns", "checkpoint_id", "checkpoint_map")

RESUME_WITHOUT_THREAD = "You must provide a thread_id when resuming."
"""The Agent Server's 400 for a ``command.resume`` on a stateless run."""
CONFIGURABLE_AND_CONTEXT = (
    "Cannot specify both configurable and context. Prefer setting context alone. Context was "
    "introduced in LangGraph 0.6.0 and is the long term planned replacement for configurable."
)
"""The Agent Server's 400 for a body with both ``config.configurable`` and ``context``."""


class RunCreate(BaseModel):
    """A run-create body, stateful or stateless, as the SDK sends it (every field optional
    but ``assistant_id``; ``null`` means the default)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    assistant_id: str
    """An assistant's UUID, or a graph name (its default assistant)."""
    input: Any = None
    """The graph's input, any JSON; null continues the thread from its current state."""
    command: dict[str, Any] | None = None
    """``{resume?, update?, goto?}``; ``goto`` a node name, a ``Send`` ``{node, input}`` or a
    list of them; ``update`` an object or a list of ``[key, value]`` pairs."""
    config: dict[str, Any] | None = None
    """``{tags, recursion_limit, configurable, max_concurrency, metadata}``."""
    context: dict[str, Any] | None = None
    """LangGraph's run context (``runtime.context``); mirrored into ``configurable``."""
    checkpoint_id: str | None = None
    """Run from this checkpoint of the thread (a fork)."""
    checkpoint: dict[str, Any] | None = None
    """``{thread_id, checkpoint_ns, checkpoint_id, checkpoint_map}`` (RemoteGraph's form)."""
    interrupt_before: Literal["*"] | list[str] | None = None
    """Stop before these nodes, or ``"*"``."""
    interrupt_after: Literal["*"] | list[str] | None = None
    """Stop after these nodes, or ``"*"``."""
    stream_mode: ClientMode | list[ClientMode] | None = None
    """Default ``["values"]``; ``events``, ``tools`` and ``lifecycle`` are refused."""
    stream_subgraphs: bool | None = None
    """Also stream subgraphs' events (named ``mode|ns``)."""
    stream_resumable: bool | None = None
    """Always true on graphwire: every event is kept, ``Last-Event-ID`` resumes any stream."""
    feedback_keys: list[str] | None = None
    """LangSmith feedback URLs: refused unless empty."""
    multitask_strategy: Literal["reject", "interrupt", "rollback", "enqueue"] | None = None
    """When the thread is busy; default ``enqueue``."""
    if_not_exists: Literal["reject", "create"] | None = None
    """A missing thread: 404 (``reject``, the default) or create it."""
    on_completion: Literal["delete", "keep"] | None = None
    """Stateless runs: delete (default) or keep their thread."""
    on_disconnect: Literal["continue", "cancel"] | None = None
    """``stream``/``wait``: cancel the run when the client goes away, or let it run (default)."""
    after_seconds: float | None = Field(default=None, ge=0)
    """Start the run this many seconds from now (``graphwire scheduler``)."""
    webhook: str | None = None
    """POST the result here when the run ends; a ``/path`` is resolved on this server."""
    durability: Literal["sync", "async", "exit"] | None = None
    """When checkpoints are written; default ``async``."""
    checkpoint_during: bool | None = None
    """Deprecated: ``true`` is ``durability: async``, ``false`` is ``exit``."""
    metadata: dict[str, Any] | None = None
    """The run's metadata (echoed on graphwire's events and result)."""
    langsmith_tracer: dict[str, Any] | None = None
    """LangSmith project/example for tracing: refused unless empty."""
    strict_resume: bool | None = None
    """graphwire always resumes strictly; ``false`` is refused."""

    @property
    def modes(self) -> list[str]:
        """The stream modes the client asked for, normalised (default ``["values"]``)."""
        return normalize_modes(self.stream_mode)

    @property
    def resume_requested(self) -> bool:
        """Whether the body resumes an interrupt (``command.resume`` is set)."""
        return bool(self.command) and (self.command or {}).get("resume") is not None


def parse_run_create(body: Any) -> RunCreate:
    """The run-create body ``body`` (decoded JSON), or 422 naming the field that is wrong,
    unknown or that graphwire cannot honour."""
    if not isinstance(body, dict):
        raise Unprocessable("the run body must be a JSON object")
    try:
        run = RunCreate.model_validate(body)
    except ValidationError as exc:
        raise Unprocessable(describe(exc)) from None
    unknown = sorted(run.model_extra or {})
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise Unprocessable(f"unknown run field {names}: graphwire does not know it; leave it out")
    normalize_modes(run.stream_mode)  # refuses events/tools/lifecycle
    if run.feedback_keys:
        raise Unprocessable("feedback_keys is not supported: graphwire has no LangSmith "
                            "feedback URLs; leave it out")
    if run.langsmith_tracer:
        raise Unprocessable("langsmith_tracer is not supported: graphwire traces with "
                            "OpenTelemetry, not to a LangSmith project; leave it out")
    if run.strict_resume is False:
        raise Unprocessable("strict_resume false is not supported: graphwire always refuses a "
                            "resume that answers no pending interrupt; leave it out")
    return run


def normalize_modes(value: str | Collection[str] | None) -> list[str]:
    """The client's ``stream_mode`` as a list without repeats, in the order given; empty or
    null is ``["values"]``. 422 for a mode graphwire does not serve."""
    if not value:
        return ["values"]
    asked = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for mode in asked:
        if mode in _REFUSED_MODES:
            raise Unprocessable(f"stream_mode {mode!r} is not supported: {_REFUSED_MODES[mode]}")
        if mode not in SERVED_MODES:
            served = ", ".join(repr(m) for m in SERVED_MODES)
            raise Unprocessable(f"stream_mode {mode!r} is not a stream mode; use {served}")
        if mode not in out:
            out.append(mode)
    return out


def graphwire_modes(modes: Collection[str]) -> list[str]:
    """The request ``stream`` that publishes what ``modes`` need (``messages-tuple`` is
    ``messages``). Interrupts are published whatever the modes."""
    wanted = {_GRAPHWIRE_MODE[m] for m in modes if m in _GRAPHWIRE_MODE}
    return [m for m in _GRAPHWIRE_ORDER if m in wanted]


def published_modes(body: RunCreate, *, wait: bool = False) -> list[str]:
    """What the run publishes as events: its body's modes; for ``wait`` (its answer is its
    result's output) none unless the body names ``stream_mode`` or ``stream_resumable: true``
    (nobody streams it: publishing each step's state would cost the runner, the broker and the
    gateway for events nobody reads; a ``join_stream`` of it sees its end)."""
    if wait and body.stream_mode is None and not body.stream_resumable:
        return []
    return graphwire_modes(body.modes)


def to_request(
    body: RunCreate,
    *,
    run_id: str,
    thread_id: str | None,
    graph: str,
    assistant: Mapping[str, Any] | None = None,
    context_schema: Mapping[str, Any] | None = None,
    base_url: str | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """The graphwire request (``topics.models.Request`` as a dict, validated) for ``body``.

    ``run_id`` is the request_id; ``thread_id`` the thread (None: stateless, the caller may
    give a fresh one); ``graph`` the assistant's graph; ``assistant`` its record (``config``
    and ``context`` are merged under the body's); ``context_schema`` the graph's context JSON
    Schema (mirrored ``configurable`` keys it does not name are not put in the context, as the
    Agent Server filters them); ``base_url`` resolves a ``/path`` webhook; ``wait``: the run answers
    ``runs.wait`` (``published_modes``). 400/422 as the module says.
    """
    command = _command(body, thread_id)
    if command is not None and body.input not in (None, {}):
        raise Unprocessable("give 'input' or 'command', not both: a command replaces the "
                            "input (send input null)")
    config = dict(body.config or {})
    extra = [key for key in config if key not in CONFIG_KEYS]
    if extra:
        raise Unprocessable(f"config.{extra[0]} is not supported: a run's config takes "
                            f"{', '.join(CONFIG_KEYS)}")
    configurable = _object(config.get("configurable"), "config.configurable")
    run_metadata = _object(config.get("metadata"), "config.metadata")
    context = dict(body.context or {})
    if configurable and context:
        raise BadRequest(CONFIGURABLE_AND_CONTEXT)
    checkpoint_id = _checkpoint_id(body, configurable, thread_id)
    context, configurable = _mirror(context, configurable, context_schema)
    assistant_config = _object((assistant or {}).get("config"), "assistant config")
    configurable = {**_object(assistant_config.get("configurable"), "assistant configurable"),
                    **configurable}
    context = {**_object((assistant or {}).get("context"), "assistant context"), **context}
    tags = sorted({*_tags(assistant_config.get("tags")), *_tags(config.get("tags"))})
    recursion_limit = config.get("recursion_limit")
    if recursion_limit is None:
        recursion_limit = assistant_config.get("recursion_limit")
    # the run's ids in LangGraph's config metadata, as the Agent Server stamps them: each
    # checkpoint and each message's metadata carries them
    stamps = {"graph_id": graph, "run_id": run_id,
              **({"thread_id": thread_id} if thread_id else {})}
    if assistant is not None and assistant.get("assistant_id"):
        stamps["assistant_id"] = assistant["assistant_id"]
    run_config = {"configurable": configurable, "tags": tags, "recursion_limit": recursion_limit,
                  "max_concurrency": config.get("max_concurrency"),
                  "metadata": {**run_metadata, **stamps}}
    request: dict[str, Any] = {
        "request_id": run_id,
        "graph": graph,
        "input": None if command is not None else body.input,
        "thread_id": thread_id,
        "command": command,
        "config": {k: v for k, v in run_config.items() if v not in (None, [], {})},
        "context": context or None,
        "interrupt_before": body.interrupt_before,
        "interrupt_after": body.interrupt_after,
        "subgraphs": bool(body.stream_subgraphs),
        "stream": published_modes(body, wait=wait),
        "metadata": {**run_metadata, **(body.metadata or {})},
        "durability": _durability(body),
        "multitask_strategy": (body.multitask_strategy or "enqueue") if thread_id else None,
        "checkpoint_id": checkpoint_id,
        "webhook": _webhook(body.webhook, base_url),
        "after_seconds": body.after_seconds or None,
    }
    request = {k: v for k, v in request.items() if v is not None}
    try:
        Request.model_validate(request)
    except ValidationError as exc:
        raise Unprocessable(describe(exc)) from None
    return request


def describe(exc: ValidationError) -> str:
    """A pydantic error as one line naming each field: ``field: what is wrong; ...`` (the
    alternatives of a union joined with ``or``)."""
    found: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False, include_input=False):
        path = [str(p) for p in err["loc"] if "[" not in str(p)]  # union members' tags
        message = err["msg"].removeprefix("Value error, ")
        found.setdefault(".".join(path), []).append(message)
    parts = []
    for where, messages in found.items():
        text = " or ".join([messages[0], *(m[0].lower() + m[1:] for m in messages[1:])])
        parts.append(f"{where}: {text}" if where else text)
    return "; ".join(parts)


def _object(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Unprocessable(f"{name} must be an object")
    return dict(value)


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise Unprocessable("config.tags must be a list of strings")
    return value


def _command(body: RunCreate, thread_id: str | None) -> dict[str, Any] | None:
    """The command for graphwire: ``graph`` (RemoteGraph's ``None``) and an empty ``goto``
    left out; ``Send`` objects and ``[key, value]`` update pairs kept (the runner maps them
    as LangGraph's server does)."""
    if body.command is None:
        return None
    out: dict[str, Any] = {}
    for key, value in body.command.items():
        if key == "graph" and value is None:
            continue
        if key not in _COMMAND_KEYS:
            raise Unprocessable(f"command.{key} is not supported: a run's command takes "
                                "resume, update and goto")
        if key == "goto":
            value = _goto(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    if "resume" in out and thread_id is None:
        raise BadRequest(RESUME_WITHOUT_THREAD)
    return out or None  # {} or RemoteGraph's empty Command(): no command, as the server has it


def _goto(value: Any) -> Any:
    items = value if isinstance(value, list) else [value] if value is not None else []
    for item in items:
        if isinstance(item, str):
            continue
        if (not isinstance(item, dict) or not isinstance(item.get("node"), str)
                or set(item) - {"node", "input"}):
            raise Unprocessable("command.goto takes node names and Send objects "
                                "{'node': name, 'input': value}")
    return value


def _checkpoint_id(
    body: RunCreate, configurable: dict[str, Any], thread_id: str | None
) -> str | None:
    """The checkpoint to run from, out of ``checkpoint_id``, ``checkpoint`` and the
    configurable's checkpoint keys (which are taken out of ``configurable``)."""
    spec = {key: configurable.pop(key) for key in _CHECKPOINT_KEYS if key in configurable}
    spec.update(body.checkpoint or {})
    extra = sorted(set(spec) - set(_CHECKPOINT_KEYS))
    if extra:
        raise Unprocessable(f"checkpoint.{extra[0]} is not supported: a checkpoint takes "
                            f"{', '.join(_CHECKPOINT_KEYS)}")
    named_thread = spec.get("thread_id")
    if named_thread not in (None, "") and named_thread != thread_id:
        raise Unprocessable(f"checkpoint.thread_id {named_thread!r} is not this run's thread "
                            f"({thread_id!r})")
    if spec.get("checkpoint_ns"):
        raise Unprocessable(f"checkpoint.checkpoint_ns {spec['checkpoint_ns']!r} is not "
                            "supported: graphwire runs from a thread's top-level checkpoints")
    found = [str(value) for value in (body.checkpoint_id, spec.get("checkpoint_id")) if value]
    if len(set(found)) > 1:
        raise Unprocessable("checkpoint_id and checkpoint.checkpoint_id name different "
                            "checkpoints; give one")
    if not found:
        return None
    if thread_id is None:
        raise Unprocessable("checkpoint_id needs a thread: fork a thread's checkpoint with "
                            "POST /threads/{thread_id}/runs")
    return parse_uuid(found[0], "checkpoint")


def _mirror(
    context: dict[str, Any], configurable: dict[str, Any],
    context_schema: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``context`` and ``configurable`` mirrored into each other, as the Agent Server keeps
    them: the context keeps only the keys its schema names (all without a schema); a
    ``configurable`` mirrored from a context keeps what the context keeps (keys graphwire
    reserves, such as ``thread_id``, stay out of ``configurable``)."""
    names = set((context_schema or {}).get("properties") or {})
    if context:
        if names:
            context = {k: v for k, v in context.items() if k in names}
        mirrored = {k: v for k, v in context.items() if configurable_problem({k: v}) is None}
        return context, mirrored
    derived = {k: v for k, v in configurable.items() if not names or k in names}
    return derived, configurable


def _durability(body: RunCreate) -> str | None:
    if body.durability is not None:
        return body.durability
    if body.checkpoint_during is None:
        return None
    return "async" if body.checkpoint_during else "exit"


def _webhook(url: str | None, base_url: str | None) -> str | None:
    if not url or not url.startswith("/"):
        return url
    if base_url is None:
        raise Unprocessable(f"webhook {url!r} is a path on this server: give an absolute "
                            "http(s) URL")
    return urljoin(base_url, url)
