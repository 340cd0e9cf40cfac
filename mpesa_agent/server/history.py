"""Payment history and analytics: the queries behind `/payment/history*`, `/payment/analytics`, the
dashboard and the chat's "did he pay?" (no Flask here).

History pages by keyset on (created_at, checkout_request_id), newest first, with an opaque cursor:
a page costs the same at row 1,000,000 as at row 1 (an OFFSET would read every row before it), and
payments inserted while someone pages are neither skipped nor repeated. Indexes backing it are in
store.py's SCHEMA (issue 11). The SQL is portable (`?` placeholders, standard functions only).
"""
from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator, Mapping

from mpesa_agent.payments.periods import EAT, InvalidTime, local_hour, parse_time, stamp
from mpesa_agent.payments.phones import InvalidAmount, InvalidPhoneNumber, normalize_phone, parse_amount
from mpesa_agent.payments.record import FIELD_NAMES, Payment
from mpesa_agent.payments.states import COMPLETED, FAILED, FAILURE_REASONS, SettledBy, State
from mpesa_agent.server.store import PAYMENT_COLUMNS, RawCallback, Store

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
EXPORT_PAGE = 1000  # rows per query while a CSV export streams
MAX_QUERY_TEXT = 100
MAX_AMOUNT_FILTER = 10**12  # SQL integers stop at 2**63; no payment comes near
MAX_ANALYTICS_DAYS = 400
DEFAULT_ANALYTICS_DAYS = 30
DURATION_SAMPLE = 50_000  # push-to-callback times read for the percentiles, at most (the newest): bounds a month at 1M rows
STATES = tuple(map(str, State))
UNPAID = "unpaid"  # status filter shorthand: pending, failed or unknown (who has not paid)
UNPAID_STATES = ("pending", "failed", "unknown")
FILTERS = ("status", "phone", "min_amount", "max_amount", "since", "until", "receipt", "q")
REDACTED = "<redacted>"
_SPREADSHEET_FORMULA = ("=", "+", "-", "@", "\t", "\r")


class BadParameter(ValueError):
    """A query parameter is wrong; `name` says which (the API answers 400 naming it)."""

    def __init__(self, name: str, problem: str):
        self.name = name
        super().__init__(f"{name} {problem}")


@dataclass(frozen=True)
class Page:
    payments: list[Payment]
    next_cursor: str | None


def parse_filters(args: Mapping[str, str], *, paging: bool = True) -> dict:
    """Query-string text (`?status=&phone=&...&limit=&cursor=`) as keyword arguments for `history`.

    Raises BadParameter naming the first wrong parameter."""
    found: dict = {}
    for name in FILTERS + (("limit", "cursor") if paging else ()):
        raw = args.get(name)
        if raw is None or str(raw).strip() == "":
            continue
        found[name] = str(raw).strip()
    if "limit" in found:
        raw = found["limit"]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= MAX_LIMIT):
            raise BadParameter("limit", f"must be a whole number from 1 to {MAX_LIMIT}, got {raw[:20]!r}")
        found["limit"] = int(raw)
    for name in ("min_amount", "max_amount"):
        if name in found:
            found[name] = _amount(name, found[name])
    return {**found, **_checked(**{k: v for k, v in found.items() if k in FILTERS})}


def history(store: Store, *, status=None, phone=None, min_amount=None, max_amount=None, since=None, until=None,
            receipt=None, q=None, limit: int = DEFAULT_LIMIT, cursor: str | None = None
            ) -> tuple[list[Payment], str | None]:
    """One page of payments matching every given filter, newest first, and the cursor of the next page.

    `status`: a state, `unpaid`, or several comma-separated; `phone`: any Kenyan form; amounts in
    whole KES (inclusive); `since` (inclusive) / `until` (exclusive): datetimes or text (a date alone is a
    Kenyan day); `receipt`: an M-Pesa receipt; `q`: text in the description (any case)."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadParameter("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    where, args = _where(**_checked(status=status, phone=phone, min_amount=min_amount, max_amount=max_amount,
                                    since=since, until=until, receipt=receipt, q=q))
    if cursor is not None:
        created_at, checkout_id = _decode_cursor(cursor)
        # The first term is a range the index serves; the second breaks ties on equal times.
        where.append("created_at <= ? AND (created_at < ? OR checkout_request_id < ?)")
        args += [created_at, created_at, checkout_id]
    sql = (f"SELECT {PAYMENT_COLUMNS} FROM payments{_clause(where)}"
           " ORDER BY created_at DESC, checkout_request_id DESC LIMIT ?")
    with store.reader() as conn:
        rows = conn.execute(sql, [*args, limit + 1]).fetchall()
    found = [Payment(*row) for row in rows[:limit]]
    more = len(rows) > limit
    return found, (_encode_cursor(found[-1]) if more else None)


def every_payment(store: Store, **filters) -> Iterator[Payment]:
    """Every payment matching `filters` (as `history`), newest first, read a page at a time."""
    cursor = None
    while True:
        found, cursor = history(store, **filters, limit=EXPORT_PAGE, cursor=cursor)
        yield from found
        if cursor is None:
            return


def csv_rows(payments: Iterable[Payment]) -> Iterator[str]:
    """CSV text: a header line, then one line per payment (every field of the record)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(FIELD_NAMES)
    yield buffer.getvalue()
    for payment in payments:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([_cell(value) for value in payment.to_dict().values()])
        yield buffer.getvalue()


def analytics(store: Store, *, since=None, until=None) -> dict:
    """Counts and KES totals by state, completion rate, failure reasons, push-to-callback p50/p90,
    and buckets by Kenyan day and hour, for payments created in [since, until) (default: 30 days to now)."""
    checked = _checked(since=since, until=until)
    until_at = checked.get("until") or stamp(datetime.now(timezone.utc))
    try:
        since_at = checked.get("since") or stamp(datetime.fromisoformat(until_at) - timedelta(days=DEFAULT_ANALYTICS_DAYS))
    except OverflowError:
        raise BadParameter("until", "is too early") from None
    start, end = datetime.fromisoformat(since_at), datetime.fromisoformat(until_at)
    if end < start:
        raise BadParameter("until", "must not be before since")
    if end - start > timedelta(days=MAX_ANALYTICS_DAYS):
        raise BadParameter("since", f"must be at most {MAX_ANALYTICS_DAYS} days before until")
    window = [since_at, until_at]
    # SUBSTR(created_at, 1, 13) is the UTC hour ("2026-11-29T21"): Kenyan days are whole UTC hours apart.
    queries = [
        ("SELECT SUBSTR(created_at, 1, 13), status, COUNT(*), SUM(amount) FROM payments"
         " WHERE created_at >= ? AND created_at < ? GROUP BY SUBSTR(created_at, 1, 13), status", window),
        ("SELECT reason, result_code, COUNT(*), SUM(amount) FROM payments"
         " WHERE status = ? AND created_at >= ? AND created_at < ? GROUP BY reason, result_code",
         [str(FAILED), *window]),
        ("SELECT created_at, settled_at FROM payments WHERE settled_by = ? AND settled_at IS NOT NULL"
         " AND created_at >= ? AND created_at < ? ORDER BY created_at DESC LIMIT ?",
         [str(SettledBy.CALLBACK), *window, DURATION_SAMPLE]),
    ]

    def read() -> list:
        with store.reader() as conn:
            return [conn.execute(sql, args).fetchall() for sql, args in queries]

    hours, reasons, durations = store.run_apart(read)  # a month of a busy shop: off the event loop when served
    by_status = {state: {"count": 0, "amount": 0} for state in STATES}
    days = {day: _bucket(date=day) for day in _days(start, end)}
    by_hour = [_bucket(hour=hour) for hour in range(24)]
    for utc_hour, status, count, amount in hours:
        local = local_hour(utc_hour)
        by_status[status]["count"] += count
        by_status[status]["amount"] += amount or 0
        for bucket in (days.setdefault(local.date().isoformat(), _bucket(date=local.date().isoformat())),
                       by_hour[local.hour]):
            _add(bucket, status, count, amount or 0)
    completed, failed = by_status[COMPLETED]["count"], by_status[FAILED]["count"]
    return {
        "since": since_at, "until": until_at, "timezone": "EAT (UTC+03:00)",
        "count": sum(s["count"] for s in by_status.values()),
        "amount": sum(s["amount"] for s in by_status.values()),
        "by_status": by_status,
        "completion_rate": round(completed / (completed + failed), 4) if completed + failed else None,
        "failure_reasons": _reasons(reasons),
        "time_to_callback": _percentiles(durations),
        "by_day": [days[day] for day in sorted(days)],
        "by_hour": by_hour,
    }


def payment_callbacks(store: Store, checkout_request_id: str, token: str) -> list[dict]:
    """A payment's raw callbacks, oldest first, for its page: body and headers as text, with the
    callback URL's secret token replaced wherever it appears (a proxy's X-Original-URL, a Referer...)."""
    return [_shown(callback, token) for callback in store.callbacks(checkout_request_id)]


def _shown(callback: RawCallback, token: str) -> dict:
    def clean(text: str) -> str:
        return text.replace(token, REDACTED) if token else text

    return {"id": callback.id, "received_at": callback.received_at, "source_addr": callback.source_addr,
            "outcome": callback.outcome, "note": clean(callback.note or "") or None,
            "processed_at": callback.processed_at,
            "headers": {clean(str(name)): clean(str(value)) for name, value in callback.headers.items()},
            "body": clean(callback.body.decode("utf-8", "replace"))}


def _checked(status=None, phone=None, min_amount=None, max_amount=None, since=None, until=None, receipt=None,
             q=None) -> dict:
    """Each given filter in the form SQL compares (MSISDN, whole KES, UTC text), or BadParameter."""
    found: dict = {}
    if status is not None:
        names = [s.strip().lower() for s in (status.split(",") if isinstance(status, str) else status) if s.strip()]
        states = []
        for name in names:
            if name == UNPAID:
                states += UNPAID_STATES
            elif name in STATES:
                states.append(name)
            else:
                raise BadParameter("status", f"must be one of {', '.join(STATES)} or {UNPAID} (comma-separated "
                                             f"for several), got {name[:20]!r}")
        if states:
            found["status"] = tuple(dict.fromkeys(states))
    if phone is not None:
        try:
            found["phone"] = normalize_phone(phone)
        except InvalidPhoneNumber as exc:
            raise BadParameter("phone", f"must be a Kenyan mobile number: {exc}") from None
    for name, value in (("min_amount", min_amount), ("max_amount", max_amount)):
        if value is not None:
            found[name] = _amount(name, value)
    if min_amount is not None and max_amount is not None and found["min_amount"] > found["max_amount"]:
        raise BadParameter("max_amount", "must not be below min_amount")
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            try:
                moment = value if isinstance(value, datetime) else parse_time(value, end=name == "until")
                found[name] = stamp(moment if moment.tzinfo is not None else moment.replace(tzinfo=EAT))
            except (InvalidTime, OverflowError) as exc:
                raise BadParameter(name, f"must be a date or time: {exc}") from None
    if receipt is not None:
        text = str(receipt).strip().upper()
        if not (text.isascii() and text.isalnum() and len(text) <= 30):
            raise BadParameter("receipt", f"must be an M-Pesa receipt like UKYPST28TK, got {str(receipt)[:30]!r}")
        found["receipt"] = text
    if q is not None:
        text = " ".join(str(q).split())
        if len(text) > MAX_QUERY_TEXT:
            raise BadParameter("q", f"must be at most {MAX_QUERY_TEXT} characters")
        if text:
            found["q"] = text
    return found


def _amount(name: str, value) -> int:
    try:
        return parse_amount(value, maximum=MAX_AMOUNT_FILTER)
    except InvalidAmount as exc:
        raise BadParameter(name, f"must be whole KES of at least 1: {exc}") from None


def _where(status=(), phone=None, min_amount=None, max_amount=None, since=None, until=None, receipt=None,
           q=None) -> tuple[list[str], list]:
    where, args = [], []
    if status:
        where.append(f"status IN ({', '.join('?' * len(status))})")
        args += status
    for column, operator, value in (("phone_number", "=", phone), ("amount", ">=", min_amount),
                                    ("amount", "<=", max_amount), ("created_at", ">=", since),
                                    ("created_at", "<", until), ("receipt", "=", receipt)):
        if value is not None:
            where.append(f"{column} {operator} ?")
            args.append(value)
    if q:
        escaped = q.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
        where.append("LOWER(description) LIKE ? ESCAPE '!'")
        args.append(f"%{escaped}%")
    return where, args


def _clause(where: list[str]) -> str:
    return " WHERE " + " AND ".join(where) if where else ""


def _encode_cursor(payment: Payment) -> str:
    raw = json.dumps([payment.created_at, payment.checkout_request_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        text = str(cursor).strip()
        created_at, checkout_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        datetime.fromisoformat(created_at)
        if not isinstance(checkout_id, str):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise BadParameter("cursor", "is not a cursor this server gave (pass next_cursor back unchanged)") from None
    return created_at, checkout_id


def _cell(value):
    """A CSV cell a spreadsheet will not run as a formula (descriptions are the customer's words)."""
    if isinstance(value, str) and value.startswith(_SPREADSHEET_FORMULA):
        return "'" + value
    return "" if value is None else value


def _bucket(**key) -> dict:
    return {**key, "count": 0, "amount": 0, **{state: 0 for state in STATES}, "completed_amount": 0}


def _add(bucket: dict, status: str, count: int, amount: int) -> None:
    bucket["count"] += count
    bucket["amount"] += amount
    bucket[status] += count
    if status == COMPLETED:
        bucket["completed_amount"] += amount


def _days(start: datetime, end: datetime) -> list[str]:
    """Every Kenyan date from `start` up to (not including) `end`."""
    day, last = start.astimezone(EAT).date(), (end - timedelta(milliseconds=1)).astimezone(EAT).date()
    found = []
    while day <= last and end > start:
        found.append(day.isoformat())
        day += timedelta(days=1)
    return found


def _reasons(rows) -> list[dict]:
    """Failure reasons in words, most frequent first (1031 and 1032 are both "cancelled")."""
    merged: dict[str, dict] = {}
    for reason, result_code, count, amount in rows:
        words = reason or FAILURE_REASONS.get(result_code or "") or f"result code {result_code or 'missing'}"
        entry = merged.setdefault(str(words), {"reason": str(words), "result_codes": [], "count": 0, "amount": 0})
        entry["count"] += count
        entry["amount"] += amount or 0
        if result_code and result_code not in entry["result_codes"]:
            entry["result_codes"].append(result_code)
    return sorted(merged.values(), key=lambda entry: (-entry["count"], entry["reason"]))


def _percentiles(rows) -> dict:
    """Nearest-rank p50 and p90 of seconds from registration (right after the push) to the callback."""
    seconds = sorted(max(0.0, (datetime.fromisoformat(settled) - datetime.fromisoformat(created)).total_seconds())
                     for created, settled in rows)

    def rank(p: float) -> float | None:
        return round(seconds[max(0, math.ceil(p * len(seconds)) - 1)], 3) if seconds else None

    return {"count": len(seconds), "p50": rank(0.5), "p90": rank(0.9),
            "sampled": len(seconds) >= DURATION_SAMPLE}
