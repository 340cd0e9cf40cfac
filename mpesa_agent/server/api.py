"""The `/payment/*` API the agent's tools use (register, status, wait, retry, history, analytics), `/payments`
(the newest, for the CLI), `/health` and `/openapi.json`."""
from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from mpesa_agent.payments.notifications import notification_for, timeout_notification
from mpesa_agent.payments.record import Payment
from mpesa_agent.payments.states import COMPLETED, PENDING, SettledBy, State, Verification
from mpesa_agent.server import history as reports
from mpesa_agent.server.http import PARKING, error, json_object, manager, seconds, settings, unavailable
from mpesa_agent.server.manager import InvalidRegistration, RegistrationConflict
from mpesa_agent.server.openapi import openapi_spec
from mpesa_agent.server.retries import Retries, RetryRefused, retry_summary
from mpesa_agent.server.store import DATABASE_ERRORS

log = logging.getLogger("callback_server")

DEFAULT_WAIT_SECONDS = 120
MAX_WAIT_SECONDS = 300
MAX_PAYMENTS_PAGE = 1000
REQUIRED_FIELDS = ("checkout_request_id", "phone_number", "amount")
STATES = tuple(map(str, State))

blueprint = Blueprint("api", __name__)


@blueprint.post("/payment/register")
def register():
    data, problem = json_object(request.get_data(cache=True))
    if problem:
        return error(400, problem)
    missing = [name for name in REQUIRED_FIELDS if data.get(name) in (None, "")]
    if missing:
        return error(400, f"missing field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}",
                     fields={name: "required" for name in missing})
    try:
        payment, created = manager().register(
            data["checkout_request_id"], data["phone_number"], data["amount"],
            data.get("description"), data.get("merchant_request_id"))
    except InvalidRegistration as exc:
        return error(400, str(exc), fields=exc.problems)
    except RegistrationConflict as exc:
        return error(409, str(exc), fields=exc.fields)
    return jsonify({"status": "registered", "created": created, "checkout_request_id": payment.checkout_request_id,
                    "payment_status": payment.status, "payment": payment.to_dict()}), 201 if created else 200


@blueprint.get("/payment/status/<checkout_request_id>")
def status(checkout_request_id: str):
    payment = manager().status(checkout_request_id)
    if payment is None:
        return unknown_payment(checkout_request_id)
    return jsonify({**notification(payment), "payment": payment.to_dict(), **retry_fields(payment)})


@blueprint.post("/payment/<checkout_request_id>/retry")
def retry(checkout_request_id: str):
    """A new STK Push for a failed payment, linked to it; the same retry again answers the first one's."""
    data, raw = {}, request.get_data(cache=True)
    if raw.strip():
        data, problem = json_object(raw)
        if problem:
            return error(400, problem)
    confirm = data.get("confirm_repeat", False)
    if not isinstance(confirm, bool):
        return error(400, "confirm_repeat must be true or false", fields={"confirm_repeat": "must be a boolean"})
    try:
        retried = retries().retry(checkout_request_id[:100], confirm_repeat=confirm)
    except RetryRefused as exc:
        response, code = error(exc.status_code, str(exc), **exc.extra)
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response, code
    return jsonify(retry_summary(retried)), 201 if retried.created else 200


def retries() -> Retries:
    return current_app.extensions["retries"]


def retry_fields(payment: Payment) -> dict:
    """A payment in a retry chain: every attempt, first to last, and its own retry (planned or sent)."""
    fields = {}
    if payment.retry_of or payment.retried_as:
        fields["attempts"] = [attempt.to_dict() for attempt in retries().chain(payment)]
    row = retries().row(payment.checkout_request_id)
    if row is not None:
        fields["retry"] = row.to_dict()
    return fields


@blueprint.get("/payment/wait/<checkout_request_id>")
def wait(checkout_request_id: str):
    """Long-poll: answers the moment the payment leaves `pending`, else at the timeout."""
    timeout, problem = wait_timeout(request.args.get("timeout"))
    if problem:
        return error(400, problem)
    parking = request.environ.get(PARKING)
    if parking is not None and timeout > 0 and request.method == "GET":  # held by the server, without a greenlet
        return park(parking, checkout_request_id, timeout)
    return wait_answer(checkout_request_id, manager().wait(checkout_request_id, timeout))


def wait_answer(checkout_request_id: str, payment: Payment | None):
    """The long-poll's answer: the payment's notification (`timeout` while still pending), or a 404."""
    if payment is None:
        return unknown_payment(checkout_request_id)
    body = notification(payment, timed_out=payment.status == PENDING)
    return jsonify({**body, "payment": payment.to_dict()})


def park(parking, checkout_request_id: str, timeout: float):
    """Hand the wait to the HTTP server: it keeps the connection and a small record, and answers
    with `wait_answer` when the payment settles or at the timeout (the same answer as a held wait)."""
    callbacks, app = manager(), current_app._get_current_object()
    deadline = time.monotonic() + timeout

    def answer() -> tuple[str, list, bytes]:
        with app.app_context():
            try:
                response = app.make_response(wait_answer(checkout_request_id,
                                                         callbacks.read_until(checkout_request_id, deadline)))
            except DATABASE_ERRORS as exc:
                log.error("wait for %s: database unavailable: %s", checkout_request_id, str(exc).strip()[:200])
                response = app.make_response(unavailable(callbacks.store.described))
        return response.status, [(k, v) for k, v in response.headers.items() if k.lower() != "connection"], \
            response.get_data()

    parking.park(lambda settled: callbacks.watch(checkout_request_id, settled), answer, timeout)
    return Response(status=204)  # not sent: the server writes `answer()` instead


@blueprint.get("/payments")
def payments():
    status, raw = request.args.get("status") or None, request.args.get("limit", "20").strip()
    if status is not None and status not in STATES:
        return error(400, f"status must be one of {', '.join(STATES)}, got {status[:20]!r}")
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw[:5]) <= MAX_PAYMENTS_PAGE):
        return error(400, f"limit must be a whole number from 1 to {MAX_PAYMENTS_PAGE}, got {raw[:20]!r}")
    found = manager().store.recent_payments(status, int(raw))
    return jsonify({"payments": [payment.to_dict() for payment in found]})


@blueprint.get("/payment/history")
def history():
    """A page of payments matching the filters, newest first; pass `next_cursor` back as `cursor`."""
    try:
        found, cursor = reports.history(manager().store, **reports.parse_filters(request.args))
    except reports.BadParameter as exc:
        return bad_parameter(exc)
    return jsonify({"payments": [payment.to_dict() for payment in found], "next_cursor": cursor})


@blueprint.get("/payment/history.csv")
def history_csv():
    """Every payment matching the filters as CSV, streamed (read a page at a time)."""
    try:
        filters = reports.parse_filters(request.args, paging=False)
    except reports.BadParameter as exc:
        return bad_parameter(exc)
    rows = reports.csv_rows(reports.every_payment(manager().store, **filters))
    return Response(stream_with_context(rows), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="payments.csv"'})


@blueprint.get("/payment/analytics")
def analytics():
    try:
        return jsonify(reports.analytics(manager().store, since=request.args.get("since") or None,
                                         until=request.args.get("until") or None))
    except reports.BadParameter as exc:
        return bad_parameter(exc)


def bad_parameter(exc: "reports.BadParameter"):
    return error(400, str(exc), parameter=exc.name)


@blueprint.get("/health")
def health():
    config, callbacks = settings(), manager()
    try:
        counts = callbacks.store.counts()
    except DATABASE_ERRORS as exc:
        log.error("health: database %s not usable: %s", callbacks.store.described, exc)
        return error(503, f"database not usable: {exc}", db=callbacks.store.described)
    body = {"status": "ok", "db": callbacks.store.described, **counts, "waiting": callbacks.waiting(),
            "rejected": callbacks.rejected}
    if callbacks.store.write_failure:  # callbacks may be stored but not applied: say so, loudly
        return jsonify({**body, "status": "degraded", "error": f"the database refuses writes "
                        f"({callbacks.store.write_failure}); stored callbacks are applied again once it accepts them"}), 503
    return jsonify(body)


@blueprint.get("/openapi.json")
def openapi():
    return jsonify(openapi_spec(current_app.config["CALLBACK_PREFIX"]))


def notification(payment: Payment, timed_out: bool = False) -> dict:
    """The seed's notification, plus how the outcome was learnt when it was not a plain callback."""
    body = timeout_notification(payment.checkout_request_id) if timed_out else notification_for(payment)
    queries = f"{payment.query_attempts} STK Quer{'y' if payment.query_attempts == 1 else 'ies'}"
    note = None
    if payment.verification == Verification.AWAITING and payment.status == PENDING:
        note = "A success callback arrived; confirming it with M-Pesa (STK Query) before reporting it"
    elif payment.verification == Verification.CONFIRMED:
        note = "Success callback confirmed by STK Query"
    elif payment.verification == Verification.CONTRADICTED:
        note = "A success callback was contradicted and is kept for review; it was not counted as paid"
    elif payment.settled_by == SettledBy.QUERY:
        note = f"Settled by STK Query: no callback arrived ({queries})"
    elif payment.settled_by == SettledBy.RECONCILER:
        note = f"No final answer from M-Pesa after {queries}; kept for review"
    if payment.status == COMPLETED and (payment.verification == Verification.CONFIRMED
                                        or payment.settled_by == SettledBy.QUERY):
        body["payment_details"] = {**body["payment_details"], "VerifiedBy": "STK Query"}
    if note:
        body["note"] = note
    return body


def wait_timeout(raw: str | None) -> tuple[float, str | None]:
    """`?timeout=N` seconds: default 120, clamped to [0, 300]; not a number is an error."""
    return seconds(raw, DEFAULT_WAIT_SECONDS, MAX_WAIT_SECONDS)


def unknown_payment(checkout_request_id: str):
    return error(404, f"no payment registered with checkout_request_id {checkout_request_id[:100]!r}",
                 checkout_request_id=checkout_request_id[:100])


