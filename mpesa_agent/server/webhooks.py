"""`/webhooks`: the endpoints that receive events (Standard Webhooks), their attempts, and replay.
The outbox and the signing are in outbox.py; the sending in dispatcher.py."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from mpesa_agent.server.http import error, json_object
from mpesa_agent.server.outbox import Invalid, Outbox

DEFAULT_DELIVERIES = 100
MAX_DELIVERIES = 1000

blueprint = Blueprint("webhooks", __name__)


def outbox() -> Outbox:
    return current_app.extensions["webhooks"]


def _body():
    data, problem = json_object(request.get_data(cache=True))
    return data, (error(400, problem) if problem else None)


def _invalid(exc: Invalid):
    return error(400, f"invalid: {exc}", fields=exc.problems)


def _unknown(endpoint_id: str):
    return error(404, f"no webhook endpoint {endpoint_id[:40]!r}")


@blueprint.post("/webhooks")
def create():
    data, problem = _body()
    if problem:
        return problem
    try:
        return jsonify(outbox().create(data)), 201
    except Invalid as exc:
        return _invalid(exc)


@blueprint.get("/webhooks")
def listing():
    return jsonify({"webhooks": outbox().list()})


@blueprint.patch("/webhooks/<endpoint_id>")
def update(endpoint_id: str):
    if outbox().get(endpoint_id) is None:
        return _unknown(endpoint_id)
    data, problem = _body()
    if problem:
        return problem
    try:
        endpoint = outbox().update(endpoint_id, data)
    except Invalid as exc:
        return _invalid(exc)
    return jsonify(endpoint) if endpoint else _unknown(endpoint_id)


@blueprint.delete("/webhooks/<endpoint_id>")
def delete(endpoint_id: str):
    if not outbox().delete(endpoint_id):
        return _unknown(endpoint_id)
    return jsonify({"deleted": endpoint_id})


@blueprint.post("/webhooks/<endpoint_id>/rotate-secret")
def rotate(endpoint_id: str):
    endpoint = outbox().rotate(endpoint_id)
    return jsonify(endpoint) if endpoint else _unknown(endpoint_id)


@blueprint.get("/webhooks/<endpoint_id>/deliveries")
def deliveries(endpoint_id: str):
    if outbox().get(endpoint_id) is None:
        return _unknown(endpoint_id)
    raw = request.args.get("limit", str(DEFAULT_DELIVERIES)).strip()
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw[:5]) <= MAX_DELIVERIES):
        return error(400, f"limit must be a whole number from 1 to {MAX_DELIVERIES}, got {raw[:20]!r}")
    return jsonify({"endpoint_id": endpoint_id, "deliveries": outbox().attempts(endpoint_id, int(raw))})


@blueprint.post("/webhooks/<endpoint_id>/replay")
def replay(endpoint_id: str):
    if outbox().get(endpoint_id) is None:
        return _unknown(endpoint_id)
    data, problem = _body()
    if problem:
        return problem
    try:
        return jsonify({"endpoint_id": endpoint_id, "queued": outbox().replay(endpoint_id, data)}), 202
    except Invalid as exc:
        return _invalid(exc)
