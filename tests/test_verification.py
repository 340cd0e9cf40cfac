"""VERIFY_SUCCESS_BY_QUERY: a success callback counts only once STK Query confirms it."""
import threading
import time

import pytest
import requests

from callback_server import create_app
from mpesa_agent.config import Settings
from mpesa_agent.daraja import DarajaClient
from mpesa_agent.daraja.errors import ThrottledError
from mpesa_agent.server.reconciler import Reconciler, Schedule
from mpesa_agent.tracking import TrackingClient
from harness import Stack
from test_callback_manager import callback_body, in_thread, ingest, register
from test_reconciler import Clock, FakeDaraja, created, final, pending

AUTH = {"Authorization": "Bearer test-api-key"}
CALLBACK = "/callback/0123456789abcdef0123456789abcdef"


@pytest.fixture
def app(settings):
    app = create_app(settings.replace(verify_success_by_query=True))
    yield app
    app.extensions["callback_manager"].store.close()


@pytest.fixture
def manager(app):
    return app.extensions["callback_manager"]


def verifier(manager, clock, daraja, **schedule) -> Reconciler:
    return Reconciler(manager, daraja, manager.settings, schedule=Schedule(**schedule), clock=clock,
                      sleep=clock.sleep)


def status(app, checkout_id="ws_CO_1") -> dict:
    return app.test_client().get(f"/payment/status/{checkout_id}", headers=AUTH).get_json()


def test_a_success_callback_is_held_until_stk_query_confirms_it(app, manager):
    register(manager)
    clock = Clock(created(manager))
    daraja = FakeDaraja(clock, ws_CO_1=[final("0")])
    reconciler = verifier(manager, clock, daraja)
    thread, results = in_thread(manager.wait, "ws_CO_1", 10)
    result = ingest(manager, callback_body())
    assert (result.outcome, result.note) == ("applied", "success callback held until STK Query confirms it")
    held = manager.status("ws_CO_1")
    assert (held.status, held.verification, held.receipt) == ("pending", "awaiting", "NLJ7RT61SV")
    body = status(app)
    assert body["status"] == "pending" and body["note"].startswith("A success callback arrived; confirming")
    time.sleep(0.1)
    assert thread.is_alive(), "nobody is told 'completed' before the query"

    [attempt] = reconciler.run_once()  # at once, long before the reconcile deadline
    thread.join(5)
    payment = results[0]
    assert (attempt.answer, payment.status, payment.verification) == ("completed", "completed", "confirmed")
    assert (payment.settled_by, payment.receipt, payment.query_attempts) == ("callback", "NLJ7RT61SV", 1)
    body = status(app)
    assert body["status"] == "success" and body["payment_details"]["MpesaReceiptNumber"] == "NLJ7RT61SV"
    assert body["payment_details"]["VerifiedBy"] == "STK Query"
    assert body["note"] == "Success callback confirmed by STK Query"


def test_a_success_the_query_contradicts_is_never_completed(app, manager, caplog):
    register(manager)
    clock = Clock(created(manager))
    daraja = FakeDaraja(clock, ws_CO_1=[final("1032", "Request cancelled by user")])
    ingest(manager, callback_body(receipt="FORGED0001"))
    [attempt] = verifier(manager, clock, daraja).run_once()
    payment = manager.status("ws_CO_1")
    assert (attempt.answer, payment.status, payment.verification) == ("failed", "failed", "contradicted")
    assert payment.reason == "Request cancelled by user" and payment.receipt is None
    assert "success callback #1 (receipt FORGED0001) contradicted by STK Query (ResultCode 1032" in payment.review
    assert "needs review: STK Query contradicts its success callback" in caplog.text
    body = status(app)
    assert body["status"] == "failed" and "contradicted" in body["note"]


def test_still_processing_or_throttled_stays_pending_and_is_asked_again(manager):
    register(manager)
    clock = Clock(created(manager))
    daraja = FakeDaraja(clock, ws_CO_1=[pending(), ThrottledError(), final("0")])
    reconciler = verifier(manager, clock, daraja)
    ingest(manager, callback_body())
    assert [a.answer for a in reconciler.run_once()] == ["pending"]
    clock.now += 5
    assert [a.answer for a in reconciler.run_once()] == ["throttled"]
    assert manager.status("ws_CO_1").status == "pending"
    clock.now += 29
    assert reconciler.run_once() == []  # the global pause
    clock.now += 1
    assert [a.status for a in reconciler.run_once()] == ["completed"]
    assert manager.status("ws_CO_1").query_attempts == 3


def test_an_unrecognised_query_answer_does_not_confirm(manager):
    register(manager)
    clock = Clock(created(manager))
    daraja = FakeDaraja(clock, ws_CO_1=[final("7777", "new"), final("0")])
    reconciler = verifier(manager, clock, daraja)
    ingest(manager, callback_body())
    assert [a.status for a in reconciler.run_once()] == ["pending"]
    clock.now += 5
    assert [a.status for a in reconciler.run_once()] == ["completed"]


def test_a_success_never_confirmed_becomes_unknown_for_review(manager):
    register(manager)
    clock = Clock(created(manager))
    daraja = FakeDaraja(clock)
    reconciler = verifier(manager, clock, daraja)
    ingest(manager, callback_body())
    for _ in range(400):
        reconciler.run_once()
        clock.now += 5
    payment = manager.status("ws_CO_1")
    assert (payment.status, payment.verification, payment.query_attempts) == ("unknown", "unconfirmed", 8)
    assert "could not be confirmed by STK Query after 8 queries" in payment.reason
    assert "receipt NLJ7RT61SV" in payment.review
    gaps = [round(b - a) for a, b in zip(daraja.times("ws_CO_1"), daraja.times("ws_CO_1")[1:])]
    assert gaps == [5, 10, 30, 60, 120, 300, 300]


def test_callbacks_while_a_success_is_held(manager):
    register(manager)
    clock = Clock(created(manager))
    ingest(manager, callback_body())
    assert ingest(manager, callback_body()).outcome == "duplicate"
    other = ingest(manager, callback_body(receipt="OTHER00001"))
    assert other.outcome == "conflict" and "receipt OTHER00001" in manager.status("ws_CO_1").review
    failure = ingest(manager, callback_body(result_code=1032))
    payment = manager.status("ws_CO_1")
    assert failure.outcome == "applied"
    assert (payment.status, payment.verification, payment.receipt) == ("failed", "contradicted", None)
    assert "success callback #1 (receipt NLJ7RT61SV) was awaiting STK Query when callback #4 said failed" \
        in payment.review
    daraja = FakeDaraja(clock, ws_CO_1=[final("0")])
    assert verifier(manager, clock, daraja).run_once() == []  # settled: nothing left to confirm


def test_a_parked_success_is_held_at_registration_and_confirmed(manager):
    calls = []
    ingest(manager, callback_body())
    manager.on_unverified_success = calls.append
    assert register(manager).payment.status == "pending"
    assert calls == ["ws_CO_1"]
    clock = Clock(created(manager))
    assert [a.status for a in verifier(manager, clock, FakeDaraja(clock, ws_CO_1=[final("0")])).run_once()] == \
        ["completed"]


def test_held_successes_are_found_again_after_a_restart(manager, settings):
    register(manager)
    ingest(manager, callback_body())  # no reconciler yet: nobody was told
    clock = Clock(created(manager))
    restarted = verifier(manager, clock, FakeDaraja(clock, ws_CO_1=[final("0")]))
    assert [a.status for a in restarted.run_once()] == ["completed"]


def test_a_mismatched_success_is_unknown_at_once_without_a_query(manager):
    register(manager)
    ingest(manager, callback_body(amount=5))
    clock = Clock(created(manager))
    daraja = FakeDaraja(clock)
    assert verifier(manager, clock, daraja).run_once() == [] and daraja.queries == []
    assert manager.status("ws_CO_1").status == "unknown"


def test_failures_are_not_held(manager):
    register(manager)
    assert ingest(manager, callback_body(result_code=1032)).payment.status == "failed"


def test_off_by_default(settings):
    assert Settings.from_env({}, load_files=False).verify_success_by_query is False
    assert settings.verify_success_by_query is False
    app = create_app(settings)
    manager = app.extensions["callback_manager"]
    register(manager)
    assert ingest(manager, callback_body()).payment.status == "completed"
    manager.store.close()


def test_the_callback_is_acknowledged_before_the_query_runs(app, manager):
    """The query runs on the reconciler's thread: Daraja gets its 200 at once."""
    register(manager)
    release, asked = threading.Event(), threading.Event()

    class SlowDaraja:
        def stk_query(self, checkout_request_id):
            asked.set()
            release.wait(10)
            return final("0")

    reconciler = Reconciler(manager, SlowDaraja(), manager.settings, schedule=Schedule(tick=0.05)).start()
    try:
        started = time.monotonic()
        answer = app.test_client().post(CALLBACK, data=callback_body(), content_type="application/json")
        assert answer.get_json() == {"ResultCode": 0, "ResultDesc": "Accepted"}
        assert time.monotonic() - started < 5  # the query is held for 10 s: the 200 did not wait for it
        assert asked.wait(5), "the held success is queried by the worker"
        assert manager.status("ws_CO_1").status == "pending"
        release.set()
        assert manager.wait("ws_CO_1", 5).status == "completed"
    finally:
        release.set()
        reconciler.stop()


# Real processes: the simulator decides what really happened; the callback server verifies.
TOKEN = "feedc0defeedc0defeedc0defeedc0de"
API_KEY = "verification-test-key"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("verify"), token=TOKEN, api_key=API_KEY,
               VERIFY_SUCCESS_BY_QUERY="true") as stack:
        yield stack.settings, stack.server


def push_and_register(settings: Settings, phone: str, amount: int = 250):
    ack = DarajaClient.from_settings(settings).stk_push(phone, amount, "INV1", "test", settings.callback_url)
    TrackingClient.from_settings(settings).register(ack.checkout_request_id, ack.phone_number, amount, "test")
    return ack


def transaction(settings: Settings, checkout_id: str) -> dict:
    return requests.get(f"{settings.base_url}/simulator/transactions/{checkout_id}", timeout=5).json()


def test_real_processes_a_forged_success_with_the_right_token_is_never_completed(stack):
    settings, server = stack
    requests.post(settings.base_url + "/simulator/rules", timeout=5, json={
        "phone": "0722000555", "result_code": 1032, "delay": 0, "lose_callback": True}).raise_for_status()
    ack = push_and_register(settings, "0722000555")
    deadline = time.monotonic() + 5
    while transaction(settings, ack.checkout_request_id)["state"] != "final" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert transaction(settings, ack.checkout_request_id)["result_code"] == 1032  # the customer cancelled

    forged = callback_body(checkout_request_id=ack.checkout_request_id, amount=250, phone=254722000555,
                           receipt="FORGED0001", merchant_request_id=ack.merchant_request_id)
    answer = requests.post(settings.callback_url, data=forged, timeout=5, headers={"Content-Type": "application/json"})
    assert answer.json() == {"ResultCode": 0, "ResultDesc": "Accepted"}
    tracking = TrackingClient.from_settings(settings)
    outcome = tracking.wait(ack.checkout_request_id, 10)  # the first state after pending
    assert outcome["status"] == "failed", outcome
    assert outcome["error_message"] == "Request cancelled by user"
    payment = outcome["payment"]
    assert payment["verification"] == "contradicted" and "FORGED0001" in payment["review"]
    assert payment["receipt"] is None
    assert transaction(settings, ack.checkout_request_id)["queries"] == 1
    assert "needs review: STK Query contradicts its success callback" in server.log()


def test_real_processes_a_genuine_success_is_confirmed_then_reported(stack):
    settings, _ = stack
    ack = push_and_register(settings, "0712345678")
    outcome = TrackingClient.from_settings(settings).wait(ack.checkout_request_id, 10)
    assert outcome["status"] == "success", outcome
    assert outcome["payment_details"]["VerifiedBy"] == "STK Query"
    assert outcome["payment"]["verification"] == "confirmed"
    assert transaction(settings, ack.checkout_request_id)["queries"] >= 1


def test_a_late_success_after_the_reconciler_gave_up_is_confirmed_then_completed(manager):
    register(manager)
    clock = Clock(created(manager))
    daraja = FakeDaraja(clock, ws_CO_1=[pending()] * 8 + [final("0")])
    reconciler = verifier(manager, clock, daraja)
    while manager.status("ws_CO_1").status == "pending":
        reconciler.run_once()
        clock.now += 5
    assert (manager.status("ws_CO_1").status, manager.status("ws_CO_1").settled_by) == ("unknown", "reconciler")
    ingest(manager, callback_body())  # the reconciler is told at once (on_unverified_success)
    held = manager.status("ws_CO_1")
    assert (held.status, held.verification, held.query_attempts) == ("unknown", "awaiting", 0)
    assert [a.status for a in reconciler.run_once()] == ["completed"]
    payment = manager.status("ws_CO_1")
    assert (payment.verification, payment.review, payment.receipt) == ("confirmed", None, "NLJ7RT61SV")
