"""Logging: one JSON object per line for machines, plain (coloured) lines on a terminal.

Every line logged while a request is handled carries its ``request_id``, ``graph`` and
``trace_id`` (from the W3C ``traceparent`` header), and inside a node its ``node``: they are
bound in a context variable, so asyncio tasks and LangGraph nodes see them.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar, Token
from typing import Any, ClassVar

import orjson

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


_CONTEXT: ContextVar[dict[str, str] | None] = ContextVar("graphwire_log_context", default=None)


def bind(**fields: str | None) -> Token[dict[str, str] | None]:
    """Add fields to every log line of this task (and tasks it starts); ``unbind`` the token."""
    found = {k: v for k, v in fields.items() if v}
    return _CONTEXT.set({**(_CONTEXT.get() or {}), **found})


def unbind(token: Token[dict[str, str] | None]) -> None:
    _CONTEXT.reset(token)


def trace_id(traceparent: bytes | str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``)."""
    if not traceparent:
        return None
    text = traceparent.decode("ascii", "replace") if isinstance(traceparent, bytes) else traceparent
    parts = text.strip().split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def _running_node() -> str | None:
    """The LangGraph node whose code is running in this task, if any: LangChain keeps the
    node's config (``metadata.langgraph_node``) in a context variable while it runs."""
    try:
        from langchain_core.runnables.config import var_child_runnable_config
    except ImportError:  # pragma: no cover - a process without LangChain
        return None
    config = var_child_runnable_config.get()
    node = ((config or {}).get("metadata") or {}).get("langgraph_node")
    return node if isinstance(node, str) else None


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record, and the node whose code logs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_CONTEXT.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "node"):
            node = _running_node()
            if node is not None:
                record.node = node
        return True


class TextFormatter(logging.Formatter):
    """``time level logger: message [request_id=... node=...]``, level coloured on a TTY."""

    _COLOURS: ClassVar[dict[str, str]] = {
        "WARNING": "33", "ERROR": "31", "CRITICAL": "31;1", "DEBUG": "2"
    }

    def __init__(self, colour: bool) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        bound = [f"{k}={getattr(record, k)}" for k in ("request_id", "graph", "node", "trace_id")
                 if getattr(record, k, None)]
        if bound:
            text += f" [{' '.join(bound)}]"
        code = self._COLOURS.get(record.levelname)
        return f"\033[{code}m{text}\033[0m" if self.colour and code else text


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure the root logger once for a graphwire process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(colour=sys.stderr.isatty()))
        logging.Formatter.converter = time.gmtime
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
