"""Bulk payment requests, the pure part: rows read from JSON or CSV, their validation, the item
states, and what a batch's items add up to (counts, KES, who has not paid, why in words).

The durable job that sends them is server/batches.py; the rules here do no I/O.
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Iterable

from mpesa_agent.payments.phones import InvalidAmount, InvalidPhoneNumber, display_phone, normalize_phone, parse_amount
from mpesa_agent.payments.states import COMPLETED, FAILED, PENDING, UNKNOWN, Reason

MAX_ITEMS = 5000  # one batch; a bigger list is several batches
MAX_REFERENCE = 100  # characters of an item's reference (the first 12 letters and digits reach the phone)
MAX_DESCRIPTION = 100
PHONE_HEADERS = ("phone", "phone_number", "msisdn", "mobile", "number", "simu")
AMOUNT_HEADERS = ("amount", "kes", "ksh", "kiasi")
REFERENCE_HEADERS = ("reference", "ref", "account", "account_reference", "description", "name", "for")


class ItemState(StrEnum):
    """Where one item of a batch is. Only `queued` items are ever pushed, and an item leaves
    `queued` (to `sending`) in a committed transaction before its push: never pushed twice."""

    QUEUED = "queued"  # not sent yet
    SENDING = "sending"  # committed just before its push; a crash here makes it `unknown`
    SENT = "sent"  # Daraja accepted the push: its payment (checkout id) says the rest
    NOT_SENT = "not_sent"  # Daraja refused it, nothing reached the phone; `note` says why
    UNKNOWN = "unknown"  # the push may have reached the phone but its answer was lost: never re-sent
    CANCELLED = "cancelled"  # the batch was cancelled before this item was sent


class BatchStatus(StrEnum):
    SENDING = "sending"  # items still queued
    SENT = "sent"  # every item was pushed (or refused); payments may still be pending
    CANCELLED = "cancelled"  # stopped: the items not yet sent were cancelled


# What one item came to, for people: the payment's state once sent, else the item's own.
OUTCOMES = ("completed", "failed", "pending", "unknown", "not_sent", "cancelled", "queued", "sending")
OPEN_OUTCOMES = frozenset({"pending", "queued", "sending"})
UNKNOWN_AFTER_CRASH = ("the server stopped while sending this push, so it may or may not have reached the "
                       "phone; it is not re-sent (ask the customer before requesting again)")
# Short words for a failure in a summary ("28 of 30 paid, 1 cancelled, 1 did not answer").
SHORT_REASONS = {
    Reason.CANCELLED: "cancelled", Reason.NO_RESPONSE: "did not answer",
    Reason.INSUFFICIENT_BALANCE: "had too little on M-Pesa", Reason.WRONG_PIN: "entered a wrong PIN",
    Reason.EXPIRED: "let the prompt expire", Reason.NOT_DELIVERED: "did not get the prompt",
    Reason.PROMPT_NOT_SENT: "did not get the prompt", Reason.PIN_LOCKED: "have a locked PIN",
    Reason.SUBSCRIBER_LOCKED: "were busy with another payment",
}


@dataclass(frozen=True)
class Row:
    """One valid row: `line` is its line in the CSV (or its position in the JSON list, from 1)."""

    line: int
    phone_number: str  # MSISDN 2547XXXXXXXX
    amount: int
    reference: str = ""

    def to_dict(self) -> dict:
        return {"line": self.line, "phone_number": self.phone_number, "amount": self.amount,
                "reference": self.reference}


@dataclass(frozen=True)
class Problem:
    """Why one row is refused, in words, with the row's line."""

    line: int
    reason: str
    field: str | None = None
    value: str | None = None

    def to_dict(self) -> dict:
        return {"line": self.line, "field": self.field, "reason": self.reason, "value": self.value}


class InvalidBatch(ValueError):
    """The request itself is wrong (not one row): no items, too many, an unreadable CSV."""


def rows_from_json(items: Any) -> list[tuple[int, dict]]:
    """`items` of a JSON request as (line, fields), numbered from 1."""
    if not isinstance(items, list) or not items:
        raise InvalidBatch('"items" must be a non-empty list of {"phone_number", "amount", "reference"}')
    return [(number, item if isinstance(item, dict) else {"_not_an_object": item})
            for number, item in enumerate(items, start=1)]


def rows_from_csv(text: str) -> list[tuple[int, dict]]:
    """`phone,amount[,reference]` lines as (line, fields); a header row is optional (and may reorder
    the columns); blank lines are skipped."""
    try:
        lines = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    except csv.Error as exc:
        raise InvalidBatch(f"the CSV cannot be read: {exc}") from None
    numbered = [(number, [cell.strip() for cell in cells]) for number, cells in enumerate(lines, start=1)
                if any(cell.strip() for cell in cells)]
    if not numbered:
        raise InvalidBatch("the CSV has no rows; send lines of phone,amount[,reference]")
    columns = {"phone_number": 0, "amount": 1, "reference": 2}
    header = _header(numbered[0][1])
    if header is not None:
        columns = header
        numbered = numbered[1:]
        if not numbered:
            raise InvalidBatch("the CSV has a header but no rows")
    rows = []
    for number, cells in numbered:
        fields = {name: cells[index] for name, index in columns.items() if index < len(cells)}
        if len(cells) > max(columns.values()) + 1 and any(cells[max(columns.values()) + 1:]):
            fields["_extra"] = ",".join(cells[max(columns.values()) + 1:])
        rows.append((number, fields))
    return rows


def _header(cells: list[str]) -> dict[str, int] | None:
    """Column positions when `cells` is a header row (it names the phone and amount columns)."""
    names = [cell.lower().replace(" ", "_") for cell in cells]
    found = {}
    for field, choices in (("phone_number", PHONE_HEADERS), ("amount", AMOUNT_HEADERS),
                           ("reference", REFERENCE_HEADERS)):
        index = next((i for i, name in enumerate(names) if name in choices), None)
        if index is not None:
            found[field] = index
    if "phone_number" in found and "amount" in found:
        return found
    return None


def validate(rows: Iterable[tuple[int, dict]], max_amount: int | None,
             recent: dict[str, int] | None = None) -> tuple[list[Row], list[Problem]]:
    """The valid rows and every problem, each naming its line. Uses the single push's rules (phone
    normalisation, whole KES up to `max_amount`); a phone that appears twice is refused after its
    first line; `recent` maps MSISDNs to an amount asked of them in the last 2 minutes (M-Pesa
    declines the same request again within 2 minutes)."""
    valid, problems, first_line = [], [], {}
    recent = recent or {}
    for line, fields in rows:
        if "_not_an_object" in fields:
            problems.append(Problem(line, "must be an object with phone_number and amount"))
            continue
        unknown = set(fields) - {"phone_number", "phone", "amount", "reference"}
        if unknown - {"_extra"}:
            problems.append(Problem(line, f"unknown field{'s' if len(unknown) > 1 else ''}: "
                                          f"{', '.join(sorted(map(str, unknown)))}", field=sorted(unknown)[0]))
            continue
        if "_extra" in fields:
            problems.append(Problem(line, "too many columns: expected phone,amount[,reference]",
                                    value=str(fields["_extra"])[:40]))
            continue
        raw_phone = fields.get("phone_number", fields.get("phone"))
        raw_amount, raw_reference = fields.get("amount"), fields.get("reference") or ""
        bad = len(problems)
        msisdn = None
        try:
            if isinstance(raw_phone, (list, dict, bool)) or raw_phone is None or len(str(raw_phone)) > 30:
                raise InvalidPhoneNumber("Phone number is missing" if raw_phone in (None, "")
                                         else "must be a phone number like 0712345678")
            msisdn = normalize_phone(raw_phone)
        except InvalidPhoneNumber as exc:
            problems.append(Problem(line, str(exc), "phone_number", _shown(raw_phone)))
        try:
            if isinstance(raw_amount, (list, dict)):
                raise InvalidAmount("Amount must be a number of KES")
            amount = parse_amount(raw_amount, maximum=max_amount)
        except InvalidAmount as exc:
            problems.append(Problem(line, str(exc), "amount", _shown(raw_amount)))
        if not isinstance(raw_reference, (str, int)) or isinstance(raw_reference, bool):
            problems.append(Problem(line, "reference must be text", "reference", _shown(raw_reference)))
        elif len(str(raw_reference)) > MAX_REFERENCE:
            problems.append(Problem(line, f"reference must be at most {MAX_REFERENCE} characters", "reference",
                                    _shown(raw_reference)))
        if len(problems) > bad:
            continue
        if msisdn in first_line:
            problems.append(Problem(line, f"{display_phone(msisdn)} is already on line {first_line[msisdn]}: "
                                          "one request per phone in a batch", "phone_number", _shown(raw_phone)))
            continue
        if recent.get(msisdn) == amount:
            problems.append(Problem(line, f"{display_phone(msisdn)} was asked for {amount} KSh less than 2 minutes "
                                          "ago; M-Pesa declines the same request again so soon", "phone_number",
                                    _shown(raw_phone)))
            continue
        first_line[msisdn] = line
        valid.append(Row(line, msisdn, amount, " ".join(str(raw_reference).split())))
    total = len(valid) + len(bad_lines(problems))
    if total > MAX_ITEMS:
        raise InvalidBatch(f"a batch takes at most {MAX_ITEMS} items, got {total}; split it")
    return valid, problems


def bad_lines(problems: list[Problem]) -> set[int]:
    """The lines with at least one problem."""
    return {problem.line for problem in problems}


def _shown(value: Any) -> str | None:
    return None if value is None else str(value)[:40]


def payment_description(batch_description: str, reference: str) -> str:
    """What the item's payment is for: its reference, else the batch's description."""
    return " ".join((reference or batch_description or "").split())[:MAX_DESCRIPTION]


@dataclass(frozen=True)
class ItemView:
    """One item with what its payment became (read by a join of batch_items and payments)."""

    position: int
    line: int
    phone_number: str
    amount: int
    reference: str
    state: str
    note: str | None
    checkout_request_id: str | None
    payment_status: str | None = None
    payment_reason: str | None = None
    receipt: str | None = None

    @property
    def outcome(self) -> str:
        if self.state == ItemState.SENT:
            return str(self.payment_status or PENDING)
        return str(self.state)

    @property
    def reason(self) -> str | None:
        """Why it is not paid, in words (None once paid)."""
        outcome = self.outcome
        if outcome == COMPLETED:
            return None
        if outcome == PENDING:
            return "waiting for the customer to answer the prompt"
        if outcome == "queued":
            return "not sent yet"
        if outcome == "sending":
            return "being sent now"
        if outcome == "cancelled":
            return self.note or "not sent: the batch was cancelled"
        if outcome in (FAILED, UNKNOWN) and self.state == ItemState.SENT:
            return self.payment_reason or self.note or outcome
        return self.note or outcome

    def to_dict(self) -> dict:
        return {"position": self.position, "line": self.line, "phone_number": self.phone_number,
                "amount": self.amount, "reference": self.reference, "state": str(self.state),
                "outcome": self.outcome, "reason": self.reason, "checkout_request_id": self.checkout_request_id,
                "receipt": self.receipt}


def tally(items: list[ItemView]) -> dict[str, dict[str, int]]:
    """Count and KES per outcome (every outcome present, zeros included)."""
    found = {outcome: {"count": 0, "amount": 0} for outcome in OUTCOMES}
    for item in items:
        found[item.outcome]["count"] += 1
        found[item.outcome]["amount"] += item.amount
    return found


def summary(items: list[ItemView]) -> str:
    """One line a person reads: "28 of 30 paid, 1 cancelled, 1 did not answer"."""
    counts = tally(items)
    parts = [f"{counts['completed']['count']} of {len(items)} paid"]
    failures = Counter(SHORT_REASONS.get(item.payment_reason, "failed") for item in items if item.outcome == FAILED)
    parts += [f"{count} {words}" for words, count in failures.most_common()]
    for outcome, words in (("pending", "waiting for an answer"), ("sending", "being sent"),
                           ("queued", "not sent yet"), ("not_sent", "refused by M-Pesa (not sent)"),
                           ("unknown", "unknown (check before asking again)"),
                           ("cancelled", "not sent (batch cancelled)")):
        if counts[outcome]["count"]:
            parts.append(f"{counts[outcome]['count']} {words}")
    return ", ".join(parts)


def settled(items: list[ItemView]) -> bool:
    """Every item has its final answer: nothing queued, being sent or waiting for the customer."""
    return not any(item.outcome in OPEN_OUTCOMES for item in items)
