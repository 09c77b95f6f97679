"""What a browser may not make the gateway do: answer for a name it does not serve (DNS
rebinding), or change state for another web site (cross-site request forgery).

- Host allow-list. A page on ``evil.example`` whose DNS name is re-pointed at 127.0.0.1 talks
  to a local gateway with ``Host: evil.example``. A request whose ``Host`` is not one this
  gateway serves gets a 400 before any route runs. The list is ``GRAPHWIRE_GATEWAY_ALLOWED_HOSTS``
  (``*`` for any, ``*.example.com`` for subdomains); when it is empty, a gateway without
  authentication serves only the loopback names and its bound address, and one with
  authentication any name (a rebinding page holds no key, so it can read nothing).
- Cross-site writes. Every method but GET/HEAD/OPTIONS from a browser on another origin gets a
  403. Browsers send ``Origin`` on every such request, form posts and ``no-cors`` fetches
  included, and ``Sec-Fetch-Site`` where they support it; programs (curl, httpx, SDKs) send
  neither and pass untouched. An origin named in ``GRAPHWIRE_GATEWAY_CORS_ORIGINS`` may write.
  This covers the bodiless POSTs (cancel, cron pause and resume) that need no CORS preflight,
  and ``text/plain`` bodies that FastAPI would read as JSON.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BROWSER_SAME = frozenset({"same-origin", "none"})  # ``none``: typed in the address bar


def allowed_hosts(configured: str, *, auth: bool, bound: str) -> frozenset[str] | None:
    """The ``Host`` names to serve (None: any), from the setting, the auth mode and the bind."""
    names = frozenset(h.strip().lower() for h in configured.split(",") if h.strip())
    if names:
        return None if "*" in names else names
    if auth:
        return None
    bound = bound.strip("[]").lower()
    return LOOPBACK_NAMES | ({bound} if bound not in _ANY_ADDRESS else set())


def host_name(host: str) -> str:
    """``Host`` without its port, lower case (``[::1]:8000`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def host_refusal(host: str, allowed: frozenset[str] | None) -> str | None:
    """Why a request with this ``Host`` is not served, or None."""
    if allowed is None:
        return None
    name = host_name(host)
    if name in allowed or any(
        a.startswith("*.") and name.endswith(a[1:]) and len(name) > len(a) - 1 for a in allowed
    ):
        return None
    return ("this gateway does not serve that Host name; use a name it serves (localhost when "
            "it runs without authentication), or add the name to GRAPHWIRE_GATEWAY_ALLOWED_HOSTS")


def cross_site_refusal(
    method: str, host: str, forwarded_host: str, origin: str | None, fetch_site: str | None,
    trusted_origins: Iterable[str],
) -> str | None:
    """Why a browser's state-changing request from another site is refused, or None."""
    if method in _SAFE_METHODS:
        return None
    if origin is not None:
        if origin in trusted_origins:
            return None
        netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
        if netloc and netloc in {host.lower(), forwarded_host.lower()} - {""}:
            return None
    elif fetch_site is None or fetch_site in _BROWSER_SAME:
        return None  # not a browser, or the user's own navigation
    return ("cross-site request refused: a web page on another origin may not act on this "
            "gateway; call it from a program, or list the page's origin in "
            "GRAPHWIRE_GATEWAY_CORS_ORIGINS")


class BrowserGuard:
    """The Host allow-list and the cross-site check, before any route (plain ASGI)."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None,
                 trusted_origins: frozenset[str]) -> None:
        self.app, self.hosts, self.trusted = app, hosts, trusted_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the gateway serves no websockets
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        refusal = host_refusal(host, self.hosts)
        status = 400
        if refusal is None:
            refusal = cross_site_refusal(
                scope.get("method", "GET"), host, headers.get("x-forwarded-host", ""),
                headers.get("origin"), headers.get("sec-fetch-site"), self.trusted)
            status = 403
        if refusal is None:
            await self.app(scope, receive, send)
            return
        body = orjson.dumps({"detail": refusal})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
