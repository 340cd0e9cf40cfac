"""Retries: a new STK Push for a payment that failed, linked to it, sent by the callback server.

`Retries.retry(id)` serves `POST /payment/{id}/retry` (a person); `AutoRetrier` sends the retries that
`schedule` planned when a payment failed with PAYMENT_AUTO_RETRY on. Both take the same path:

1. In one transaction: the rules of payments/retry.py (only a certain failure is retried; the per-phone
   rate limit; the same amount to the same phone within PAYMENT_REPEAT_WINDOW needs `confirm_repeat`),
   and a claim: the `payment_retries` row of the payment moves to `sending`. Its primary key is the
   retried payment, so two requests, or a request and the automatic retrier, never both push.
2. The push and its registration, through `daraja.push.push_and_register` (the one place both happen,
   for the agent's tools and the bulk sender too) and this process's Daraja client.
3. In the registration's own transaction: the new payment (`retry_of`, `attempt`), the original's
   `retried_as`, the row `sent` and a `payment.retried` event, all committed or none.

A push whose answer was lost (a timeout, or a crash between 1 and 3: a row left `sending` for longer than
any push takes) becomes `unknown`: it is never sent again by itself. A push Daraja refused before anything went out frees the claim (a person may try
again); an automatic one is tried again later, at most AUTO_TRIES times.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from mpesa_agent.config import Settings
from mpesa_agent.daraja import DarajaClient
from mpesa_agent.daraja.errors import DarajaError, OutcomeUnknownError, ThrottledError
from mpesa_agent.daraja.push import push_and_register
from mpesa_agent.payments.lifecycle import Decision
from mpesa_agent.payments.phones import display_phone, masked_phone
from mpesa_agent.payments.record import Payment
from mpesa_agent.payments.retry import auto_retryable, check_push, retry_refusal
from mpesa_agent.payments.states import FAILED, EventType
from mpesa_agent.server.manager import CallbackManager, UnknownPayment
from mpesa_agent.server.store import PAYMENT_COLUMNS, Transaction, utcnow

log = logging.getLogger(__name__)

PERSON, AUTO = "person", "auto"
SCHEDULED, SENDING, SENT, UNKNOWN, SKIPPED = "scheduled", "sending", "sent", "unknown", "skipped"
AUTO_TRIES = 3  # automatic sends Daraja refuses before anything goes out (throttled, unreachable) before giving up
CLAIM_WAIT_SECONDS = 45.0  # how long a second request for the same retry waits for the first one's push
STUCK_SECONDS = 90.0  # a retry `sending` this long was left by a process that died (a push takes 35 s at most)
RETRY_COLUMNS = "retry_of, attempt, requested_by, state, due_at, tries, checkout_request_id, note, created_at, updated_at"


@dataclass(frozen=True)
class RetryRow:
    """One payment's retry: who asked, where it is, and the new push's checkout id once sent."""

    retry_of: str
    attempt: int
    requested_by: str
    state: str
    due_at: str
    tries: int
    checkout_request_id: str | None
    note: str | None
    created_at: str
    updated_at: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class RetryRefused(Exception):
    """The retry was not sent; `status_code` (404, 409, 429, 502) and `extra` say why, for the API."""

    def __init__(self, status_code: int, message: str, **extra):
        self.status_code, self.extra = status_code, extra
        super().__init__(message)


@dataclass(frozen=True)
class Retried:
    original: Payment
    payment: Payment  # the retry's payment record
    created: bool  # False: this retry had already been sent (the same request again, or a concurrent one)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


def _row(tx_or_conn, checkout_id: str) -> RetryRow | None:
    found = tx_or_conn.execute(f"SELECT {RETRY_COLUMNS} FROM payment_retries WHERE retry_of = ?",
                               (checkout_id,)).fetchone()
    return RetryRow(*found) if found else None


def _payment(conn, checkout_id: str | None) -> Payment | None:
    row = conn.execute(f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE checkout_request_id = ?",
                       (checkout_id,)).fetchone() if checkout_id else None
    return Payment(*row) if row else None


class Retries:
    """Sends retries for the callback server, through its own Daraja client."""

    def __init__(self, manager: CallbackManager, settings: Settings, daraja: DarajaClient | None = None,
                 clock: Callable[[], float] = time.time):
        self.manager, self.store, self.settings = manager, manager.store, settings
        self.daraja = daraja or DarajaClient.from_settings(settings)
        self.clock = clock
        self.poked = threading.Event()  # set when an automatic retry is scheduled: the retrier looks at once
        manager.decision_hooks.append(self.schedule)
        self.recover(0.0 if getattr(self.store, "dialect", "sqlite") == "sqlite" else STUCK_SECONDS)

    # -- what the API and the status answer read

    def row(self, checkout_id: str) -> RetryRow | None:
        with self.store.reader() as conn:
            return _row(conn, checkout_id)

    def chain(self, payment: Payment) -> list[Payment]:
        """Every attempt of the request `payment` belongs to, first to last."""
        with self.store.reader() as conn:
            first = payment
            while first.retry_of and (earlier := _payment(conn, first.retry_of)) is not None:
                first = earlier
            chain, seen = [first], {first.checkout_request_id}
            while (later := _payment(conn, chain[-1].retried_as)) is not None and later.checkout_request_id not in seen:
                chain.append(later)
                seen.add(later.checkout_request_id)
        return chain

    # -- a person's retry

    def retry(self, checkout_id: str, *, confirm_repeat: bool = False) -> Retried:
        """Retry `checkout_id` now, or answer with the retry already sent for it; RetryRefused otherwise."""
        deadline = self.clock() + CLAIM_WAIT_SECONDS
        while True:
            with self.store.transaction() as tx:
                original = tx.payment(checkout_id)
                if original is None:
                    raise RetryRefused(404, f"no payment registered with checkout_request_id {checkout_id[:100]!r}")
                row = _row(tx.conn, checkout_id)
                if row is None or row.state in (SCHEDULED, SKIPPED):
                    self._check(tx, original, confirm_repeat)
                    claimed = self._claim(tx, original, row, PERSON)
                    if claimed is not None:
                        row = claimed
                        break
                    row = _row(tx.conn, checkout_id)  # another process claimed it first
            if row.state == SENT:
                return Retried(original, self.manager.status(row.checkout_request_id), False)
            if row.state == UNKNOWN:
                raise RetryRefused(409, f"a retry of {checkout_id} was sent but M-Pesa's answer was lost, so it may "
                                        "have reached the phone: it is not sent again. Ask the customer, or wait for "
                                        "its callback", retry=row.to_dict())
            if _epoch(row.updated_at) < self.clock() - STUCK_SECONDS:
                self.recover()  # left `sending` by a process that died
                continue
            if self.clock() > deadline:  # SENDING: another request is pushing this very retry
                raise RetryRefused(409, f"a retry of {checkout_id} is being sent right now; check it again shortly",
                                   retry=row.to_dict())
            time.sleep(0.05)
        return self._send(original, row)

    # -- automatic retries

    def schedule(self, tx: Transaction, payment: Payment, decision: Decision) -> None:
        """A decision hook: when a payment just failed in a way worth retrying, plan its retry in the same commit."""
        if not (self.settings.auto_retry and decision.changes.get("status") == FAILED
                and auto_retryable(payment, self.settings.auto_retry_max)):
            return
        due = max(self.clock() + self.settings.auto_retry_delay,
                  _epoch(payment.created_at) + self.settings.repeat_window)
        now = utcnow()
        tx.conn.execute(f"INSERT INTO payment_retries ({RETRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, NULL, ?, ?, ?)"
                        " ON CONFLICT (retry_of) DO NOTHING",
                        (payment.checkout_request_id, payment.attempt + 1, AUTO, SCHEDULED, _iso(due),
                         f"automatic retry after {payment.result_code} ({payment.reason})", now, now))
        log.info("payment %s failed with %s: automatic retry %d planned at %s", payment.checkout_request_id,
                 payment.result_code, payment.attempt + 1, _iso(due))
        self.poked.set()

    def due(self) -> list[str]:
        """Payments whose planned automatic retry is due now, the earliest first."""
        with self.store.reader() as conn:
            return [row[0] for row in conn.execute(
                "SELECT retry_of FROM payment_retries WHERE state = ? AND due_at <= ? ORDER BY due_at",
                (SCHEDULED, _iso(self.clock()))).fetchall()]

    def send_scheduled(self, checkout_id: str) -> str:
        """Send one due automatic retry, or put it off (rate limit, repeat window) or skip it; says what happened."""
        with self.store.transaction() as tx:
            row = _row(tx.conn, checkout_id)
            if row is None or row.state != SCHEDULED or _epoch(row.due_at) > self.clock():
                return "not due"
            original = tx.payment(checkout_id)
            if original is None or not auto_retryable(original, self.settings.auto_retry_max):
                why = retry_refusal(original) if original else "the payment is gone"
                self._set(tx, checkout_id, state=SKIPPED, note=f"not retried: {why or 'past the maximum'}")
                return SKIPPED
            check = self._push_check(tx, original, confirmed=False)
            if not check.ok:
                self._set(tx, checkout_id, due_at=_iso(self.clock() + check.wait),
                          note=f"put off: {check.verdict.replace('_', ' ')}")
                return "put off"
            row = self._claim(tx, original, row, AUTO)
        if row is None:
            return "claimed elsewhere"
        self._send(original, row)
        return SENT

    # -- shared steps

    def _check(self, tx: Transaction, original: Payment, confirm_repeat: bool) -> None:
        refusal = retry_refusal(original)
        if refusal:
            raise RetryRefused(409, f"{original.checkout_request_id} cannot be retried: {refusal}",
                               payment_status=original.status)
        check = self._push_check(tx, original, confirmed=confirm_repeat)
        phone = display_phone(original.phone_number)
        if check.verdict == "rate_limited":
            raise RetryRefused(429, f"not sent: {phone} already got {check.recent} payment requests in the last "
                                    f"{self.settings.rate_limit_window} s; try again in {check.wait} s",
                               retry_after=check.wait)
        if check.verdict == "repeat":
            raise RetryRefused(409, f"not sent: {phone} was asked for {original.amount} KSh {check.ago} s ago. "
                                    "Send {\"confirm_repeat\": true} once the person confirms a second prompt, or "
                                    f"wait {check.wait} s", needs="confirm_repeat",
                               retry_after=check.wait)

    def _push_check(self, tx: Transaction, original: Payment, confirmed: bool):
        now = self.clock()
        since = _iso(now - max(self.settings.rate_limit_window, self.settings.repeat_window))
        history = [(_epoch(created), amount) for created, amount in tx.conn.execute(
            "SELECT created_at, amount FROM payments WHERE phone_number = ? AND created_at >= ?",
            (original.phone_number, since)).fetchall()]
        return check_push(history, original.amount, now, count=self.settings.rate_limit_count,
                          window=self.settings.rate_limit_window, repeat_window=self.settings.repeat_window,
                          confirmed=confirmed)

    def _claim(self, tx: Transaction, original: Payment, row: RetryRow | None, by: str) -> RetryRow | None:
        """The retry, now `sending` and this caller's to push; None when another caller claimed it first
        (the conditions hold on PostgreSQL too, where several processes may try at once)."""
        now, checkout_id = utcnow(), original.checkout_request_id
        if row is None:
            claimed = tx.conn.execute(
                f"INSERT INTO payment_retries ({RETRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, NULL, NULL, ?, ?)"
                " ON CONFLICT (retry_of) DO NOTHING RETURNING retry_of",
                (checkout_id, original.attempt + 1, by, SENDING, now, now, now)).fetchone()
        else:
            claimed = tx.conn.execute(
                "UPDATE payment_retries SET state = ?, requested_by = ?, updated_at = ? WHERE retry_of = ? AND state = ?"
                " RETURNING retry_of", (SENDING, by, now, checkout_id, row.state)).fetchone()
        return _row(tx.conn, checkout_id) if claimed else None

    def _set(self, tx: Transaction, checkout_id: str, **changes) -> None:
        changes["updated_at"] = utcnow()
        tx.conn.execute(f"UPDATE payment_retries SET {', '.join(f'{name} = ?' for name in changes)} WHERE retry_of = ?",
                        (*changes.values(), checkout_id))

    def _send(self, original: Payment, row: RetryRow) -> Retried:
        checkout_id = original.checkout_request_id

        def register(ack) -> None:
            self.manager.register(ack.checkout_request_id, original.phone_number, original.amount,
                                  original.description, ack.merchant_request_id, retry_of=checkout_id,
                                  attempt=row.attempt,
                                  within=lambda tx, payment: self._sent(tx, checkout_id, ack.checkout_request_id))
        try:
            pushed = push_and_register(self.daraja, register, original.phone_number, original.amount,
                                       original.description, self.settings.callback_url)
        except OutcomeUnknownError as exc:
            self._lost(checkout_id, f"M-Pesa's answer to the push was lost ({exc}); not sent again")
            raise RetryRefused(502, f"the retry of {checkout_id} may have reached the phone, but M-Pesa did not "
                                    f"confirm it ({exc}); it is not sent again: ask the customer", sent=None) from None
        except DarajaError as exc:
            self._refused(original, row, exc)
            raise RetryRefused(502, f"not sent: M-Pesa refused the retry of {checkout_id}: {exc}", sent=False) from None
        new_id = pushed.ack.checkout_request_id
        if not pushed.registered:  # it went out: never again by itself
            self._lost(checkout_id, f"sent as {new_id}, but the server could not record it "
                                    f"({type(pushed.problem).__name__}); not sent again")
            raise RetryRefused(502, f"the retry of {checkout_id} was sent as {new_id} but could not be recorded; "
                                    "it is not sent again: check it before asking the customer again", sent=True)
        log.info("payment %s retried as %s (attempt %d, by %s) for %s KES %d", checkout_id, new_id, row.attempt,
                 row.requested_by, masked_phone(original.phone_number), original.amount)
        return Retried(self.manager.status(checkout_id), self.manager.status(new_id), True)

    def _sent(self, tx: Transaction, checkout_id: str, new_id: str) -> None:
        """In the retry's registration transaction: the link both ways, the row, and the event."""
        self._set(tx, checkout_id, state=SENT, checkout_request_id=new_id, note=None)
        original = tx.update_payment(checkout_id, retried_as=new_id)
        tx.append_event(EventType.PAYMENT_RETRIED, checkout_id, {
            "payment": original.to_dict(), "retry": _row(tx.conn, checkout_id).to_dict()})

    def _lost(self, checkout_id: str, note: str) -> None:
        with self.store.transaction() as tx:
            self._set(tx, checkout_id, state=UNKNOWN, note=note)
            tx.append_event(EventType.PAYMENT_RETRIED, checkout_id, {
                "payment": tx.payment(checkout_id).to_dict(), "retry": _row(tx.conn, checkout_id).to_dict()})
        log.warning("retry of %s: %s", checkout_id, note)

    def _refused(self, original: Payment, row: RetryRow, exc: DarajaError) -> None:
        """Nothing went out: a person's claim is freed; an automatic retry is tried again later, a few times."""
        checkout_id = original.checkout_request_id
        with self.store.transaction() as tx:
            if row.requested_by == PERSON:
                tx.conn.execute("DELETE FROM payment_retries WHERE retry_of = ?", (checkout_id,))
            elif row.tries + 1 >= AUTO_TRIES:
                self._set(tx, checkout_id, state=SKIPPED, tries=row.tries + 1, note=f"M-Pesa refused it: {exc}")
            else:
                later = max(self.settings.auto_retry_delay, 60.0 if isinstance(exc, ThrottledError) else 0.0)
                self._set(tx, checkout_id, state=SCHEDULED, tries=row.tries + 1, due_at=_iso(self.clock() + later),
                          note=f"M-Pesa refused it ({exc}); trying again later")
        log.warning("retry of %s not sent: %s", checkout_id, exc)

    def recover(self, stuck_after: float = STUCK_SECONDS) -> int:
        """A retry left `sending` longer than `stuck_after` (its process died) was sent if its payment was
        registered, else it is `unknown`: it may have reached the phone. At start on SQLite (one server
        per file) every one left is stuck."""
        cutoff = _iso(self.clock() - stuck_after)
        with self.store.reader() as conn:
            stuck = [RetryRow(*found) for found in conn.execute(
                f"SELECT {RETRY_COLUMNS} FROM payment_retries WHERE state = ? AND updated_at <= ?",
                (SENDING, cutoff)).fetchall()]
            registered = {row.retry_of: conn.execute(
                "SELECT checkout_request_id FROM payments WHERE retry_of = ?", (row.retry_of,)).fetchone()
                for row in stuck}
        for row in stuck:
            with self.store.transaction() as tx:
                if _row(tx.conn, row.retry_of).state != SENDING:
                    continue
                if registered[row.retry_of]:
                    self._sent(tx, row.retry_of, registered[row.retry_of][0])
                    continue
            self._lost(row.retry_of, "the server stopped while this retry was being sent: it may have reached "
                                     "the phone, so it is not sent again")
        return len(stuck)


class AutoRetrier:
    """Sends due automatic retries on one daemon thread (PAYMENT_AUTO_RETRY); `run_once` for tests."""

    def __init__(self, retries: Retries, tick: float = 1.0):
        self.retries, self.tick = retries, tick
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "AutoRetrier":
        self._thread = threading.Thread(target=self._run, name="auto-retrier", daemon=True)
        self._thread.start()
        settings = self.retries.settings
        log.info("automatic retry on: up to %d retries per payment, %g s after a failure", settings.auto_retry_max,
                 settings.auto_retry_delay)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        self.retries.poked.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("auto-retrier: pass failed; trying again")
            self.retries.poked.wait(self.tick)
            self.retries.poked.clear()

    def run_once(self) -> dict[str, str]:
        self.retries.recover()
        done = {}
        for checkout_id in self.retries.due():
            if self._stopped.is_set():
                break
            try:
                done[checkout_id] = self.retries.send_scheduled(checkout_id)
            except RetryRefused as exc:
                done[checkout_id] = str(exc)
            except UnknownPayment:
                done[checkout_id] = "gone"
        return done


def retry_summary(retried: Retried) -> dict:
    """What the API answers for a retry: the new payment, its place in the chain, and a line for a person."""
    payment, original = retried.payment, retried.original
    sent = "sent" if retried.created else "was already sent"
    return {"status": "retried", "created": retried.created,
            "message": f"📱 A new prompt {sent} to {display_phone(payment.phone_number)} for {payment.amount} KSh "
                       f"(attempt {payment.attempt}, retrying {original.checkout_request_id})",
            "checkout_request_id": payment.checkout_request_id, "retry_of": original.checkout_request_id,
            "attempt": payment.attempt, "payment_status": payment.status, "payment": payment.to_dict()}
