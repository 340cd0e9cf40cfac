"""The dashboard at /dashboard: sign in with the API key, the live feed (Server-Sent Events from the
event log), history with filters and exports, a payment's own page (and retrying a failed one),
analytics, and bulk requests (batches: their progress, outcome, CSV and cancel).

Pages are Flask templates (server/templates/dashboard/), assets ship in server/static/ (nothing
from a CDN); charts are SVG drawn on the server (server/charts.py). Who may see it:
server/dashboard_auth.py. Every page sends a Content-Security-Policy that allows only this
server's own scripts and styles.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterator
from urllib.parse import urlsplit

from flask import (Blueprint, Response, current_app, get_template_attribute, json, redirect, render_template,
                   request, stream_with_context, url_for)

from mpesa_agent.payments.bulk import BatchStatus
from mpesa_agent.payments.messages import render
from mpesa_agent.payments.periods import EAT, PERIODS, InvalidTime, period
from mpesa_agent.payments.phones import display_phone
from mpesa_agent.payments.retry import retry_refusal
from mpesa_agent.payments.states import FAILED, SETTLED_EVENTS, UNKNOWN, CallbackOutcome, EventType
from mpesa_agent.server import bulk
from mpesa_agent.server import dashboard_auth as auth
from mpesa_agent.server import history as payment_history
from mpesa_agent.server.charts import stacked_bars
from mpesa_agent.server.events import stream_response
from mpesa_agent.server.http import manager, settings
from mpesa_agent.server.retries import SCHEDULED, SKIPPED, Retries, RetryRefused
from mpesa_agent.server.store import MAX_EVENTS_PAGE, Event

FEED_SIZE = 50
STATUS_WORDS = {"pending": "waiting", "completed": "paid", "failed": "not paid", "unknown": "needs review"}
STATUS_CHOICES = [("", "any"), *STATUS_WORDS.items(), ("unpaid", "not paid yet (waiting, not paid, review)")]
EVENT_WORDS = {
    "payment.registered": "Registered: the prompt went to the phone",
    "payment.completed": "Paid",
    "payment.failed": "Not paid",
    "payment.unknown": "Needs review",
    "payment.conflict": "Contradicting evidence, kept for review (not applied)",
    "payment.updated": "Record updated",
    "callback.received": "Callback from M-Pesa",
    "callback.parked": "Callback before registration (parked)",
    "payment.retried": "Retried: a new prompt was sent, as a new payment",
}
# What a batch's item came to (payments/bulk.py OUTCOMES), in the words the pages use.
OUTCOME_WORDS = {"completed": "paid", "failed": "not paid", "pending": "waiting for the customer",
                 "unknown": "needs review", "not_sent": "refused by M-Pesa (not sent)",
                 "cancelled": "cancelled (not sent)", "queued": "not sent yet", "sending": "being sent"}
BATCH_WORDS = {BatchStatus.SENDING: "sending", BatchStatus.SENT: "all sent", BatchStatus.CANCELLED: "cancelled"}
BATCHES_SHOWN = 50
CHART_SERIES = (("completed", "paid"), ("failed", "not paid"), ("unknown", "needs review"), ("pending", "waiting"))
DEFAULT_PERIOD = "last_7_days"
PERIOD_CHOICES = [(name, name.replace("_", " ").capitalize()) for name in PERIODS]
PUBLIC_ENDPOINTS = frozenset({"dashboard.sign_in", "dashboard.static"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

blueprint = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates",
                      static_folder="static", static_url_path="/static")

blueprint.add_app_template_global(STATUS_WORDS, "status_words")
blueprint.add_app_template_global(OUTCOME_WORDS, "outcome_words")
blueprint.add_app_template_global(BATCH_WORDS, "batch_words")


@blueprint.before_request
def guard():
    """Not signed in: to the sign-in page, with no payment data. A POST needs the session's CSRF token."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if not auth.signed_in(settings()):
        wanted = request.full_path.rstrip("?") if request.method == "GET" else None
        return redirect(url_for(".sign_in", next=wanted))
    if request.method == "POST" and not auth.csrf_ok():
        return csrf_refused()
    return None


@blueprint.after_request
def security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "dashboard.static":
        response.headers["Cache-Control"] = "no-store"  # payment data stays out of shared caches
    return response


@blueprint.app_template_global()
def csrf_token() -> str:
    return auth.csrf_token()


@blueprint.app_template_filter("when")
def when(iso: str | None) -> str:
    """A stored UTC time as Kenyan time, e.g. "29 Nov 18:02:07"."""
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone(EAT).strftime("%d %b %H:%M:%S")
    except ValueError:
        return iso


@blueprint.app_template_filter("phone")
def phone(msisdn: str | None) -> str:
    return display_phone(msisdn) if msisdn else "-"


@blueprint.app_template_filter("kes")
def kes(amount) -> str:
    """1500 -> "1,500"; exact decimal text stays exact."""
    if amount is None or amount == "":
        return "-"
    try:
        return f"{int(amount):,}"
    except (TypeError, ValueError):
        return str(amount)


# --- signing in and out --------------------------------------------------------------------------

@blueprint.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    config = settings()
    target = safe_next(request.values.get("next"))
    if request.method == "GET":
        if auth.signed_in(config):
            return redirect(target)
        return render_template("dashboard/sign_in.html", next=target, signed_out=request.args.get("bye") == "1")
    address, wait = auth.throttled_for(config)
    if wait:
        minutes = max(1, round(wait / 60))
        return render_template("dashboard/sign_in.html", next=target, problem=(
            f"Too many wrong keys from your address. Try again in {minutes} minute{'s' if minutes > 1 else ''}.")), 429
    if not auth.csrf_ok():
        return csrf_refused()
    if not auth.key_matches(request.form.get("api_key", ""), config):
        auth.record_failure(address)
        return render_template("dashboard/sign_in.html", next=target, problem=(
            "That is not the API key. It is CALLBACK_API_KEY in .env.local (or the server's environment).")), 401
    auth.sign_in(config)
    return redirect(target)


@blueprint.post("/sign-out")
def sign_out():
    auth.sign_out()
    return redirect(url_for(".sign_in", bye=1))


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard page on this server, never another site."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboard") or "\\" in (target or ""):
        return url_for("dashboard.feed")
    return target


def csrf_refused():
    return render_template("dashboard/problem.html", title="Form expired", problem=(
        "This form was not sent from a page of this dashboard, or your session changed since it was shown. "
        "Go back, reload the page and try again.")), 400


# --- the live feed -------------------------------------------------------------------------------

@blueprint.get("", strict_slashes=False)
def feed():
    store = manager().store
    after = store.last_event_id()  # first: any change after this read reaches the page by the stream
    return render_template("dashboard/feed.html", payments=store.recent_payments(limit=FEED_SIZE), after=after)


@blueprint.get("/stream")
def stream():
    """The event log as the feed page needs it: each payment's new row and, when it settles, a sentence."""
    return stream_response(live_frame)


def live_frame(event: Event) -> str:
    payment = event.data.get("payment")
    if payment is None:
        return ""  # a parked callback: no payment to show yet
    row = get_template_attribute("dashboard/_rows.html", "payment_row")(payment)
    data = {"type": event.type, "checkout_request_id": event.checkout_request_id, "status": payment["status"],
            "row": str(row), "say": announcement(event.type, payment)}
    return f"id: {event.id}\ndata: {json.dumps(data)}\n\n"


def announcement(event_type: str, payment: dict) -> str | None:
    """The sentence a settled payment is announced with: who paid what, or why not, in words."""
    shown = {**payment, "amount": kes(payment["amount"])}
    if event_type == EventType.PAYMENT_COMPLETED:
        return render(event_type, shown)
    if event_type == EventType.PAYMENT_FAILED:  # the reason in our words ("Request cancelled by user"), not a code
        return render(event_type, {**shown, "result_desc": None})
    if event_type == EventType.PAYMENT_UNKNOWN:
        return (f"M-Pesa payment needs review: KES {shown['amount']} from {phone(payment['phone_number'])}"
                f": {payment.get('review') or payment.get('reason') or 'no final answer from M-Pesa'}.")
    return None


# --- history, exports, a payment's page ----------------------------------------------------------

@blueprint.get("/history")
def history():
    """Payments matching the filters, newest first, a page at a time ("older" follows the cursor)."""
    filters, problem = dashboard_filters()
    found, next_cursor = ([], None) if problem else payment_history.history(manager().store, **filters)
    shown = {name: request.args.get(name, "") for name in payment_history.FILTERS}
    chosen = {name: value for name, value in shown.items() if value.strip()}
    carried = {**chosen, "limit": request.args["limit"]} if request.args.get("limit") else chosen  # by "older"
    return render_template("dashboard/history.html", payments=found, next_cursor=next_cursor, filters=shown,
                           chosen=chosen, carried=carried, problem=problem, paged=bool(request.args.get("cursor")),
                           states=STATUS_CHOICES), 400 if problem else 200


@blueprint.get("/history.csv")
def history_csv():
    filters, problem = dashboard_filters(paging=False)
    if problem:
        return problem_page("Cannot export", problem, 400)
    rows = payment_history.csv_rows(payment_history.every_payment(manager().store, **filters))
    return download(stream_with_context(rows), "text/csv; charset=utf-8", "csv")


@blueprint.get("/history.json")
def history_json():
    filters, problem = dashboard_filters(paging=False)
    if problem:
        return problem_page("Cannot export", problem, 400)
    found = payment_history.every_payment(manager().store, **filters)
    return download(stream_with_context(json_array(found)), "application/json", "json")


def dashboard_filters(paging: bool = True) -> tuple[dict, str | None]:
    """The query string's filters for payment_history.history, or what is wrong with them."""
    try:
        return payment_history.parse_filters(request.args, paging=paging), None
    except payment_history.BadParameter as exc:
        return {}, str(exc)


def json_array(payments) -> Iterator[str]:
    """`{"payments": [...]}`, written one payment at a time (an export may hold many)."""
    yield '{"payments": ['
    for index, payment in enumerate(payments):
        yield ("," if index else "") + "\n" + json.dumps(payment.to_dict())
    yield "\n]}\n"


def download(body, mimetype: str, extension: str) -> Response:
    stamp = datetime.now(EAT).strftime("%Y%m%d-%H%M")
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="payments-{stamp}.{extension}"'
    return response


@blueprint.get("/payments/<checkout_request_id>")
def payment(checkout_request_id: str):
    return payment_page(checkout_request_id)


def payment_page(checkout_request_id: str, retry_problem: str | None = None, confirm_repeat: bool = False,
                 status: int = 200):
    """A payment: its record, timeline, raw callbacks and conflicts; its retry chain, and retrying it."""
    store = manager().store
    found = store.payment(checkout_request_id)
    if found is None:
        return problem_page("No such payment", f"No payment is registered with checkout ID {checkout_request_id[:100]}.",
                            404)
    timeline = store.events(checkout_request_id=checkout_request_id, limit=MAX_EVENTS_PAGE)
    callbacks = payment_history.payment_callbacks(store, checkout_request_id, settings().callback_token)
    chain = retries().chain(found) if found.retry_of or found.retried_as else []
    row = retries().row(checkout_request_id)
    refusal = retry_refusal(found)
    retried = request.args.get("retried")
    return render_template("dashboard/payment.html", p=found, timeline=timeline, callbacks=callbacks,
                           conflicts=[c for c in callbacks if c["outcome"] == CallbackOutcome.CONFLICT],
                           say=announcement(SETTLED_EVENTS.get(found.status, ""), found.to_dict()),
                           event_words=EVENT_WORDS, chain=chain, retry_row=row,
                           may_retry=refusal is None and not found.retried_as and (
                               row is None or row.state in (SCHEDULED, SKIPPED)),
                           why_not_retry=refusal if found.status in (FAILED, UNKNOWN) else None,
                           retry_problem=retry_problem, confirm_repeat=confirm_repeat,
                           retried=retried if retried in ("new", "again") else None), status


@blueprint.post("/payments/<checkout_request_id>/retry")
def retry_payment(checkout_request_id: str):
    """The API's retry (server/retries.py): a new STK Push linked to this failed payment, then its page.
    Within 2 minutes of the last identical push it is sent only once the person confirms it."""
    confirm = request.form.get("confirm_repeat") == "yes"
    try:
        retried = retries().retry(checkout_request_id[:100], confirm_repeat=confirm)
    except RetryRefused as exc:
        if exc.status_code == 404:
            return problem_page("No such payment", str(exc), 404)
        repeat = exc.extra.get("needs") == "confirm_repeat"
        return payment_page(checkout_request_id, repeat_words(checkout_request_id, exc) if repeat else str(exc),
                            confirm_repeat=repeat, status=exc.status_code)
    return redirect(url_for(".payment", checkout_request_id=retried.payment.checkout_request_id,
                            retried="new" if retried.created else "again"))


def retries() -> Retries:
    return current_app.extensions["retries"]


def repeat_words(checkout_request_id: str, exc: RetryRefused) -> str:
    """The repeat rule in a person's words (the API's message tells a program which field to send)."""
    found = manager().store.payment(checkout_request_id)
    return (f"Not sent yet: {phone(found.phone_number)} was asked for KES {kes(found.amount)} less than 2 minutes "
            "ago. M-Pesa may decline the same request so soon, and the customer would see a second prompt. "
            f"Send it anyway only if they expect it; otherwise wait {exc.extra.get('retry_after', 120)} seconds "
            "and retry.")


def problem_page(title: str, problem: str, status: int):
    return render_template("dashboard/problem.html", title=title, problem=problem), status


# --- analytics -----------------------------------------------------------------------------------

@blueprint.get("/analytics")
def analytics():
    """Counts, KES, completion rate, failure reasons and push-to-callback times for a period (EAT days)."""
    since, until = request.args.get("since") or None, request.args.get("until") or None
    chosen = "" if since or until else request.args.get("period") or DEFAULT_PERIOD  # dates win over a period
    problem = None
    if chosen:
        try:
            start, end = period(chosen, datetime.now(timezone.utc))
        except InvalidTime as exc:
            return problem_page("Cannot show analytics", str(exc), 400)
        since, until = start.isoformat(), end.isoformat()
    try:
        numbers = payment_history.analytics(manager().store, since=since, until=until)
    except payment_history.BadParameter as exc:
        numbers, problem = None, str(exc)
    charts = {}
    if numbers:
        charts = {"by_day": stacked_bars(numbers["by_day"], "date", CHART_SERIES, "Payments by day (EAT)",
                                         label=short_date),
                  "by_hour": stacked_bars(numbers["by_hour"], "hour", CHART_SERIES,
                                          "Payments by hour of the day (EAT)", label=lambda hour: f"{hour:02d}")}
    return render_template("dashboard/analytics.html", a=numbers, charts=charts, problem=problem, chosen=chosen,
                           periods=PERIOD_CHOICES, since=request.args.get("since", ""),
                           until=request.args.get("until", ""), series=CHART_SERIES), 400 if problem else 200


def short_date(day: str) -> str:
    """2026-11-29 -> "29 Nov"."""
    return datetime.fromisoformat(day).strftime("%d %b")


# --- bulk requests (batches) ---------------------------------------------------------------------

@blueprint.get("/batches")
def batches():
    """The newest batches, newest first: counts by outcome, KES asked and paid, progress.
    `?part=live` is the table alone, which the page fetches again when a batch changes."""
    store = manager().store
    after = store.last_event_id()  # before the batches: a change in between reaches the page by the stream
    found = bulk.batches().recent(BATCHES_SHOWN)
    if request.args.get("part") == "live":
        return render_template("dashboard/_batches.html", batches=found)
    return render_template("dashboard/batches.html", batches=found, after=after, shown=BATCHES_SHOWN)


@blueprint.get("/batches/<batch_id>")
def batch(batch_id: str):
    """One batch: its summary line, counts and KES by outcome, who has not paid, who failed and why,
    every item with a link to its payment, the CSV, and cancelling what is not sent yet.
    `?part=live` is the part that changes, fetched again on each of the batch's events."""
    store = manager().store
    after = store.last_event_id()
    found = bulk.batches().report(batch_id, with_items=True)
    if found is None:
        return problem_page("No such batch", f"No bulk request has the id {batch_id[:100]}.", 404)
    if request.args.get("part") == "live":
        return render_template("dashboard/_batch.html", b=found)
    cancelled = request.args.get("cancelled", "")
    return render_template("dashboard/batch.html", b=found, after=after,
                           cancelled=int(cancelled) if cancelled.isascii() and cancelled.isdigit() else None)


@blueprint.get("/batches/<batch_id>.csv")
def batch_csv(batch_id: str):
    answer = bulk.csv_download(batch_id)
    return answer if answer is not None else problem_page("No such batch",
                                                          f"No bulk request has the id {batch_id[:100]}.", 404)


@blueprint.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str):
    """The API's cancel (server/batches.py): the items not sent yet are never sent."""
    found, cancelled = bulk.batches().cancel(batch_id)
    if found is None:
        return problem_page("No such batch", f"No bulk request has the id {batch_id[:100]}.", 404)
    return redirect(url_for(".batch", batch_id=found["id"], cancelled=cancelled))


@blueprint.get("/batches/stream")
def batches_stream():
    """Which batch each batch.* or batch payment's event is about: the pages then fetch their numbers."""
    return stream_response(batch_frame)


@blueprint.app_template_global()
def batch_progress(b: dict) -> dict:
    """A batch in brief as the pages count it: items not sent yet, sent to M-Pesa, with their final answer."""
    count = {outcome: numbers["count"] for outcome, numbers in b["by_outcome"].items()}
    unsent = count["queued"] + count["sending"]
    final = b["item_count"] - unsent - count["pending"]
    return {"unsent": unsent, "queued": count["queued"], "final": final, "waiting": count["pending"],
            "sent": b["item_count"] - unsent - count["cancelled"] - count["not_sent"],
            "unsent_amount": b["by_outcome"]["queued"]["amount"]}


def batch_frame(event: Event) -> str:
    if not event.type.startswith(("batch.", "payment.")):
        return ""  # a callback changes a payment only through a payment.* event
    batch_id = (event.data.get("batch") or {}).get("id") or (event.data.get("payment") or {}).get("batch_id")
    if not batch_id:
        return ""
    return f"id: {event.id}\ndata: {json.dumps({'type': event.type, 'batch_id': batch_id})}\n\n"
