"""Retries with real processes: the callback server sends them through the simulator, whose transaction
list is the witness of every prompt a phone got. Each test runs on SQLite and on PostgreSQL."""
import threading
import time

import pytest

from harness import Stack
from mpesa_agent.daraja import DarajaClient

pytestmark = pytest.mark.stores
CONFIRMED = {"confirm_repeat": True}
NO_ANSWER, CANCELLED = "0700001037", "0700001032"


def msisdn(phone: str) -> str:
    return "254" + phone[1:]


def push(stack: Stack, phone: str, amount: int, description: str = "retry test") -> str:
    """A first request, as the agent sends it: the push, then its registration; returns its checkout id."""
    ack = DarajaClient.from_settings(stack.settings).stk_push(phone, amount, "test", description,
                                                                stack.settings.callback_url)
    stack.api("POST", "/payment/register", json={"checkout_request_id": ack.checkout_request_id,
                                                  "phone_number": phone, "amount": amount,
                                                  "description": description}).raise_for_status()
    return ack.checkout_request_id


def outcome(stack: Stack, checkout_id: str) -> dict:
    """The payment once it settled (long-poll)."""
    answer = stack.api("GET", f"/payment/wait/{checkout_id}?timeout=20", timeout=30).json()
    assert answer["payment_status"] != "pending", answer
    return answer


def status(stack: Stack, checkout_id: str) -> dict:
    return stack.api("GET", f"/payment/status/{checkout_id}").json()


def retry(stack: Stack, checkout_id: str, body: dict | None = CONFIRMED):
    return stack.api("POST", f"/payment/{checkout_id}/retry", json=body, timeout=60)


@pytest.fixture
def stack(tmp_path, db_target):
    with Stack(tmp_path, db=db_target, SIMULATOR_CALLBACK_DELAY="0.2") as stack:
        yield stack


def test_a_failed_payment_retried_twice_shows_the_chain_in_status_and_events(stack):
    first = push(stack, NO_ANSWER, 41)
    assert outcome(stack, first)["payment"]["result_code"] == "1037"

    asked = retry(stack, first, body=None)  # within 2 minutes of the first: the person must confirm
    assert asked.status_code == 409 and asked.json()["needs"] == "confirm_repeat", asked.json()
    second = retry(stack, first)
    assert second.status_code == 201, second.json()
    second_id = second.json()["checkout_request_id"]
    assert (second.json()["retry_of"], second.json()["attempt"]) == (first, 2)
    assert outcome(stack, second_id)["payment_status"] == "failed"
    third = retry(stack, second_id)
    assert third.status_code == 201, third.json()
    third_id = third.json()["checkout_request_id"]
    outcome(stack, third_id)

    chain = status(stack, third_id)["attempts"]
    assert [(p["checkout_request_id"], p["attempt"], p["retry_of"], p["retried_as"]) for p in chain] == [
        (first, 1, None, second_id), (second_id, 2, first, third_id), (third_id, 3, second_id, None)]
    assert status(stack, first)["retry"]["state"] == "sent"
    retried = stack.api("GET", "/events?type=payment.retried&limit=1000").json()["events"]
    assert [(e["checkout_request_id"], e["data"]["retry"]["checkout_request_id"]) for e in retried
            if e["checkout_request_id"] in (first, second_id)] == [(first, second_id), (second_id, third_id)]
    timeline = [e["type"] for e in stack.api("GET", f"/payment/{first}/events").json()["events"]]
    assert timeline[-1] == "payment.retried"
    assert len(stack.pushes_to(msisdn(NO_ANSWER))) == 3


def test_a_completed_payment_is_refused_with_a_clear_json_error(stack):
    paid = push(stack, "0700000000", 42)
    assert outcome(stack, paid)["payment_status"] == "completed"
    refused = retry(stack, paid)
    assert refused.status_code == 409
    body = refused.json()
    assert body["status"] == "error" and body["payment_status"] == "completed"
    assert "a retry would charge the customer twice" in body["error"], body
    assert len(stack.pushes_to("254700000000")) == 1
    assert retry(stack, "ws_CO_nobody").status_code == 404


def test_concurrent_retry_requests_send_one_push(stack):
    phone = "0733100200"
    stack.control("POST", "/rules", json={"phone": phone, "result_code": 1019})
    first = push(stack, phone, 43)
    assert outcome(stack, first)["payment"]["result_code"] == "1019"
    answers, gate = [], threading.Barrier(8)

    def one():
        gate.wait()
        answers.append(retry(stack, first))
    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)

    assert sorted(a.status_code for a in answers) == [200] * 7 + [201], [a.json() for a in answers]
    assert len({a.json()["checkout_request_id"] for a in answers}) == 1
    assert len(stack.pushes_to(msisdn(phone))) == 2  # the first request and one retry


@pytest.fixture
def auto(tmp_path, db_target):
    with Stack(tmp_path, db=db_target, SIMULATOR_CALLBACK_DELAY="0.2", PAYMENT_AUTO_RETRY="true",
               PAYMENT_AUTO_RETRY_MAX="2", PAYMENT_AUTO_RETRY_DELAY="0.3", PAYMENT_REPEAT_WINDOW="0") as stack:
        yield stack


def test_automatic_retry_stops_at_the_maximum(auto):
    first = push(auto, NO_ANSWER, 44)
    ids = [first]
    for _ in range(2):  # each failure plans the next attempt in its own commit
        outcome(auto, ids[-1])
        planned = status(auto, ids[-1])["retry"]
        assert (planned["requested_by"], planned["attempt"]) == ("auto", len(ids) + 1)
        ids.append(_retried_as(auto, ids[-1]))
    last = outcome(auto, ids[-1])
    assert last["payment"]["attempt"] == 3 and "retry" not in status(auto, ids[-1])  # 2 retries: no third
    assert [p["checkout_request_id"] for p in status(auto, first)["attempts"]] == ids
    assert len(auto.pushes_to(msisdn(NO_ANSWER))) == 3


def test_automatic_retry_never_retries_a_cancel(auto):
    cancelled = push(auto, CANCELLED, 45)
    answer = outcome(auto, cancelled)
    assert answer["payment"]["result_code"] == "1032"
    assert "retry" not in status(auto, cancelled) and answer["payment"]["retried_as"] is None
    assert len(auto.pushes_to(msisdn(CANCELLED))) == 1


def test_a_planned_retry_survives_kill_9(tmp_path, db_target):
    with Stack(tmp_path, db=db_target, SIMULATOR_CALLBACK_DELAY="0.2", PAYMENT_AUTO_RETRY="true", PAYMENT_AUTO_RETRY_MAX="1",
               PAYMENT_AUTO_RETRY_DELAY="4", PAYMENT_REPEAT_WINDOW="0") as stack:
        first = push(stack, NO_ANSWER, 46)
        outcome(stack, first)
        assert status(stack, first)["retry"]["state"] == "scheduled"
        stack.restart_server(hard=True)
        retried = _retried_as(stack, first)
        outcome(stack, retried)
        assert len(stack.pushes_to(msisdn(NO_ANSWER))) == 2


def _retried_as(stack: Stack, checkout_id: str, within: float = 20.0) -> str:
    """The checkout id of the retry the server sends for `checkout_id` (a hang guard bounds the wait)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        retried_as = status(stack, checkout_id)["payment"]["retried_as"]
        if retried_as:
            return retried_as
        time.sleep(0.05)
    raise AssertionError(f"{checkout_id} was not retried: {status(stack, checkout_id)}")
