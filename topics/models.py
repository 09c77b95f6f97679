"""The v1 message contract: requests in, events and results out.

All messages are UTF-8 JSON objects encoded with orjson. The models here are the source of truth
for the JSON Schema that ``graphwire schema`` publishes; the runner's hot path builds the same
shapes as plain dicts (``graphwire.topics.codec``) and a test keeps the two in step.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

CONTRACT_VERSION = 1

StreamMode = Literal["updates", "custom", "messages", "values", "tasks", "checkpoints", "debug"]
"""LangGraph's stream modes; each becomes an event type (``updates`` → ``node``, ``custom``,
``messages`` → ``message``, ``values``, ``tasks`` → ``task``, ``checkpoints`` → ``checkpoint``,
``debug``)."""
Breakpoints = list[str] | Literal["*"]
"""Node names to stop at, or ``"*"`` for every node (LangGraph's ``interrupt_before``/
``interrupt_after``)."""
MultitaskStrategy = Literal["enqueue", "reject", "interrupt", "rollback"]
"""What a request does when its thread has a run in progress (LangGraph Platform's names)."""
CancelAction = Literal["interrupt", "rollback"]
"""``interrupt`` keeps a cancelled run's checkpointed progress; ``rollback`` deletes it."""
MAX_DELAY_S = 366 * 24 * 3600  # after_seconds: at most a year (and a day)
MAX_PAST_S = 366 * 24 * 3600
"""``run_at`` at most this far in the past (a late request runs at once; an older one is a
mistake, and dates near year 1 or 9999 overflow the scheduler's arithmetic)."""

# -- ids and names: what every processor can store and log ----------------------------------
# PostgreSQL refuses NUL in text; a newline or an ANSI escape in a logged id forges log lines
# in the text format. Ids are Python-printable (no control, format, separator or surrogate
# characters other than the space): any language, any script, nothing that moves a terminal.
# Graph names are code identifiers (registry entries, metric labels, URLs): ASCII only.
GRAPH_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$"
"""A graph name: a letter or digit, then letters, digits and ``_ . : / -``; 1..200."""
PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
"""What the JSON Schema can say of an id (the runner also refuses Unicode format and line
separator characters: Python's ``str.isprintable``)."""
RESERVED_CONFIGURABLE = {
    "thread_id": "set the request's 'thread_id' (the Kafka key of its thread)",
    "checkpoint_id": "set the request's 'checkpoint_id' to run from a checkpoint",
    "checkpoint_ns": "LangGraph sets it for subgraphs; leave it out",
    "checkpoint_map": "LangGraph sets it for subgraphs; leave it out",
    "langgraph_auth_user": "graphwire sets it from the gateway's caller; leave it out",
    "langgraph_auth_user_id": "graphwire sets it from the gateway's caller; leave it out",
    "langgraph_auth_permissions": "graphwire sets it from the gateway's caller; leave it out",
}
"""``config.configurable`` keys a producer may not set, and what to do instead. Keys starting
with ``__`` (LangGraph's ``__pregel_*``, graphwire's ``__graphwire_fresh_thread__``) are
refused too."""


def id_problem(field: str, value: str) -> str | None:
    """Why ``value`` cannot be the id ``field`` (a control character, a newline), or None."""
    if value.isprintable():
        return None
    bad = next(c for c in value if not c.isprintable())
    return (f"{field} must contain only printable characters (found U+{ord(bad):04X}); "
            "no NUL, control characters or newlines")


def configurable_problem(configurable: dict[str, Any]) -> str | None:
    """Why a producer may not send this ``config.configurable``, or None."""
    for key in configurable:
        if key.startswith("__"):
            return (f"config.configurable key {key!r} is reserved (keys starting with '__' are "
                    "LangGraph's and graphwire's internals); leave it out")
        if key in RESERVED_CONFIGURABLE:
            return (f"config.configurable key {key!r} is reserved: "
                    f"{RESERVED_CONFIGURABLE[key]}")
    return None


class Status(StrEnum):
    """How a request ended."""

    SUCCESS = "success"
    """The graph ran to its end; ``output`` holds the final state."""
    ERROR = "error"
    """The graph raised; ``error`` says what happened."""
    REJECTED = "rejected"
    """The request was understood but invalid (unknown graph, bad fields, too large)."""
    TIMEOUT = "timeout"
    """The run took longer than the request's ``timeout_s``."""
    INTERRUPTED = "interrupted"
    """The graph called ``interrupt()``; ``interrupts`` holds the values it asked about."""
    CANCELLED = "cancelled"
    """Stopped by a cancel (``<prefix>.control``) or a later request's ``multitask_strategy``
    (``interrupt``/``rollback``); ``error.message`` says which and what became of its progress."""


class EventType(StrEnum):
    """Kinds of event published while a request runs."""

    RUN_STARTED = "run_started"
    NODE = "node"
    CUSTOM = "custom"
    MESSAGE = "message"
    VALUES = "values"
    INTERRUPT = "interrupt"
    TASK = "task"
    """``tasks`` stream mode: a task starting (``input``, ``triggers``) or its result
    (``result``, ``error``, ``interrupts``), LangGraph's payload."""
    CHECKPOINT = "checkpoint"
    """``checkpoints`` stream mode: the checkpoint a step made (LangGraph's payload: ``config``,
    ``parent_config``, ``values``, ``metadata``, ``next``, ``tasks``)."""
    DEBUG = "debug"
    """``debug`` stream mode: LangGraph's ``{step, timestamp, type, payload}``."""
    RUN_FINISHED = "run_finished"
    EFFECT = "effect"
    """A ``once()`` call: ``{name, key, outcome: called|replayed|in_doubt|failed, calls}``."""


class RunConfig(BaseModel):
    """The part of a LangGraph ``RunnableConfig`` a producer may set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    configurable: dict[str, Any] = Field(default_factory=dict)
    """Passed to the graph as ``config["configurable"]``.
    Refused: keys starting with ``__``, ``thread_id`` (use the request's ``thread_id``),
    ``checkpoint_id`` (use the request's ``checkpoint_id``),
    ``checkpoint_ns``, ``checkpoint_map`` and ``langgraph_auth_user``/``_user_id``/
    ``_permissions`` (graphwire sets them from the caller's identity)."""
    recursion_limit: int | None = Field(default=None, ge=1, le=1_000_000)
    """Maximum number of supersteps before LangGraph stops the run with an error. Unset: the
    graph's own (``graph.with_config(recursion_limit=...)``), else LangGraph's default, as
    ``graph.astream`` does. ``GRAPHWIRE_MAX_RUN_S`` bounds a run's time whatever the limit."""
    tags: list[str] = Field(default_factory=list)
    """Tags passed to callbacks and tracing."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """LangGraph's ``config["metadata"]``: copied into each checkpoint's metadata (its string,
    number and boolean values, as LangGraph does) and into the metadata of ``message`` events
    and callbacks. ``graphwire_request_id`` is graphwire's and may not be set."""
    max_concurrency: int | None = Field(default=None, ge=1)
    """Upper bound on parallel node executions within one superstep."""

    @field_validator("metadata")
    @classmethod
    def _own_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "graphwire_request_id" in value:
            raise ValueError("config.metadata key 'graphwire_request_id' is reserved: graphwire "
                             "stamps each checkpoint with the request's id; leave it out")
        return value

    @field_validator("configurable")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = configurable_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class CacheSpec(BaseModel):
    """Opt-in result caching for one request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttl_s: float = Field(gt=0, le=30 * 24 * 3600)
    """How long the result may be reused."""


class Request(BaseModel):
    """A request to run a graph, produced to ``<prefix>.requests``.

    Key the message by ``thread_id`` when given, else by ``request_id``: messages with the same
    key run one at a time, in order.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(min_length=1, max_length=128,
                            json_schema_extra={"pattern": PRINTABLE_PATTERN})
    """Idempotency key, 1..128 printable characters (no control characters or newlines)."""
    graph: str = Field(min_length=1, max_length=200, pattern=GRAPH_NAME_PATTERN)
    """Name of a registered graph: letters, digits and ``_ . : / -``, starting with a letter or
    digit."""
    input: Any = None
    """The graph's input: any JSON value (an object for a ``StateGraph``, anything an
    ``@entrypoint`` takes). Null (or left out) continues the thread from its current state, as
    ``graph.invoke(None, config)`` does (past a breakpoint): it needs ``thread_id``."""
    thread_id: str | None = Field(default=None, min_length=1, max_length=256,
                                  json_schema_extra={"pattern": PRINTABLE_PATTERN})
    """Conversation thread: requests of one thread share checkpointed state. 1..256 printable
    characters."""
    command: dict[str, Any] | None = None
    """A LangGraph command instead of input, e.g. ``{"resume": "yes"}``. A ``goto`` item
    ``{"node", "input"}`` is a ``Send``; an ``update`` may be ``[key, value]`` pairs (each
    through the channel's reducer), as LangGraph's server reads them."""
    config: RunConfig = Field(default_factory=RunConfig)
    """Run configuration."""
    context: dict[str, Any] | None = None
    """The run's LangGraph ``context`` (``graph.astream(..., context=...)``), read by nodes as
    ``runtime.context``; validated by the graph's ``context_schema``. Part of the result cache
    key."""
    interrupt_before: Breakpoints | None = None
    """Stop before these nodes (or ``"*"``), as well as at the graph's compiled breakpoints:
    the run ends ``interrupted`` with ``breakpoint: "before"``; a request with ``input: null``
    continues."""
    interrupt_after: Breakpoints | None = None
    """Stop after these nodes (or ``"*"``): ``interrupted`` with ``breakpoint: "after"``."""
    subgraphs: bool = False
    """Also stream the events of subgraphs (node updates, custom events, tokens, the other
    modes), each with its ``ns``. Without it only the top graph's events are published."""
    stream: list[StreamMode] = Field(default_factory=lambda: list[StreamMode](["updates"]))
    """Which LangGraph stream modes become events."""
    timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Give up after this many seconds with status ``timeout``. Workers cap it at their
    ``GRAPHWIRE_MAX_RUN_S`` (also the default), and say so in the result's metadata."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Opaque; echoed on every event and on the result."""
    max_attempts: int | None = Field(default=None, ge=1, le=20)
    """Runs allowed when the graph fails with a retriable error (default: the graph's, else 3).
    A failure in a node with its own ``RetryPolicy`` is not retried again here: LangGraph's
    attempts of that node are its retries."""
    durability: Literal["exit", "async", "sync"] | None = None
    """When checkpoints are written: ``sync`` (each step, before the next), ``async`` (each
    step, in the background), ``exit`` (only at the end: fastest, a crash restarts the run)."""
    cache: CacheSpec | None = None
    """Reuse the result of an identical earlier request (same graph, version, input, config)."""
    multitask_strategy: MultitaskStrategy | None = None
    """When the thread has a run in progress: ``enqueue`` (the default: run after it),
    ``reject`` (this request is ``rejected`` at once), ``interrupt`` (stop that run at its next
    step boundary, keeping its progress, then run this) or ``rollback`` (stop it and delete its
    progress, then run this). The stopped run ends ``cancelled``. Needs ``thread_id``."""
    checkpoint_id: str | None = Field(default=None, min_length=1, max_length=256,
                                      json_schema_extra={"pattern": PRINTABLE_PATTERN})
    """Run from this checkpoint of the thread (see ``graphwire history``), forking it as
    LangGraph does; ``input`` may be left out (re-run from there), ``command.update`` edits the
    state first. Needs ``thread_id``; an unknown id is ``rejected``."""
    # -- webhooks (issue 16) --
    webhook: str | None = Field(default=None, min_length=1, max_length=2048)
    """POST the result here when the run ends (``graphwire webhooks``, signed; see
    ``graphwire.topics.webhooks``). An http(s) URL whose host the workers' allow-list names
    (``GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS``); without credentials in it."""

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None:
            problem = webhook_url_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value
    # -- end webhooks --
    # -- scheduled runs (``graphwire scheduler``): accepted now, run then ---------------------
    after_seconds: float | None = Field(default=None, ge=0, le=MAX_DELAY_S, allow_inf_nan=False)
    """Run this many seconds after the request's Kafka timestamp (when it was produced); at
    most a year and a day."""
    run_at: AwareDatetime | None = None
    """Run at this time: RFC 3339 with an offset, e.g. ``2026-12-02T15:00:00Z``; from a year
    ago (a late request runs at once) to a year and a day ahead."""

    @field_validator("run_at")
    @classmethod
    def _sane_time(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return value
        now = datetime.now(UTC)
        try:
            offset_s = (value - now).total_seconds()
        except OverflowError:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
            offset_s = float("-inf")
        if offset_s < -MAX_PAST_S or offset_s > MAX_DELAY_S:
            raise ValueError(
                "run_at must be within a year in the past and a year and a day ahead "
                f"(got {value.isoformat()}); for later runs, schedule a cron"
            )
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> Self:
        if self.after_seconds is not None and self.run_at is not None:
            raise ValueError("give 'after_seconds' or 'run_at', not both")
        return self

    @property
    def deferred(self) -> bool:
        """True when ``graphwire scheduler`` (not a runner) takes this request: it runs later."""
        return self.after_seconds is not None or self.run_at is not None

    @field_validator("request_id", "thread_id", "checkpoint_id")
    @classmethod
    def _printable(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and (problem := id_problem(str(info.field_name), value)):
            raise ValueError(problem)
        return value

    @field_validator("command")
    @classmethod
    def _known_command(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            unknown = set(value) - {"resume", "update", "goto"}
            if unknown or not value:
                raise ValueError("command takes one or more of 'resume', 'update', 'goto'")
            if all(value.get(k) is None for k in ("resume", "update", "goto")):
                raise ValueError(
                    "command has nothing to do: 'resume' is null and there is no 'update' or "
                    "'goto'; to continue a thread from a breakpoint, send 'input': null without "
                    "a command"
                )
        return value

    @model_validator(mode="after")
    def _input_or_command(self) -> Self:
        if (self.input is None and self.command is None and self.checkpoint_id is None
                and self.thread_id is None):
            raise ValueError(
                "give 'input' or 'command': a null input continues a thread's run (from a "
                "breakpoint), so it needs 'thread_id'"
            )
        if self.thread_id is None:
            if self.multitask_strategy not in (None, "enqueue"):
                raise ValueError(
                    f"multitask_strategy {self.multitask_strategy!r} acts on the run in progress "
                    "on a thread: set 'thread_id', or leave the strategy out"
                )
            if self.checkpoint_id is not None:
                raise ValueError("checkpoint_id names a checkpoint of a thread: set 'thread_id'")
        return self

    @property
    def key(self) -> str:
        """The Kafka message key this request should be produced with."""
        return self.thread_id or self.request_id


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook (syntax only; the allow-list is the workers'), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        return f"webhook is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "webhook must be an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return "webhook must not carry credentials (user:password@); receivers verify the signature"
    if not url.isprintable() or any(c.isspace() for c in url):
        return "webhook must not contain spaces or control characters"
    return None


class ErrorInfo(BaseModel):
    """What went wrong, in a sentence a person can act on (never a stack trace)."""

    model_config = ConfigDict(frozen=True)

    type: str
    """Short error class name, e.g. ``UnknownGraph`` or ``ValueError``."""
    message: str
    """What went wrong and what to do about it."""


class Event(BaseModel):
    """One step of a running request, published to ``<prefix>.events`` keyed by request_id."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    seq: int = Field(ge=0, lt=2**53)
    """The event's position among all events of the request, over every try:
    ``(delivery_attempt * 256 + try_index) * 2**24 + i`` (``graphwire.topics.positions``).
    Strictly increasing per request across attempts; contiguous (+1) within one try from its
    ``run_started``; a new try starts at a higher base, so a consumer waiting for seq N that
    holds a ``run_started`` with a higher seq moves on to it (work an earlier try did not
    finish is re-sent after it). A copy of an event keeps its seq: dedupe on
    ``(request_id, seq)``. Below 2**53 (exact in JavaScript). Without dedup (no Redis) every
    delivery counts as attempt 1, so seqs are unique across redeliveries only with dedup on."""
    type: EventType
    graph: str
    node: str | None = None
    """The node that produced the event, where there is one."""
    ns: list[str] = Field(default_factory=list)
    """LangGraph's namespace of the graph the event came from: ``[]`` for the top graph, one
    ``"node:task_id"`` segment per subgraph level (with ``subgraphs: true``)."""
    cached: bool = False
    """On ``node`` events: the write came from the node cache or was replayed on a resume
    (LangGraph's ``__metadata__: {"cached": true}``); left out when false."""
    replayed: bool = False
    """A copy of a finished step's event, sent again by a resumed start (a redelivery that
    continues an earlier start's run): right after that start's ``run_started``
    (``resumed: true``), the ``node`` and ``values`` events of every step earlier starts
    finished, rebuilt from the checkpoints, in step order. The earlier start may have died
    before the broker acknowledged them; those that did arrive appear twice, the second time
    with ``replayed: true``. Not ``cached`` (LangGraph's own re-emission of an unfinished
    step's saved writes). Tokens, ``custom`` and the other modes are not in the checkpoint and
    are never replayed, nor are subgraphs' events; left out when false."""
    langgraph: dict[str, Any] | None = None
    """On ``message`` events: LangGraph's stream metadata (``langgraph_node``,
    ``langgraph_step``, ``langgraph_checkpoint_ns``, ``tags``, ``ls_*``); left out otherwise."""
    data: Any = None
    """``node``: the node's update; ``message``: a token chunk; ``run_finished``: the status."""
    ts: float
    """Unix time in seconds when the event was produced."""
    metadata: dict[str, Any] = Field(default_factory=dict)


class Result(BaseModel):
    """How a request ended, published to ``<prefix>.results`` (and ``reply-to``)."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    graph: str
    status: Status
    output: Any = None
    """The final graph state on ``success``; ``null`` otherwise."""
    error: ErrorInfo | None = None
    interrupts: list[Any] = Field(default_factory=list)
    """On ``interrupted``: ``[{"id", "value", "node", "ns", "response_schema"?}]``, one per
    pending ``interrupt()`` (empty at a breakpoint)."""
    next: list[str] = Field(default_factory=list)
    """On ``interrupted``: the nodes that run when the thread continues."""
    breakpoint: Literal["before", "after"] | None = None
    """On ``interrupted`` at a breakpoint (``interrupt_before``/``interrupt_after``): which."""
    thread_id: str | None = None
    attempts: int = Field(default=1, ge=1)
    """Runs of the graph for this request, over retries and redeliveries."""
    cached: bool = False
    """True when the output was reused from an identical earlier request (nothing ran)."""
    duration_ms: float = Field(ge=0)
    metadata: dict[str, Any] = Field(default_factory=dict)


class Control(BaseModel):
    """A control message, produced to ``<prefix>.control`` keyed by ``request_id``: any producer
    may send one. Today one kind: cancel a request, wherever it is (running, queued, not
    fetched yet). A running request stops at its next step boundary; one not started yet
    runs nothing. Either way its result is ``cancelled``. A cancel for a request that already
    finished is dead-lettered with the reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["cancel"] = "cancel"
    """What to do (only ``cancel`` for now)."""
    request_id: str = Field(min_length=1, max_length=128,
                            json_schema_extra={"pattern": PRINTABLE_PATTERN})
    """The request to cancel (printable, as the request's)."""
    action: CancelAction = "interrupt"
    """``interrupt`` keeps the run's checkpointed progress on its thread; ``rollback`` deletes
    the checkpoints the run wrote (the thread is as it was before the run)."""
    reason: str | None = Field(default=None, max_length=500)
    """Why, in a few words (echoed in the cancelled result's message)."""

    @field_validator("request_id")
    @classmethod
    def _printable(cls, value: str) -> str:
        if problem := id_problem("request_id", value):
            raise ValueError(problem)
        return value
