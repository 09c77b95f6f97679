"""The fidelity harness itself: its spec mapping and its comparison can tell runs apart.

No broker: these check ``tests.fidelity.harness`` on hand-made outcomes, so that a
differential test passing means the two runs matched, not that the harness saw nothing.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessageChunk
from langgraph.types import Interrupt

from tests.fidelity.harness import TurnOutcome, expected_events, normalise

IDS = ("0f" * 16, "1e" * 16, "2d" * 16, "3c" * 16)


def _turn(events: list[list[Any]], interrupts: list[dict[str, Any]] | None = None) -> TurnOutcome:
    return TurnOutcome(status="interrupted" if interrupts else "success", state={"k": 1},
                       output=None, interrupts=interrupts or [], error=None, events=events)


def test_updates_chunks_become_node_and_interrupt_events_without_metadata() -> None:
    """An ``updates`` chunk gives one ``node`` event per node (``__metadata__`` is no node) and
    one ``interrupt`` event per ``Interrupt`` with its id and value; ``custom`` and ``values``
    pass their chunk; a ``messages`` chunk gives the message's LangChain fields under
    ``langgraph_node``."""
    chunk = {"a": {"x": 1}, "__metadata__": {"cached": True},
             "__interrupt__": (Interrupt(value="q?", id=IDS[0]), Interrupt(value=2, id=IDS[1]))}
    assert expected_events("updates", chunk, ()) == [
        ("node", "a", [], {"x": 1}),
        ("interrupt", None, [], {"id": IDS[0], "value": "q?"}),
        ("interrupt", None, [], {"id": IDS[1], "value": 2}),
    ]
    assert expected_events("custom", {"p": 1}, ("sub:abc",)) == [
        ("custom", None, ["sub:abc"], {"p": 1})]
    assert expected_events("values", {"k": 2}, ()) == [("values", None, [], {"k": 2})]
    [(kind, node, ns, data)] = expected_events(
        "messages", (AIMessageChunk(content="hi", id="m1"), {"langgraph_node": "llm"}), ())
    assert (kind, node, ns, data["type"], data["content"], data["id"]) == (
        "message", "llm", [], "AIMessageChunk", "hi", "m1")
    assert data["tool_call_chunks"] == [] and data["chunk_position"] is None


def test_events_of_one_step_compare_in_any_order_but_not_across_steps() -> None:
    """The worker's flat events, cut like the direct side's steps: the same events in another
    order within a step compare equal; one event moved to the next step, or one missing, do
    not."""
    a, b, c = ["node", "a", [], 1], ["node", "b", [], 2], ["node", "c", [], 3]
    direct = [_turn([[a, b], [c]])]
    want = normalise(direct)
    assert normalise([_turn([[b, a, c]])], like=direct) == want
    assert normalise([_turn([[a, c, b]])], like=direct) != want
    assert normalise([_turn([[a, b]])], like=direct) != want


def test_ids_are_numbered_by_first_appearance_on_each_side() -> None:
    """Interrupt ids differ between the sides but number alike (``#0``, ``#1``) when each id
    plays the same part; two ids swapped between the two interrupts' values do not compare
    equal, and a task id inside an ns segment becomes ``node:#n``."""
    def side(first: str, second: str) -> list[TurnOutcome]:
        events = [["interrupt", None, [f"sub:{IDS[3]}"], {"id": first, "value": "left?"}],
                  ["interrupt", None, [], {"id": second, "value": "right?"}]]
        return [_turn([events], [{"id": first, "value": "left?"},
                                 {"id": second, "value": "right?"}])]

    want = normalise(side(IDS[0], IDS[1]))
    assert want[0]["events"][0][0][2] == ["sub:#0"]
    assert want[0]["interrupts"] == [{"id": "#1", "value": "left?"},
                                     {"id": "#2", "value": "right?"}]
    assert normalise(side(IDS[2], IDS[0])) == want
    swapped = side(IDS[0], IDS[1])
    swapped[0].interrupts = [{"id": IDS[1], "value": "left?"}, {"id": IDS[0], "value": "right?"}]
    assert normalise(swapped) != want
