"""The reconciler: STK Query for lost callbacks on a back-off schedule, with a fake clock and Daraja."""
import asyncio
import logging
import time
from datetime import datetime

import pytest
import requests

from callback_server import create_app
from mpesa_agent.daraja import StkQueryResult
from mpesa_agent.daraja.errors import DarajaServerError, ThrottledError, TransportError
from mpesa_agent.payments.states import classify
from mpesa_agent.server.reconciler import Reconciler, Schedule
from tests.test_store import make_version_1_database
from mpesa_agent.server.store import Store, open_store
from mpesa_agent.tools import Payments, make_tools
from harness import Stack
from test_callback_manager import callback_body, in_thread, ingest, register

pytestmark = pytest.mark.stores  # each test on SQLite and on PostgreSQL (tests/conftest.py)

MINUTE = 60


class Clock:
    """Fake time.time(); `sleep` moves it on instead of waiting."""

    def __init__(self, now: float):
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeDaraja:
    """Answers STK Queries from a script per checkout id (the last answer repeats)."""

    def __init__(self, clock: Clock, **scripts):
        self.clock = clock
        self.scripts = {checkout_id: list(answers) for checkout_id, answers in scripts.items()}
        self.queries: list[tuple[str, float]] = []

    def stk_query(self, checkout_request_id: str) -> StkQueryResult:
        self.queries.append((checkout_request_id, self.clock()))
        script = self.scripts.get(checkout_request_id, [pending()])
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def times(self, checkout_request_id: str) -> list[float]:
        return [at for checkout_id, at in self.queries if checkout_id == checkout_request_id]


def pending(desc="The transaction is being processed") -> StkQueryResult:
    return StkQueryResult("ws_CO_1", "pending", None, desc, None, {})


def final(code: str, desc: str = "") -> StkQueryResult:
    state, reason = classify(code, desc)
    return StkQueryResult("ws_CO_1", state, code, desc or "The service request is processed successfully.",
                          reason, {})


@pytest.fixture
def manager(settings):
    app = create_app(settings)
    manager = app.extensions["callback_manager"]
    manager.app = app
    yield manager
    manager.store.close()


def created(manager, checkout_id="ws_CO_1") -> float:
    return datetime.fromisoformat(manager.status(checkout_id).created_at).timestamp()


def reconciler_for(manager, settings, clock, daraja, **schedule) -> Reconciler:
    return Reconciler(manager, daraja, settings, schedule=Schedule(**schedule), clock=clock, sleep=clock.sleep)


def run_until(reconciler, clock, seconds: float, step: float = 5.0) -> list:
    """Call run_once every `step` seconds of fake time up to `seconds` from now."""
    attempts, end = [], clock.now + seconds
    while clock.now <= end:
        attempts += reconciler.run_once()
        clock.now += step
    return attempts


def test_nothing_is_queried_before_the_deadline_then_still_processing_stays_pending(manager, settings):
    register(manager)
    clock = Clock(created(manager))
    daraja = FakeDaraja(clock)
    reconciler = reconciler_for(manager, settings, clock, daraja)
    clock.now += settings.reconcile_after - 1
    assert reconciler.run_once() == [] and daraja.queries == []
    clock.now += 1
    [attempt] = reconciler.run_once()
    assert (attempt.answer, attempt.status, attempt.gave_up) == ("pending", "pending", False)
    payment = manager.status("ws_CO_1")
    assert payment.status == "pending" and payment.query_attempts == 1
    assert payment.last_query_result == "pending (The transaction is being processed)"
    assert datetime.fromisoformat(payment.last_query_at).timestamp() == pytest.approx(clock.now, abs=0.01)
    assert reconciler.run_once() == []  # the next one waits for its gap


def test_the_back_off_schedule_then_unknown_for_review(manager, settings, caplog):
    register(manager)
    clock = Clock(created(manager))
    daraja = FakeDaraja(clock)
    reconciler = reconciler_for(manager, settings, clock, daraja)
    with caplog.at_level(logging.WARNING):
        attempts = run_until(reconciler, clock, 45 * MINUTE)
    offsets = [round(at - created(manager)) for at in daraja.times("ws_CO_1")]
    assert offsets == [300, 330, 390, 510, 810, 1110, 1410, 1800]  # 5 min .. 30 min after creation
    assert [a.gave_up for a in attempts] == [False] * 7 + [True]
    payment = manager.status("ws_CO_1")
    assert (payment.status, payment.settled_by, payment.query_attempts) == ("unknown", "reconciler", 8)
    assert "no callback, and STK Query gave no final answer after 8 queries" in payment.reason
    assert payment.review == payment.reason
    assert "needs review" in caplog.text and "254712345678" not in caplog.text


@pytest.mark.parametrize("answer, status, reason", [
    (final("1032", "Request cancelled by user"), "failed", "Request cancelled by user"),
    (final("1037", "DS timeout user cannot be reached"), "failed", "No response from the customer"),
    (final("0"), "completed", None),
])
def test_a_final_answer_settles_and_wakes_the_waiter(manager, settings, answer, status, reason):
    register(manager)
    clock = Clock(created(manager) + settings.reconcile_after)
    reconciler = reconciler_for(manager, settings, clock, FakeDaraja(clock, ws_CO_1=[answer]))
    thread, results = in_thread(manager.wait, "ws_CO_1", 10)
    time.sleep(0.1)
    [attempt] = reconciler.run_once()
    thread.join(5)
    assert not thread.is_alive(), "the waiter is woken by the settlement, not its 10 s timeout"
    assert results[0].status == status == attempt.status
    assert (results[0].settled_by, results[0].query_attempts) == ("query", 1)
    assert (results[0].reason or "").startswith(reason or "")


def test_the_status_api_says_the_payment_was_settled_by_stk_query(manager, settings):
    register(manager)
    clock = Clock(created(manager) + settings.reconcile_after)
    reconciler_for(manager, settings, clock, FakeDaraja(clock, ws_CO_1=[final("0")])).run_once()
    body = manager.app.test_client().get("/payment/status/ws_CO_1",
                                         headers={"Authorization": "Bearer test-api-key"}).get_json()
    assert body["status"] == "success"
    assert body["message"] == "💰 Payment completed successfully! 500 KSh sent to 0712345678 for lunch"
    assert body["payment_details"]["VerifiedBy"] == "STK Query"
    assert body["note"] == "Settled by STK Query: no callback arrived (1 STK Query)"
    assert (body["payment"]["settled_by"], body["payment"]["query_attempts"]) == ("query", 1)
    assert body["payment"]["last_query_result"] == "completed (ResultCode 0: The service request is processed successfully.)"


def test_queries_are_rate_capped_across_payments(manager, settings):
    ids = [f"ws_CO_{n}" for n in range(5)]
    for checkout_id in ids:
        register(manager, checkout_id)
    clock = Clock(created(manager, ids[-1]) + settings.reconcile_after)
    daraja = FakeDaraja(clock)
    attempts = reconciler_for(manager, settings, clock, daraja).run_once()
    assert [a.checkout_request_id for a in attempts] == ids  # oldest first
    times = [at for _, at in daraja.queries]
    assert all(b - a >= 2.0 for a, b in zip(times, times[1:]))
    assert clock.sleeps == [pytest.approx(2.0)] * 4


def test_throttling_pauses_every_query(manager, settings):
    register(manager, "ws_CO_1")
    register(manager, "ws_CO_2")
    clock = Clock(created(manager, "ws_CO_2") + settings.reconcile_after)
    daraja = FakeDaraja(clock, ws_CO_1=[ThrottledError(), final("1032")])
    reconciler = reconciler_for(manager, settings, clock, daraja)
    assert [a.answer for a in reconciler.run_once()] == ["throttled"]  # ws_CO_2 waits too
    assert manager.status("ws_CO_1").last_query_result == "throttled by Daraja; all queries paused"
    clock.now += 29
    assert reconciler.run_once() == []
    clock.now += 1
    assert [(a.checkout_request_id, a.answer) for a in reconciler.run_once()] == [
        ("ws_CO_2", "pending"), ("ws_CO_1", "failed")]


def test_the_pause_doubles_while_throttling_lasts_and_resets_after(manager, settings):
    register(manager)
    clock = Clock(created(manager) + settings.reconcile_after)
    daraja = FakeDaraja(clock, ws_CO_1=[ThrottledError()] * 3 + [pending(), ThrottledError(), pending()])
    reconciler = reconciler_for(manager, settings, clock, daraja, reconcile_gaps=(1,) * 7)
    pauses = []
    for _ in range(6):
        before = len(daraja.queries)
        while len(daraja.queries) == before:
            clock.now += 1
            reconciler.run_once()
        pauses.append(round(daraja.queries[-1][1] - daraja.queries[-2][1]) if len(daraja.queries) > 1 else 0)
    assert pauses == [0, 30, 60, 120, 2, 30]  # 2: the rate cap; an answer ends the back-off
    assert manager.status("ws_CO_1").query_attempts == 6


def test_an_unreachable_daraja_counts_as_an_attempt_and_pauses(manager, settings):
    register(manager)
    clock = Clock(created(manager) + settings.reconcile_after)
    daraja = FakeDaraja(clock, ws_CO_1=[TransportError("Could not reach Daraja"), final("0")])
    reconciler = reconciler_for(manager, settings, clock, daraja)
    [attempt] = reconciler.run_once()
    payment = manager.status("ws_CO_1")
    assert (attempt.answer, payment.status, payment.query_attempts) == ("error", "pending", 1)
    assert payment.last_query_result.startswith("query failed: Could not reach Daraja")
    clock.now += 30
    assert [a.status for a in reconciler.run_once()] == ["completed"]


def test_a_server_error_does_not_pause_the_others(manager, settings):
    register(manager, "ws_CO_1")
    register(manager, "ws_CO_2")
    clock = Clock(created(manager, "ws_CO_2") + settings.reconcile_after)
    daraja = FakeDaraja(clock, ws_CO_1=[DarajaServerError(error_code="500.001.1001", error_message="odd")],
                        ws_CO_2=[final("0")])
    assert [a.status for a in reconciler_for(manager, settings, clock, daraja).run_once()] == ["pending", "completed"]


def test_a_callback_after_the_reconciler_gave_up_still_settles(manager, settings):
    register(manager)
    clock = Clock(created(manager))
    reconciler = reconciler_for(manager, settings, clock, FakeDaraja(clock))
    run_until(reconciler, clock, 40 * MINUTE)
    assert manager.status("ws_CO_1").status == "unknown"
    queries = manager.status("ws_CO_1").query_attempts
    assert run_until(reconciler, clock, 10 * MINUTE) == []  # given up: no more queries
    result = ingest(manager, callback_body())
    assert result.outcome == "applied"
    payment = manager.status("ws_CO_1")
    assert (payment.status, payment.settled_by, payment.receipt) == ("completed", "callback", "NLJ7RT61SV")
    assert payment.review is None and payment.query_attempts == queries


def test_a_failure_callback_after_the_reconciler_gave_up_settles_too(manager, settings):
    register(manager)
    clock = Clock(created(manager))
    run_until(reconciler_for(manager, settings, clock, FakeDaraja(clock)), clock, 40 * MINUTE)
    assert ingest(manager, callback_body(result_code=1032)).outcome == "applied"
    assert manager.status("ws_CO_1").status == "failed"


def test_an_unrecognised_code_is_reconciled_but_a_reviewed_unknown_is_not(manager, settings):
    register(manager, "ws_CO_1")
    register(manager, "ws_CO_2")
    ingest(manager, callback_body(checkout_request_id="ws_CO_1", result_code=77))
    ingest(manager, callback_body(checkout_request_id="ws_CO_2", amount=5))  # mismatch: review
    clock = Clock(created(manager, "ws_CO_2") + settings.reconcile_after)
    daraja = FakeDaraja(clock, ws_CO_1=[final("1032", "Request cancelled by user")])
    attempts = reconciler_for(manager, settings, clock, daraja).run_once()
    assert [(a.checkout_request_id, a.status) for a in attempts] == [("ws_CO_1", "failed")]
    assert manager.status("ws_CO_2").status == "unknown" and manager.status("ws_CO_2").query_attempts == 0


def test_an_unrecognised_query_answer_is_unknown_and_asked_again(manager, settings):
    register(manager)
    clock = Clock(created(manager) + settings.reconcile_after)
    daraja = FakeDaraja(clock, ws_CO_1=[final("7777", "new code"), final("0")])
    reconciler = reconciler_for(manager, settings, clock, daraja)
    assert [a.status for a in reconciler.run_once()] == ["unknown"]
    assert manager.status("ws_CO_1").review is None
    clock.now += 30
    assert [a.status for a in reconciler.run_once()] == ["completed"]


def test_a_payment_settled_meanwhile_is_not_queried(manager, settings, monkeypatch):
    register(manager)
    clock = Clock(created(manager) + settings.reconcile_after)
    daraja = FakeDaraja(clock)
    reconciler = reconciler_for(manager, settings, clock, daraja)
    due = reconciler._due
    monkeypatch.setattr(reconciler, "_due", lambda: [ingest(manager, callback_body()) and item for item in due()])
    assert reconciler.run_once() == [] and daraja.queries == []


def test_the_schedule_survives_a_restart(manager, settings):
    register(manager)
    clock = Clock(created(manager))
    daraja = FakeDaraja(clock)
    run_until(reconciler_for(manager, settings, clock, daraja), clock, 400)
    assert len(daraja.queries) == 3  # 300, 330, 390
    restarted = reconciler_for(manager, settings, clock, daraja)
    assert restarted.run_once() == []  # not due again until 510 s
    run_until(restarted, clock, 120)
    assert [round(at - created(manager)) for at in daraja.times("ws_CO_1")][-1] == 510


def test_after_a_long_outage_old_payments_keep_their_spacing(manager, settings):
    register(manager)
    clock = Clock(created(manager) + 2 * 3600)  # the server was down for two hours
    daraja = FakeDaraja(clock)
    run_until(reconciler_for(manager, settings, clock, daraja), clock, 200)
    gaps = [round(b - a) for a, b in zip(daraja.times("ws_CO_1"), daraja.times("ws_CO_1")[1:])]
    assert gaps == [30, 60]  # not eight queries in a row


def test_the_thread_settles_and_stops(settings, manager):
    register(manager)
    daraja = FakeDaraja(time.time, ws_CO_1=[final("1032", "Request cancelled by user")])
    reconciler = Reconciler(manager, daraja, settings.replace(reconcile_after=0),
                            schedule=Schedule(tick=0.05)).start()
    thread = reconciler._thread
    try:
        assert thread.daemon and manager.wait("ws_CO_1", 5).status == "failed"
    finally:
        started = time.monotonic()
        reconciler.stop()
    assert time.monotonic() - started < 1 and not thread.is_alive()


def test_a_database_from_before_the_reconciler_columns_is_upgraded(tmp_path):
    path = tmp_path / "old.db"
    make_version_1_database(path, amount=500)
    store = Store(path)
    payment = store.payment("ws_CO_old")
    assert (payment.query_attempts, payment.last_query_at, payment.verification) == (0, None, None)
    assert [p.checkout_request_id for p in store.pending_older_than(300)] == ["ws_CO_old"]
    store.close()
    Store(path).close()  # and again: nothing left to add


def test_real_processes_a_lost_callback_is_settled_by_the_servers_reconciler(tmp_path):
    """Simulator + callback server (RECONCILE_AFTER_SECONDS=1) + the agent's tool, as real processes."""
    with Stack(tmp_path, token="ab" * 16, api_key="rc-api-key", SIMULATOR_CALLBACK_DELAY="0.1",
               RECONCILE_AFTER_SECONDS="1", PAYMENT_WAIT_SECONDS="15") as stack:
        settings, server = stack.settings, stack.server
        for phone, code in (("0722000222", 0), ("0722000333", 1032)):
            requests.post(f"{settings.base_url}/simulator/rules", timeout=5, json={
                "phone": phone, "result_code": code, "delay": 0, "lose_callback": True}).raise_for_status()
        send_instant_payment_with_tracking, _ = make_tools(Payments(settings))
        paid = asyncio.run(send_instant_payment_with_tracking("0722000222", 40, "bread"))
        assert paid["status"] == "success", paid
        assert paid["message"] == "💰 Payment completed successfully! 40 KSh sent to 0722000222 for bread"
        assert paid["payment_details"]["VerifiedBy"] == "STK Query"
        assert paid["note"].startswith("Settled by STK Query: no callback arrived")
        cancelled = asyncio.run(send_instant_payment_with_tracking("0722000333", 40, "bread"))
        assert cancelled["status"] == "failed" and cancelled["error_message"] == "Request cancelled by user"
        assert cancelled["payment"]["settled_by"] == "query"
        assert "reconcile " + paid["checkout_request_id"] + ": query 1: completed" in server.log()
