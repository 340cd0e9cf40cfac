"""The Standard Webhooks message of one event and its signed headers: what the callback server's
dispatcher sends and what the CLI's `mpesa listen --forward-to` sends, byte for byte alike."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook

USER_AGENT = "mpesa-agent-webhooks/1"


def message(type: str, created_at: str, event_json: str) -> str:
    """`{"type", "timestamp", "data": <the event>}` around the event's stored JSON (not re-encoded)."""
    return f'{{"type":{json.dumps(type)},"timestamp":{json.dumps(created_at)},"data":{event_json}}}'


def signed_headers(msg_id: str, body: str, signing_secrets: tuple[str, ...], now: float) -> dict[str, str]:
    """The Standard Webhooks headers: one `v1,` signature per secret, space-separated."""
    at = datetime.fromtimestamp(int(now), timezone.utc)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(now)),
            "webhook-signature": " ".join(Webhook(secret).sign(msg_id, at, body) for secret in signing_secrets),
            "content-type": "application/json", "user-agent": USER_AGENT}
