"""Applies evidence to payments: each decision of `payments.lifecycle.decide`, its events and the
raw callback's outcome are written in one transaction, then whoever waits is woken.

One `CallbackManager` per process (the callback server's app factory makes it). Every raw callback
is committed before it is parsed (`ingest`); one for a payment not registered yet is parked and
applied the moment it is registered. Waiters sleep on a per-payment `threading.Event` set right
after the settling commit. The rules themselves live in payments/lifecycle.py.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, NamedTuple

from mpesa_agent.config import Settings
from mpesa_agent.payments.callbacks import InvalidCallback, StkCallback, parse_callback
from mpesa_agent.payments.lifecycle import (AWAITING_NOTE, CallbackEvidence, Decision, Evidence, GiveUp,
                                            QueryEvidence, awaiting_verification, decide, is_open)
from mpesa_agent.payments.record import InvalidRegistration, Payment, validate_registration
from mpesa_agent.payments.states import (COMPLETED, FAILED, PENDING, UNKNOWN, CallbackOutcome, EventType,
                                         Reason, SettledBy, Verification)
from mpesa_agent.server.store import DATABASE_ERRORS, RawCallback, SqlStore, Transaction, utcnow

log = logging.getLogger(__name__)

# Kept under their old names for callers of the manager.
MISMATCH_REASON, NO_RECEIPT_REASON = Reason.MISMATCH, Reason.NO_RECEIPT
AWAITING, CONFIRMED, CONTRADICTED, UNCONFIRMED = Verification
RECONCILER = SettledBy.RECONCILER
RECEIVED, APPLIED, DUPLICATE, PARKED, CONFLICT, REJECTED, INVALID = CallbackOutcome
REJECTED_SAMPLES_PER_MINUTE = 10
REJECTED_BODY_BYTES = 2048
REJECTED_HEADER_BYTES = 2048
REJECTED_KEPT = 1000
WAIT_READ_RETRY_SECONDS = 0.5  # a woken waiter reads its payment again this often while the database is away
# A waiter wakes on these: the payment left `pending` (another process's commit is announced too).
SETTLING_EVENTS = frozenset({EventType.PAYMENT_COMPLETED, EventType.PAYMENT_FAILED, EventType.PAYMENT_UNKNOWN})
__all__ = ["AWAITING_NOTE", "CallbackManager", "InvalidRegistration", "RegistrationConflict", "UnknownPayment"]


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


def callback_summary(callback_id: int, outcome: str, note: str | None, parsed: StkCallback | None) -> dict:
    """What an event says about one callback: its id, what became of it and what it said."""
    summary = {"id": callback_id, "outcome": str(outcome), "note": note}
    if parsed is not None:
        summary.update(result_code=parsed.result_code, result_desc=parsed.result_desc, state=str(parsed.state),
                       metadata=parsed.items)
    return summary


class _Waiters:
    __slots__ = ("event", "count", "callbacks")

    def __init__(self):
        self.event = threading.Event()
        self.count = 0
        self.callbacks: list[Callable[[], None]] = []  # watchers that hold no thread (`watch`)


class CallbackManager:
    """Registers payments, applies evidence durably, logs events and wakes whoever waits."""

    def __init__(self, store: SqlStore, settings: Settings | None = None):
        self.store = store
        self.settings = settings
        self._lock = threading.Lock()
        self._waiters: dict[str, _Waiters] = {}
        # Called with a checkout id after a success callback is held for verification (the
        # reconciler sets it); without it, held payments wait for the reconciler's next start.
        self.on_unverified_success: Callable[[str], None] | None = None
        # Called inside the transaction of every decision, after its changes and events (the automatic
        # retrier schedules a retry of a failure there, so that the schedule commits with the failure).
        self.decision_hooks: list[Callable[[Transaction, Payment, Decision], None]] = []
        store.event_listeners.append(self._on_event)  # settled by this process, or (PostgreSQL) by another
        self.rejected = 0  # refused callbacks since start (only a sample of them is stored)
        self._sample_budget, self._budget_at = float(REJECTED_SAMPLES_PER_MINUTE), time.monotonic()
        self.recover()

    @property
    def verify_successes(self) -> bool:
        return bool(self.settings and self.settings.verify_success_by_query)

    def register(self, checkout_request_id: Any, phone_number: Any, amount: Any,
                 description: Any = "", merchant_request_id: Any = None, *, batch_id: str | None = None,
                 within: Callable[[Transaction, Payment], None] | None = None, retry_of: str | None = None,
                 attempt: int = 1) -> Registration:
        """Track a payment; the same registration again is harmless, a different one conflicts.

        `within(tx, payment)` runs in the registration's own transaction (a bulk item records its
        checkout id with it, a retry its link: both are committed, or neither). A retry
        (server/retries.py) names the payment it retries and its attempt number."""
        checkout_id, msisdn, amount, description, merchant_id = validate_registration(
            checkout_request_id, phone_number, amount, description, merchant_request_id,
            self.settings.max_amount if self.settings else None)
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
                    _log_event(tx, EventType.PAYMENT_UPDATED, existing)
                if within is not None:
                    within(tx, existing)
                return Registration(existing, False)
            payment = tx.insert_payment(checkout_id, msisdn, amount, description, merchant_id, batch_id,
                                        **({"retry_of": retry_of, "attempt": attempt} if retry_of else {}))
            _log_event(tx, EventType.PAYMENT_REGISTERED, payment)
            for parked in tx.parked_callbacks(checkout_id):
                result, changed = self._process(tx, parked)
                payment = result.payment or payment
                log.info("callback #%d %s: parked callback matched at registration: %s%s",
                         parked.id, checkout_id, result.outcome, f" ({result.note})" if result.note else "")
                settled = settled or changed
            if within is not None:
                within(tx, payment)
        log.info("registered %s: %s KES (%s)", checkout_id, amount, payment.status)
        if settled:
            self._wake(checkout_id)
        self._request_verification(payment)
        return Registration(payment, True)

    def record_rejected(self, raw_body: bytes, headers: Mapping[str, str] | None,
                        source_addr: str | None, why: str) -> int | None:
        """Count a refused callback (wrong token, untrusted source); keep a small sample for review.

        Anyone can send these, so they must never fill the disk a real callback needs: at most
        REJECTED_SAMPLES_PER_MINUTE are stored, each cut to REJECTED_BODY_BYTES of body and
        REJECTED_HEADER_BYTES of headers, and only the newest REJECTED_KEPT are kept. Returns the
        sample's id, or None when it was only counted."""
        with self._lock:
            self.rejected += 1
            now = time.monotonic()
            self._sample_budget = min(REJECTED_SAMPLES_PER_MINUTE, self._sample_budget
                                      + (now - self._budget_at) * REJECTED_SAMPLES_PER_MINUTE / 60)
            self._budget_at = now
            sampled = self._sample_budget >= 1
            if sampled:
                self._sample_budget -= 1
        if not sampled:
            return None
        body = bytes(raw_body[:REJECTED_BODY_BYTES])
        try:
            checkout_id = parse_callback(body).checkout_request_id  # to find it when reviewing
        except InvalidCallback as exc:
            checkout_id = exc.checkout_request_id
        kept, size = {}, 0
        for name, value in (headers or {}).items():
            size += len(name) + len(str(value))
            if size > REJECTED_HEADER_BYTES:
                break
            kept[name] = value
        note = why if len(raw_body) <= REJECTED_BODY_BYTES else f"{why} (body cut to {REJECTED_BODY_BYTES} of {len(raw_body)} bytes)"
        with self.store.transaction() as tx:
            callback_id = tx.insert_callback(body, kept, source_addr, REJECTED, note, checkout_id)
        if callback_id % REJECTED_KEPT == 0:
            self.store.trim_rejected(REJECTED_KEPT)
        log.warning("callback #%d from %s rejected: %s (%d rejected since start)", callback_id, source_addr, why,
                    self.rejected)
        return callback_id

    def reapply(self) -> int:
        """Apply again the callbacks stored but not applied (the database refused the write), and
        find out whether writes work again; the reconciler calls it on every pass."""
        stored = [raw.id for raw in self.store.callbacks(outcome=RECEIVED)]
        applied = 0
        for callback_id in stored:
            try:
                self.process_callback(callback_id)
            except DATABASE_ERRORS as exc:  # still refused: the next pass tries again
                log.warning("callback #%d still not applied: %s", callback_id, exc)
                break
            applied += 1
        if not stored and self.store.write_failure:
            self.store.probe_write()
        if applied:
            log.info("applied %d stored callback(s) once writes worked again", applied)
        return applied

    def ingest(self, raw_body: bytes, headers: Mapping[str, str] | None, source_addr: str | None) -> CallbackResult:
        """Store, then apply, in one commit. Applying runs in a savepoint: if it fails, the callback
        is still committed (as received) and `reapply` applies it once writes work again."""
        failure = None
        with self.store.transaction() as tx:
            callback_id = tx.insert_callback(raw_body, headers, source_addr)
            try:
                with tx.savepoint("apply"):
                    result, settled = self._process(tx, RawCallback(callback_id, "", None, {}, bytes(raw_body)))
            except Exception as exc:
                failure = exc
        if failure is not None:
            self.store.note_write_failure(failure)
            log.error("callback #%d stored but not applied; it is applied again as soon as writes work",
                      callback_id, exc_info=failure)
            return CallbackResult(callback_id, RECEIVED, "stored, not applied yet", None, None)
        return self._processed(result, settled)

    def process_callback(self, callback_id: int) -> CallbackResult:
        """Apply a stored callback again (after a crash, or a parked one): park, apply, duplicate or conflict."""
        with self.store.transaction() as tx:
            raw = tx.callback(callback_id)
            if raw is None:
                raise KeyError(f"no callback #{callback_id}")
            result, settled = self._process(tx, raw)
        return self._processed(result, settled)

    def _process(self, tx: Transaction, raw: RawCallback) -> tuple[CallbackResult, bool]:
        """Parse and apply one stored callback inside `tx`: (what became of it, settled a payment?)."""
        if raw.outcome not in (RECEIVED, PARKED):
            return CallbackResult(raw.id, raw.outcome, raw.note, raw.checkout_request_id,
                                  tx.payment(raw.checkout_request_id or "")), False
        try:
            parsed = parse_callback(raw.body)
        except InvalidCallback as exc:
            outcome, note, checkout_id = INVALID, str(exc), exc.checkout_request_id
            tx.set_callback_outcome(raw.id, outcome, note, checkout_id)
            payment = tx.payment(checkout_id) if checkout_id else None
            _log_event(tx, EventType.CALLBACK_RECEIVED, payment, callback_summary(raw.id, outcome, note, None),
                       checkout_id)
            return CallbackResult(raw.id, outcome, note, checkout_id, payment), False
        checkout_id = parsed.checkout_request_id
        payment = tx.payment(checkout_id)
        if payment is None:
            outcome, note = PARKED, "no registration yet; applied when it is registered"
            if raw.outcome != PARKED:
                tx.set_callback_outcome(raw.id, outcome, note, checkout_id)
                _log_event(tx, EventType.CALLBACK_PARKED, None, callback_summary(raw.id, outcome, note, parsed),
                           checkout_id)
            return CallbackResult(raw.id, outcome, raw.note if raw.outcome == PARKED else note, checkout_id, None), False
        decision, payment = self._apply(tx, payment, parsed, raw.id)
        return CallbackResult(raw.id, decision.outcome, decision.note, checkout_id, payment), decision.settled

    def _processed(self, result: CallbackResult, settled: bool) -> CallbackResult:
        """After the commit: log, wake waiters, hand a held success to the verifier."""
        state = result.payment.status if result.payment else "-"
        log.info("callback #%d %s: %s, payment %s%s", result.callback_id, result.checkout_request_id or "-",
                 result.outcome, state, f" ({result.note})" if result.note else "")
        if settled:
            self._wake(result.checkout_request_id)
        if result.payment is not None:
            self._request_verification(result.payment)
        return result

    def _apply(self, tx: Transaction, payment: Payment, parsed: StkCallback,
               callback_id: int) -> tuple[Decision, Payment]:
        """Decide what one parsed callback does to `payment`, and write it all inside `tx`."""
        receipt = parsed.items.get("MpesaReceiptNumber") if parsed.state == COMPLETED else None
        owner = tx.completed_with_receipt(str(receipt).strip()) if receipt not in (None, "") else None
        decision, payment = self._write(tx, payment, CallbackEvidence(parsed, callback_id, owner))
        tx.set_callback_outcome(callback_id, decision.outcome, decision.note, parsed.checkout_request_id)
        _log_event(tx, EventType.CALLBACK_RECEIVED, payment,
                   callback_summary(callback_id, decision.outcome, decision.note, parsed))
        if decision.outcome == CONFLICT:
            log.warning("payment %s: conflicting callback #%d: %s", payment.checkout_request_id, callback_id,
                        decision.note)
        elif decision.changes.get("review"):  # the details (phone numbers) stay in payments.review, out of the log
            log.warning("payment %s needs review: %s", payment.checkout_request_id,
                        decision.changes.get("reason") or decision.note)
        elif decision.note == AWAITING_NOTE:
            log.info("payment %s: %s", payment.checkout_request_id, AWAITING_NOTE)
        return decision, payment

    def _write(self, tx: Transaction, payment: Payment, evidence: Evidence) -> tuple[Decision, Payment]:
        """Apply `decide`'s decision inside `tx`: the payment's changes, then its events."""
        decision = decide(payment, evidence, now=utcnow(), verify_successes=self.verify_successes)
        if decision.changes:
            payment = tx.update_payment(payment.checkout_request_id, **decision.changes)
        for event_type in decision.events:
            _log_event(tx, event_type, payment)
        for hook in self.decision_hooks:
            hook(tx, payment, decision)
        return decision, payment

    def _settle(self, checkout_request_id: str, evidence: QueryEvidence | GiveUp) -> tuple[Decision, Payment]:
        with self.store.transaction() as tx:
            payment = tx.payment(checkout_request_id)
            if payment is None:
                raise UnknownPayment(checkout_request_id)
            if isinstance(evidence, QueryEvidence) and payment.receipt and awaiting_verification(payment):
                evidence = replace(evidence, receipt_owner=tx.completed_with_receipt(payment.receipt))
            decision, payment = self._write(tx, payment, evidence)
        if decision.settled:
            self._wake(checkout_request_id)
        return decision, payment

    def _request_verification(self, payment: Payment) -> None:
        """Hand a held success to the verifier, after the commit (never on the request's time)."""
        if awaiting_verification(payment) and self.on_unverified_success:
            try:
                self.on_unverified_success(payment.checkout_request_id)
            except Exception:  # the callback is stored; the reconciler's scan finds it anyway
                log.exception("payment %s: could not queue its verification", payment.checkout_request_id)

    def status(self, checkout_request_id: str) -> Payment | None:
        return self.store.payment(checkout_request_id)

    def wait(self, checkout_request_id: str, timeout: float) -> Payment | None:
        """Return as soon as the payment leaves `pending`, or after `timeout` seconds.

        Also works before registration: a registration that matches a parked callback wakes it.
        None when the id is still not registered at the end.
        """
        waiters = self._subscribe(checkout_request_id)
        deadline = time.monotonic() + timeout
        try:
            payment = self.store.payment(checkout_request_id)
            if (payment is None or payment.status == PENDING) and timeout > 0:
                waiters.event.wait(timeout)
                payment = self.read_until(checkout_request_id, deadline)
            return payment
        finally:
            self._unsubscribe(checkout_request_id, waiters)

    def read_until(self, checkout_request_id: str, deadline: float) -> Payment | None:
        """The payment, read again while the database refuses (PostgreSQL restarting) until `deadline`:
        a waiter woken by its callback answers with it once the database is back, not with an error."""
        while True:
            try:
                return self.store.payment(checkout_request_id)
            except DATABASE_ERRORS:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(WAIT_READ_RETRY_SECONDS)

    def watch(self, checkout_request_id: str, settled: Callable[[], None]) -> Callable[[], None]:
        """`wait` without holding a thread (the HTTP server's parked long-polls): call `settled()`
        when the payment leaves `pending`, at once if it already has. It may run in the committing
        thread, so it must only hand the work on. Returns `stop()`, which ends the watch (at its
        deadline); counted in `waiting()` until then."""
        waiters = self._subscribe(checkout_request_id)
        with self._lock:
            waiters.callbacks.append(settled)
        stopped = False

        def stop() -> None:
            nonlocal stopped
            if not stopped:
                stopped = True
                with self._lock:
                    if settled in waiters.callbacks:
                        waiters.callbacks.remove(settled)
                self._unsubscribe(checkout_request_id, waiters)
        try:
            payment = self.store.payment(checkout_request_id)  # after subscribing: a callback now still wakes it
        except BaseException:
            stop()
            raise
        if payment is not None and payment.status != PENDING:
            stop()
            settled()
        return stop

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

    def _on_event(self, event_type: str, checkout_request_id: str | None) -> None:
        if event_type in SETTLING_EVENTS and checkout_request_id:
            self._wake(checkout_request_id)

    def _wake(self, checkout_request_id: str) -> None:
        with self._lock:
            waiters = self._waiters.get(checkout_request_id)
            callbacks = []
            if waiters is not None:
                callbacks, waiters.callbacks = waiters.callbacks, []
        if waiters is not None:
            waiters.event.set()
        for settled in callbacks:
            try:
                settled()
            except Exception:  # a watcher's failure is its own (its connection); the others are still told
                log.exception("payment %s: a parked wait could not be answered", checkout_request_id)

    def pending_older_than(self, seconds: float, include_unknown: bool = False,
                           now: datetime | None = None) -> list[Payment]:
        """Payments still waiting for an outcome after `seconds`, for an STK Query reconciler."""
        found = self.store.pending_older_than(seconds, now)
        if include_unknown:
            cutoff = ((now or datetime.now(timezone.utc)) - timedelta(seconds=seconds)).astimezone(timezone.utc)
            found += [p for p in self.store.payments_with_status(
                UNKNOWN, created_before=cutoff.isoformat(timespec="milliseconds")) if is_open(p)]
        return found

    def awaiting_verification(self) -> list[Payment]:
        """Open payments whose success callback still waits for STK Query's confirmation."""
        return [p for status in (PENDING, UNKNOWN) for p in self.store.payments_with_status(status)
                if awaiting_verification(p)]

    def settle_from_query(self, checkout_request_id: str, state: str, result_code: Any = None,
                          result_desc: str | None = None, reason: str | None = None) -> Payment:
        """Apply an STK Query answer; like a callback, it never overrides a final state."""
        if state not in (COMPLETED, FAILED, UNKNOWN, PENDING):
            raise ValueError(f"not a payment state: {state!r}")
        decision, payment = self._settle(checkout_request_id, QueryEvidence(state, result_code, result_desc, reason))
        if decision.changes.get("verification") == CONTRADICTED:
            log.warning("payment %s needs review: STK Query contradicts its success callback", checkout_request_id)
        elif decision.events == (EventType.PAYMENT_CONFLICT,):
            log.warning("payment %s: STK Query says %s but the payment is already %s", checkout_request_id,
                        state, payment.status)
        log.info("query %s: %s (ResultCode %s)", checkout_request_id, payment.status, result_code)
        return payment

    def record_query(self, checkout_request_id: str, result: str, at: str | None = None) -> Payment:
        """Count one STK Query sent by the reconciler and what it answered (shown in the record)."""
        with self.store.transaction() as tx:
            payment = tx.payment(checkout_request_id)
            if payment is None:
                raise UnknownPayment(checkout_request_id)
            payment = tx.update_payment(checkout_request_id, query_attempts=payment.query_attempts + 1,
                                        last_query_at=at or utcnow(), last_query_result=result[:300])
            _log_event(tx, EventType.PAYMENT_UPDATED, payment)
            return payment

    def give_up(self, checkout_request_id: str, reason: str) -> Payment:
        """No final answer from STK Query: `unknown` for a person to review; a late callback still counts."""
        decision, payment = self._settle(checkout_request_id, GiveUp(reason))
        if decision.settled:
            log.warning("payment %s needs review: %s", checkout_request_id, reason)
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


def _log_event(tx: Transaction, event_type: EventType, payment: Payment | None, callback: dict | None = None,
               checkout_request_id: str | None = None) -> int:
    """Append an event: the payment as it is now, and the callback that caused it (if any)."""
    data: dict = {"payment": payment.to_dict() if payment is not None else None}
    if callback is not None:
        data["callback"] = callback
    return tx.append_event(event_type, payment.checkout_request_id if payment else checkout_request_id, data)
