"""What keeps the run inspector safe in a browser.

- Every ``/ui`` response carries a strict Content-Security-Policy: scripts and styles only from
  the gateway's own ``/ui/static`` (no inline script, no inline style, no eval), no framing.
  Together with autoescaping templates, a message's ``<script>`` is text, never code.
- CSRF on the POSTs (resume, replay): double submit. The page sets a random token in an
  HttpOnly, SameSite=Strict cookie and repeats it in a ``<meta>`` tag; the page's script sends it
  back as ``X-CSRF-Token``. Another site can neither read the meta tag nor send that header
  without a CORS preflight; the POST also refuses an ``Origin`` that is neither ``Host`` nor
  ``X-Forwarded-Host`` (a proxy that rewrites ``Host`` should set the latter). With an API
  key, the key itself (kept in sessionStorage, sent as a header) is a second guard; with
  ``GRAPHWIRE_GATEWAY_AUTH=false`` the token is the only one.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import Request
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphwire.processors.gateway.errors import Forbidden

CSRF_COOKIE = "graphwire_ui_csrf"
CSRF_HEADER = "x-csrf-token"
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


class UiHeaders:
    """Adds the security headers to every response under ``/ui`` (pages, fragments, JSON,
    static files, errors)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/ui"):
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, sending)


def csrf_token(request: Request) -> tuple[str, bool]:
    """The browser's token (from its cookie), or a new one; True when it is new (set it)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) == 43 and token.replace("-", "").replace("_", "").isalnum():
        return token, False
    return secrets.token_urlsafe(32), True


async def check_csrf(request: Request) -> None:
    """403 unless the POST carries the cookie's token in ``X-CSRF-Token`` from our origin
    (FastAPI dependency)."""
    origin = request.headers.get("origin")
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")}
    if origin and urlsplit(origin).netloc not in hosts - {""}:
        raise Forbidden("cross-origin POST refused: use the inspector at /ui")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER, "")
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise Forbidden("missing or wrong CSRF token: reload the page at /ui and submit again")
