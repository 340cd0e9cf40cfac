"""The words of a payment's life: its states, who settled it, why, and the events it goes through.

Every one is a `StrEnum`, so it is stored and sent as its plain text ("completed") and compares
equal to it. Daraja result codes map to a state and a reason on `ResultCode` (number or string),
never on `ResultDesc`, whose wording changes.
"""
from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a payment is: `pending` until evidence settles it (DESIGN.md "Payment life")."""

    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    UNKNOWN = "unknown"  # an unrecognised result code, a lost push answer, no final answer from STK Query


PENDING, COMPLETED, FAILED, UNKNOWN = State.PENDING, State.COMPLETED, State.FAILED, State.UNKNOWN


class SettledBy(StrEnum):
    """What settled a payment."""

    CALLBACK = "callback"
    QUERY = "query"
    RECONCILER = "reconciler"  # gave up: STK Query never gave a final answer (the payment is `unknown`)


class Verification(StrEnum):
    """A success callback checked by STK Query (VERIFY_SUCCESS_BY_QUERY)."""

    AWAITING = "awaiting"
    CONFIRMED = "confirmed"
    CONTRADICTED = "contradicted"
    UNCONFIRMED = "unconfirmed"  # the reconciler gave up before STK Query answered


class CallbackOutcome(StrEnum):
    """What became of one raw callback; `received` = stored, not applied yet (a crash in between)."""

    RECEIVED = "received"
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    PARKED = "parked"  # no registration yet: applied the moment it is registered
    CONFLICT = "conflict"  # contradicts a final state: recorded for review, never applied
    REJECTED = "rejected"  # wrong token or source: kept for review, never parsed as evidence
    INVALID = "invalid"


class EventType(StrEnum):
    """The types of the event log (server/store.py `events`)."""

    PAYMENT_REGISTERED = "payment.registered"
    PAYMENT_COMPLETED = "payment.completed"
    PAYMENT_FAILED = "payment.failed"
    PAYMENT_UNKNOWN = "payment.unknown"
    PAYMENT_CONFLICT = "payment.conflict"  # contradicting evidence recorded, not applied
    PAYMENT_UPDATED = "payment.updated"  # anything else on the record: a receipt added, a query counted
    PAYMENT_RETRIED = "payment.retried"  # a retry of this payment was sent (or may have been): data.retry says which
    CALLBACK_RECEIVED = "callback.received"
    CALLBACK_PARKED = "callback.parked"
    BATCH_STARTED = "batch.started"  # a bulk request was accepted (server/batches.py)
    BATCH_PROGRESS = "batch.progress"  # about every tenth of its items pushed
    BATCH_FINISHED = "batch.finished"  # every item pushed, refused or cancelled
    BATCH_SETTLED = "batch.settled"  # every item has its final answer


SETTLED_EVENTS = {COMPLETED: EventType.PAYMENT_COMPLETED, FAILED: EventType.PAYMENT_FAILED,
                  UNKNOWN: EventType.PAYMENT_UNKNOWN}


class Reason(StrEnum):
    """Why a payment failed or is unknown, in words a person understands (stored as this text)."""

    INSUFFICIENT_BALANCE = "Insufficient M-Pesa balance"
    BELOW_MINIMUM = "Declined: amount below the minimum allowed"
    ABOVE_MAXIMUM = "Declined: amount above the maximum allowed"
    DAILY_LIMIT = "Declined: daily transfer limit reached"
    BALANCE_LIMIT = "Declined: account balance limit reached"
    SAME_REQUEST = "Declined: the same amount was requested from this phone within 2 minutes"
    SYSTEM_BUSY = "M-Pesa system busy, try again shortly"
    SUBSCRIBER_LOCKED = "Another M-Pesa transaction is in progress on this phone; try again in 1-3 minutes"
    EXPIRED = "The payment request expired before it was completed"
    PROMPT_NOT_SENT = "M-Pesa could not send the payment prompt"
    CANCELLED = "Request cancelled by user"
    NOT_DELIVERED = "The payment prompt could not be delivered to the phone"
    NO_RESPONSE = "No response from the customer (phone unreachable or prompt ignored)"
    WRONG_PIN = "Wrong M-Pesa PIN entered"
    NOT_PERMITTED = "Not permitted: wrong transaction type or receiving shortcode"
    NO_SUCH_OPERATOR = "Not permitted: the receiving shortcode or operator does not exist"
    PIN_LOCKED = "The customer's M-Pesa PIN is locked"
    MISMATCH = "callback does not match the registered payment (amount/phone)"
    NO_RECEIPT = "success callback without an M-Pesa receipt number"
    RECEIPT_USED = "the M-Pesa receipt already completed another payment"


STILL_PROCESSING_CODE = "4999"

FAILURE_REASONS = {
    "1": Reason.INSUFFICIENT_BALANCE,
    "2": Reason.BELOW_MINIMUM,
    "3": Reason.ABOVE_MAXIMUM,
    "4": Reason.DAILY_LIMIT,
    "8": Reason.BALANCE_LIMIT,
    "17": Reason.SAME_REQUEST,
    "26": Reason.SYSTEM_BUSY,
    "1001": Reason.SUBSCRIBER_LOCKED,
    "1019": Reason.EXPIRED,
    "1025": Reason.PROMPT_NOT_SENT,
    "9999": Reason.PROMPT_NOT_SENT,
    "1031": Reason.CANCELLED,
    "1032": Reason.CANCELLED,
    "1036": Reason.NOT_DELIVERED,
    "1037": Reason.NO_RESPONSE,
    "2001": Reason.WRONG_PIN,
    "2028": Reason.NOT_PERMITTED,
    "SFC_IC0003": Reason.NO_SUCH_OPERATOR,
    "8006": Reason.PIN_LOCKED,
}


def normalize_code(result_code: object) -> str:
    """`0`, `"0"`, `0.0` and `" 0 "` are all `"0"`; anything else keeps its text."""
    if isinstance(result_code, bool) or result_code is None:
        return ""
    if isinstance(result_code, float) and result_code.is_integer():
        return str(int(result_code))
    return str(result_code).strip()


def classify(result_code: object, result_desc: str = "") -> tuple[State, str | None]:
    """Return `(state, reason)`: completed, failed with a reason, pending (4999) or unknown."""
    code = normalize_code(result_code)
    if code == "0":
        return COMPLETED, None
    if code == STILL_PROCESSING_CODE:
        return PENDING, None
    if code in FAILURE_REASONS:
        return FAILED, FAILURE_REASONS[code]
    detail = f" ({result_desc.strip()})" if result_desc and result_desc.strip() else ""
    return UNKNOWN, f"Unrecognised M-Pesa result code {code or 'missing'}{detail}"
