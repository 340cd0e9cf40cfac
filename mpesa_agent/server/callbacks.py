"""Daraja's callback route, `POST {prefix}/<token>`: commit the raw body, then apply it; Daraja
gets its 200 only after the commit."""
from __future__ import annotations

import hmac

from flask import Blueprint, jsonify, request

from mpesa_agent.server.http import address_in, client_address, manager, not_found, settings
from mpesa_agent.server.manager import INVALID, CallbackManager

ACCEPTED = {"ResultCode": 0, "ResultDesc": "Accepted"}

blueprint = Blueprint("callbacks", __name__)


@blueprint.post("/<token>", strict_slashes=False)
def receive_callback(token: str):
    body = request.get_data(cache=False)  # 413 above MAX_CONTENT_LENGTH
    headers = dict(request.headers)
    config = settings()
    source = client_address(config)
    if not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), config.callback_token.encode()):
        manager().record_rejected(body, headers, source, "wrong token in the callback URL")
        return not_found()
    if config.trusted_callback_ips and not address_in(source, config.trusted_callback_ips):
        manager().record_rejected(body, headers, source, f"source {source} is not in TRUSTED_CALLBACK_IPS")
        return jsonify({"ResultCode": 1, "ResultDesc": "Rejected: source address not allowed"}), 403
    answer, code = callback_answer(manager(), body, headers, source)
    return jsonify(answer), code


def callback_answer(callbacks: CallbackManager, body: bytes, headers: dict, source: str) -> tuple[dict, int]:
    """Store and apply a callback whose token and source passed; Daraja's answer to it."""
    result = callbacks.ingest(body, headers, source)
    if result.outcome == INVALID:
        return {"ResultCode": 1, "ResultDesc": f"Rejected: {result.note}"}, 400
    return ACCEPTED, 200
