"""The books of Agent Server runs: creating one (a request on Kafka plus its record), keeping its
record and its thread's in step with what graphwire reports, and cancelling it.

A run's record (``agent_runs``) is ``pending`` when created, ``running`` once its
``run_started`` is seen (or Redis holds its lease), and at its result ``success``, ``error``,
``timeout`` or ``interrupted`` (graphwire's ``cancelled`` is ``interrupted``, as on the Platform;
``rejected`` is ``error``). The gateway's result listener finishes every run it created, streamed
or not; a route that answers with the run's end awaits the same finishing first, so the next
call of the client sees the thread idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

from redis.exceptions import RedisError

from graphwire.processors.gateway.agentapi import records
from graphwire.processors.gateway.agentapi.errors import Conflict, NotFound, Unavailable
from graphwire.processors.gateway.agentapi.ids import is_uuid, new_id, new_run_id, parse_uuid
from graphwire.processors.gateway.agentapi.runmodels import RunCreate, to_request
from graphwire.processors.gateway.agentapi.runwrites import RunWrites
from graphwire.processors.gateway.agentapi.state import sync_thread
from graphwire.processors.gateway.auth import Principal
from graphwire.topics.errors import GraphwireError
from graphwire.topics.models import Request, Result
from graphwire.topics.runstatus import read_run_state

log = logging.getLogger(__name__)

RUN_STATUS = {"success": "success", "error": "error", "timeout": "timeout",
              "interrupted": "interrupted", "cancelled": "interrupted", "rejected": "error"}
"""graphwire's result status → the Agent Server's run status."""
ACTIVE = ("pending", "running")
BUSY = ("Thread is already running a task. Wait for it to finish or choose a different "
        "multitask strategy.")
"""The Agent Server's 409 for ``multitask_strategy: reject`` on a busy thread."""
IDEMPOTENCY_WAIT_S = 5.0
"""How long a repeated ``Idempotency-Key`` waits for the first request's run record."""


def path_of(run: dict[str, Any], stateless: bool = False) -> str:
    """The run's URL path: ``/threads/{tid}/runs/{rid}`` (``/runs/{rid}`` when stateless)."""
    if stateless or not run.get("thread_id"):
        return f"/runs/{run['run_id']}"
    return f"/threads/{run['thread_id']}/runs/{run['run_id']}"


class RunBook:
    """One per gateway: finishes run records at their results and creates runs."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        self._finishing: dict[str, asyncio.Task[dict[str, Any] | None]] = {}
        self._rollbacks: set[str] = set()
        self._cancels: set[asyncio.Task[Any]] = set()
        self._writes: RunWrites | None = None
        gw.client.add_result_listener(self._on_result)

    # -- finishing -------------------------------------------------------------------------

    @property
    def writes(self) -> RunWrites:
        """The run records' group writer (on the records pool, made on first use)."""
        if self._writes is None:
            self._writes = RunWrites(self.gw.agent.records())
        return self._writes

    def _on_result(self, result: Result) -> None:
        if is_uuid(result.request_id) and self.gw.agent.db is not None:
            self._task(result)

    def _task(self, result: Result) -> asyncio.Task[dict[str, Any] | None]:
        task = self._finishing.get(result.request_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._finish(result))
            self._finishing[result.request_id] = task
            task.add_done_callback(lambda _t: self._forget_later(result.request_id))
        return task

    def _forget_later(self, run_id: str) -> None:
        asyncio.get_running_loop().call_later(60, self._finishing.pop, run_id, None)

    def finish_soon(self, result: Result) -> None:
        """Book the run's end without waiting for it (reads of the record wait: ``refresh``)."""
        self._task(result)

    async def finished(self, result: Result) -> dict[str, Any] | None:
        """The run's record once its result is booked (its thread synced); None if unknown."""
        return await asyncio.shield(self._task(result))

    async def _finish(self, result: Result) -> dict[str, Any] | None:
        db = self.gw.agent.db
        status = RUN_STATUS.get(str(result.status), "error")
        try:
            run = await self.writes.set_run_status(result.request_id, status)
            if run is None:
                return None
            if result.request_id in self._rollbacks:
                self._rollbacks.discard(result.request_id)
                await records.delete_run(db, result.request_id, None)
            if run["thread_id"]:
                await self.sync(run["thread_id"], failed=status in ("error", "timeout"))
            return run
        except Exception as exc:  # the next get refreshes it from Redis
            log.warning("could not book the end of run %s (%s: %s)", result.request_id,
                        type(exc).__name__, exc)
            return None

    async def sync(self, thread_id: str, *, failed: bool = False) -> None:
        """The thread's record from its checkpoints: busy while runs of it are active, else
        idle, interrupted or error."""
        db = self.gw.agent.db
        thread = await records.get_thread(db, thread_id, None)
        if thread is None:
            return
        busy = bool(await records.active_runs(db, thread_id))
        if busy:
            await records.set_thread_state(db, thread_id, status="busy")
        await sync_thread(self.gw, {**thread, "status": "busy"}, run_ended=not busy,
                          failed=failed)

    async def mark_running(self, run: dict[str, Any]) -> None:
        """A ``pending`` run whose ``run_started`` was seen is ``running``."""
        if run["status"] == "pending":
            await self.gw.agent.db.execute(
                "UPDATE agent_runs SET status = 'running', updated_at = now() "
                "WHERE run_id = $1 AND status = 'pending'", run["run_id"])
            run["status"] = "running"

    async def refresh(self, run: dict[str, Any]) -> dict[str, Any]:
        """An active run's record brought up to date from Redis (the runner's lease and done
        marker), for runs whose events and result this gateway did not see. A run whose end
        is being booked here is answered once it is (its thread synced too)."""
        finishing = self._finishing.get(str(run["run_id"]))
        if finishing is not None:
            return await asyncio.shield(finishing) or run
        if run["status"] not in ACTIVE:
            return run
        with contextlib.suppress(GraphwireError):
            found = await read_run_state(self.gw.redis, self.gw.settings.topic_prefix,
                                         run["run_id"])
            if found is not None and found.state == "done":
                status = RUN_STATUS.get(found.status, "error")
                changed = await self.writes.set_run_status(run["run_id"], status)
                if run["thread_id"]:
                    await self.sync(run["thread_id"], failed=status in ("error", "timeout"))
                return changed or run
            if found is not None:
                await self.mark_running(run)
        return run

    # -- creating --------------------------------------------------------------------------

    async def thread_for(self, caller: Principal, thread_id: str, body: RunCreate,
                         graph_id: str, assistant_id: str) -> dict[str, Any]:
        """The caller's thread the run goes on (created with ``if_not_exists: create``); 404
        "Thread or assistant not found." otherwise."""
        db = self.gw.agent.records()
        owner = self.gw.agent.owner(caller)
        tid = parse_uuid(thread_id, "thread")
        thread = await records.get_thread(db, tid, owner)
        if thread is None and body.if_not_exists == "create":
            with contextlib.suppress(Conflict):  # another caller's id: not found for this one
                thread = await records.create_thread(
                    db, thread_id=tid, owner=owner or caller.scope,
                    metadata={"graph_id": graph_id, "assistant_id": assistant_id},
                    if_exists="do_nothing")
        if thread is None:
            raise NotFound("Thread or assistant not found.")
        return thread

    async def stateless_thread(self, caller: Principal, body: RunCreate, graph_id: str,
                               assistant_id: str) -> str | None:
        """A stateless run's thread: none (``on_completion: delete``, the default: nothing to
        keep), or a new thread of the caller's that stays (``keep``)."""
        if body.on_completion != "keep":
            return None
        thread = await records.create_thread(
            self.gw.agent.records(), thread_id=new_id(),
            owner=self.gw.agent.owner(caller) or caller.scope,
            metadata={"graph_id": graph_id, "assistant_id": assistant_id})
        return str(thread["thread_id"])

    def _idempotency_key(self, caller: Principal, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.gw.settings.topic_prefix}:agent:idempotency:{caller.scope}:{digest}"

    async def earlier(self, caller: Principal, key: str | None) -> dict[str, Any] | None:
        """The run an earlier create with this ``Idempotency-Key`` made, if any."""
        if not key:
            return None
        try:
            found = await self.gw.redis.get(self._idempotency_key(caller, key))
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis does not answer ({type(exc).__name__}); the "
                              "Idempotency-Key cannot be checked: retry") from None
        return None if found is None else await self._record_of(caller, found.decode())

    async def _record_of(self, caller: Principal, run_id: str) -> dict[str, Any]:
        """The record of the run a key points at (the first create may still be writing it)."""
        db = self.gw.agent.records()
        deadline = asyncio.get_running_loop().time() + IDEMPOTENCY_WAIT_S
        while True:
            run = await records.get_run(db, run_id, self.gw.agent.owner(caller))
            if run is not None:
                return run
            if asyncio.get_running_loop().time() > deadline:
                raise Conflict("a run with this Idempotency-Key is being created; retry")
            await asyncio.sleep(0.1)

    async def claim(self, caller: Principal, key: str | None, run_id: str) -> dict[str, Any] | None:
        """Take ``key`` for ``run_id`` (SET NX, kept as long as done markers); the earlier
        run when another create took it first."""
        if not key:
            return None
        name = self._idempotency_key(caller, key)
        try:
            taken = await self.gw.redis.set(name, run_id, nx=True,
                                            ex=self.gw.settings.done_ttl_s)
            if taken:
                return None
            found = await self.gw.redis.get(name)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis does not answer ({type(exc).__name__}); the "
                              "Idempotency-Key cannot be checked: retry") from None
        return await self._record_of(caller, found.decode()) if found else None

    async def release(self, caller: Principal, key: str | None) -> None:
        """Give a key back when its run was not created."""
        if key:
            with contextlib.suppress(RedisError, OSError):
                await self.gw.redis.delete(self._idempotency_key(caller, key))

    async def create(self, caller: Principal, body: RunCreate, *, assistant: dict[str, Any],
                     thread_id: str | None, stateless: bool, base_url: str | None,
                     wait: bool = False) -> tuple[Request, dict[str, Any]]:
        """Check, record and produce one run; returns its request and record (``wait``: it
        answers ``runs.wait``). 409 for ``reject`` on a busy thread; 422/400 for the body."""
        db = self.gw.agent.records()
        graph_id = str(assistant["graph_id"])
        if thread_id is not None and body.multitask_strategy == "reject" and (
                await records.active_runs(db, thread_id)):
            raise Conflict(BUSY)
        run_id = new_run_id()
        fields = to_request(body, run_id=run_id, thread_id=thread_id, graph=graph_id,
                            assistant=assistant, context_schema=self._context_schema(
                                graph_id, body), base_url=base_url, wait=wait)
        fields["metadata"] = {**fields.get("metadata", {}), "principal": caller.as_metadata()}
        request = Request.model_validate(fields)
        run = await self.writes.create_run(
            run_id=run_id, thread_id=thread_id, assistant_id=str(assistant["assistant_id"]),
            owner=self.gw.agent.owner(caller) or caller.scope,
            metadata=run_metadata(assistant, body), kwargs=run_kwargs(body, fields),
            multitask_strategy=(body.multitask_strategy or "enqueue") if not stateless else None)
        if thread_id is not None:
            await records.set_thread_state(db, thread_id, status="busy", metadata={
                "graph_id": graph_id, "assistant_id": str(assistant["assistant_id"])})
        return request, run

    async def undo(self, run: dict[str, Any]) -> None:
        """Forget a run that was recorded but not produced."""
        db = self.gw.agent.records()
        await records.delete_run(db, run["run_id"], None)
        if run["thread_id"]:
            await self.sync(run["thread_id"])

    def _context_schema(self, graph_id: str, body: RunCreate) -> dict[str, Any] | None:
        if not body.context and not (body.config or {}).get("configurable"):
            return None
        try:
            schema: dict[str, Any] | None = self.gw.agent.graph(graph_id).get_context_jsonschema()
        except Exception:  # no context schema: the whole context is kept
            return None
        return schema

    # -- cancelling ------------------------------------------------------------------------

    async def cancel(self, run: dict[str, Any], action: str) -> None:
        """Send a cancel for an active run (``rollback`` also deletes its record at its end).
        503 when Kafka or Redis cannot take it."""
        if action == "rollback":
            self._rollbacks.add(run["run_id"])
        try:
            await self.gw.client.cancel(run["run_id"], action, force=True)
        except (GraphwireError, OSError) as exc:
            raise Unavailable(f"the cancel could not be sent ({exc}); retry") from None
        except Exception as exc:  # aiokafka's errors: the control message was not produced
            raise Unavailable(f"Kafka refused the cancel ({type(exc).__name__}); retry") from None

    def cancel_soon(self, run_id: str) -> None:
        """Cancel a run in the background (its client went away with ``on_disconnect``)."""
        task = asyncio.get_running_loop().create_task(
            self.gw.client.cancel(run_id, "interrupt", force=True))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def active_of(self, owner: str | None, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        """The caller's runs in ``statuses`` (every caller's for the operator)."""
        rows = await self.gw.agent.records().fetch(
            "SELECT run_id, thread_id, status FROM agent_runs WHERE ($1::text IS NULL OR "
            "owner = $1) AND status = ANY($2) ORDER BY created_at", owner, list(statuses))
        return [{"run_id": str(r["run_id"]),
                 "thread_id": str(r["thread_id"]) if r["thread_id"] else None,
                 "status": r["status"]} for r in rows]


def run_metadata(assistant: dict[str, Any], body: RunCreate) -> dict[str, Any]:
    """A run's metadata as the Agent Server records it: the assistant's, the body's, and the
    graph and assistant it runs."""
    return {**(assistant.get("metadata") or {}), **(body.metadata or {}),
            "graph_id": str(assistant["graph_id"]), "assistant_id": str(assistant["assistant_id"])}


def run_kwargs(body: RunCreate, request: dict[str, Any]) -> dict[str, Any]:
    """A run's ``kwargs`` in the Agent Server's shape (what the run was asked to do)."""
    durability = request.get("durability") or "async"
    return {
        "input": body.input, "command": body.command,
        "config": {"configurable": (request.get("config") or {}).get("configurable", {}),
                   "metadata": (request.get("config") or {}).get("metadata", {})},
        "context": body.context or {}, "stream_mode": list(body.modes),
        "interrupt_before": body.interrupt_before, "interrupt_after": body.interrupt_after,
        "webhook": body.webhook, "feedback_keys": None, "temporary": False,
        "subgraphs": bool(body.stream_subgraphs), "resumable": bool(body.stream_resumable),
        "checkpoint_during": durability != "exit", "durability": durability,
    }
