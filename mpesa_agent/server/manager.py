"""Tracks payments from registration to outcome: applies Daraja callbacks and wakes waiters.

One `CallbackManager` per process (the callback server's app factory makes it). Rules, from
DESIGN.md "Payment life":
- every raw callback is committed before it is parsed (`ingest`);
- a callback for an unregistered payment is parked and applied the moment it is registered;
- the first final state wins: a duplicate changes nothing, a contradiction is recorded as a
  conflict and flagged for review, never applied;
- a success callback whose amount or phone differs from the registration, or that has no
  receipt, makes the payment `unknown` and flagged for review, never `completed`;
- `unknown` without a review flag (an unrecognised result code), or set by the reconciler when
  STK Query never gave a final answer, is not final: a later callback or STK Query may settle it;
- with `verify_success_by_query`, a success callback is held (`verification` "awaiting") until an
  STK Query confirms it (`settle_from_query`); the payment stays pending meanwhile.
Waiters sleep on a per-payment `threading.Event` set right after the settling commit.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Mapping, NamedTuple

from mpesa_agent.config import Settings
from mpesa_agent.payments.callbacks import (CHECKOUT_ID_PATTERN, MAX_TEXT_FIELD, InvalidCallback, StkCallback,
                                             parse_callback)
from mpesa_agent.payments.states import COMPLETED, FAILED, PENDING, UNKNOWN, normalize_code
from mpesa_agent.payments.phones import InvalidAmount, InvalidPhoneNumber, normalize_phone, parse_amount
from mpesa_agent.server.store import (APPLIED, CONFLICT, DUPLICATE, INVALID, PARKED, RECEIVED, REJECTED, Payment,
                    RawCallback, Store, Transaction, utcnow)

log = logging.getLogger(__name__)

MISMATCH_REASON = "callback does not match the registered payment (amount/phone)"
NO_RECEIPT_REASON = "success callback without an M-Pesa receipt number"
# Verification of success callbacks by STK Query (payments.verification).
AWAITING, CONFIRMED, CONTRADICTED, UNCONFIRMED = "awaiting", "confirmed", "contradicted", "unconfirmed"
AWAITING_NOTE = "success callback held until STK Query confirms it"
# settled_by of an `unknown` set by the reconciler when STK Query never gave a final answer.
RECONCILER = "reconciler"


class InvalidRegistration(ValueError):
    """`problems` maps each bad field to what is wrong with it."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        super().__init__("; ".join(f"{name}: {why}" for name, why in problems.items()))


class RegistrationConflict(Exception):
    """The id is already registered for a different payment (the server answers 409)."""

    def __init__(self, existing: Payment, fields: list[str]):
        self.existing = existing
        self.fields = fields
        super().__init__(f"{existing.checkout_request_id} is already registered with a different "
                         f"{', '.join(fields)}")


class UnknownPayment(KeyError):
    """No payment is registered under this checkout request id."""


class Registration(NamedTuple):
    payment: Payment
    created: bool


class CallbackResult(NamedTuple):
    callback_id: int
    outcome: str
    note: str | None
    checkout_request_id: str | None
    payment: Payment | None


@dataclass(frozen=True)
class _Evidence:
    state: str
    reason: str | None
    review: str | None = None
    receipt: str | None = None
    transaction_date: str | None = None
    paid_phone: str | None = None
    paid_amount: str | None = None


def _exact(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


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


def _text(value: Any) -> str | None:
    return None if value is None or isinstance(value, bool) or str(value).strip() == "" else str(value).strip()


def _evidence(callback: StkCallback, payment: Payment) -> _Evidence:
    """What the callback proves about `payment`; a success is only believed when it matches."""
    if callback.state != COMPLETED:
        return _Evidence(callback.state, callback.reason)
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
        return _Evidence(UNKNOWN, MISMATCH_REASON, "success callback: " + "; ".join(mismatches), **facts)
    if receipt is None:
        return _Evidence(UNKNOWN, NO_RECEIPT_REASON, "success callback without MpesaReceiptNumber", **facts)
    return _Evidence(COMPLETED, None, **facts)


def _is_open(payment: Payment) -> bool:
    """Still waiting for evidence: pending, or unknown without anything a person must review
    (or only the reconciler's "no final answer", which a late callback may still settle)."""
    return payment.status == PENDING or (
        payment.status == UNKNOWN and (not payment.review or payment.settled_by == RECONCILER))


def _joined(*notes: str | None) -> str | None:
    return "; ".join(note for note in notes if note) or None


class _Waiters:
    __slots__ = ("event", "count")

    def __init__(self):
        self.event = threading.Event()
        self.count = 0


class CallbackManager:
    """Registers payments, applies callbacks durably and wakes whoever waits for an outcome."""

    def __init__(self, store: Store, settings: Settings | None = None):
        self.store = store
        self.settings = settings
        self._lock = threading.Lock()
        self._waiters: dict[str, _Waiters] = {}
        # Called with a checkout id after a success callback is held for verification (the
        # reconciler sets it); without it, held payments wait for the reconciler's next start.
        self.on_unverified_success: Callable[[str], None] | None = None
        self.recover()

    @property
    def verify_successes(self) -> bool:
        return bool(self.settings and self.settings.verify_success_by_query)

    def register(self, checkout_request_id: Any, phone_number: Any, amount: Any,
                 description: Any = "", merchant_request_id: Any = None) -> Registration:
        """Track a payment; the same registration again is harmless, a different one conflicts."""
        checkout_id, msisdn, amount, description, merchant_id = self._validate(
            checkout_request_id, phone_number, amount, description, merchant_request_id)
        settled = False
        with self.store.transaction() as tx:
            existing = tx.payment(checkout_id)
            if existing is not None:
                differences = [name for name, old, new in (
                    ("phone_number", existing.phone_number, msisdn), ("amount", existing.amount, amount),
                    ("description", existing.description, description)) if old != new]
                if merchant_id and existing.merchant_request_id not in (None, merchant_id):
                    differences.append("merchant_request_id")
                if differences:
                    raise RegistrationConflict(existing, differences)
                if merchant_id and not existing.merchant_request_id:
                    existing = tx.update_payment(checkout_id, merchant_request_id=merchant_id)
                return Registration(existing, False)
            payment = tx.insert_payment(checkout_id, msisdn, amount, description, merchant_id)
            for parked in tx.parked_callbacks(checkout_id):
                try:
                    outcome, note, changed = self._apply(tx, payment, parse_callback(parked.body), parked.id)
                except InvalidCallback as exc:  # parked only after parsing, so only after a code change
                    outcome, note, changed = INVALID, str(exc), False
                tx.set_callback_outcome(parked.id, outcome, note)
                log.info("callback #%d %s: parked callback matched at registration: %s%s",
                         parked.id, checkout_id, outcome, f" ({note})" if note else "")
                settled = settled or changed
                payment = tx.payment(checkout_id)
        log.info("registered %s: %s KES (%s)", checkout_id, amount, payment.status)
        if settled:
            self._wake(checkout_id)
        self._request_verification(payment)
        return Registration(payment, True)

    def _validate(self, checkout_request_id, phone_number, amount, description, merchant_request_id):
        problems: dict[str, str] = {}
        checkout_id = checkout_request_id.strip() if isinstance(checkout_request_id, str) else None
        if checkout_id is None or not CHECKOUT_ID_PATTERN.match(checkout_id):
            problems["checkout_request_id"] = ("must be the CheckoutRequestID from the STK Push answer: "
                                               "1-100 letters, digits, _ . : or -")
        msisdn = None
        if phone_number is not None and (isinstance(phone_number, bool) or not isinstance(phone_number, (str, int))):
            problems["phone_number"] = "must be text like 0712345678 or 254712345678"
        elif len(str(phone_number)) > 30:
            problems["phone_number"] = "is too long to be a phone number"
        else:
            try:
                msisdn = normalize_phone(phone_number)
            except InvalidPhoneNumber as exc:
                problems["phone_number"] = str(exc)
        whole = None
        if isinstance(amount, (list, dict)):
            problems["amount"] = "must be a number of KES"
        else:
            try:
                whole = parse_amount(amount, maximum=self.settings.max_amount if self.settings else None)
            except InvalidAmount as exc:
                problems["amount"] = str(exc)
        if description is None:
            description = ""
        if not isinstance(description, str):
            problems["description"] = "must be text"
        else:
            description = " ".join(description.split())
            if len(description) > MAX_TEXT_FIELD:
                problems["description"] = f"must be at most {MAX_TEXT_FIELD} characters"
        if merchant_request_id is not None and (not isinstance(merchant_request_id, str)
                                                or len(merchant_request_id.strip()) > MAX_TEXT_FIELD):
            problems["merchant_request_id"] = f"must be text of at most {MAX_TEXT_FIELD} characters"
        if problems:
            raise InvalidRegistration(problems)
        return checkout_id, msisdn, whole, description, (merchant_request_id or "").strip() or None

    def record_callback(self, raw_body: bytes, headers: Mapping[str, str] | None,
                        source_addr: str | None) -> int:
        """Commit the raw callback (nothing parsed yet) and return its id."""
        return self.store.record_callback(raw_body, headers, source_addr)

    def record_rejected(self, raw_body: bytes, headers: Mapping[str, str] | None,
                        source_addr: str | None, why: str) -> int:
        """Keep a refused callback (wrong token, untrusted source) for review; it is never applied."""
        try:
            checkout_id = parse_callback(raw_body).checkout_request_id  # to find it when reviewing
        except InvalidCallback as exc:
            checkout_id = exc.checkout_request_id
        with self.store.transaction() as tx:
            callback_id = tx.insert_callback(raw_body, headers, source_addr, REJECTED, why, checkout_id)
        log.warning("callback #%d from %s rejected: %s", callback_id, source_addr, why)
        return callback_id

    def ingest(self, raw_body: bytes, headers: Mapping[str, str] | None, source_addr: str | None) -> CallbackResult:
        """Store, then apply. If applying fails the callback stays stored and is applied at start."""
        callback_id = self.record_callback(raw_body, headers, source_addr)
        try:
            return self.process_callback(callback_id, _stored_body=bytes(raw_body))
        except Exception:
            log.exception("callback #%d stored but not applied; it will be applied at the next start",
                          callback_id)
            return CallbackResult(callback_id, RECEIVED, "stored, not applied yet", None, None)

    def process_callback(self, callback_id: int, _stored_body: bytes | None = None) -> CallbackResult:
        """Apply a stored callback (again, after a crash): park, apply, duplicate or conflict.

        `_stored_body`: `ingest` has just committed this callback as received, with this body,
        and nothing else applies a callback that new (only `recover`, at start), so it is not
        read back."""
        settled = False
        with self.store.transaction() as tx:
            if _stored_body is not None:
                raw = RawCallback(callback_id, "", None, {}, _stored_body)
            else:
                raw = tx.callback(callback_id)
            if raw is None:
                raise KeyError(f"no callback #{callback_id}")
            if raw.outcome not in (RECEIVED, PARKED):
                return CallbackResult(raw.id, raw.outcome, raw.note, raw.checkout_request_id,
                                      tx.payment(raw.checkout_request_id or ""))
            try:
                parsed = parse_callback(raw.body)
            except InvalidCallback as exc:
                outcome, note, checkout_id = INVALID, str(exc), exc.checkout_request_id
                tx.set_callback_outcome(raw.id, outcome, note, checkout_id)
                payment = tx.payment(checkout_id) if checkout_id else None
            else:
                checkout_id = parsed.checkout_request_id
                payment = tx.payment(checkout_id)
                if payment is None:
                    outcome, note = PARKED, "no registration yet; applied when it is registered"
                    if raw.outcome == PARKED:
                        return CallbackResult(raw.id, PARKED, raw.note, checkout_id, None)
                else:
                    outcome, note, settled = self._apply(tx, payment, parsed, raw.id)
                    payment = tx.payment(checkout_id)
                tx.set_callback_outcome(raw.id, outcome, note, checkout_id)
        state = payment.status if payment else "-"
        log.info("callback #%d %s: %s, payment %s%s", callback_id, checkout_id or "-", outcome, state,
                 f" ({note})" if note else "")
        if settled:
            self._wake(checkout_id)
        if payment is not None:
            self._request_verification(payment)
        return CallbackResult(callback_id, outcome, note, checkout_id, payment)

    def _request_verification(self, payment: Payment) -> None:
        """Hand a held success to the verifier, after the commit (never on the request's time)."""
        if payment.verification == AWAITING and _is_open(payment) and self.on_unverified_success:
            try:
                self.on_unverified_success(payment.checkout_request_id)
            except Exception:  # the callback is stored; the reconciler's scan finds it anyway
                log.exception("payment %s: could not queue its verification", payment.checkout_request_id)

    def _apply(self, tx: Transaction, payment: Payment, callback: StkCallback,
               callback_id: int) -> tuple[str, str | None, bool]:
        """Apply one parsed callback to `payment` inside `tx`: (outcome, note, settled now?)."""
        evidence = _evidence(callback, payment)
        if payment.verification == AWAITING and _is_open(payment):
            return self._apply_while_awaiting(tx, payment, callback, evidence, callback_id)
        same = evidence.state == payment.status and evidence.receipt == payment.receipt
        if _is_open(payment) and evidence.state == COMPLETED and self.verify_successes:
            tx.update_payment(
                payment.checkout_request_id, result_code=callback.result_code,
                result_desc=callback.result_desc, receipt=evidence.receipt,
                transaction_date=evidence.transaction_date, paid_phone=evidence.paid_phone,
                paid_amount=evidence.paid_amount, callback_id=callback_id, verification=AWAITING,
                query_attempts=0)
            log.info("payment %s: %s", payment.checkout_request_id, AWAITING_NOTE)
            return APPLIED, AWAITING_NOTE, False
        if _is_open(payment) and not same:
            tx.update_payment(
                payment.checkout_request_id, status=evidence.state, result_code=callback.result_code,
                result_desc=callback.result_desc, reason=evidence.reason, receipt=evidence.receipt,
                transaction_date=evidence.transaction_date, paid_phone=evidence.paid_phone,
                paid_amount=evidence.paid_amount, settled_by="callback", review=evidence.review,
                callback_id=callback_id, settled_at=utcnow())
            if evidence.review:  # the details (phone numbers) stay in payments.review, out of the log
                log.warning("payment %s needs review: %s", payment.checkout_request_id, evidence.reason)
            return APPLIED, evidence.reason if evidence.review else None, True
        if same or (evidence.state == COMPLETED == payment.status and payment.receipt is None):
            if payment.receipt is None and evidence.receipt:  # settled by STK Query, which has no receipt
                tx.update_payment(payment.checkout_request_id, receipt=evidence.receipt,
                                  transaction_date=evidence.transaction_date, paid_phone=evidence.paid_phone,
                                  paid_amount=evidence.paid_amount)
                return DUPLICATE, "same outcome; added the receipt details", False
            return DUPLICATE, f"same outcome as before (ResultCode {callback.result_code})", False
        note = (f"ResultCode {callback.result_code} says {evidence.state}"
                f"{' (receipt ' + evidence.receipt + ')' if evidence.receipt else ''}"
                f" but the payment is already {payment.status}; not applied")
        log.warning("payment %s: conflicting callback #%d: %s", payment.checkout_request_id, callback_id, note)
        tx.update_payment(payment.checkout_request_id,
                          review="; ".join(filter(None, (payment.review, f"callback #{callback_id}: {note}"))))
        return CONFLICT, note, False

    def _apply_while_awaiting(self, tx: Transaction, payment: Payment, callback: StkCallback,
                              evidence: _Evidence, callback_id: int) -> tuple[str, str | None, bool]:
        """A callback for a payment whose success callback waits for STK Query's confirmation."""
        checkout_id = payment.checkout_request_id
        if evidence.state == COMPLETED and evidence.receipt == payment.receipt:
            return DUPLICATE, "same success callback; still awaiting STK Query", False
        held = f"success callback #{payment.callback_id} (receipt {payment.receipt}) was awaiting STK Query"
        if evidence.state == COMPLETED:
            note = f"{held}; callback #{callback_id} says success with receipt {evidence.receipt}; not applied"
            log.warning("payment %s: conflicting success callback #%d", checkout_id, callback_id)
            tx.update_payment(checkout_id, review=_joined(payment.review, note))
            return CONFLICT, note, False
        # A failure (or unknown) answer contradicts the unconfirmed success: it wins, for review.
        note = f"{held} when callback #{callback_id} said {evidence.state} (ResultCode {callback.result_code})"
        log.warning("payment %s needs review: a failure callback contradicts a held success callback",
                    checkout_id)
        tx.update_payment(
            checkout_id, status=evidence.state, result_code=callback.result_code,
            result_desc=callback.result_desc, reason=evidence.reason, receipt=None, transaction_date=None,
            paid_phone=None, paid_amount=None, settled_by="callback", callback_id=callback_id,
            settled_at=utcnow(), verification=CONTRADICTED, review=_joined(payment.review, note))
        return APPLIED, note, True

    def status(self, checkout_request_id: str) -> Payment | None:
        return self.store.payment(checkout_request_id)

    def wait(self, checkout_request_id: str, timeout: float) -> Payment | None:
        """Return as soon as the payment leaves `pending`, or after `timeout` seconds.

        Also works before registration: a registration that matches a parked callback wakes it.
        None when the id is still not registered at the end.
        """
        waiters = self._subscribe(checkout_request_id)
        try:
            payment = self.store.payment(checkout_request_id)
            if (payment is None or payment.status == PENDING) and timeout > 0:
                waiters.event.wait(timeout)
                payment = self.store.payment(checkout_request_id)
            return payment
        finally:
            self._unsubscribe(checkout_request_id, waiters)

    def waiting(self) -> int:
        with self._lock:
            return sum(w.count for w in self._waiters.values())

    def _subscribe(self, checkout_request_id: str) -> _Waiters:
        with self._lock:
            waiters = self._waiters.setdefault(checkout_request_id, _Waiters())
            waiters.count += 1
            return waiters

    def _unsubscribe(self, checkout_request_id: str, waiters: _Waiters) -> None:
        with self._lock:
            waiters.count -= 1
            if waiters.count == 0 and self._waiters.get(checkout_request_id) is waiters:
                del self._waiters[checkout_request_id]

    def _wake(self, checkout_request_id: str) -> None:
        with self._lock:
            waiters = self._waiters.get(checkout_request_id)
        if waiters is not None:
            waiters.event.set()

    def pending_older_than(self, seconds: float, include_unknown: bool = False,
                           now: datetime | None = None) -> list[Payment]:
        """Payments still waiting for an outcome after `seconds`, for an STK Query reconciler."""
        found = self.store.pending_older_than(seconds, now)
        if include_unknown:
            cutoff = ((now or datetime.now(timezone.utc)) - timedelta(seconds=seconds)).astimezone(timezone.utc)
            found += [p for p in self.store.payments_with_status(
                UNKNOWN, created_before=cutoff.isoformat(timespec="milliseconds")) if _is_open(p)]
        return found

    def awaiting_verification(self) -> list[Payment]:
        """Open payments whose success callback still waits for STK Query's confirmation."""
        return [p for status in (PENDING, UNKNOWN) for p in self.store.payments_with_status(status)
                if p.verification == AWAITING and _is_open(p)]

    def settle_from_query(self, checkout_request_id: str, state: str, result_code: Any = None,
                          result_desc: str | None = None, reason: str | None = None) -> Payment:
        """Apply an STK Query answer; like a callback, it never overrides a final state."""
        if state not in (COMPLETED, FAILED, UNKNOWN, PENDING):
            raise ValueError(f"not a payment state: {state!r}")
        settled = False
        with self.store.transaction() as tx:
            payment = tx.payment(checkout_request_id)
            if payment is None:
                raise UnknownPayment(checkout_request_id)
            awaiting = payment.verification == AWAITING and _is_open(payment)
            if state == PENDING or (awaiting and state == UNKNOWN):
                return payment  # no final answer: the reconciler asks again later
            code = normalize_code(result_code) or None
            if awaiting and state == COMPLETED:
                payment = tx.update_payment(
                    checkout_request_id, status=COMPLETED, reason=None, settled_by="callback",
                    verification=CONFIRMED, settled_at=utcnow(),
                    review=None if payment.settled_by == RECONCILER else payment.review)
                settled = True
            elif awaiting:
                note = (f"success callback #{payment.callback_id} (receipt {payment.receipt}) contradicted by "
                        f"STK Query (ResultCode {code}: {result_desc or reason}): forged or mistaken; "
                        "not completed")
                log.warning("payment %s needs review: STK Query contradicts its success callback",
                            checkout_request_id)
                payment = tx.update_payment(
                    checkout_request_id, status=state, result_code=code, result_desc=result_desc,
                    reason=reason, receipt=None, transaction_date=None, paid_phone=None, paid_amount=None,
                    settled_by="query", settled_at=utcnow(), verification=CONTRADICTED,
                    review=_joined(payment.review, note))
                settled = True
            elif _is_open(payment):
                payment = tx.update_payment(checkout_request_id, status=state, result_code=code,
                                            result_desc=result_desc, reason=reason, settled_by="query",
                                            settled_at=utcnow())
                settled = True
            elif state != payment.status:
                note = f"STK Query says {state} (ResultCode {code}) but the payment is already {payment.status}"
                log.warning("payment %s: %s", checkout_request_id, note)
                payment = tx.update_payment(checkout_request_id,
                                            review="; ".join(filter(None, (payment.review, note))))
        log.info("query %s: %s (ResultCode %s)", checkout_request_id, payment.status, result_code)
        if settled:
            self._wake(checkout_request_id)
        return payment

    def record_query(self, checkout_request_id: str, result: str, at: str | None = None) -> Payment:
        """Count one STK Query sent by the reconciler and what it answered (shown in the record)."""
        with self.store.transaction() as tx:
            payment = tx.payment(checkout_request_id)
            if payment is None:
                raise UnknownPayment(checkout_request_id)
            return tx.update_payment(checkout_request_id, query_attempts=payment.query_attempts + 1,
                                     last_query_at=at or utcnow(), last_query_result=result[:300])

    def give_up(self, checkout_request_id: str, reason: str) -> Payment:
        """No final answer from STK Query: `unknown` for a person to review; a late callback still counts."""
        settled = False
        with self.store.transaction() as tx:
            payment = tx.payment(checkout_request_id)
            if payment is None:
                raise UnknownPayment(checkout_request_id)
            if _is_open(payment):
                held = payment.verification == AWAITING
                payment = tx.update_payment(
                    checkout_request_id, status=UNKNOWN, reason=reason, settled_by=RECONCILER,
                    settled_at=utcnow(), review=_joined(payment.review, reason),
                    verification=UNCONFIRMED if held else payment.verification)
                settled = True
        if settled:
            log.warning("payment %s needs review: %s", checkout_request_id, reason)
            self._wake(checkout_request_id)
        return payment

    def recover(self) -> int:
        """Apply callbacks stored before a crash but never applied, and parked ones now registered."""
        todo = [cb.id for cb in self.store.callbacks(outcome=RECEIVED)]
        todo += self.store.parked_with_payment()
        for callback_id in sorted(set(todo)):
            self.process_callback(callback_id)
        if todo:
            log.info("recovered %d stored callback(s)", len(todo))
        return len(todo)
