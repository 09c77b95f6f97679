"""Request bodies and paged answers of the Agent Server API.

JSON bodies are read whatever their ``Content-Type`` (LangGraph Studio sends ``text/plain``), so
routes take the raw request rather than FastAPI's ``Body``. A malformed body, or a field of the
wrong type, is a 422 that names it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, ValidationError

from graphwire.processors.gateway.agentapi.errors import Unprocessable
from graphwire.topics.codec import dumps

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    """Base of request bodies: unknown fields are ignored (newer SDKs add fields; each field
    graphwire does not honour is refused by the route that reads it, by name)."""

    model_config = ConfigDict(extra="ignore")


async def read_json(request: Request) -> Any:
    """The request's JSON, of any content type; ``None`` for an empty body."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"the request body is not valid JSON ({exc})") from None


async def parse(request: Request, model: type[M]) -> M:
    """The body as ``model`` (an empty body is ``{}``); 422 naming the first bad field."""
    data = await read_json(request)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise Unprocessable("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise Unprocessable(f"{where}: {message}" if where else message) from None


def json_response(content: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """``content`` as JSON, encoded as the contract encodes state (LangChain messages as their
    ``model_dump``; datetimes as ISO 8601 with their offset)."""
    return Response(dumps(content), status_code=status,
                    media_type="application/json", headers=headers)


def paged(items: list[Any], offset: int, total: int) -> Response:
    """A page of a search with ``X-Pagination-Total`` and, when more follow,
    ``X-Pagination-Next`` (the next page's offset), as the SDK reads them."""
    headers = {"X-Pagination-Total": str(total)}
    if offset + len(items) < total:
        headers["X-Pagination-Next"] = str(offset + len(items))
    return json_response(items, headers=headers)

