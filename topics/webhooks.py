"""The webhook contract: how ``graphwire webhooks`` signs the results it POSTs, and how a
receiver checks them (``verify_webhook``).

A delivery is ``POST <webhook URL>`` with the result JSON (exactly the bytes on the results
topic) as the body and these headers:

- ``X-Graphwire-Delivery``: the delivery id, the same on every attempt and every redelivery of
  one result message (dedupe on it);
- ``X-Graphwire-Request-Id``: the request's id (also in the body);
- ``X-Graphwire-Attempt``: 1, 2, ... for this delivery;
- ``X-Graphwire-Timestamp``: Unix seconds when this attempt was signed;
- ``X-Graphwire-Signature``: ``v2=<hex>``, the HMAC-SHA256 keyed by the caller's signing key
  over ``<timestamp>\\n<delivery id>\\n<webhook URL>\\n<body>`` (the timestamp's decimal digits,
  the delivery id, the webhook URL exactly as the request named it, each followed by a newline,
  then the raw body bytes). During a rotation of the operator's master secret it carries one
  ``v2=`` value per key, comma-separated.

Signing keys. Each caller (principal) has its own key, so a receiver's key signs only its own
caller's results: ``gwwh_`` + hex(HMAC-SHA256(master secret, ``"graphwire webhook signing
key\\0" + scope``)), where the scope is what the gateway puts before the first dot of every
request id it builds (``<scope>.<id>``, lowercase hex). A request id without one (a request
produced to Kafka directly) is signed with the operator's key, the key of the empty scope. The
gateway shows a caller its key once (``POST /workflow/webhooks/signing-key``); the operator can
print any (``graphwire webhooks key --scope S``). v1 (one shared secret over ``<ts>.<body>``) is
no longer sent: whoever held that secret could sign for every receiver.

A receiver recomputes the HMAC with its key, the URL it gave as webhook and the raw body it read,
compares in constant time, and refuses a timestamp too far from its clock (a replayed capture).
In any language::

    expected = hex(hmac_sha256(key, timestamp + "\\n" + delivery_id + "\\n" + url + "\\n" + body))
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from graphwire.topics.errors import GraphwireError

HEADER_WEBHOOK = "x-graphwire-webhook"
"""Kafka header on a result message: the URL its request asked the result to be POSTed to."""

DELIVERY_HEADER = "X-Graphwire-Delivery"
REQUEST_ID_HEADER = "X-Graphwire-Request-Id"
ATTEMPT_HEADER = "X-Graphwire-Attempt"
TIMESTAMP_HEADER = "X-Graphwire-Timestamp"
SIGNATURE_HEADER = "X-Graphwire-Signature"
SIGNATURE_VERSION = "v2"
KEY_PREFIX = "gwwh_"
OPERATOR_SCOPE = ""
"""The scope of a request id the gateway did not build: signed with the operator's key."""

_SCOPE = re.compile(r"[0-9a-f]{12,64}")
_KEY_CONTEXT = b"graphwire webhook signing key\x00"

Secret = str | bytes


class WebhookSignatureError(GraphwireError):
    """A webhook delivery whose signature or timestamp does not check out: answer 401."""


def _key(secret: Secret) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def scope_of(request_id: str) -> str:
    """The caller scope of ``request_id`` (``<scope>.<id>``, as the gateway builds them), or
    ``OPERATOR_SCOPE`` when it has none."""
    head, dot, _ = request_id.partition(".")
    return head if dot and _SCOPE.fullmatch(head) else OPERATOR_SCOPE


def signing_key(master: Secret, scope: str) -> str:
    """The webhook signing key of ``scope``, derived from the operator's master secret
    (``GRAPHWIRE_WEBHOOK_SECRET``): knowing one scope's key tells nothing of another's."""
    digest = hmac.new(_key(master), _KEY_CONTEXT + scope.encode(), hashlib.sha256)
    return KEY_PREFIX + digest.hexdigest()


def key_id(key: Secret) -> str:
    """A short public name of a signing key (to tell keys apart without showing them)."""
    return hashlib.sha256(_key(key)).hexdigest()[:12]


def sign_webhook(key: Secret, timestamp: int, body: bytes, *, delivery_id: str, url: str
                 ) -> str:
    """The ``X-Graphwire-Signature`` value of one attempt: ``v2=<hex>``."""
    signed = f"{timestamp}\n{delivery_id}\n{url}\n".encode() + body
    digest = hmac.new(_key(key), signed, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={digest.hexdigest()}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict: look the name up without regard to case
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def verify_webhook(
    body: bytes,
    headers: Mapping[str, str],
    key: Secret | Sequence[Secret],
    *,
    url: str,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a delivery's signature, delivery id, destination and timestamp; the result it
    carries, decoded.

    ``body`` must be the raw request body (before any JSON parsing), ``headers`` the request's
    headers, ``key`` this receiver's signing key (or a list of keys while rotating), ``url`` the
    webhook URL the receiver gave, exactly (query included). Raises ``WebhookSignatureError``
    when a header is missing, the signature does not match, the request id header is not the
    body's, or the timestamp is more than ``tolerance_s`` from ``now`` (default: the clock).
    """
    timestamp, signature = _header(headers, TIMESTAMP_HEADER), _header(headers, SIGNATURE_HEADER)
    delivery = _header(headers, DELIVERY_HEADER)
    if not timestamp or not signature or not delivery:
        raise WebhookSignatureError(
            f"missing {TIMESTAMP_HEADER}, {SIGNATURE_HEADER} or {DELIVERY_HEADER}: not a "
            "graphwire webhook delivery"
        )
    if not timestamp.isdigit():
        raise WebhookSignatureError(f"{TIMESTAMP_HEADER} is not Unix seconds: {timestamp[:40]!r}")
    keys = [key] if isinstance(key, str | bytes) else list(key)
    given = [part.strip() for part in signature.split(",")]  # one per key while rotating
    expected = [sign_webhook(k, int(timestamp), body, delivery_id=delivery, url=url)
                for k in keys]
    if not any(hmac.compare_digest(e, g) for e in expected for g in given):
        raise WebhookSignatureError(
            "signature does not match: check that the receiver uses its own signing key (shown "
            "once by POST /workflow/webhooks/signing-key), passes url= exactly the webhook URL "
            "it gave, and verifies the raw body bytes"
        )
    skew = abs((time.time() if now is None else now) - int(timestamp))
    if skew > tolerance_s:
        raise WebhookSignatureError(
            f"timestamp is {skew:.0f}s away from this clock (tolerance {tolerance_s:g}s): a "
            "replayed delivery, or a clock to fix"
        )
    try:
        result = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise WebhookSignatureError("the signed body is not JSON: not a graphwire result"
                                    ) from None
    request_id = _header(headers, REQUEST_ID_HEADER)
    if not isinstance(result, dict) or (
            request_id is not None and result.get("request_id") != request_id):
        raise WebhookSignatureError(
            f"{REQUEST_ID_HEADER} is not the body's request_id: a tampered delivery")
    return result
