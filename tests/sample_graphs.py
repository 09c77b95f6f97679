"""Graphs used by tests only (loaded through GRAPHWIRE_GRAPHS like a user's own)."""

from __future__ import annotations

import asyncio
import operator
import os
from typing import Annotated, TypedDict

import asyncpg
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore


class State(TypedDict, total=False):
    text: str


def _explode(state: State) -> State:
    raise ValueError(f"cannot handle {state.get('text')!r}: send a shorter text")


failing_builder = StateGraph(State)
failing_builder.add_node("explode", _explode)
failing_builder.add_edge(START, "explode")
failing_builder.add_edge("explode", END)

failing = failing_builder  # a StateGraph: the registry compiles it


def make_upper():  # a factory: the registry calls it
    def upper(state: State) -> State:
        return {"text": state["text"].upper()}

    builder = StateGraph(State)
    builder.add_node("upper", upper)
    builder.add_edge(START, "upper")
    builder.add_edge("upper", END)
    return builder.compile()


class StepsState(TypedDict, total=False):
    table: str
    pause: float
    """How long step3 sleeps."""
    pauses: dict[str, float]
    """How long other steps sleep, by name (after recording their start)."""
    done: list[str]


def _recording_step(name: str, pause: bool = False):  # type: ignore[no-untyped-def]
    async def step(state: StepsState, config: RunnableConfig) -> StepsState:
        request_id = config["metadata"]["graphwire_request_id"]
        conn = await asyncpg.connect(os.environ["GRAPHWIRE_DATABASE_URL"])
        try:
            await conn.execute(
                f"INSERT INTO {state['table']} (request_id, node) VALUES ($1, $2)", request_id, name
            )
        finally:
            await conn.close()
        if pause:
            await asyncio.sleep(state.get("pause", 0))
        await asyncio.sleep(state.get("pauses", {}).get(name, 0))
        return {"done": [*state.get("done", []), name]}

    return step


def make_recorded_steps():  # type: ignore[no-untyped-def]
    """step1 -> step2 -> step3 (pauses) -> step4; each start is a row in ``table``."""
    builder = StateGraph(StepsState)
    for i in range(1, 5):
        builder.add_node(f"step{i}", _recording_step(f"step{i}", pause=i == 3))
    builder.add_edge(START, "step1")
    for i in range(1, 4):
        builder.add_edge(f"step{i}", f"step{i + 1}")
    builder.add_edge("step4", END)
    return builder.compile()


FLAKY_CALLS: dict[str, int] = {}


class FlakyState(TypedDict, total=False):
    fail_times: int
    calls: int


async def _flaky(state: FlakyState, config: RunnableConfig) -> FlakyState:
    """Raises ConnectionError (retriable) the first ``fail_times`` calls per request."""
    request_id = config["metadata"]["graphwire_request_id"]
    FLAKY_CALLS[request_id] = FLAKY_CALLS.get(request_id, 0) + 1
    if FLAKY_CALLS[request_id] <= state.get("fail_times", 0):
        raise ConnectionError(f"upstream refused call {FLAKY_CALLS[request_id]}")
    return {"calls": FLAKY_CALLS[request_id]}


flaky_builder = StateGraph(FlakyState)
flaky_builder.add_node("call", _flaky)
flaky_builder.add_edge(START, "call")
flaky_builder.add_edge("call", END)
flaky = flaky_builder.compile().with_config(metadata={"graphwire": {"max_attempts": 4}})


def make_flaky_steps():  # type: ignore[no-untyped-def]
    """step1 -> step2 -> step3; step2 raises ConnectionError (retriable) on its first call per
    request, so the runner retries it from step1's checkpoint in the same process."""
    failed: set[str] = set()

    async def flaky_step(state: StepsState, config: RunnableConfig) -> StepsState:
        request_id = config["metadata"]["graphwire_request_id"]
        if request_id not in failed:
            failed.add(request_id)
            raise ConnectionError("upstream refused the first call to step2")
        return {"done": [*state.get("done", []), "step2"]}

    def step(name: str):  # type: ignore[no-untyped-def]
        return lambda state: {"done": [*state.get("done", []), name]}

    builder = StateGraph(StepsState)
    builder.add_node("step1", step("step1"))
    builder.add_node("step2", flaky_step)
    builder.add_node("step3", step("step3"))
    builder.add_edge(START, "step1")
    builder.add_edge("step1", "step2")
    builder.add_edge("step2", "step3")
    builder.add_edge("step3", END)
    return builder.compile()


def make_paused_steps():  # type: ignore[no-untyped-def]
    """step1 -> step2 (sleeps ``pause`` seconds) -> step3; touches no database of its own."""

    def step(name: str):  # type: ignore[no-untyped-def]
        async def run(state: StepsState) -> StepsState:
            if name == "step2":
                await asyncio.sleep(state.get("pause", 0))
            return {"done": [*state.get("done", []), name]}

        return run

    builder = StateGraph(StepsState)
    for i in range(1, 4):
        builder.add_node(f"step{i}", step(f"step{i}"))
    builder.add_edge(START, "step1")
    builder.add_edge("step1", "step2")
    builder.add_edge("step2", "step3")
    builder.add_edge("step3", END)
    return builder.compile()


COUNTED_RUNS: list[str] = []


class CountedState(TypedDict, total=False):
    text: str
    length: int


async def _counted(state: CountedState, config: RunnableConfig) -> CountedState:
    """Records each execution, takes a moment (so identical requests overlap)."""
    COUNTED_RUNS.append(config["metadata"]["graphwire_request_id"])
    await asyncio.sleep(0.5)
    return {"length": len(state["text"])}


counted_builder = StateGraph(CountedState)
counted_builder.add_node("measure", _counted)
counted_builder.add_edge(START, "measure")
counted_builder.add_edge("measure", END)
counted = counted_builder.compile()


class TurnsState(TypedDict, total=False):
    turns: Annotated[list[int], operator.add]


def _take_turn(state: TurnsState) -> TurnsState:
    return {}  # the input's turn is appended by the reducer; the node marks the step


turns_builder = StateGraph(TurnsState)
turns_builder.add_node("turn", _take_turn)
turns_builder.add_edge(START, "turn")
turns_builder.add_edge("turn", END)
turns = turns_builder.compile()
"""A thread graph: each request appends its turn number; the output is every turn so far."""


def _crash(state: State) -> State:
    """Takes its worker down, like a segfault or the OOM killer would."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return state


crasher_builder = StateGraph(State)
crasher_builder.add_node("crash", _crash)
crasher_builder.add_edge(START, "crash")
crasher_builder.add_edge("crash", END)
crasher = crasher_builder


class PacedState(TypedDict, total=False):
    steps: int
    pause: float
    done: Annotated[list[int], operator.add]


async def _paced_step(state: PacedState) -> PacedState:
    await asyncio.sleep(state.get("pause", 0.5))
    return {"done": [len(state.get("done", [])) + 1]}


def _more_steps(state: PacedState) -> str:
    return "step" if len(state.get("done", [])) < state.get("steps", 1) else END


paced_builder = StateGraph(PacedState)
paced_builder.add_node("step", _paced_step)
paced_builder.add_edge(START, "step")
paced_builder.add_conditional_edges("step", _more_steps, ["step", END])
paced = paced_builder.compile()
"""``steps`` steps of ``pause`` seconds each, one checkpoint per step: a long run to disturb."""


class GatedState(TypedDict, total=False):
    go: str
    fixed: str
    answer: str


def _gated_answer(state: GatedState) -> GatedState:
    """Waits for the file ``go``; then fails (not retriable) unless the file ``fixed`` exists.
    (Sync: LangGraph runs it in a thread, so the polling blocks no event loop.)"""
    import time

    while not os.path.exists(state["go"]):
        time.sleep(0.05)
    if not os.path.exists(state["fixed"]):
        raise ValueError("the upstream answer is not fixed yet: try again later")
    return {"answer": "fixed"}


gated_builder = StateGraph(GatedState)
gated_builder.add_node("answer", _gated_answer)
gated_builder.add_edge(START, "answer")
gated_builder.add_edge("answer", END)
gated = gated_builder.compile()


class ThreadStepsState(TypedDict, total=False):
    label: str
    pause: float
    log: Annotated[list[str], operator.add]


def _labelled_step(i: int):  # type: ignore[no-untyped-def]
    async def step(state: ThreadStepsState) -> ThreadStepsState:
        await asyncio.sleep(state.get("pause", 0))
        return {"log": [f"{state.get('label', '?')}{i}"]}

    return step


thread_steps_builder = StateGraph(ThreadStepsState)
for _i in range(1, 5):
    thread_steps_builder.add_node(f"step{_i}", _labelled_step(_i))
thread_steps_builder.add_edge(START, "step1")
for _i in range(1, 4):
    thread_steps_builder.add_edge(f"step{_i}", f"step{_i + 1}")
thread_steps_builder.add_edge("step4", END)
thread_steps = thread_steps_builder.compile()
"""step1 -> step2 -> step3 -> step4 on a thread, each sleeping ``pause`` s and appending
``<label><i>`` to ``log``: the final state says which steps of which request took effect."""


class RememberState(TypedDict, total=False):
    text: str
    recalled: list[str]


async def _remember(state: RememberState, config: RunnableConfig, *,
                    store: BaseStore) -> RememberState:
    """Put ``text`` under the caller's ``(langgraph_auth_user_id, "memories")`` (or
    ``("anyone", "memories")`` for a run without a caller) and read back every memory there."""
    user = config["configurable"].get("langgraph_auth_user_id") or "anyone"
    namespace = (user, "memories")
    await store.aput(namespace, f"m{len(await store.asearch(namespace))}",
                     {"text": state["text"]})
    found = await store.asearch(namespace, limit=100)
    return {"recalled": sorted(item.value["text"] for item in found)}


remember_builder = StateGraph(RememberState)
remember_builder.add_node("remember", _remember)
remember_builder.add_edge(START, "remember")
remember_builder.add_edge("remember", END)
remember = remember_builder.compile()
"""Remembers ``text`` in the store under its caller's identity and recalls all it has there."""
