"""What every route of the callback server shares: JSON errors, the Bearer check, JSON bodies,
and the caller's address (behind trusted proxies)."""
from __future__ import annotations

import hmac
import ipaddress
import json
import math
from decimal import Decimal

from flask import current_app, jsonify, request

from mpesa_agent.config import Settings
from mpesa_agent.payments.callbacks import has_lone_surrogate
from mpesa_agent.server.manager import CallbackManager

MAX_BODY_BYTES = 64 * 1024  # a real callback is under 1 KiB
BEARER_PREFIXES = ("/payment", "/payments", "/events", "/webhooks")  # everything under these needs the API key


def settings() -> Settings:
    return current_app.config["MPESA_SETTINGS"]


def manager() -> CallbackManager:
    return current_app.extensions["callback_manager"]


def error(status_code: int, message: str, **extra):
    return jsonify(error_body(message, **extra)), status_code


PARKING = "mpesa.parking"  # environ key: the request's Parking, when the HTTP server can park it (server/wsgi.py)
DATABASE_UNAVAILABLE = "the payments database is unavailable for a moment; send the request again"


def unavailable(database: str):
    """503: the database cannot be reached or refused a write; the client should send again."""
    response, code = error(503, DATABASE_UNAVAILABLE, db=database)
    response.headers["Retry-After"] = "1"
    return response, code


def error_body(message: str, **extra) -> dict:
    return {"status": "error", "error": message, **extra}


def not_found():
    return error(404, "not found; the endpoints are listed in docs/callback_server.md")


def needs_api_key(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in BEARER_PREFIXES)


def require_api_key():
    """`/payment/*`, `/payments`, `/events*` and `/webhooks*` need `Authorization: Bearer <CALLBACK_API_KEY>`, checked in constant time."""
    if not needs_api_key(request.path):
        return None
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        problem = "missing API key: send Authorization: Bearer <CALLBACK_API_KEY>"
    elif not hmac.compare_digest(key.strip().encode("utf-8", "surrogatepass"), settings().callback_api_key.encode()):
        problem = "wrong API key (compare CALLBACK_API_KEY in .env.local with the server's)"
    else:
        return None
    response, code = error(401, problem)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response, code


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def json_object(raw: bytes) -> tuple[dict | None, str | None]:
    """The request body as a JSON object (floats as exact Decimal), or why it is not one."""
    if not raw.strip():
        return None, "the body is empty; send a JSON object"
    try:
        data = json.loads(raw.decode("utf-8-sig"), parse_float=Decimal, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"the body is not valid JSON ({exc})"
    if b"\\u" in raw and has_lone_surrogate(data):  # valid UTF-8 holds no surrogate: only an escape can
        return None, "the body is not valid JSON text (a lone \\ud800-\\udfff escape)"
    if not isinstance(data, dict):
        return None, f"the body must be a JSON object, not {type(data).__name__}"
    return data, None


def seconds(raw: str | None, default: float | None, maximum: float = math.inf) -> tuple[float | None, str | None]:
    """`?timeout=N`: a number of seconds clamped to [0, maximum], `default` when absent, or why it is not one."""
    if raw is None:
        return default, None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        limit = f" (0-{maximum:g})" if math.isfinite(maximum) else ""
        return default, f"timeout must be a number of seconds{limit}, got {raw[:20]!r}"
    return min(max(value, 0.0), maximum), None


def client_address(config: Settings) -> str:
    """The peer address, or the X-Forwarded-For hop just before our trusted proxies."""
    peer = request.environ.get("REMOTE_ADDR") or ""
    if not config.trusted_proxies or not address_in(peer, config.trusted_proxies):
        return peer
    hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not address_in(hop, config.trusted_proxies):
            return hop
    return peer


def address_in(address: str, allowed: tuple[str, ...]) -> bool:
    """`address` is one of `allowed` (addresses or CIDR networks)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allowed:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False
