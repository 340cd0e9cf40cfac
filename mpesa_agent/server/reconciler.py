"""Settles payments whose callback never came, and confirms success callbacks, by STK Query.

Runs in the callback server as one daemon thread (`start()` / `stop()`); tests call `run_once()`
with a fake clock. Each pass first re-applies callbacks stored while the database refused writes. Each payment is queried on its own back-off schedule, and all queries share
one rate cap and one throttling back-off, because Daraja throttles STK Query per app:
- a pending payment (or an `unknown` that may still settle) is first queried RECONCILE_AFTER
  seconds after it was registered, then RECONCILE_GAPS seconds after each answer; "still
  processing" is never taken as a failure. With the default 300 s: queries at 5, 5.5, 6.5, 8.5,
  13.5, 18.5, 23.5 and 30 minutes after creation, 8 in all;
- a success callback held by VERIFY_SUCCESS_BY_QUERY is queried at once, then VERIFY_GAPS apart;
- at most one query every MIN_INTERVAL seconds in all; ThrottledError, or Daraja unreachable,
  pauses every query for PAUSE seconds, doubling up to MAX_PAUSE while it lasts;
- when the last query of a schedule still has no final answer the payment becomes `unknown`
  with a reason for a person to review. A late callback still settles it.
Attempts, the last query time and its answer are kept on the payment record (`query_attempts`,
`last_query_at`, `last_query_result`), so the schedule and its cap survive a restart.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from mpesa_agent.server.jobs import BackgroundJob
from mpesa_agent.server.manager import AWAITING, RECONCILER, CallbackManager, UnknownPayment
from mpesa_agent.config import Settings
from mpesa_agent.daraja import DarajaClient, StkQueryResult
from mpesa_agent.daraja.errors import AuthenticationError, DarajaError, ThrottledError, TransportError
from mpesa_agent.payments.states import COMPLETED, FAILED, PENDING, UNKNOWN
from mpesa_agent.server.store import Payment

log = logging.getLogger(__name__)

RECONCILE_GAPS = (30, 60, 120, 300, 300, 300, 390)  # seconds between queries after the deadline
VERIFY_GAPS = (5, 10, 30, 60, 120, 300, 300)  # seconds between queries confirming a success callback
MIN_INTERVAL = 2.0  # seconds between any two queries (Daraja: poll every 5-10 s per payment at most)
PAUSE = 30.0  # first global pause after throttling or an outage
MAX_PAUSE = 600.0
TICK = 2.0  # how often the thread looks for due payments (a held success callback wakes it at once)


@dataclass(frozen=True)
class Schedule:
    """When to query: gaps between one payment's queries, and the global limits."""

    reconcile_gaps: tuple[float, ...] = RECONCILE_GAPS
    verify_gaps: tuple[float, ...] = VERIFY_GAPS
    min_interval: float = MIN_INTERVAL
    pause: float = PAUSE
    max_pause: float = MAX_PAUSE
    tick: float = TICK


@dataclass(frozen=True)
class Attempt:
    """One STK Query the reconciler sent and what came of it (`run_once` returns these)."""

    checkout_request_id: str
    answer: str  # completed / failed / pending / unknown / throttled / error
    status: str  # the payment's status afterwards
    gave_up: bool = False


def _epoch(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


class Reconciler(BackgroundJob):
    """STK Query for payments that need it, on a schedule that stays under Daraja's throttling."""

    thread_name = "reconciler"

    def __init__(self, manager: CallbackManager, daraja: DarajaClient, settings: Settings, *,
                 schedule: Schedule = Schedule(), clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], object] | None = None):
        super().__init__()
        self.manager = manager
        self.daraja = daraja
        self.settings = settings
        self.schedule = schedule
        self.clock = clock
        self._sleep = sleep or self._stopped.wait
        self._lock = threading.Lock()
        self._to_verify: set[str] = set()
        self._scanned_held = False
        self._last_query = -float("inf")
        self._paused_until = 0.0
        self._pause = 0.0
        manager.on_unverified_success = self.verify_soon

    def verify_soon(self, checkout_request_id: str) -> None:
        """A success callback is held for confirmation: query it on the worker, soon."""
        with self._lock:
            self._to_verify.add(checkout_request_id)
        self._poked.set()

    def start(self) -> "Reconciler":
        super().start()
        log.info("reconciler: pending payments are queried %d s after registration%s",
                 self.settings.reconcile_after,
                 "; success callbacks are confirmed by STK Query" if self.settings.verify_success_by_query else "")
        return self

    def _run(self) -> None:
        while not self._stopped.is_set():
            if not self.manager.store.leader("reconciler"):  # PostgreSQL: one process runs it (SQLite: always us)
                self._poked.wait(self.schedule.tick)
                self._poked.clear()
                continue
            try:
                self.manager.reapply()  # callbacks stored while the database refused writes
            except Exception:
                log.exception("reconciler: re-applying stored callbacks failed; trying again")
            try:
                self.run_once()
            except Exception:  # a broken pass must not end reconciliation for good
                log.exception("reconciler: pass failed; trying again")
            self._poked.wait(self.schedule.tick)
            self._poked.clear()

    def run_once(self) -> list[Attempt]:
        """Query every payment that is due, oldest due first, within the rate cap."""
        attempts: list[Attempt] = []
        for due, payment in self._due():
            if self._stopped.is_set() or self.clock() < self._paused_until:
                break
            wait = self._last_query + self.schedule.min_interval - self.clock()
            if wait > 0:
                self._sleep(wait)
                if self._stopped.is_set():
                    break
            current = self.manager.status(payment.checkout_request_id)  # a callback may have come
            if current is None or not self._needs_query(current):
                self._forget(payment.checkout_request_id)
                continue
            attempts.append(self._query(current))
        return attempts

    def _due(self) -> list[tuple[float, Payment]]:
        now = self.clock()
        found = {p.checkout_request_id: p for p in self.manager.pending_older_than(
            self.settings.reconcile_after, include_unknown=True, now=datetime.fromtimestamp(now, timezone.utc))}
        if not self._scanned_held:  # after a restart: held success callbacks nobody has queried yet
            for payment in self.manager.awaiting_verification():
                self.verify_soon(payment.checkout_request_id)
            self._scanned_held = True
        with self._lock:
            held = set(self._to_verify)  # kept until confirmed or contradicted (see _forget)
        for checkout_id in held - found.keys():
            payment = self.manager.status(checkout_id)
            if payment is None:
                self._forget(checkout_id)
            else:
                found[checkout_id] = payment
        due = []
        for payment in found.values():
            if not self._needs_query(payment):
                self._forget(payment.checkout_request_id)
            elif (at := self._due_at(payment)) <= now:
                due.append((at, payment))
        return sorted(due, key=lambda item: item[0])

    def _needs_query(self, payment: Payment) -> bool:
        if payment.verification == AWAITING:
            return payment.status in (PENDING, UNKNOWN)
        if payment.status == UNKNOWN:
            return payment.settled_by != RECONCILER and not payment.review
        return payment.status == PENDING

    def _gaps(self, payment: Payment) -> tuple[float, ...]:
        return self.schedule.verify_gaps if payment.verification == AWAITING else self.schedule.reconcile_gaps

    def _due_at(self, payment: Payment) -> float:
        """First query at the deadline (at once for a held success), then the gaps apart."""
        created = _epoch(payment.created_at)
        start = created if payment.verification == AWAITING else created + self.settings.reconcile_after
        done = payment.query_attempts
        if done == 0:
            return start
        gaps = self._gaps(payment)
        gap = gaps[min(done, len(gaps)) - 1]
        # On the timeline from the deadline, but never closer than the gap to the last query
        # (after a restart or a pause the timeline is in the past).
        return max(start + sum(gaps[:done]), _epoch(payment.last_query_at) + gap)

    def _query(self, payment: Payment) -> Attempt:
        checkout_id = payment.checkout_request_id
        verifying = payment.verification == AWAITING
        self._last_query = self.clock()
        answer, state = "error", None
        try:
            result = self.daraja.stk_query(checkout_id)
        except ThrottledError:
            summary = "throttled by Daraja; all queries paused"
            answer = "throttled"
            self._back_off()
        except DarajaError as exc:
            summary = f"query failed: {exc}"
            if isinstance(exc, (TransportError, AuthenticationError)):
                self._back_off()
        else:
            self._pause = 0.0
            state = answer = result.state
            summary = _describe(result)
        number = payment.query_attempts + 1
        try:
            payment = self.manager.record_query(checkout_id, summary, _iso(self._last_query))
            if state in (COMPLETED, FAILED) or (state == UNKNOWN and not verifying):
                payment = self.manager.settle_from_query(checkout_id, state, result.result_code,
                                                         result.result_desc, result.reason)
        except UnknownPayment:
            return Attempt(checkout_id, answer, "-")
        log.info("reconcile %s: %s %d: %s -> %s", checkout_id, "verification query" if verifying else "query",
                 number, summary, payment.status)
        gave_up = False
        if self._needs_query(payment) and payment.query_attempts > len(self._gaps(payment)):
            payment = self.manager.give_up(checkout_id, _give_up_reason(payment, verifying))
            gave_up = True
        if not self._needs_query(payment):
            self._forget(checkout_id)
        return Attempt(checkout_id, answer, payment.status, gave_up)

    def _back_off(self) -> None:
        self._pause = min(self.schedule.max_pause, self._pause * 2 or self.schedule.pause)
        self._paused_until = self.clock() + self._pause
        log.warning("reconciler: pausing all STK Queries for %.0f s", self._pause)

    def _forget(self, checkout_request_id: str) -> None:
        with self._lock:
            self._to_verify.discard(checkout_request_id)


def _describe(result: StkQueryResult) -> str:
    text = result.result_desc or result.reason or ""
    code = f"ResultCode {result.result_code}" if result.result_code else ""
    detail = ": ".join(part for part in (code, text) if part)
    return f"{result.state}" + (f" ({detail})" if detail else "")


def _give_up_reason(payment: Payment, verifying: bool) -> str:
    last = payment.last_query_result or "no answer"
    if verifying:
        return (f"the success callback could not be confirmed by STK Query after {payment.query_attempts} "
                f"queries (last: {last}); check the M-Pesa statement for receipt {payment.receipt}")
    return (f"no callback, and STK Query gave no final answer after {payment.query_attempts} queries "
            f"(last: {last}); check the M-Pesa statement before asking the customer again")
