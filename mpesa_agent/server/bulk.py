"""`/payment/bulk`: ask many people to pay at once (JSON items or a CSV), follow the batch, cancel it.

Every row is validated first, with the single push's rules (payments/bulk.py); nothing is stored
if one is bad, unless `skip_invalid`. The pushes are sent by the server's bulk sender
(server/batches.py), at BULK_PUSHES_PER_SECOND.
"""
from __future__ import annotations

import csv
import io

from flask import Blueprint, Response, current_app, jsonify, request

from mpesa_agent.payments.bulk import MAX_DESCRIPTION, InvalidBatch, bad_lines, rows_from_csv, rows_from_json, validate
from mpesa_agent.server.batches import Batches
from mpesa_agent.server.http import error, json_object, settings

MAX_BULK_BODY_BYTES = 1024 * 1024  # 5,000 rows fit in well under this
CSV_TYPES = ("text/csv", "text/plain", "application/csv", "application/vnd.ms-excel")
CSV_COLUMNS = ("position", "line", "phone_number", "amount", "reference", "outcome", "reason", "checkout_request_id",
               "receipt")
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")

blueprint = Blueprint("bulk", __name__)


def batches() -> Batches:
    return current_app.extensions["batches"]


@blueprint.post("/payment/bulk")
def create():
    request.max_content_length = MAX_BULK_BODY_BYTES
    try:
        description, skip_invalid, rows = _read_request()
        valid, problems = validate(rows, settings().max_amount, batches().recent_requests())
    except InvalidBatch as exc:
        return error(400, str(exc))
    bad = len(bad_lines(problems))
    total = len(valid) + bad
    if problems and not skip_invalid:
        return error(400, f"{bad} of {total} rows {'is' if bad == 1 else 'are'} invalid, so "
                          "nothing was sent: fix them, or send skip_invalid=true to send only the valid rows",
                     problems=[problem.to_dict() for problem in problems])
    if not valid:
        return error(400, f"none of the {total} rows is valid; nothing was sent",
                     problems=[problem.to_dict() for problem in problems])
    batch_id = batches().create(description, valid, problems)
    sender = current_app.extensions.get("bulk_sender")
    if sender is not None:
        sender.poke()
    response = jsonify({"status": "accepted", "batch": batches().report(batch_id)})
    response.headers["Location"] = f"/payment/bulk/{batch_id}"
    return response, 201


def _read_request() -> tuple[str, bool, list]:
    """(description, skip_invalid, numbered rows) from JSON, a CSV body, or a multipart CSV file."""
    if request.mimetype == "multipart/form-data":
        upload = next(iter(request.files.values()), None)
        if upload is None:
            raise InvalidBatch("attach the CSV as a file (any field name), or send it as a text/csv body")
        return (_description(request.form.get("description")), _flag(request.form.get("skip_invalid")),
                rows_from_csv(_text(upload.read())))
    if request.mimetype in CSV_TYPES:
        return (_description(request.args.get("description")), _flag(request.args.get("skip_invalid")),
                rows_from_csv(_text(request.get_data())))
    data, problem = json_object(request.get_data())
    if problem:
        raise InvalidBatch(f"{problem} (or a CSV: Content-Type text/csv, or a multipart file)")
    unknown = set(data) - {"description", "items", "skip_invalid"}
    if unknown:
        raise InvalidBatch(f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(sorted(unknown))}")
    skip = data.get("skip_invalid", False)
    if not isinstance(skip, bool):
        raise InvalidBatch("skip_invalid must be true or false")
    return _description(data.get("description")), skip, rows_from_json(data.get("items"))


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidBatch("the CSV must be UTF-8 text") from None


def _description(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise InvalidBatch(f"description must be text of at most {MAX_DESCRIPTION} characters")
    return " ".join(value.split())


def _flag(value: str | None) -> bool:
    text = (value or "").strip().lower()
    if text not in TRUE + FALSE:
        raise InvalidBatch(f"skip_invalid must be true or false, got {text[:20]!r}")
    return text in TRUE


@blueprint.get("/payment/bulk")
def recent():
    raw = request.args.get("limit", "20").strip()
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw[:5]) <= 100):
        return error(400, f"limit must be a whole number from 1 to 100, got {raw[:20]!r}")
    return jsonify({"batches": batches().recent(int(raw))})


@blueprint.get("/payment/bulk/<batch_id>")
def report(batch_id: str):
    """The batch's progress and outcome; `?items=true` adds every item."""
    flag = request.args.get("items", "false").strip().lower()
    if flag not in TRUE + FALSE:
        return error(400, f"items must be true or false, got {flag[:20]!r}")
    found = batches().report(batch_id, with_items=flag in TRUE)
    return jsonify(found) if found is not None else unknown_batch(batch_id)


@blueprint.get("/payment/bulk/<batch_id>.csv")
def report_csv(batch_id: str):
    """Every item of the batch, with its outcome, as CSV."""
    answer = csv_download(batch_id)
    return answer if answer is not None else unknown_batch(batch_id)


def csv_download(batch_id: str) -> Response | None:
    """The batch's items with their outcomes as a CSV attachment (None: no such batch); the
    dashboard's download is this too."""
    found = batches().report(batch_id, with_items=True)
    if found is None:
        return None
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(found["items"])
    return Response(out.getvalue(), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{found["id"]}.csv"'})


@blueprint.post("/payment/bulk/<batch_id>/cancel")
def cancel(batch_id: str):
    found, cancelled = batches().cancel(batch_id)
    if found is None:
        return unknown_batch(batch_id)
    return jsonify({"status": found["status"], "cancelled": cancelled, "batch": found})


def unknown_batch(batch_id: str):
    return error(404, f"no batch {batch_id[:100]!r}", batch_id=batch_id[:100])
