"""Crons: graphs run on a timetable, and the crons table in PostgreSQL (one home for it).

A cron is a named request template plus a schedule. ``graphwire scheduler`` (the leader) turns
each due firing into a normal request with the stable id ``<name>:<scheduled time>`` (UTC, RFC
3339, e.g. ``nightly:2026-12-02T02:00:00Z``), so a firing produced twice runs once (the runner's
dedup) and shows in runs, status and the audit like any request.

A cron may also carry a request template (``CronSpec.template``: config, context, stream modes,
webhook... for every firing), make UUIDv7 request_ids (``run_ids="uuid7"``, ``firing_uuid``:
stable per firing, as the Agent Server API's crons need) and end (``end_at``: paused after it).

Schedules use croniter's syntax (``*/5 * * * *``; a 6th field is seconds: ``* * * * * */10``),
evaluated in the cron's IANA time zone (``zoneinfo``), so ``0 2 * * *`` in ``Europe/Paris``
follows daylight saving time. A firing the scheduler reaches more than its grace late (it was
down) is *missed*: ``missed="run"`` runs the latest missed firing once, ``"skip"`` drops them.

``CronStore`` is what the CLI, ``GraphwireClient.crons``, the gateway and the scheduler use;
the table is created by migration 0006 (``graphwire db migrate``).

CronError
 +-- InvalidCron   a bad name, schedule, time zone or request template: fix the definition
 +-- CronExists    ``add`` of a name that is taken: pick another, or ``replace=True``
 +-- TooManyCrons  ``add`` over the owner's maximum number of crons: remove one first
 +-- UnknownCron   no cron of that name (for this caller)
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from graphwire.topics.errors import GraphwireError
from graphwire.topics.models import Request

CRON_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"
MAX_FIRINGS_PER_TICK = 1000  # a per-second cron long overdue catches up over several ticks
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # NUL, newlines, escapes, C1
_INTERVAL_SAMPLES = 200  # firings looked at for the shortest gap between two


class CronError(GraphwireError):
    """Something about a cron definition or its name; ``str()`` says what to fix."""


class InvalidCron(CronError):
    """A bad name, schedule, time zone or request template."""


class CronExists(CronError):
    """A cron of that name exists already."""


class TooManyCrons(CronError):
    """The owner has its maximum number of crons."""


class UnknownCron(CronError):
    """No cron of that name (visible to this caller)."""


def check_schedule(schedule: str) -> str:
    """``schedule`` if croniter reads it and it fires at all; else ``InvalidCron`` saying what
    is wrong."""
    try:
        croniter(schedule, datetime.now(UTC)).get_next(datetime)
    except CroniterBadDateError:
        raise InvalidCron(
            f"the schedule {schedule!r} never fires (no such date, e.g. 31 February); fix its "
            "day and month fields"
        ) from None
    except Exception as exc:  # croniter's errors are ValueErrors; odd text may raise others
        raise InvalidCron(
            f"cannot read the schedule {schedule!r} ({exc}); write 5 cron fields like "
            "'*/5 * * * *' (minute hour day month weekday), a 6th for seconds"
        ) from None
    return schedule


def check_name(name: str) -> str:
    """``name`` if it is a valid cron name; else ``InvalidCron`` (checked before any query, so
    PostgreSQL never sees a NUL or a control character)."""
    if not isinstance(name, str) or not re.fullmatch(CRON_NAME_PATTERN.strip("^$"), name):
        raise InvalidCron(f"invalid cron name {name!r}: {_NAME_RULE}")
    return name


def check_text(value: str | None, what: str) -> str | None:
    """``value`` unless it holds a control character (NUL, newline, escape...)."""
    if value is not None and _CONTROL.search(value):
        raise ValueError(f"the {what} must not contain control characters (NUL, newlines, "
                         "escapes)")
    return value


def shortest_interval(schedule: str, timezone: str = "UTC",
                      start: datetime | None = None) -> float:
    """The shortest time in seconds between two firings of ``schedule``: exact under 60 s
    (a seconds field holding more than one value), else the shortest of its next
    ``_INTERVAL_SAMPLES`` firings."""
    fields = schedule.split()
    if len(fields) >= 6 and not fields[5].isdigit():  # several firings in one minute
        limit = 59.0
    else:
        limit = float("inf")
    it = croniter(schedule, (start or datetime.now(UTC)).astimezone(ZoneInfo(timezone)))
    shortest = limit
    try:
        previous: datetime = it.get_next(datetime)
    except CroniterBadDateError:  # never fires
        return shortest
    for _ in range(_INTERVAL_SAMPLES):
        try:
            following: datetime = it.get_next(datetime)
        except CroniterBadDateError:  # no more firings (a year field)
            break
        shortest = min(shortest, (following - previous).total_seconds())
        previous = following
        if shortest < 60:
            break
    return shortest


def check_min_interval(schedule: str, timezone: str, minimum: float) -> str:
    """``schedule`` if no two of its firings are closer than ``minimum`` seconds; else
    ``InvalidCron`` saying what to write instead."""
    shortest = shortest_interval(schedule, timezone)
    if shortest < minimum:
        raise InvalidCron(
            f"invalid cron: schedule: {schedule!r} fires {shortest:g} s apart, and crons may "
            f"fire at most every {minimum:g} s: use 5 fields (minute hour day month weekday) "
            "or a single second in the 6th" if minimum <= 60 else
            f"invalid cron: schedule: {schedule!r} fires {shortest:g} s apart, and crons may "
            f"fire at most every {minimum:g} s: fire less often"
        )
    return schedule


def check_timezone(name: str) -> str:
    """``name`` if it is an IANA time zone; else ``InvalidCron``."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidCron(
            f"unknown time zone {name!r} ({type(exc).__name__}); use an IANA name like UTC, "
            "Europe/Paris or America/New_York"
        ) from None
    return name


class CronSpec(BaseModel):
    """What defines a cron."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=CRON_NAME_PATTERN, max_length=80)
    """1..80 characters: letters, digits, ``_ . -``; firings are ``<name>:<time>``."""
    graph: str = Field(min_length=1, max_length=200)
    """The graph each firing runs."""
    schedule: str = Field(min_length=1, max_length=200)
    """croniter syntax, e.g. ``*/5 * * * *``; a 6th field is seconds."""
    timezone: str = "UTC"
    """The IANA time zone the schedule is read in."""
    input: dict[str, Any] = Field(default_factory=dict)
    """The input of every firing."""
    thread_id: str | None = Field(default=None, min_length=1, max_length=256)
    """Run every firing on this thread (state carries over), else each stands alone."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Echoed on every firing's events and result (plus ``cron`` and ``scheduled_at``)."""
    missed: Literal["run", "skip"] = "run"
    """Firings missed while no scheduler ran: run the latest one once, or skip them."""
    template: dict[str, Any] = Field(default_factory=dict)
    """More request fields every firing carries (``config``, ``context``, ``stream``,
    ``webhook``...; an ``input`` here replaces ``input``); ``request_id``, ``graph``,
    ``thread_id`` and ``metadata`` are the cron's own."""
    run_ids: Literal["name", "uuid7"] = "name"
    """A firing's request_id: ``<name>:<time>``, or a UUIDv7 of its time (``firing_uuid``)."""
    end_at: datetime | None = None
    """No firing after this time (the cron is paused once its next firing is later)."""

    @field_validator("template")
    @classmethod
    def _template(cls, value: dict[str, Any]) -> dict[str, Any]:
        own = sorted(set(value) & {"request_id", "graph", "thread_id", "metadata"})
        if own:
            raise ValueError(f"the template must not set {', '.join(own)}: they are "
                             "the cron's own")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        return check_schedule(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        check_text(value, "time zone")
        return check_timezone(value)

    @field_validator("graph", "thread_id")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        return check_text(value, "graph name and thread_id")

    def request(self, at: datetime) -> dict[str, Any]:
        """The request of the firing scheduled at ``at`` (validated against the contract)."""
        body = {
            "input": self.input,
            **self.template,
            "request_id": firing_uuid(self.name, at) if self.run_ids == "uuid7"
            else firing_id(self.name, at),
            "graph": self.graph,
            "thread_id": self.thread_id,
            "metadata": {**self.metadata, "cron": self.name, "scheduled_at": rfc3339(at)},
        }
        return Request.model_validate(body).model_dump(mode="json", exclude_none=True)


def cron_spec(**fields: Any) -> CronSpec:
    """A ``CronSpec``, or ``InvalidCron`` naming the first field that is wrong."""
    try:
        return CronSpec.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "cron"
        message = str(first["msg"]).removeprefix("Value error, ")
        if where == "name":
            message = _NAME_RULE
        raise InvalidCron(f"invalid cron: {where}: {message}") from None


class Cron(CronSpec):
    """A stored cron: its definition and where its timetable stands."""

    owner: str | None = None
    """The gateway caller that owns it (None: defined with the CLI or a client)."""
    paused: bool = False
    next_at: datetime
    """The next firing the scheduler has not yet taken."""
    last_fired: datetime | None = None
    """The scheduled time of the latest firing taken."""


_NAME_RULE = "use 1..80 letters, digits, '_', '.' or '-', starting with a letter or digit"


def rfc3339(at: datetime) -> str:
    """``at`` in UTC as RFC 3339 to the second: ``2026-12-02T02:00:00Z``."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def firing_id(name: str, at: datetime) -> str:
    """The request_id of the firing of cron ``name`` scheduled at ``at``."""
    return f"{name}:{rfc3339(at)}"


def firing_uuid(name: str, at: datetime) -> str:
    """A UUIDv7 request_id for the firing of cron ``name`` scheduled at ``at``: its time is
    ``at`` (milliseconds), its random bits a hash of the name and the time, so the same firing
    always gets the same id (the runners' dedup runs a firing produced twice once)."""
    millis = int(at.timestamp() * 1000) & ((1 << 48) - 1)
    bits = int.from_bytes(hashlib.sha256(firing_id(name, at).encode()).digest()[:10], "big")
    rand_a, rand_b = (bits >> 68) & 0xFFF, bits & ((1 << 62) - 1)
    return str(uuid.UUID(int=millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b))


def next_firing(schedule: str, timezone: str, after: datetime) -> datetime:
    """The first firing strictly after ``after`` (UTC)."""
    start = after.astimezone(ZoneInfo(timezone))
    found: datetime = croniter(schedule, start).get_next(datetime)
    return found.astimezone(UTC)


def due_firings(
    cron: Cron, now: datetime, grace: timedelta
) -> tuple[list[datetime], datetime]:
    """The firings to produce at ``now`` and the next firing after them.

    Firings up to ``grace`` late run, each once; older ones were missed (no scheduler ran):
    with ``missed="run"`` the latest of them runs once, with ``"skip"`` none does."""
    zone = ZoneInfo(cron.timezone)
    cutoff = now - grace
    fire: list[datetime] = []
    if cron.next_at < cutoff:
        prev: datetime = croniter(cron.schedule, cutoff.astimezone(zone)).get_prev(datetime)
        last_missed = max(prev.astimezone(UTC), cron.next_at)
        if cron.missed == "run":
            fire.append(last_missed)
        it = croniter(cron.schedule, last_missed.astimezone(zone))
    else:
        fire.append(cron.next_at)
        it = croniter(cron.schedule, cron.next_at.astimezone(zone))
    while True:
        upcoming: datetime = it.get_next(datetime)
        upcoming = upcoming.astimezone(UTC)
        if upcoming > now or len(fire) >= MAX_FIRINGS_PER_TICK:
            return fire, upcoming
        fire.append(upcoming)


_COLUMNS = (
    "name, graph, schedule, timezone, input, thread_id, metadata, missed, owner, paused, "
    "next_at, last_fired, template, run_ids, end_at"
)


def cron_from_row(row: Any) -> Cron:
    """A ``graphwire_crons`` row as a ``Cron``."""
    values = dict(row)
    for name in ("input", "metadata", "template"):
        if isinstance(values.get(name), str):
            values[name] = orjson.loads(values[name])
    return Cron.model_validate(values)


class CronStore:
    """Reads and writes ``graphwire_crons`` over an asyncpg pool or connection.

    With ``owner`` (the gateway caller's scope) every call sees only that owner's crons."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def add(
        self, spec: CronSpec, *, owner: str | None = None, replace: bool = False,
        now: datetime | None = None, max_per_owner: int | None = None,
    ) -> Cron:
        """Store ``spec``; its first firing is the first after ``now``. ``CronExists`` when
        the name is taken (``replace=True`` redefines a cron of the same owner);
        ``TooManyCrons`` when ``owner`` has ``max_per_owner`` crons besides this one."""
        try:
            spec.request(datetime.now(UTC))  # the template must make a valid request
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "request"
            raise InvalidCron(
                f"cron {spec.name!r} would make invalid requests: {where}: {first['msg']}"
            ) from None
        next_at = next_firing(spec.schedule, spec.timezone, now or datetime.now(UTC))
        args = (
            spec.name, spec.graph, spec.schedule, spec.timezone, orjson.dumps(spec.input).decode(),
            spec.thread_id, orjson.dumps(spec.metadata).decode(), spec.missed, owner, next_at,
            max_per_owner, orjson.dumps(spec.template).decode(), spec.run_ids, spec.end_at,
        )
        insert = (
            "INSERT INTO graphwire_crons (name, graph, schedule, timezone, input, thread_id, "
            "metadata, missed, owner, next_at, template, run_ids, end_at) "
            "SELECT $1::text, $2::text, $3::text, $4::text, $5::jsonb, $6::text, $7::jsonb, "
            "$8::text, $9::text, $10::timestamptz, $12::jsonb, $13::text, $14::timestamptz "
            "WHERE $11::int IS NULL OR (SELECT count(*) "
            "FROM graphwire_crons WHERE owner = $9 AND name <> $1) < $11"
        )
        if replace:
            insert += (
                " ON CONFLICT (name) DO UPDATE SET graph = $2, schedule = $3, timezone = $4, "
                "input = $5::jsonb, thread_id = $6, metadata = $7::jsonb, missed = $8, "
                "next_at = $10, template = $12::jsonb, run_ids = $13, end_at = $14, "
                "updated_at = now() "
                "WHERE graphwire_crons.owner IS NOT DISTINCT FROM $9"
            )
        else:
            insert += " ON CONFLICT (name) DO NOTHING"
        row = await self._db.fetchrow(insert + f" RETURNING {_COLUMNS}", *args)
        if row is None and max_per_owner is not None and await self._db.fetchval(
                "SELECT count(*) FROM graphwire_crons WHERE owner = $1 AND name <> $2",
                owner, spec.name) >= max_per_owner:
            raise TooManyCrons(
                f"{max_per_owner} crons are defined already, the most one caller may have: "
                "remove one first"
            )
        if row is None:
            raise CronExists(
                f"a cron named {spec.name!r} exists already: pick another name, remove it "
                "first (`graphwire cron rm`), or replace it"
            )
        return cron_from_row(row)

    async def list(self, *, owner: str | None = None) -> list[Cron]:
        """Every cron (of ``owner``), by name."""
        if owner is None:
            rows = await self._db.fetch(f"SELECT {_COLUMNS} FROM graphwire_crons ORDER BY name")
        else:
            rows = await self._db.fetch(
                f"SELECT {_COLUMNS} FROM graphwire_crons WHERE owner = $1 ORDER BY name", owner
            )
        return [cron_from_row(r) for r in rows]

    async def get(self, name: str, *, owner: str | None = None) -> Cron:
        """The cron ``name``, or ``UnknownCron``."""
        check_name(name)
        row = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM graphwire_crons WHERE name = $1 "
            "AND ($2::text IS NULL OR owner = $2)", name, owner,
        )
        if row is None:
            raise _unknown(name)
        return cron_from_row(row)

    async def remove(self, name: str, *, owner: str | None = None) -> None:
        """Delete the cron ``name`` (firings already produced still run), or ``UnknownCron``."""
        check_name(name)
        status = await self._db.execute(
            "DELETE FROM graphwire_crons WHERE name = $1 AND ($2::text IS NULL OR owner = $2)",
            name, owner,
        )
        if status.split()[-1] == "0":
            raise _unknown(name)

    async def pause(self, name: str, *, owner: str | None = None) -> Cron:
        """Stop firing ``name`` until ``resume`` (firings in the pause are not run later)."""
        check_name(name)
        row = await self._db.fetchrow(
            "UPDATE graphwire_crons SET paused = true, updated_at = now() WHERE name = $1 "
            f"AND ($2::text IS NULL OR owner = $2) RETURNING {_COLUMNS}", name, owner,
        )
        if row is None:
            raise _unknown(name)
        return cron_from_row(row)

    async def resume(self, name: str, *, owner: str | None = None,
                     now: datetime | None = None) -> Cron:
        """Fire ``name`` again, from its first firing after ``now``."""
        cron = await self.get(name, owner=owner)
        next_at = next_firing(cron.schedule, cron.timezone, now or datetime.now(UTC))
        row = await self._db.fetchrow(
            "UPDATE graphwire_crons SET paused = false, next_at = CASE WHEN paused THEN $3 "
            "ELSE next_at END, updated_at = now() WHERE name = $1 "
            f"AND ($2::text IS NULL OR owner = $2) RETURNING {_COLUMNS}", name, owner, next_at,
        )
        if row is None:
            raise _unknown(name)
        return cron_from_row(row)


def _unknown(name: str) -> UnknownCron:
    return UnknownCron(f"no cron named {name!r}: see `graphwire cron list`")


class Crons:
    """``GraphwireClient.crons``: define and manage crons from Python (needs ``database_url``:
    the database, and ``schema``, of the scheduler's tables)."""

    def __init__(self, database_url: str, schema: str | None = None) -> None:
        self._url = database_url
        self._schema = schema
        self._pool: Any = None

    async def _store(self) -> CronStore:
        return CronStore(await self.pool())

    async def pool(self) -> Any:
        """The asyncpg pool on ``database_url`` (made on first use; the audit tables share
        its schema). ``DependencyUnavailable`` when PostgreSQL does not answer."""
        if self._pool is None:
            import asyncpg

            settings = {"search_path": '"' + self._schema.replace('"', '""') + '"'} \
                if self._schema else None
            try:
                self._pool = await asyncpg.create_pool(
                    self._url, min_size=0, max_size=2, timeout=10, command_timeout=30,
                    server_settings=settings,
                )
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                from graphwire.topics.errors import DependencyUnavailable

                raise DependencyUnavailable(
                    f"PostgreSQL does not answer ({type(exc).__name__}); check database_url"
                ) from None
        return self._pool

    async def add(
        self, name: str, graph: str, schedule: str, input: dict[str, Any] | None = None, *,
        thread_id: str | None = None, timezone: str = "UTC",
        missed: Literal["run", "skip"] = "run", metadata: dict[str, Any] | None = None,
        replace: bool = False,
    ) -> Cron:
        """Define a cron (``InvalidCron`` for a bad schedule or time zone, ``CronExists``)."""
        spec = cron_spec(name=name, graph=graph, schedule=schedule, timezone=timezone,
                         input=input or {}, thread_id=thread_id, metadata=metadata or {},
                         missed=missed)
        return await (await self._store()).add(spec, replace=replace)

    async def list(self) -> list[Cron]:
        """Every cron, by name."""
        return await (await self._store()).list()

    async def get(self, name: str) -> Cron:
        """One cron (``UnknownCron``)."""
        return await (await self._store()).get(name)

    async def remove(self, name: str) -> None:
        """Delete a cron (``UnknownCron``)."""
        await (await self._store()).remove(name)

    async def pause(self, name: str) -> Cron:
        """Stop firing until ``resume``."""
        return await (await self._store()).pause(name)

    async def resume(self, name: str) -> Cron:
        """Fire again from the next scheduled time."""
        return await (await self._store()).resume(name)

    async def close(self) -> None:
        """Close the connections. Idempotent."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
