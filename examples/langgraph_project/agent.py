"""A LangGraph CLI project, served unchanged by graphwire:

    graphwire worker --config examples/langgraph_project/langgraph.json

``triage`` routes a support message to a queue and drafts a reply. It is deterministic (rules,
no model) so it runs anywhere; swap ``classify`` for a chat model call in a real project.
"""

from typing import TypedDict

from langgraph.graph import END, START, StateGraph


class Ticket(TypedDict, total=False):
    message: str
    queue: str
    reply: str


RULES = {"refund": "billing", "invoice": "billing", "password": "accounts", "error": "technical"}


def classify(ticket: Ticket) -> Ticket:
    text = ticket["message"].lower()
    queue = next((q for word, q in RULES.items() if word in text), "general")
    return {"queue": queue}


def reply(ticket: Ticket) -> Ticket:
    return {"reply": f"Thanks! Your message is with our {ticket['queue']} team."}


builder = StateGraph(Ticket)
builder.add_node("classify", classify)
builder.add_node("reply", reply)
builder.add_edge(START, "classify")
builder.add_edge("classify", "reply")
builder.add_edge("reply", END)
graph = builder.compile(name="triage")
