"""The run inspector's data: each page's model, assembled from the audit tables, Redis, the
checkpoints and the graph registry, for one caller. The routes (``routes.py``) return these as
JSON or render them as HTML."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson

from graphwire.processors import pgerrors
from graphwire.processors.gateway.auth import Principal
from graphwire.processors.gateway.errors import (
    Conflict,
    NotFound,
    Unavailable,
    Unprocessable,
)
from graphwire.processors.gateway.models import WorkflowRequest
from graphwire.processors.gateway.ui import drawing, queries
from graphwire.processors.gateway.ui.lag import LagReader
from graphwire.processors.gateway.ui.models import (
    Checkpoint,
    DeadLetterRow,
    DeadLettersPage,
    EventRow,
    GraphHour,
    Minute,
    Overview,
    Replayed,
    Resumed,
    RunDetail,
    RunsPage,
    RunSummary,
    ThreadDetail,
)
from graphwire.topics.deadletters import DeadLetter, is_webhook_letter
from graphwire.topics.errors import GraphwireError
from graphwire.topics.positions import EVENTS_PER_TRY, TRIES_PER_START
from graphwire.topics.runstatus import read_run_state

log = logging.getLogger(__name__)

THREAD_TURNS = 20  # turns on one page of a thread
THREAD_EVENTS = 50  # events listed per turn on a thread page (the run's page has them all)
NO_AUDIT = ("the run inspector reads the audit tables: set GRAPHWIRE_DATABASE_URL (and "
            "GRAPHWIRE_AUDIT_SCHEMA) for the gateway and run `graphwire audit`")


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "backslashreplace")


def _plain(value: Any) -> Any:
    """Checkpoint values as JSON (messages and other objects by their repr)."""
    return orjson.loads(orjson.dumps(value, default=repr,
                                     option=orjson.OPT_NON_STR_KEYS))


class Inspector:
    """What the inspector's routes share: the gateway's clients, plus a graph registry and a
    checkpoint reader made on first use (and closed by ``stop()``)."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        self.settings = gw.settings
        self.lag = LagReader(gw.settings)
        self._registry: Any = None
        self._registry_error: str | None = None
        self._checkpoints: Any = None
        self._opening = asyncio.Lock()  # one checkpoint reader, however many pages ask at once

    async def stop(self) -> None:
        """Close the checkpoint reader. Idempotent."""
        store, self._checkpoints = self._checkpoints, None
        if store is not None:
            await store.stop()

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[Any]:
        """The audit pool; 503 with what to do when it is missing or fails."""
        if self.gw.db is None:
            raise Unavailable(NO_AUDIT)
        try:
            yield self.gw.db
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            raise Unavailable("the audit tables are missing or old: run `graphwire db "
                              "migrate`") from None
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            if pgerrors.kind(exc) == "data":  # a NUL in a filter, a value out of range
                raise Unprocessable(f"a filter value PostgreSQL cannot compare "
                                    f"({type(exc).__name__}): remove NUL characters and "
                                    "values out of range") from None
            log.warning("audit tables unavailable: %s", type(exc).__name__)
            raise Unavailable.retry(f"the audit tables' PostgreSQL does not answer "
                                    f"({type(exc).__name__}): check GRAPHWIRE_DATABASE_URL, "
                                    "or retry in a few seconds") from None

    # -- ownership ---------------------------------------------------------------------------

    @staticmethod
    def own(principal: Principal, request_id: str | None) -> bool:
        """Whether the caller sees the run ``request_id`` (its own; any, for an operator)."""
        return bool(request_id) and principal.sees(str(request_id))

    def owned_thread(self, principal: Principal, thread_id: str) -> str:
        """The stored (namespaced) thread id of what the caller typed (an operator types
        stored ids, as its pages show them)."""
        if principal.operator or principal.owns(thread_id):
            return thread_id
        return f"{principal.scope}.{thread_id}"

    @staticmethod
    def scope(principal: Principal) -> str | None:
        """The scope the caller's queries keep to (``None``: every run, for an operator)."""
        return None if principal.operator else principal.scope

    # -- runs --------------------------------------------------------------------------------

    async def runs(self, principal: Principal, flt: queries.RunFilter, cursor: str | None,
                   limit: int) -> RunsPage:
        async with self.reading() as db:
            try:
                rows, following = await queries.runs_page(db, flt, cursor, limit)
            except queries.BadCursor as exc:
                raise Unprocessable(str(exc)) from None
        await self._live_status(rows)
        return RunsPage(runs=[RunSummary.model_validate(r) for r in rows],
                        next_cursor=following)

    async def _live_status(self, rows: list[dict[str, Any]]) -> None:
        """Rows the audit table knows only as accepted: the runner's status in Redis
        (``running``, or done before the sink wrote the result)."""
        waiting = [r for r in rows if r["status"] == "accepted"]
        if not waiting:
            return
        found = await asyncio.gather(
            *(read_run_state(self.gw.redis, self.settings.topic_prefix, r["request_id"])
              for r in waiting), return_exceptions=True)
        for row, state in zip(waiting, found, strict=True):
            if not isinstance(state, BaseException) and state is not None:
                row["status"] = state.status

    async def run(self, principal: Principal, request_id: str) -> RunDetail:
        if not self.own(principal, request_id):
            raise NotFound(f"unknown request {request_id!r}")
        async with self.reading() as db:
            row = await queries.run(db, request_id)
            if row is None:
                raise NotFound(f"the audit tables have no run {request_id!r} (yet)")
            events = await queries.events(db, request_id)
            turns = (await queries.thread_turns(db, row["thread_id"], bodies=False)
                     if row["thread_id"] else [])
        detail = await self._detail(row, events, turns)
        if detail.resumable and not principal.owns(request_id):  # an operator's view
            detail = detail.model_copy(update={"resumable": False})
        return detail

    async def _detail(self, row: dict[str, Any], rows: list[dict[str, Any]],
                      turns: list[dict[str, Any]], *, list_turns: bool = True) -> RunDetail:
        status = row["status"]
        if status == "accepted":  # the audit table has the request only: ask Redis
            with contextlib.suppress(GraphwireError):
                live = await read_run_state(self.gw.redis, self.settings.topic_prefix,
                                            row["request_id"])
                if live is not None:
                    status = live.status
        events = _events(rows)
        visited = [e.node for e in events if e.type == "node" and e.node]
        total = max((e.offset_ms for e in events), default=0.0)
        graph = self.graph(row["graph"]) if row["graph"] else None
        if graph is None:
            picture = drawing.no_drawing(self._registry_error or
                                         f"graph {row['graph']!r} is not registered in this "
                                         "gateway (GRAPHWIRE_GRAPHS)")
        else:
            picture = drawing.draw(graph, visited, finished=status == "success")
        later = [t for t in turns if t["seen"] and row["seen"] and t["seen"] > row["seen"]]
        return RunDetail(
            **{k: row[k] for k in ("request_id", "graph", "thread_id", "attempts", "cached",
                                   "duration_ms", "requested_at", "finished_at")},
            status=status,
            **{k: _json(row[k]) for k in ("input", "command", "output", "error")},
            interrupts=_json(row["interrupts"]) or [],
            metadata=_json(row["metadata"]) or {},
            events=events, nodes=visited,
            starts=len({e.attempt for e in events}),
            drawing=picture, bars=drawing.bars(events, total), timeline_ms=total,
            turns=[RunSummary.model_validate(t) for t in turns] if list_turns else [],
            resumable=status == "interrupted" and bool(row["thread_id"]) and not later
            and row["status"] == "interrupted",
            recorded=_recorded(row, events),
            # a run not finished yet (queued, or running on some worker) can be cancelled
            cancel_url=(f"/ui/api/runs/{quote(row['request_id'], safe='')}/cancel"
                        if status in ("accepted", "running") else None),
        )

    def graph(self, name: str) -> Any:
        """The named graph from this gateway's registry (loaded once), or None."""
        if self._registry is None and self._registry_error is None:
            from graphwire.graphs.registry import GraphLoadError, GraphRegistry

            try:
                self._registry = GraphRegistry.from_sources(
                    builtins=self.settings.builtin_graphs, specs=self.settings.graphs,
                    langgraph_json=self.settings.langgraph_json)
            except (GraphLoadError, OSError) as exc:
                self._registry_error = f"the gateway could not load the graphs: {exc}"
            except Exception as exc:  # a user's graph factory that raises: no drawing, no 500
                self._registry_error = ("the gateway could not load the graphs "
                                        f"({type(exc).__name__}: {exc})")
        if self._registry is None or name not in self._registry.names():
            return None
        return self._registry.get(name)

    async def resume(self, principal: Principal, request_id: str, value: Any) -> Resumed:
        """Submit ``Command(resume=value)`` on the interrupted run's thread."""
        detail = await self.run(principal, request_id)
        if not principal.owns(request_id):
            raise Conflict(f"run {request_id!r} is not this caller's: resume it with its "
                           "owner's key, or produce the resume to its thread")
        if not detail.resumable or not detail.thread_id or not detail.graph:
            raise Conflict(f"run {request_id!r} is {detail.status}, not the latest "
                           "interrupt of its thread: nothing to resume")
        own_thread = principal.local(detail.thread_id)
        body = WorkflowRequest(workflow_name=detail.graph, thread_id=own_thread,
                               command={"resume": value},
                               metadata={"resumed_from": request_id, "via": "ui"})
        rid = await self.gw.submit(body, principal, None)
        return Resumed(request_id=rid, thread_id=detail.thread_id,
                       run_url=f"/ui/runs/{quote(rid, safe='')}")

    # -- threads -----------------------------------------------------------------------------

    async def thread(self, principal: Principal, thread_id: str, cursor: str | None = None,
                     limit: int = THREAD_TURNS) -> ThreadDetail:
        """A page of the thread's turns (``limit``, oldest first, after ``cursor``), each with
        its first ``THREAD_EVENTS`` events: the page's size is bounded, however long the
        thread and its runs."""
        stored = self.owned_thread(principal, thread_id)
        try:
            after = queries.decode_cursor(cursor) if cursor else None
        except queries.BadCursor as exc:
            raise Unprocessable(str(exc)) from None
        async with self.reading() as db:
            turns = await queries.thread_turns(db, stored, limit + 1, after)
            if not turns:
                raise NotFound(f"unknown thread {thread_id!r}" if after is None else
                               f"no turns of thread {thread_id!r} after this cursor")
            page = turns[:limit]
            details = []
            for turn in page:  # the row after the page, if any, is a later turn of each
                events = await queries.events(db, turn["request_id"], THREAD_EVENTS)
                details.append(await self._detail({**turn, "metadata": None}, events, turns,
                                                  list_turns=False))
        following = (queries.encode_cursor(page[-1]["seen"], page[-1]["request_id"])
                     if len(turns) > limit and page[-1]["seen"] else None)
        checkpoints, note = await self._history(stored)
        return ThreadDetail(thread_id=stored, turns=details, checkpoints=checkpoints,
                            checkpoints_note=note, next_cursor=following,
                            events_per_turn=THREAD_EVENTS)

    async def _history(self, thread_id: str, limit: int = 50) -> tuple[list[Checkpoint],
                                                                       str | None]:
        if not self.settings.checkpoints:
            return [], "checkpoints are off (GRAPHWIRE_CHECKPOINTS=false)"
        try:
            async with self._opening:
                if self._checkpoints is None:
                    from graphwire.processors.runner.checkpoints import CheckpointStore

                    key = self.settings.checkpoint_encryption_key
                    store = CheckpointStore(
                        self.settings.database_url.get_secret_value(),
                        schema=self.settings.checkpoint_schema, pool_size=2,
                        encryption_key=key.get_secret_value() if key else None)
                    await store.start()
                    self._checkpoints = store
            found = []
            config = {"configurable": {"thread_id": thread_id}}
            async for item in self._checkpoints.saver.alist(config, limit=limit):
                meta = item.metadata or {}
                found.append(Checkpoint(
                    checkpoint_id=item.config["configurable"]["checkpoint_id"],
                    step=meta.get("step"), source=meta.get("source"),
                    ts=item.checkpoint.get("ts"),
                    parent_id=(item.parent_config or {}).get("configurable", {}).get(
                        "checkpoint_id"),
                    values=_plain(item.checkpoint.get("channel_values")),
                ))
        except Exception as exc:  # history is extra: the turns still show
            log.warning("checkpoint history unavailable: %s", type(exc).__name__)
            return [], f"checkpoint history unavailable ({type(exc).__name__})"
        return found, None if found else "no checkpoints for this thread"

    # -- dead letters ------------------------------------------------------------------------

    async def dead_letters(self, principal: Principal, before: int | None,
                           limit: int) -> DeadLettersPage:
        async with self.reading() as db:
            rows, following = await queries.dead_letters_page(db, self.scope(principal),
                                                              before, limit)
        return DeadLettersPage(letters=[_letter(r) for r in rows], next_before=following)

    async def replay(self, principal: Principal, letter_id: int) -> Replayed:
        """Re-produce a dead letter's original bytes, key and headers, as ``graphwire dlq
        replay`` does: a request to the requests topic (after forgetting that it finished),
        a webhook's result to the results topic (delivered again, nothing reruns)."""
        async with self.reading() as db:
            row = await queries.dead_letter(db, letter_id)
        if row is None or not (principal.operator or self.own(principal, row["request_id"])):
            raise NotFound(f"unknown dead letter {letter_id}")
        if row["origin"] != "runner":
            raise Conflict(f"dead letter {letter_id} is the audit sink's own (a record "
                           "it could not read): there is nothing to rerun")
        if row["value"] is None:
            raise Conflict(f"dead letter {letter_id} does not carry its value (too "
                           "large); replay it from its source")
        # graphwire's own headers stay on the letter (replay() routes by its source header and
        # sends only the producer's)
        headers = [(k, v.encode()) for k, v in _json(row["headers"])]
        letter = DeadLetter(row["source_partition"], row["source_offset"], row["key"],
                            row["value"], headers)
        topics = self.settings.topics
        webhook = is_webhook_letter(letter, topics)
        rid = row["request_id"]
        if self.settings.dedup and rid and not webhook:
            from graphwire.processors.runner.claims import RedisClaims

            async with RedisClaims(self.settings.redis_url.get_secret_value(),
                                  namespace=self.settings.topic_prefix) as store:
                await store.forget(rid)
        try:  # the gateway's own producer: no new Kafka connection per click
            await self.gw.client.produce(topics.results if webhook else topics.requests,
                                         row["value"], key=letter.key,
                                         headers=letter.original_headers)
        except Exception as exc:
            raise Unavailable(f"Kafka did not take the replay ({type(exc).__name__}); "
                              "retry") from None
        return Replayed(id=letter_id, request_id=rid,
                        topic=topics.results if webhook else topics.requests,
                        run_url=f"/ui/runs/{quote(rid, safe='')}" if rid else None)

    # -- overview ----------------------------------------------------------------------------

    async def overview(self, principal: Principal) -> Overview:
        now = datetime.now(UTC)
        async with self.reading() as db:
            minutes = await queries.overview(db, self.scope(principal), now)
            totals = await queries.overview_totals(db, self.scope(principal), now)
        per: dict[str, list[Minute]] = {}
        for m in minutes:
            per.setdefault(m["graph"], []).append(Minute(
                minute=m["minute"], runs=m["runs"], failed=m["failed"], p50_ms=m["p50"],
                p99_ms=m["p99"]))
        graphs = [GraphHour(graph=t["graph"], runs=t["runs"], failed=t["failed"],
                            error_rate=t["failed"] / t["runs"] if t["runs"] else 0.0,
                            p50_ms=t["p50"], p99_ms=t["p99"], per_minute=per.get(t["graph"], []))
                  for t in totals]
        lag, note = [], None
        try:
            lag = await self.lag.read()
        except Exception as exc:
            note = f"consumer lag unavailable: Kafka did not answer ({type(exc).__name__})"
        return Overview(since=now - timedelta(hours=1), graphs=graphs, lag=lag, lag_note=note)


def _recorded(row: dict[str, Any], events: list[EventRow]) -> bool:
    """The audit table holds the result and the events before it. The sink writes each topic
    in order but the two topics independently, so a result can land a moment before its
    run's last events; a run that published none (rejected, cached) is done once the result
    is a few seconds old."""
    if row["status"] == "accepted":
        return False
    if row["status"] == "rejected" or any(e.type == "run_finished" for e in events):
        return True
    finished = row["finished_at"]
    return finished is None or datetime.now(UTC) - finished > timedelta(seconds=5)


def _events(rows: list[dict[str, Any]]) -> list[EventRow]:
    first = rows[0]["ts"] if rows else None
    found = []
    previous = first
    for r in rows:
        seq = r["seq"]
        duration = None
        if r["type"] == "node" and previous is not None:
            duration = (r["ts"] - previous).total_seconds() * 1000
        found.append(EventRow(
            seq=seq, attempt=seq // (TRIES_PER_START * EVENTS_PER_TRY),
            try_index=(seq // EVENTS_PER_TRY) % TRIES_PER_START, type=r["type"], node=r["node"],
            ts=r["ts"], offset_ms=(r["ts"] - first).total_seconds() * 1000 if first else 0.0,
            duration_ms=duration, data=_json(r["data"])))
        previous = r["ts"]
    return found


def _letter(row: dict[str, Any]) -> DeadLetterRow:
    value = row["value"]
    return DeadLetterRow(
        id=row["id"], source=f"{row['source_topic']}/{row['source_partition']}/"
                             f"{row['source_offset']}",
        origin=row["origin"], request_id=row["request_id"], reason=row["reason"],
        received_at=row["received_at"], key_text=_text(row["key"]), value_text=_text(value),
        value_base64=base64.b64encode(value).decode() if value is not None else None,
        value_bytes=len(value or b""),
        headers=[[str(k), str(v)] for k, v in _json(row["headers"])],
    )
