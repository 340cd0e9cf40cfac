"""The life of a payment as one pure function: `decide(payment, evidence) -> Decision`.

The rules (DESIGN.md "Payment life"); tests/test_lifecycle.py has one test or more for each:
1. The first final state wins. Later contradicting evidence is recorded for review (a conflict),
   never applied; the same evidence again is a duplicate and changes nothing.
2. A success is believed only when it matches the registration (amount, phone) and carries a
   receipt; otherwise the payment is `unknown` with a review note, never `completed`.
3. One M-Pesa receipt completes at most one payment: a success whose receipt already completed
   another payment is `unknown` with a review note.
4. `unknown` without a review note (an unrecognised result code), or set by the reconciler when STK
   Query never answered, is still open: a later callback or query may settle it.
5. With VERIFY_SUCCESS_BY_QUERY a success callback is held (`verification` awaiting, the payment
   stays pending) until STK Query confirms it; a failure from either contradicts it and wins,
   for review.
6. STK Query's "still processing" settles nothing; the reconciler's give-up makes an open payment
   `unknown` for review.
The callback server's manager applies a decision (its changes and its events) in one transaction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping, Union

from mpesa_agent.payments.callbacks import StkCallback
from mpesa_agent.payments.phones import InvalidPhoneNumber, normalize_phone
from mpesa_agent.payments.record import Payment
from mpesa_agent.payments.states import (COMPLETED, PENDING, SETTLED_EVENTS, UNKNOWN, CallbackOutcome,
                                         EventType, Reason, SettledBy, Verification, normalize_code)

AWAITING_NOTE = "success callback held until STK Query confirms it"


@dataclass(frozen=True)
class CallbackEvidence:
    """A parsed callback (stored as `callback_id`); `receipt_owner`: the payment that its receipt
    already completed, if any (the manager looks it up)."""

    callback: StkCallback
    callback_id: int
    receipt_owner: str | None = None


@dataclass(frozen=True)
class QueryEvidence:
    """An STK Query answer: `state` completed, failed, unknown or pending (still processing);
    `receipt_owner`: the payment that the held success callback's receipt already completed, if any."""

    state: str
    result_code: Any = None
    result_desc: str | None = None
    reason: str | None = None
    receipt_owner: str | None = None


@dataclass(frozen=True)
class GiveUp:
    """The reconciler's last query brought no final answer."""

    reason: str


Evidence = Union[CallbackEvidence, QueryEvidence, GiveUp]


@dataclass(frozen=True)
class Decision:
    """What to write: `changes` to the payment, `events` to append, and whether waiters wake."""

    changes: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[EventType, ...] = ()
    settled: bool = False  # the payment left pending (or an open unknown): wake whoever waits
    outcome: CallbackOutcome | None = None  # for callback evidence: what became of the callback
    note: str | None = None


NOTHING = Decision()


def is_open(payment: Payment) -> bool:
    """Still waiting for evidence: pending, or unknown without anything a person must review
    (or only the reconciler's "no final answer", which a late callback may still settle)."""
    return payment.status == PENDING or (
        payment.status == UNKNOWN and (not payment.review or payment.settled_by == SettledBy.RECONCILER))


def awaiting_verification(payment: Payment) -> bool:
    return payment.verification == Verification.AWAITING and is_open(payment)


def decide(payment: Payment, evidence: Evidence, *, now: str, verify_successes: bool = False) -> Decision:
    """What `evidence` does to `payment` (`now`: the time to record as `settled_at`)."""
    if isinstance(evidence, CallbackEvidence):
        return _callback(payment, evidence, now, verify_successes)
    if isinstance(evidence, QueryEvidence):
        return _query(payment, evidence, now)
    if isinstance(evidence, GiveUp):
        return _give_up(payment, evidence, now)
    raise TypeError(f"not evidence: {evidence!r}")


def settled(state: str, changes: Mapping[str, Any], **kwargs) -> Decision:
    return Decision(changes, (SETTLED_EVENTS[state],), True, **kwargs)


@dataclass(frozen=True)
class _Facts:
    """What a callback proves about one payment."""

    state: str
    reason: str | None
    review: str | None = None
    receipt: str | None = None
    transaction_date: str | None = None
    paid_phone: str | None = None
    paid_amount: str | None = None

    def paid(self) -> dict:
        return {"receipt": self.receipt, "transaction_date": self.transaction_date,
                "paid_phone": self.paid_phone, "paid_amount": self.paid_amount}


def _facts(evidence: CallbackEvidence, payment: Payment) -> _Facts:
    """A success is only believed when it matches the registration, has a receipt, and that
    receipt completed no other payment."""
    callback = evidence.callback
    if callback.state != COMPLETED:
        return _Facts(callback.state, callback.reason)
    items = callback.items
    paid_amount = _exact(items.get("Amount"))
    paid_phone = items.get("PhoneNumber")
    receipt = _text(items.get("MpesaReceiptNumber"))
    facts = dict(receipt=receipt, transaction_date=_text(items.get("TransactionDate")),
                 paid_phone=_text(paid_phone), paid_amount=str(paid_amount) if paid_amount is not None else None)
    mismatches = []
    if paid_amount is None:
        mismatches.append(f"no Amount (registered {payment.amount})")
    elif paid_amount != payment.amount:
        mismatches.append(f"Amount {paid_amount} but registered {payment.amount}")
    if _text(paid_phone) is not None and not _phone_matches(paid_phone, payment.phone_number):
        mismatches.append(f"PhoneNumber {paid_phone} but registered {payment.phone_number}")
    if mismatches:
        return _Facts(UNKNOWN, Reason.MISMATCH, "success callback: " + "; ".join(mismatches), **facts)
    if receipt is None:
        return _Facts(UNKNOWN, Reason.NO_RECEIPT, "success callback without MpesaReceiptNumber", **facts)
    if evidence.receipt_owner not in (None, payment.checkout_request_id):
        return _Facts(UNKNOWN, Reason.RECEIPT_USED, f"success callback with receipt {receipt}, which already "
                      f"completed payment {evidence.receipt_owner}; not completed", **facts)
    return _Facts(COMPLETED, None, **facts)


def _callback(payment: Payment, evidence: CallbackEvidence, now: str, verify_successes: bool) -> Decision:
    callback, callback_id = evidence.callback, evidence.callback_id
    facts = _facts(evidence, payment)
    if awaiting_verification(payment):
        return _callback_while_awaiting(payment, evidence, facts, now)
    same = facts.state == payment.status and facts.receipt == payment.receipt
    if is_open(payment) and facts.state == COMPLETED and verify_successes:
        changes = dict(result_code=callback.result_code, result_desc=callback.result_desc, **facts.paid(),
                       callback_id=callback_id, verification=Verification.AWAITING, query_attempts=0)
        return Decision(changes, (EventType.PAYMENT_UPDATED,), False, CallbackOutcome.APPLIED, AWAITING_NOTE)
    if is_open(payment) and not same:
        changes = dict(status=facts.state, result_code=callback.result_code, result_desc=callback.result_desc,
                       reason=facts.reason, **facts.paid(), settled_by=SettledBy.CALLBACK, review=facts.review,
                       callback_id=callback_id, settled_at=now)
        return settled(facts.state, changes, outcome=CallbackOutcome.APPLIED,
                       note=facts.reason if facts.review else None)
    if same or (facts.state == COMPLETED == payment.status and payment.receipt is None):
        if payment.receipt is None and facts.receipt:  # settled by STK Query, which has no receipt
            return Decision(facts.paid(), (EventType.PAYMENT_UPDATED,), False, CallbackOutcome.DUPLICATE,
                            "same outcome; added the receipt details")
        return Decision(outcome=CallbackOutcome.DUPLICATE,
                        note=f"same outcome as before (ResultCode {callback.result_code})")
    note = (f"ResultCode {callback.result_code} says {facts.state}"
            f"{' (receipt ' + facts.receipt + ')' if facts.receipt else ''}"
            f" but the payment is already {payment.status}; not applied")
    return _conflict(payment, f"callback #{callback_id}: {note}", outcome=CallbackOutcome.CONFLICT, note=note)


def _callback_while_awaiting(payment: Payment, evidence: CallbackEvidence, facts: _Facts, now: str) -> Decision:
    """A callback for a payment whose success callback waits for STK Query's confirmation."""
    callback, callback_id = evidence.callback, evidence.callback_id
    if facts.state == COMPLETED and facts.receipt == payment.receipt:
        return Decision(outcome=CallbackOutcome.DUPLICATE, note="same success callback; still awaiting STK Query")
    held = f"success callback #{payment.callback_id} (receipt {payment.receipt}) was awaiting STK Query"
    if facts.state == COMPLETED:
        note = f"{held}; callback #{callback_id} says success with receipt {facts.receipt}; not applied"
        return _conflict(payment, note, outcome=CallbackOutcome.CONFLICT, note=note)
    # A failure (or unknown) answer contradicts the unconfirmed success: it wins, for review.
    note = f"{held} when callback #{callback_id} said {facts.state} (ResultCode {callback.result_code})"
    changes = dict(status=facts.state, result_code=callback.result_code, result_desc=callback.result_desc,
                   reason=facts.reason, receipt=None, transaction_date=None, paid_phone=None, paid_amount=None,
                   settled_by=SettledBy.CALLBACK, callback_id=callback_id, settled_at=now,
                   verification=Verification.CONTRADICTED, review=joined(payment.review, note))
    return settled(facts.state, changes, outcome=CallbackOutcome.APPLIED, note=note)


def _query(payment: Payment, evidence: QueryEvidence, now: str) -> Decision:
    state = evidence.state
    awaiting = awaiting_verification(payment)
    if state == PENDING or (awaiting and state == UNKNOWN):
        return NOTHING  # no final answer: the reconciler asks again later
    code = normalize_code(evidence.result_code) or None
    if awaiting and state == COMPLETED and evidence.receipt_owner not in (None, payment.checkout_request_id):
        note = (f"success callback with receipt {payment.receipt} confirmed by STK Query, but that receipt "
                f"already completed payment {evidence.receipt_owner}; not completed")
        return settled(UNKNOWN, dict(status=UNKNOWN, reason=Reason.RECEIPT_USED, settled_by=SettledBy.QUERY,
                                     settled_at=now, review=joined(payment.review, note)))
    if awaiting and state == COMPLETED:
        return settled(COMPLETED, dict(
            status=COMPLETED, reason=None, settled_by=SettledBy.CALLBACK, verification=Verification.CONFIRMED,
            settled_at=now, review=None if payment.settled_by == SettledBy.RECONCILER else payment.review))
    if awaiting:
        note = (f"success callback #{payment.callback_id} (receipt {payment.receipt}) contradicted by "
                f"STK Query (ResultCode {code}: {evidence.result_desc or evidence.reason}): forged or mistaken; "
                "not completed")
        return settled(state, dict(
            status=state, result_code=code, result_desc=evidence.result_desc, reason=evidence.reason, receipt=None,
            transaction_date=None, paid_phone=None, paid_amount=None, settled_by=SettledBy.QUERY, settled_at=now,
            verification=Verification.CONTRADICTED, review=joined(payment.review, note)))
    if is_open(payment):
        return settled(state, dict(status=state, result_code=code, result_desc=evidence.result_desc,
                                   reason=evidence.reason, settled_by=SettledBy.QUERY, settled_at=now))
    if state != payment.status:
        return _conflict(payment, f"STK Query says {state} (ResultCode {code}) but the payment is already "
                                  f"{payment.status}")
    return NOTHING


def _give_up(payment: Payment, evidence: GiveUp, now: str) -> Decision:
    if not is_open(payment):
        return NOTHING
    held = payment.verification == Verification.AWAITING
    return settled(UNKNOWN, dict(
        status=UNKNOWN, reason=evidence.reason, settled_by=SettledBy.RECONCILER, settled_at=now,
        review=joined(payment.review, evidence.reason),
        verification=Verification.UNCONFIRMED if held else payment.verification))


def _conflict(payment: Payment, review_note: str, **kwargs) -> Decision:
    """Contradicting evidence: recorded on the payment for a person, never applied."""
    return Decision({"review": joined(payment.review, review_note)}, (EventType.PAYMENT_CONFLICT,), False, **kwargs)


def joined(*notes: str | None) -> str | None:
    return "; ".join(note for note in notes if note) or None


def _exact(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _text(value: Any) -> str | None:
    return None if value is None or isinstance(value, bool) or str(value).strip() == "" else str(value).strip()


def _phone_matches(value: Any, msisdn: str) -> bool:
    """The callback's PhoneNumber is the registered MSISDN (a masked `2547****678` may match)."""
    text = str(value).strip()
    if text == msisdn:  # the usual case: what we registered (normalized), as Daraja sends it back
        return True
    if "*" in text:
        text = "254" + text[1:] if text.startswith("0") else text
        return len(text) == len(msisdn) and all(a in ("*", b) for a, b in zip(text, msisdn))
    try:
        return normalize_phone(text) == msisdn
    except InvalidPhoneNumber:
        return False
