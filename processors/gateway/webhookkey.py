"""``POST /workflow/webhooks/signing-key``: a caller's webhook signing key, shown once.

A caller's key is derived from the operator's master secret and the caller's scope
(``graphwire.processors.webhooks.keys``): nothing is stored but a Redis flag saying it was shown
(``<prefix>:webhook-key-shown:<scope>:<key id>``). The first call answers the key; later calls
answer 409, so a leaked API key cannot quietly read it after its owner did (and the owner sees
409 if someone read it first). A rotation of the master secret gives every caller a new key (a new
key id), which each may fetch once again; a caller who lost its key asks the operator
(``graphwire webhooks key --scope S``).
"""

import time

from fastapi import APIRouter
from redis.exceptions import RedisError

from graphwire.processors.gateway.agentapi.deps import Caller, GatewayDep
from graphwire.processors.gateway.errors import Conflict, NotFound, Unavailable
from graphwire.processors.webhooks.keys import SigningKeys
from graphwire.topics.errors import GraphwireError
from graphwire.topics.webhooks import SIGNATURE_VERSION, key_id

WARNING = (
    "store this key now, in your webhook receiver's secret store: it is shown once. Verify "
    "deliveries with graphwire.verify_webhook(body, headers, key, url=<your webhook URL>)."
)


router = APIRouter()


@router.post("/workflow/webhooks/signing-key", tags=["webhooks"])
async def signing_key(caller: Caller, gw: GatewayDep) -> dict[str, str]:
    """This caller's webhook signing key, once (409 after); store it in the receiver."""
    try:
        keys = SigningKeys.from_settings(gw.settings)
    except GraphwireError:
        raise NotFound("webhook signing keys are not served here: the gateway has no "
                       "GRAPHWIRE_WEBHOOK_SECRET; ask the operator") from None
    scope = caller.scope
    key = keys.key(scope)
    kid = key_id(key)
    flag = f"{gw.settings.topic_prefix}:webhook-key-shown:{scope}:{kid}"
    try:
        first = await gw.redis.set(flag, str(int(time.time())), nx=True)
    except (RedisError, OSError):
        raise Unavailable.retry("Redis does not answer; retry in a few seconds") from None
    if not first:
        raise Conflict(
            f"the webhook signing key {kid} of this caller was already shown (it is shown "
            "once); ask the operator for it (`graphwire webhooks key --scope "
            f"{scope}`), or for a rotation of GRAPHWIRE_WEBHOOK_SECRET if it leaked")
    return {"signing_key": key, "key_id": kid, "scope": scope,
            "signature": SIGNATURE_VERSION, "warning": WARNING}
