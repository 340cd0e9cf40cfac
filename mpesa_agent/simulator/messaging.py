"""Offline stand-ins for the messaging APIs the callback server notifies through: Africa's Talking
(`POST /version1/messaging`) and the WhatsApp Cloud API (`POST /<version>/<phone-number-id>/messages`),
with their paths, authentication and JSON. `GET /simulator/messages` lists what they received."""
from __future__ import annotations

import secrets
import threading
import time

from flask import Blueprint, current_app, jsonify, request

blueprint = Blueprint("messaging", __name__)


class Inbox:
    """Every message the stand-ins accepted, oldest first."""

    def __init__(self):
        self._lock, self.messages = threading.Lock(), []

    def add(self, **message) -> dict:
        with self._lock:
            self.messages.append({"received_at": time.time(), **message})
        return message


def inbox() -> Inbox:
    return current_app.extensions["messages"]


@blueprint.post("/version1/messaging")
def africastalking():
    """Africa's Talking: form fields username, to (comma-separated), message, optional from; `apiKey` header."""
    if not request.headers.get("apiKey") or not request.form.get("username"):
        return "The supplied authentication is invalid", 401
    numbers = [n.strip() for n in request.form.get("to", "").split(",") if n.strip()]
    text = request.form.get("message", "")
    if not numbers or not text:
        return jsonify({"SMSMessageData": {"Message": "InvalidRequest", "Recipients": []}}), 400
    recipients = []
    for number in numbers:
        message_id = "ATXid_" + secrets.token_hex(16)
        ok = number.startswith("+254") and len(number) == 13 and number[1:].isdigit()
        recipients.append({"statusCode": 101 if ok else 403, "number": number, "status": "Success" if ok else
                           "InvalidPhoneNumber", "cost": "KES 0.8000" if ok else "0", "messageId": message_id})
        if ok:
            inbox().add(channel="sms", to=number, text=text, sender=request.form.get("from"),
                        username=request.form["username"], id=message_id)
    sent = sum(r["statusCode"] == 101 for r in recipients)
    return jsonify({"SMSMessageData": {"Message": f"Sent to {sent}/{len(numbers)} Total Cost: KES {0.8 * sent:.4f}",
                                       "Recipients": recipients}}), 201


@blueprint.post("/<version>/<phone_number_id>/messages")
def whatsapp(version: str, phone_number_id: str):
    """WhatsApp Cloud API: a Bearer token, JSON {messaging_product: whatsapp, to, type, template|text}."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return jsonify({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException", "code": 190}}), 401
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp" or not body.get("to") \
            or body.get("type") not in ("template", "text"):
        return jsonify({"error": {"message": "(#100) Invalid parameter", "type": "OAuthException", "code": 100}}), 400
    message_id = "wamid." + secrets.token_hex(24)
    inbox().add(channel="whatsapp", to=body["to"], phone_number_id=phone_number_id, type=body["type"],
                template=body.get("template"), text=body.get("text"), id=message_id)
    return jsonify({"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                    "messages": [{"id": message_id}]})


@blueprint.get("/simulator/messages")
def received():
    return jsonify({"messages": inbox().messages})
