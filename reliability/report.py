"""Fault and fuzz scenarios with real processes on 127.0.0.1: prove that nothing is lost.

    python -m reliability           # modest sizes, well under a minute
    python -m reliability --full    # the issue's sizes (2,000 callbacks x 5 kill points, 1,000 webhooks, ...)

Every scenario starts its own callback server (and, where needed, the Daraja simulator) as
subprocesses on free ports, with a database in a temporary folder, injects its faults, and then
checks the outcome by reading the database itself (SQLite, or PostgreSQL). It prints a table; `lost` and `double`
must be 0, and the exit status is 1 when anything was lost, applied twice or ended in the wrong
state. The scenario functions are what tests/test_reliability.py runs; reliability/runner.py runs
them all for `python -m reliability`. See docs/reliability.md.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import queue
import random
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import requests
from psycopg.rows import dict_row

from mpesa_agent.config import SANDBOX_PASSKEY, SANDBOX_SHORTCODE
from mpesa_agent.daraja import DarajaClient
from mpesa_agent.tools import Payments, QuerySchedule, make_tools
from mpesa_agent.server.store import is_postgres_url
from mpesa_agent.tracking import TrackingClient
from harness import HTTP_TIMEOUT, Stack, free_port
from harness.webhooks import Receiver

TOKEN = "5eed0fba11ab1e5eed0fba11ab1e0001"  # the secret segment of the test callback URL
API_KEY = "reliability-api-key"
CONSUMER_KEY, CONSUMER_SECRET = "reliability-key", "reliability-secret"
ACCEPTED = {"ResultCode": 0, "ResultDesc": "Accepted"}
STARTUP_TIMEOUT = 30.0
FAST_QUERIES = QuerySchedule(first=0.3, every=0.3)
SHORT_BACKOFF = (0.05, 0.1)  # registration retries while the callback server is down


@dataclass(frozen=True)
class Sizes:
    """How hard each scenario pushes."""

    crash_callbacks: int = 300
    crash_kills: int = 2
    senders: int = 16
    per_case: int = 10  # payments in each callback-semantics case
    fuzz_inputs: int = 600
    webhook_events: int = 300


DEFAULT = Sizes()
FUZZ_CHUNK = 2000  # fuzz inputs generated, sent and checked at a time
FULL = Sizes(crash_callbacks=2000, crash_kills=5, senders=16, per_case=100, fuzz_inputs=5000, webhook_events=1000)


@dataclass
class Row:
    """One line of the report: what was tried and what was lost or applied twice."""

    scenario: str
    load: str
    faults: str = ""
    inputs: int = 0  # fuzz inputs sent
    acked: int = 0  # callbacks the server answered 200
    stored: int = 0  # raw callbacks found in the database
    lost: int = 0  # acknowledged but not stored, or stored but not applied / reported wrongly
    double: int = 0  # applied twice, a second receipt, a waiter answered twice, a customer prompted twice
    problems: list[str] = field(default_factory=list)  # any other wrong final state
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.double or self.problems)

    def check(self, condition: bool, problem: str) -> bool:
        if not condition:
            self.problems.append(problem)
        return condition


# --- processes -------------------------------------------------------------------------------

# Every setting the processes use is given here, so that no .env file can change one.
ENV = dict(
    MPESA_CONSUMER_KEY=CONSUMER_KEY, MPESA_CONSUMER_SECRET=CONSUMER_SECRET, MPESA_SHORTCODE=SANDBOX_SHORTCODE,
    MPESA_PASSKEY=SANDBOX_PASSKEY, MPESA_PARTY_B=SANDBOX_SHORTCODE, MPESA_TRANSACTION_TYPE="CustomerPayBillOnline",
    PAYMENT_MAX_AMOUNT=150_000, PAYMENT_RATE_LIMIT_COUNT=5, PAYMENT_RATE_LIMIT_WINDOW=600,
    TRUSTED_CALLBACK_IPS="127.0.0.1", TRUSTED_PROXIES="192.0.2.1", VERIFY_SUCCESS_BY_QUERY="false",
    RECONCILE_AFTER_SECONDS=3600, SIMULATOR_CALLBACK_DELAY=0.2)


def new_stack(folder: Path, simulator: bool = False, wait_seconds: int = 15, **env) -> Stack:
    """A callback server (and with `simulator=True` the simulator) in `folder`, with the report's settings."""
    return Stack(folder, token=TOKEN, api_key=API_KEY, simulator=simulator,
                 PAYMENT_WAIT_SECONDS=wait_seconds, **ENV, **env)


def register(stack: Stack, payment: Expected, session=requests) -> requests.Response:
    """POST /payment/register for `payment`."""
    return stack.api("POST", "/payment/register", session, json={
        "checkout_request_id": payment.checkout_id, "phone_number": payment.phone,
        "amount": payment.amount, "description": payment.description,
        "merchant_request_id": payment.merchant_id})


def until(condition, timeout: float, every: float = 0.02):
    """Poll `condition()` until it is truthy (returned) or `timeout` passes (its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


def parallel(function, items, workers: int) -> list:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(function, items))


# --- payloads and what the database must show ------------------------------------------------

@dataclass(frozen=True)
class Expected:
    """A payment, the callback that settles it, and the state it must end in."""

    checkout_id: str
    phone: str
    amount: int
    result_code: int = 0
    receipt: str | None = None
    description: str = "reliability"

    @property
    def merchant_id(self) -> str:
        return "mr-" + self.checkout_id[-20:]

    @property
    def state(self) -> str:
        return "completed" if self.result_code == 0 else "failed"

    def body(self, result_code: int | None = None, receipt: str | None = None) -> bytes:
        """Daraja's callback for this payment (by default, the one that settles it)."""
        code = self.result_code if result_code is None else result_code
        return stk_callback(self.checkout_id, code, self.amount, receipt or self.receipt, self.phone,
                            self.merchant_id)


def stk_callback(checkout_id: str, result_code: int | str = 0, amount: int | None = None,
                 receipt: str | None = None, phone: str | None = None, merchant_id: str = "mr-1") -> bytes:
    stk = {"MerchantRequestID": merchant_id, "CheckoutRequestID": checkout_id, "ResultCode": result_code,
           "ResultDesc": "The service request is processed successfully." if result_code == 0
           else "Request cancelled by user"}
    if result_code == 0:
        stk["CallbackMetadata"] = {"Item": [
            {"Name": "Amount", "Value": amount}, {"Name": "MpesaReceiptNumber", "Value": receipt},
            {"Name": "Balance"}, {"Name": "TransactionDate", "Value": 20261126120000},
            {"Name": "PhoneNumber", "Value": int(phone)}]}
    return json.dumps({"Body": {"stkCallback": stk}}).encode()


_batches, _receipts = itertools.count(1), itertools.count(1)


def payments_for(prefix: str, count: int, fail_every: int = 4) -> list[Expected]:
    """`count` payments with ids and receipts unique in this process; every `fail_every`-th is cancelled."""
    batch = next(_batches)
    return [Expected(f"ws_CO_{prefix}{batch}_{n:06d}", f"2547{12_000_000 + n:08d}", 1 + n % 900,
                     1032 if fail_every and n % fail_every == fail_every - 1 else 0,
                     f"R{next(_receipts):09d}")
            for n in range(count)]


def read_db(db: Path | str) -> tuple[list[dict], dict[str, dict]]:
    """(raw callbacks in id order, payments by id), read from the SQLite file (or PostgreSQL) itself."""
    if is_postgres_url(db):
        with psycopg.connect(str(db), row_factory=dict_row) as pg:
            callbacks = pg.execute("SELECT id, body, checkout_request_id, outcome FROM callbacks ORDER BY id").fetchall()
            payments = {r["checkout_request_id"]: r for r in pg.execute("SELECT * FROM payments").fetchall()}
        return [{**c, "body": bytes(c["body"])} for c in callbacks], payments
    conn = sqlite3.connect(db, timeout=15)
    conn.row_factory = sqlite3.Row
    try:
        callbacks = [dict(r) for r in conn.execute(
            "SELECT id, body, checkout_request_id, outcome FROM callbacks ORDER BY id")]
        payments = {r["checkout_request_id"]: dict(r) for r in conn.execute("SELECT * FROM payments")}
    finally:
        conn.close()
    for callback in callbacks:
        callback["body"] = bytes(callback["body"])
    return callbacks, payments


def audit(row: Row, db: Path | str, expected: list[Expected], acked_bodies: list[bytes],
          conflicts_allowed: bool = False) -> None:
    """Count in `row` what the database lost or applied twice for these payments."""
    callbacks, payments = read_db(db)
    mine = {e.checkout_id for e in expected}
    by_id = {c["id"]: c for c in callbacks}
    stored_bodies = Counter(c["body"] for c in callbacks)
    row.stored += sum(1 for c in callbacks if c["checkout_request_id"] in mine)
    row.lost += sum(1 for body in set(acked_bodies) if not stored_bodies[body])
    applied = Counter(c["checkout_request_id"] for c in callbacks if c["outcome"] == "applied")
    receipts = Counter(p["receipt"] for p in payments.values() if p["receipt"])
    row.double += sum(1 for e in expected if applied[e.checkout_id] > 1)
    row.double += sum(1 for e in expected if e.receipt and receipts[e.receipt] > 1)
    acked = set(acked_bodies)
    for e in expected:
        payment = payments.get(e.checkout_id)
        settling = by_id.get(payment["callback_id"]) if payment else None
        right = (payment is not None and payment["status"] == e.state and payment["settled_by"] == "callback"
                 and (e.state != "completed" or payment["receipt"] == e.receipt)
                 and settling is not None and settling["checkout_request_id"] == e.checkout_id)
        if not right:
            if e.body() in acked:
                row.lost += 1
            state = payment and (payment["status"], payment["receipt"], payment["settled_by"])
            row.problems.append(f"{e.checkout_id}: expected {e.state}, found {state}")
    stuck = Counter(c["outcome"] for c in callbacks
                    if c["checkout_request_id"] in mine and c["outcome"] in ("received", "parked", "invalid"))
    row.check(not stuck, f"callbacks left unapplied: {dict(stuck)}")
    if not conflicts_allowed:
        conflicts = sum(1 for c in callbacks if c["checkout_request_id"] in mine and c["outcome"] == "conflict")
        row.check(conflicts == 0, f"{conflicts} consistent callbacks recorded as conflicts")


# --- crash: kill -9 in the middle of a burst of callbacks ------------------------------------

def crash(folder: Path, callbacks: int = DEFAULT.crash_callbacks, kill_points: int = DEFAULT.crash_kills,
          senders: int = DEFAULT.senders, seed: int | None = None) -> Row:
    """Callbacks from concurrent senders; kill -9 the server at a random moment; restart; audit.

    Half the payments are registered before the burst, half after the restart (their callbacks
    were parked). A sender whose callback got no 200 sends the same body again once the server
    is back, so a callback stored just before the kill arrives twice and must be applied once.
    """
    rng = random.Random(seed)
    row = Row("crash: kill -9 mid-burst", f"{kill_points} x {callbacks} callbacks, {senders} senders")
    kill_marks, resent = [], 0
    for point in range(kill_points):
        expected = payments_for(f"crash{point}", callbacks)
        rng.shuffle(expected)
        kill_at = rng.randint(max(1, callbacks // 10), max(1, callbacks * 9 // 10))
        kill_marks.append(f"{100 * kill_at // callbacks}%")
        with new_stack(folder / f"crash-{point}") as stack:
            early, late = expected[::2], expected[1::2]
            answers = parallel(lambda e: register(stack, e).status_code, early, senders)
            row.check(set(answers) == {201}, f"registrations before the burst answered {Counter(answers)}")
            acked, retries = send_through_fault([stack], expected, senders, kill_at,
                                                lambda: stack.restart_server(hard=True))
            resent += retries
            row.acked += len(acked)
            registered = parallel(lambda e: register(stack, e).json().get("payment_status"), late, senders)
            wrong = sum(1 for e, state in zip(late, registered) if state != e.state)
            row.check(wrong == 0, f"{wrong} late registrations did not pick up their parked callback")
            stack.server.kill()  # the file is read as a crash left it
            audit(row, stack.db, expected, acked)
    row.faults = (f"kill -9 at {', '.join(kill_marks)} of acks; {resent} resent, "
                  f"{row.stored - row.acked} of them stored before the kill")
    return row


def send_through_fault(stacks: list[Stack], expected: list[Expected], senders: int, fault_at: int,
                       fault) -> tuple[list[bytes], int]:
    """POST every callback from `senders` threads, calling `fault()` (a kill -9 and restart, a
    database crash) after `fault_at` acknowledgements. Callback n goes to server n mod len(stacks),
    as a load balancer spreads them; one not answered 200 is sent again, to the next server, until
    it is. Returns (the acknowledged bodies, how many were sent again)."""
    work: queue.Queue = queue.Queue()
    for n, payment in enumerate(expected):
        work.put((n, payment.body()))
    acked: list[bytes] = []
    resent: set[bytes] = set()
    lock, fault_now = threading.Lock(), threading.Event()

    def injector() -> None:
        fault_now.wait()
        fault()

    def sender() -> None:
        sessions = [requests.Session() for _ in stacks]
        while True:
            try:
                target, body = work.get_nowait()
            except queue.Empty:
                return
            deadline = time.monotonic() + STARTUP_TIMEOUT * 2
            while True:
                index = target % len(stacks)
                try:
                    answer = stacks[index].post_callback(body, sessions[index])
                    if answer.status_code == 200 and answer.json() == ACCEPTED:
                        break
                except (requests.RequestException, ValueError):
                    pass
                with lock:
                    resent.add(body)
                if time.monotonic() > deadline:
                    raise RuntimeError("no callback server answered 200 again")
                target += 1
                time.sleep(0.02)
            with lock:
                acked.append(body)
                if len(acked) == fault_at:
                    fault_now.set()

    fault_thread = threading.Thread(target=injector, daemon=True)
    fault_thread.start()
    parallel(lambda _: sender(), range(senders), senders)
    fault_now.set()  # in case every sender finished first
    fault_thread.join(STARTUP_TIMEOUT * 2)
    return acked, len(resent)


# --- callback semantics over HTTP, with long-poll waiters ------------------------------------

class Waiters:
    """`per_payment` long-poll waiters (GET /payment/wait) on each id, each in its own thread."""

    def __init__(self, stack: Stack, ids: list[str], per_payment: int = 2, timeout: float = 20.0,
                 settled: bool = False):
        self.stack, self.ids, self.timeout, self.settled = stack, ids, timeout, settled
        self.answers: dict[str, list[dict]] = {checkout_id: [] for checkout_id in ids}
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._wait, args=(checkout_id,), daemon=True)
                         for checkout_id in ids for _ in range(per_payment)]
        self.expected_waiters = len(self._threads)

    def __enter__(self) -> "Waiters":
        before = self.stack.waiting()
        for thread in self._threads:
            thread.start()
        if not self.settled:  # make sure they all wait before anything settles
            until(lambda: self.stack.waiting() >= before + len(self._threads), 10)
        return self

    def __exit__(self, *exc) -> None:
        for thread in self._threads:
            thread.join(self.timeout + HTTP_TIMEOUT)

    def _wait(self, checkout_id: str) -> None:
        started = time.monotonic()
        try:
            response = self.stack.api("GET", f"/payment/wait/{checkout_id}?timeout={self.timeout:g}",
                                      timeout=self.timeout + HTTP_TIMEOUT)
            answer = {"http": response.status_code, **response.json()}
        except (requests.RequestException, ValueError) as exc:
            answer = {"http": None, "status": f"error: {type(exc).__name__}"}
        answer["seconds"] = time.monotonic() - started
        with self._lock:
            self.answers[checkout_id].append(answer)

    def audit(self, row: Row, expected: list[Expected], first: dict[str, str] | None = None) -> None:
        """Each waiter got exactly one answer: the payment's first final state, before its timeout."""
        first = first or {e.checkout_id: e.state for e in expected}
        per_payment = self.expected_waiters // max(1, len(self.ids))
        for e in expected:
            answers = self.answers[e.checkout_id]
            states = [a.get("payment_status") for a in answers]
            if len(answers) != per_payment:
                row.double += len(answers) > per_payment
                row.problems.append(f"{e.checkout_id}: {len(answers)} waiter answers, expected {per_payment}")
            late = [a for a in answers if a["seconds"] >= self.timeout]
            row.check(not late, f"{e.checkout_id}: a waiter was not woken (answered at its timeout)")
            if any(state != first[e.checkout_id] for state in states):
                row.problems.append(f"{e.checkout_id}: waiters answered {states}, expected {first[e.checkout_id]}")


def post_all(stack: Stack, bodies: list[bytes], workers: int = 16) -> list[bytes]:
    """POST callbacks concurrently; returns the bodies answered 200 Accepted."""
    def post(body: bytes) -> bytes | None:
        answer = stack.post_callback(body)
        return body if answer.status_code == 200 and answer.json() == ACCEPTED else None
    return [body for body in parallel(post, bodies, workers) if body is not None]


def duplicates(stack: Stack, count: int = DEFAULT.per_case, copies: int = 5) -> Row:
    """Each callback arrives `copies` times at once: applied once, the rest recorded as duplicates."""
    row = Row(f"duplicates x{copies}", f"{count} payments, 2 waiters each", f"{copies} copies of each callback")
    expected = payments_for("dup", count)
    parallel(lambda e: register(stack, e), expected, 16)
    with Waiters(stack, [e.checkout_id for e in expected]) as waiters:
        bodies = [e.body() for e in expected for _ in range(copies)]
        random.shuffle(bodies)
        acked = post_all(stack, bodies)
    row.acked = len(acked)
    row.check(len(acked) == len(bodies), f"only {len(acked)} of {len(bodies)} callbacks acknowledged")
    audit(row, stack.db, expected, acked)
    waiters.audit(row, expected)
    callbacks, _ = read_db(stack.db)
    dup = Counter(c["checkout_request_id"] for c in callbacks if c["outcome"] == "duplicate")
    off = [e.checkout_id for e in expected if dup[e.checkout_id] != copies - 1]
    row.check(not off, f"{len(off)} payments without exactly {copies - 1} duplicates recorded")
    return row


def before_registration(stack: Stack, count: int = DEFAULT.per_case) -> Row:
    """The callback beats the registration: parked, then applied the moment the payment registers."""
    row = Row("callback before registration", f"{count} payments, 2 waiters each", "callback first")
    expected = payments_for("early", count)
    with Waiters(stack, [e.checkout_id for e in expected]) as waiters:  # waiting on unregistered ids
        acked = post_all(stack, [e.body() for e in expected])
        callbacks, payments = read_db(stack.db)
        ids = {e.checkout_id for e in expected}
        parked = sum(1 for c in callbacks if c["checkout_request_id"] in ids and c["outcome"] == "parked")
        row.check(parked == count, f"{parked} of {count} early callbacks parked")
        row.check(not ids & set(payments), "a parked callback created a payment")
        states = parallel(lambda e: register(stack, e).json().get("payment_status"), expected, 16)
    row.acked = len(acked)
    wrong = sum(1 for e, state in zip(expected, states) if state != e.state)
    row.check(wrong == 0, f"{wrong} registrations did not answer with the parked outcome")
    audit(row, stack.db, expected, acked)
    waiters.audit(row, expected)
    return row


def after_timeout(stack: Stack, count: int = DEFAULT.per_case) -> Row:
    """The waiter gives up first; the payment stays pending and the late callback still settles it."""
    row = Row("callback after the wait timed out", f"{count} payments", "late callback")
    expected = payments_for("late", count)
    parallel(lambda e: register(stack, e), expected, 16)
    timed_out = parallel(lambda e: stack.api("GET", f"/payment/wait/{e.checkout_id}?timeout=0.3").json(),
                         expected, 16)
    row.check(all(a["status"] == "timeout" and a["payment_status"] == "pending" for a in timed_out),
              "a timed-out wait did not answer timeout/pending")
    acked = post_all(stack, [e.body() for e in expected])
    row.acked = len(acked)
    audit(row, stack.db, expected, acked)
    with Waiters(stack, [e.checkout_id for e in expected], per_payment=1, timeout=5, settled=True) as waiters:
        pass  # already settled: each new wait must answer at once
    waiters.audit(row, expected)
    return row


def contradicting(stack: Stack, count: int = DEFAULT.per_case) -> Row:
    """Paid then cancelled, cancelled then paid, a second receipt: the first outcome stays.

    Half get their two callbacks one after the other (the first must win); half at the same time
    (exactly one is applied, the other recorded as a conflict, and the waiters agree with it).
    """
    row = Row("contradicting callbacks", f"{count} payments, 2 waiters each", "2 callbacks that disagree")
    expected = payments_for("contra", count, fail_every=2)

    rivals = {e.checkout_id: e.body(receipt="X" + e.receipt[1:]) if n % 4 == 0  # paid again, another receipt
              else e.body(result_code=1032 if e.result_code == 0 else 0) for n, e in enumerate(expected)}

    def rival(e: Expected) -> bytes:
        return rivals[e.checkout_id]

    parallel(lambda e: register(stack, e), expected, 16)
    sequential, concurrent = expected[: count // 2], expected[count // 2:]
    with Waiters(stack, [e.checkout_id for e in expected]) as waiters:
        acked = [b for e in sequential for b in post_all(stack, [e.body()]) + post_all(stack, [rival(e)])]
        acked += post_all(stack, [b for e in concurrent for b in (e.body(), rival(e))])
    row.acked = len(acked)
    audit(row, stack.db, sequential, acked, conflicts_allowed=True)
    callbacks, payments = read_db(stack.db)
    first = {e.checkout_id: e.state for e in sequential}
    for e in concurrent:
        rows = [c for c in callbacks if c["checkout_request_id"] == e.checkout_id]
        applied = [c for c in rows if c["outcome"] == "applied"]
        row.stored += len(rows)
        row.double += len(applied) > 1
        payment = payments[e.checkout_id]
        first[e.checkout_id] = payment["status"]
        row.check(len(applied) == 1 and payment["callback_id"] == applied[0]["id"],
                  f"{e.checkout_id}: {len(applied)} callbacks applied")
    for e in expected:
        outcomes = Counter(c["outcome"] for c in callbacks if c["checkout_request_id"] == e.checkout_id)
        row.check(outcomes == Counter(applied=1, conflict=1), f"{e.checkout_id}: callbacks {dict(outcomes)}")
        row.check(bool(payments[e.checkout_id]["review"]), f"{e.checkout_id}: the conflict is not flagged for review")
    waiters.audit(row, expected, first)
    return row


def unknown_payments(stack: Stack, count: int = DEFAULT.per_case) -> Row:
    """Callbacks for ids never registered: kept (parked), acknowledged, no payment invented."""
    row = Row("callbacks for unknown payments", f"{count} ids, each twice", "never registered")
    expected = payments_for("ghost", count)
    bodies = [e.body() for e in expected for _ in range(2)]
    acked = post_all(stack, bodies)
    row.acked = len(acked)
    callbacks, payments = read_db(stack.db)
    ids = {e.checkout_id for e in expected}
    mine = [c for c in callbacks if c["checkout_request_id"] in ids]
    row.stored = len(mine)
    stored = Counter(c["body"] for c in mine)
    row.lost = sum(1 for body in set(acked) if not stored[body])
    row.check(all(c["outcome"] == "parked" for c in mine), "an unknown payment's callback was not parked")
    row.check(not ids & set(payments), "a payment was invented")
    codes = parallel(lambda e: stack.api("GET", f"/payment/status/{e.checkout_id}").status_code, expected, 16)
    row.check(set(codes) == {404}, f"status of unknown payments answered {Counter(codes)}")
    return row


# --- the agent's tools while the callback server goes down ------------------------------------

def send(payments: Payments, phone: str, amount: int, context: str = "test", **kwargs) -> dict:
    """The agent's send tool, bound to `payments`."""
    send_instant_payment_with_tracking, _ = make_tools(payments)
    return asyncio.run(send_instant_payment_with_tracking(phone, amount, context, **kwargs))


def status(payments: Payments, checkout_id: str) -> dict:
    """The agent's status tool, bound to `payments`."""
    _, check_payment_status_realtime = make_tools(payments)
    return asyncio.run(check_payment_status_realtime(checkout_id))


def brief(result: dict) -> dict:
    return {k: result[k] for k in ("status", "message", "payment_status") if k in result}


def server_down_at_send(stack: Stack) -> Row:
    """The callback server is down when the payment is sent: the tool answers from STK Query."""
    row = Row("server down at send (tools)", "2 payments", "callback server stopped")
    stack.control("POST", "/reset")
    stack.server.kill()
    try:
        payments = Payments(stack.settings, schedule=FAST_QUERIES,
                            tracking=TrackingClient(stack.url, API_KEY, register_backoff=SHORT_BACKOFF))
        for phone, want in (("0733000222", "success"), ("0700001032", "failed")):
            result = send(payments, phone, 120, "rent")
            if not row.check(result["status"] == want, f"{phone}: the tool answered {brief(result)}"):
                row.lost += 1
            if want == "success":
                row.check(result.get("payment_details", {}).get("VerifiedBy") == "STK Query",
                          f"{phone}: success not verified by STK Query: {brief(result)}")
        tally(row, stack, "254733000222", "254700001032")
    finally:
        stack.server.start()
    return row


def server_restart_mid_wait(stack: Stack) -> Row:
    """kill -9 and restart the server while the tool long-polls. The tool reconnects and reports
    the outcome: from the callback when it comes after the restart, from STK Query when it came
    during the outage (Daraja never retries, so that callback is gone for good)."""
    row = Row("server restart mid-wait (tools)", "3 payments", "kill -9 + restart during the wait")
    stack.control("POST", "/reset")
    payments = Payments(stack.settings, schedule=FAST_QUERIES)
    cases = (("0745000111", 0, False), ("0745000222", 1032, False), ("0745000333", 0, True))
    for phone, code, during_outage in cases:
        msisdn = "254" + phone[1:]
        stack.control("POST", "/rules", json={"phone": phone, "delay": 3600})  # the customer acts on demand
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(send(payments, phone, 250, "books")))
        before = stack.waiting()
        worker.start()
        row.check(until(lambda: stack.waiting() > before, 10), f"{phone}: the tool never started waiting")
        checkout_id = stack.pushes_to(msisdn)[0]["checkout_request_id"]

        def act() -> None:
            stack.control("POST", f"/transactions/{checkout_id}/act", json={"result_code": code})
            until(lambda: stack.control("GET", f"/transactions/{checkout_id}")["callbacks"], 10)

        stack.server.kill()
        if during_outage:
            act()
        stack.server.start()
        if not during_outage:
            row.check(until(lambda: stack.waiting() > 0, 10), f"{phone}: the tool did not reconnect")
            act()
        worker.join(stack.settings.wait_seconds + 15)
        want = "success" if code == 0 else "failed"
        if not row.check(result.get("status") == want, f"{phone}: the tool answered {brief(result)}"):
            row.lost += 1
        if code == 0 and not during_outage:
            row.check(bool((result.get("payment_details") or {}).get("MpesaReceiptNumber")),
                      f"{phone}: no receipt, so not from the callback: {brief(result)}")
        later = status(payments, checkout_id)
        row.check(later.get("status") == want, f"{phone}: a later status check said {brief(later)}")
    tally(row, stack, *("254" + phone[1:] for phone, _, _ in cases))
    return row


def tally(row: Row, stack: Stack, *msisdns: str) -> None:
    """Add the simulator's callbacks to these phones: how many the server acknowledged, how many
    it stored; one push per phone is expected (more means the customer was prompted twice)."""
    def delivered() -> list[dict] | None:
        pushes = [t for msisdn in msisdns for t in stack.pushes_to(msisdn)]
        done = all(t["state"] == "pending" or t["callback_note"] or len(t["callbacks"]) >= t["planned"]["duplicate"]
                   for t in pushes)
        return pushes if done else None
    pushes = until(delivered, 10) or [t for msisdn in msisdns for t in stack.pushes_to(msisdn)]
    stored = Counter(c["checkout_request_id"] for c in read_db(stack.db)[0])
    for push in pushes:
        acked = sum(1 for d in push["callbacks"] if d["status"] == 200)
        row.acked += acked
        row.stored += stored[push["checkout_request_id"]]
        row.lost += max(0, acked - stored[push["checkout_request_id"]])
    per_phone = Counter(push["phone_number"] for push in pushes)
    row.double += sum(1 for n in per_phone.values() if n > 1)


# --- Daraja faults, through the tools and the simulator's rules --------------------------------

def _refused(stack: Stack, name: str, preset: str, phone: str, msisdn: str, words: str) -> Row:
    row = Row(name, "1 payment + an immediate retry", f"push_error {preset}")
    stack.control("POST", "/reset")
    payments = Payments(stack.settings, schedule=FAST_QUERIES)
    stack.control("POST", "/rules", json={"phone": phone, "scope": "next", "push_error": preset})
    result = send(payments, phone, 90, "fees")
    row.check(result["status"] == "error" and words in result["message"] and "Not sent" in result["message"],
              f"{preset}: the tool answered {brief(result)}")
    row.check(not stack.pushes_to(msisdn), f"{preset}: a refused push still reached the phone")
    again = send(payments, phone, 90, "fees")  # nothing was sent, so no confirmation is needed
    row.check(again["status"] == "success", f"{preset}: the retry answered {brief(again)}")
    tally(row, stack, msisdn)
    return row


def spike_arrest(stack: Stack) -> Row:
    """500.003.02 Spike Arrest: a clear "not sent" error, nothing pushed, a retry goes through once."""
    return _refused(stack, "Daraja spike arrest", "spike_arrest", "0746000111", "254746000111", "throttling")


def subscriber_locked(stack: Stack) -> Row:
    """500.001.1001 Unable to lock subscriber: a clear error naming the phone, nothing pushed."""
    return _refused(stack, "Daraja subscriber locked", "subscriber_locked", "0746000222", "254746000222",
                    "another M-Pesa transaction in progress")


class _ExpiringSession(requests.Session):
    """Counts Daraja requests by path, and expires every token right after the first STK Push."""

    def __init__(self, control_url: str):
        super().__init__()
        self.control_url, self.calls, self.invalid_token_answers = control_url, Counter(), 0

    def request(self, method, url, *args, **kwargs):
        response = super().request(method, url, *args, **kwargs)
        path = urlsplit(url).path
        self.calls[path] += 1
        if '"404.001.03"' in response.text:
            self.invalid_token_answers += 1
        if path.endswith("/processrequest") and self.calls[path] == 1:
            requests.post(self.control_url + "/simulator/expire-tokens", timeout=HTTP_TIMEOUT).raise_for_status()
        return response


def token_expiry(stack: Stack) -> Row:
    """Tokens expire between the push and the query: one refresh, one retry, the right outcome."""
    row = Row("Daraja token expiry mid-flow", "1 payment", "expire-tokens after the push")
    stack.control("POST", "/reset")
    session = _ExpiringSession(stack.sim_url)
    settings = stack.settings
    daraja = DarajaClient(CONSUMER_KEY, CONSUMER_SECRET, settings.shortcode, settings.passkey, settings.base_url,
                          session=session)
    closed = TrackingClient(f"http://127.0.0.1:{free_port()}", API_KEY, register_backoff=SHORT_BACKOFF)
    payments = Payments(settings, daraja=daraja, tracking=closed, schedule=FAST_QUERIES)  # so the tool queries
    result = send(payments, "0747000111", 310, "rent")
    if not row.check(result["status"] == "success", f"the tool answered {brief(result)}"):
        row.lost += 1
    tokens = session.calls["/oauth/v1/generate"]
    row.check(tokens == 2 and session.invalid_token_answers == 1,
              f"{tokens} token fetches and {session.invalid_token_answers} invalid-token answers; expected 2 and 1")
    row.double += session.calls["/mpesa/stkpush/v1/processrequest"] > 1
    tally(row, stack, "254747000111")
    return row


def slow_ack(stack: Stack, read_timeout: float = 0.5, ack_delay: float = 1.5) -> Row:
    """Daraja answers the push after the client's read timeout: outcome unknown, never re-sent,
    one prompt on the phone even when the person retries at once (the retry needs confirmation)."""
    row = Row("Daraja ack slower than timeout", "1 payment + an immediate retry",
              f"ack_delay {ack_delay:g} s > read timeout {read_timeout:g} s")
    phone, msisdn = "0748000111", "254748000111"
    stack.control("POST", "/reset")
    stack.control("POST", "/rules", json={"phone": phone, "scope": "next", "ack_delay": ack_delay})
    settings = stack.settings
    daraja = DarajaClient(CONSUMER_KEY, CONSUMER_SECRET, settings.shortcode, settings.passkey, settings.base_url,
                          timeout=(2.0, read_timeout))
    payments = Payments(settings, daraja=daraja, schedule=FAST_QUERIES)
    result = send(payments, phone, 420, "stock")
    row.check(result["status"] == "unknown" and "will not re-send" in result["message"],
              f"the tool answered {brief(result)}")
    again = send(payments, phone, 420, "stock")
    row.check(again["status"] == "needs_confirmation", f"an immediate retry answered {brief(again)}")
    tally(row, stack, msisdn)
    pushes = stack.pushes_to(msisdn)
    row.check(len(pushes) == 1, f"{len(pushes)} pushes reached the phone")
    if pushes:  # nobody could register it (the tool never learned its id): its callback waits, parked
        outcomes = [c["outcome"] for c in read_db(stack.db)[0] if c["checkout_request_id"] == pushes[0]["checkout_request_id"]]
        row.check(outcomes == ["parked"], f"its callback was stored as {outcomes}")
    return row


# --- fuzz: malformed callbacks and registrations over HTTP -----------------------------------

def _junk(rng: random.Random, depth: int = 0):
    """A random JSON value: odd shapes, wrong types, huge numbers, unusual text."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**64), 10**30, 4999, 1032])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, 1.5, 1e-300, 12.0])
    if kind == 4:
        return rng.choice(["", " ", "0", "ws_CO_", "ü€😀", "\u0000", "<script>", "' OR 1=1 --", "9" * 500,
                           "x" * 5000, "1e400", "NaN"])
    if kind == 5:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(1, 40)))
    if kind == 6:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["Body", "stkCallback", "ResultCode", "CheckoutRequestID", "Item", "x", ""]):
            _junk(rng, depth + 1) for _ in range(rng.randrange(4))}


_INVALID_CODES = [None, True, [], {}, 1.5, "", " ", 4999, "4999"]
_TEXT_LITERALS = [b"NaN", b"Infinity", b"1" * 5000, b"[" * 5000 + b"]" * 5000,
                  b'{"Body": "' + b"x" * 70_000 + b'"}']  # over the 64 KiB limit: 413, not stored


def fuzz_callback(rng: random.Random, settled: list[str], pending: list[str]) -> bytes:
    """A malformed callback body. Bodies that may still parse are aimed only at settled or unknown
    ids; those aimed at pending payments are certain to be refused, so nothing may change."""
    kind = rng.randrange(7)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))  # bad UTF-8, binary
    if kind == 1:
        return rng.choice(_TEXT_LITERALS)
    if kind == 2:
        return json.dumps(_junk(rng)).encode()
    stk = json.loads(stk_callback(rng.choice(pending), 0, 100, "RFUZZ00000", "254712000000"))["Body"]["stkCallback"]
    if kind == 3:
        stk["ResultCode"] = rng.choice(_INVALID_CODES)
    elif kind == 4:
        stk["CheckoutRequestID"] = rng.choice([None, 42, [], {}, "", " ", "ws_" * 80])
    elif kind == 5:
        return json.dumps(rng.choice([{"Body": stk}, {"stkCallback": stk}, [stk], {"Body": [stk]}])).encode()
    else:  # may well parse: a settled payment must not change, an unknown id is parked
        stk["CheckoutRequestID"] = rng.choice(settled + ["ws_CO_fuzz_unknown", " " + settled[0] + " "])
        stk["ResultCode"] = rng.choice([0, 1, 1032, 10**30, -5, "SFC_IC0003", "abc", "1032"])
        stk["CallbackMetadata"] = rng.choice([_junk(rng), {"Item": _junk(rng)}, {"Item": [
            {"Name": "Amount", "Value": _junk(rng)}, {"Name": "MpesaReceiptNumber", "Value": _junk(rng)},
            {"Name": "PhoneNumber", "Value": _junk(rng)}, {"Name": "TransactionDate", "Value": _junk(rng)}]}])
        stk[rng.choice(["ResultDesc", "MerchantRequestID", "Extra"])] = _junk(rng)
    return json.dumps({"Body": {"stkCallback": stk}}).encode()


def fuzz_registration(rng: random.Random, ids: list[str]) -> bytes:
    """A registration body with wrong types, huge numbers or broken encoding."""
    kind = rng.randrange(4)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return json.dumps(_junk(rng)).encode()
    body = {"checkout_request_id": rng.choice(ids + ["ws_CO_fuzz_new"]), "phone_number": "0712000001",
            "amount": 10, "description": "fuzz", "merchant_request_id": "mr-fuzz"}
    for name in rng.sample(sorted(body), rng.randrange(1, 4)):
        body[name] = rng.choice([_junk(rng), 10**30, -1, 0, "1e400", "12.50", "x" * 300, "ü" * 200])
    return json.dumps(body).encode()


def fuzz(stack: Stack, inputs: int = DEFAULT.fuzz_inputs, seed: int | None = None) -> Row:
    """Random malformed callbacks, registrations and status/wait requests over HTTP: never a 5xx,
    always a JSON answer, every accepted callback stored, and no payment changed."""
    rng = random.Random(seed)
    row = Row("fuzz: malformed inputs over HTTP", f"{inputs} requests, 8 clients",
              "bad UTF-8, random JSON shapes, wrong types, huge numbers")
    settled, pending = payments_for("canary", 10), payments_for("waiting", 10, fail_every=0)
    parallel(lambda e: register(stack, e), settled + pending, 8)
    post_all(stack, [e.body() for e in settled])
    _, before = read_db(stack.db)
    before_ids = set(before)
    settled_ids, pending_ids = [e.checkout_id for e in settled], [e.checkout_id for e in pending]

    def one_input():
        kind = rng.random()
        if kind < 0.6:
            return "callback", fuzz_callback(rng, settled_ids, pending_ids)
        if kind < 0.9:
            return "register", fuzz_registration(rng, settled_ids + pending_ids)
        if kind < 0.95:
            junk_id = rng.choice(settled_ids + ["", "..", "%00", "ws_CO_" + "9" * 300, "ü😀", "a/b", "x" * 2000])
            timeout = rng.choice(["nan", "inf", "-1", "0", "1e999", "abc", "", "0.0"])
            junk = rng.choice(["-1", "1e3", "9" * 40, "abc", "", "0", "%00", "ü"])
            return "get", rng.choice([
                f"/payment/wait/{quote(junk_id, safe='')}?timeout={timeout}",
                f"/events?after={quote(junk)}&limit={quote(rng.choice([junk, '5', '1001']))}"
                f"&type={quote(rng.choice(['', 'payment.completed', junk]))}",
                f"/payment/{quote(junk_id, safe='')}/events",
                # the stream's timeout is only ever short or junk: a long one would hold this client
                f"/events/stream?after={quote(junk)}&timeout={rng.choice(['0', '-1', 'nan', 'abc', '0.01'])}"])
        return "stranger", fuzz_callback(rng, settled_ids, pending_ids)  # no token: counted, sampled, never applied

    local = threading.local()

    def fire(item):
        kind, payload = item
        session = local.__dict__.setdefault("session", requests.Session())
        if kind == "callback":
            answer = stack.post_callback(payload, session)
        elif kind == "register":
            answer = stack.api("POST", "/payment/register", session, data=payload,
                               headers={"Content-Type": "application/json"})
        elif kind == "stranger":
            answer = session.post(stack.callback_url.rsplit("/", 1)[0] + "/not-the-token-0000000000", data=payload,
                                  timeout=30, headers={"Content-Type": "application/json"})
        else:
            answer = stack.api("GET", payload, session)
        if answer.status_code == 200 and answer.headers.get("Content-Type", "").startswith("text/event-stream"):
            return kind, payload, 200, {"stream": answer.text[:20]}  # the event stream is the one answer not JSON
        try:
            body = answer.json()
        except ValueError:
            body = None
        return kind, payload, answer.status_code, body

    # In chunks, keeping only digests and counts: 100,000 inputs would not fit in memory whole.
    server_errors, strangers, not_json, created = Counter(), 0, 0, set()
    answered: Counter = Counter()  # digest of each callback body answered 200 or 400
    while row.inputs < inputs:
        chunk = [one_input() for _ in range(min(FUZZ_CHUNK, inputs - row.inputs))]
        for kind, payload, status, body in parallel(fire, chunk, 8):
            row.inputs += 1
            server_errors.update([(kind, status)] if status >= 500 else [])
            not_json += not isinstance(body, dict)
            strangers += kind == "stranger"
            if kind == "callback" and status in (200, 400):
                answered[hashlib.sha256(payload).digest()] += 1
                row.acked += status == 200
            if kind == "register" and status == 201 and isinstance(body, dict):
                created.add(body.get("payment", {}).get("checkout_request_id"))
    row.check(not server_errors, f"{sum(server_errors.values())} answers were 5xx: {server_errors}")
    row.check(not not_json, f"{not_json} answers were not a JSON object")
    row.check(stack.server.running and requests.get(stack.url + "/health", timeout=5).ok,
              "the server is not healthy after the burst")
    stored, samples = Counter(), 0
    conn = sqlite3.connect(stack.db, timeout=15)
    try:
        for body, outcome in conn.execute("SELECT body, outcome FROM callbacks"):
            stored[hashlib.sha256(bytes(body)).digest()] += 1
            samples += outcome == "rejected"
    finally:
        conn.close()
    row.check(samples <= 1010, f"{samples} refused callbacks stored for {strangers} strangers (the cap is 1,000)")
    row.stored = sum(count for digest, count in answered.items() if stored[digest])
    row.lost = sum(1 for digest in answered if not stored[digest])
    _, after = read_db(stack.db)
    row.check(set(after) - before_ids == created - {None}, "payments appeared without a 201")
    fields = ("status", "receipt", "amount", "phone_number", "result_code", "callback_id")
    changed = [k for k in before_ids if any(before[k][f] != after[k][f] for f in fields)]
    row.double += len(changed)
    row.check(not changed, f"{len(changed)} payments changed: {changed[:3]}")
    return row


# --- webhooks -------------------------------------------------------------------------------

def webhooks_through_crash(folder: Path, events: int = DEFAULT.webhook_events, delay: float = 0.1) -> Row:
    """`events` registrations (one event each) to a receiver that takes `delay` s per delivery and
    verifies each with standardwebhooks; the server is killed with -9 when a fifth has arrived.
    Every event in the log must arrive verified at least once (repeats are allowed: `webhook-id`)."""
    row = Row("webhooks through kill -9", f"{events:,} events to a receiver answering in {delay} s",
              "kill -9 mid-burst", inputs=events)
    with Receiver(delay=delay) as receiver, new_stack(folder, WEBHOOKS_ALLOW_PRIVATE_URLS="true",
                                                      WEBHOOK_RETRY_SCHEDULE="0.2,0.5,1,2,5") as stack:
        answer = stack.api("POST", "/webhooks", json={"url": receiver.url, "events": ["payment.registered"]})
        receiver.secret = answer.json()["secret"]
        payments = payments_for("ws_CO_hook", events)

        def crash() -> None:
            if receiver.wait_for(lambda got: len(got) >= events // 5, 120):
                stack.restart_server(hard=True)  # kill -9, then start again at once; senders retry meanwhile

        killer = threading.Thread(target=crash)
        killer.start()
        parallel(lambda p: until(lambda: _registered(stack, p), 60), payments, 16)
        killer.join()
        with sqlite3.connect(stack.db) as conn:
            logged = {r[0] for r in conn.execute("SELECT id FROM events WHERE type = 'payment.registered'")}
        row.check(len(logged) == events, f"{len(logged)} registration events logged, {events} expected")
        receiver.wait_for(lambda got: logged <= {int(r.webhook_id) for r in got if r.status == 200}, 120)
        delivered = receiver.delivered_ids()
        row.acked = row.stored = len(delivered & logged)
        row.lost = len(logged - delivered)
        row.check(all(r.verified for r in receiver.received), "a delivery did not verify")
        row.load += f", {sum(r.status == 200 for r in receiver.received) - len(delivered)} sent again"
    return row


def _registered(stack: Stack, payment: "Expected") -> bool:
    try:
        return register(stack, payment).status_code in (200, 201)
    except requests.RequestException:
        return False



# --- the report --------------------------------------------------------------------------------

COLUMNS = ("scenario", "load", "faults injected", "inputs tried", "callbacks acked", "callbacks stored",
           "lost", "double-applied", "result")


def table(rows: list[Row]) -> str:
    cells = [COLUMNS] + [(r.scenario, r.load, r.faults, str(r.inputs or "-"), str(r.acked), str(r.stored),
                          str(r.lost), str(r.double), "ok" if r.ok else "FAIL") for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
