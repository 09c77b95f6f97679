"""The caller's identity, given to graphs under LangGraph Agent Server's names.

The gateway puts the principal it authenticated on each request as the
``x-graphwire-principal`` header (``graphwire.topics.codec.HEADER_PRINCIPAL``). The runner
passes it to the graph as LangGraph's Agent Server does:

- ``config["configurable"]["langgraph_auth_user"]``: a ``Caller``, readable both as an object
  (``.identity``, ``.display_name``, ``.is_authenticated``, ``.permissions``: langgraph-sdk's
  ``BaseUser``, so ``runtime.server_info.user`` has it too) and as a mapping (``["identity"]``);
- ``config["configurable"]["langgraph_auth_user_id"]``: its ``identity``, ``"<kind>:<name>"``
  (``api_key:svc-a``, ``jwt:<sub>``), the stable id to namespace a Store or memory by;
- ``config["configurable"]["langgraph_auth_permissions"]``: ``[]`` (the gateway's scopes are
  graph names, checked before the request is produced).

A producer cannot set these keys through ``config.configurable`` (the contract refuses them),
so a graph that reads them reads what the gateway vouched for. Kafka writers are trusted as
admins over every tenant (docs/security.md): a header a raw producer sets is honoured. A
request without the header (a raw producer, the CLI, a cron made with the CLI or the client) has
none of the keys; a cron made through the gateway fires with its maker's header.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

AUTH_USER = "langgraph_auth_user"
AUTH_USER_ID = "langgraph_auth_user_id"
AUTH_PERMISSIONS = "langgraph_auth_permissions"


class Caller(Mapping[str, Any]):
    """The authenticated caller of a run: attributes and a read-only mapping of the same."""

    __slots__ = ("_fields",)

    def __init__(self, kind: str, name: str, scope: str) -> None:
        self._fields: dict[str, Any] = {
            "identity": f"{kind}:{name}",
            "display_name": name,
            "is_authenticated": kind != "anonymous",
            "permissions": (),
            "kind": kind,
            "name": name,
            "scope": scope,
        }

    identity = property(lambda self: str(self._fields["identity"]),
                        doc="``<kind>:<name>``: unique per caller.")
    display_name = property(lambda self: str(self._fields["name"]), doc="The caller's name.")
    is_authenticated = property(lambda self: bool(self._fields["is_authenticated"]),
                                doc="False for the gateway's anonymous caller (auth off).")
    permissions = property(lambda self: (), doc="Always empty (scopes are graph names).")
    kind = property(lambda self: str(self._fields["kind"]), doc="api_key, jwt or anonymous.")
    name = property(lambda self: str(self._fields["name"]), doc="The key's or subject's name.")
    scope = property(lambda self: str(self._fields["scope"]),
                     doc="The prefix of the caller's request and thread ids.")

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Caller({self.identity!r})"


def auth_configurable(principal: Mapping[str, str]) -> dict[str, Any]:
    """The ``configurable`` keys a run of ``principal`` (a decoded header) gets."""
    caller = Caller(principal["kind"], principal["name"], principal["scope"])
    return {AUTH_USER: caller, AUTH_USER_ID: caller.identity, AUTH_PERMISSIONS: []}
