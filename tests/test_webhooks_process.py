"""Webhooks with real processes: the callback server delivers to a local receiver that verifies
every delivery with the standardwebhooks library; retries, a wrong secret, kill -9 mid-burst, replay."""
import sqlite3
import threading
import time

import pytest
import requests

from harness import Stack
from harness.webhooks import Receiver

HANG_GUARD = 60.0  # seconds; the conditions below hold long before


@pytest.fixture
def stack(tmp_path):
    with Stack(tmp_path, simulator=False, WEBHOOKS_ALLOW_PRIVATE_URLS="true",
               WEBHOOK_RETRY_SCHEDULE="0.2,0.2,0.5,1,1,2,5") as stack:
        yield stack


def add_endpoint(stack, receiver, events=("payment.registered",)) -> dict:
    answer = stack.api("POST", "/webhooks", json={"url": receiver.url, "events": list(events)})
    assert answer.status_code == 201, answer.text
    receiver.secret = answer.json()["secret"]
    return answer.json()


def register(stack, checkout_id: str, session=requests) -> requests.Response:
    return stack.api("POST", "/payment/register", session=session, json={
        "checkout_request_id": checkout_id, "phone_number": "0712345678", "amount": 10, "description": "hooks"})


def attempts(stack, endpoint: dict, count: int) -> list[dict]:
    """The endpoint's recorded attempts, once there are `count` (the receiver answers before the server records)."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        found = stack.api("GET", f"/webhooks/{endpoint['id']}/deliveries").json()["deliveries"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def logged(stack, type="payment.registered") -> set[int]:
    with sqlite3.connect(stack.db) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM events WHERE type = ?", (type,))}


def test_500_500_then_200_is_delivered_on_the_third_attempt_each_verified_and_replay_sends_it_again(stack):
    with Receiver(answers=(500, 500)) as receiver:
        endpoint = add_endpoint(stack, receiver)
        assert register(stack, "ws_CO_hook_1").status_code == 201
        [event_id] = logged(stack)
        assert receiver.wait_for(lambda got: any(r.status == 200 for r in got), HANG_GUARD)
        assert [(r.webhook_id, r.verified, r.status) for r in receiver.received] == [
            (str(event_id), True, 500), (str(event_id), True, 500), (str(event_id), True, 200)]
        message = receiver.received[-1].message
        assert message["type"] == "payment.registered" and message["data"]["id"] == event_id
        assert message["data"]["data"]["payment"]["checkout_request_id"] == "ws_CO_hook_1"
        deliveries = attempts(stack, endpoint, 3)
        assert [(d["attempt"], d["status_code"], d["success"]) for d in deliveries] == [
            (3, 200, True), (2, 500, False), (1, 500, False)]

        replay = stack.api("POST", f"/webhooks/{endpoint['id']}/replay", json={"event_id": event_id})
        assert replay.status_code == 202 and replay.json()["queued"] == 1
        assert receiver.wait_for(lambda got: len(got) == 4, HANG_GUARD)
        last = receiver.received[-1]
        assert (last.webhook_id, last.verified, last.status) == (str(event_id), True, 200)
        ranged = stack.api("POST", f"/webhooks/{endpoint['id']}/replay", json={"since": "2000-01-01T00:00:00Z"})
        assert ranged.json()["queued"] == 1 and receiver.wait_for(lambda got: len(got) == 5, HANG_GUARD)


def test_a_wrong_secret_fails_verification_and_the_failure_is_recorded(stack):
    with Receiver() as receiver:
        endpoint = add_endpoint(stack, receiver)
        rotated = stack.api("POST", f"/webhooks/{endpoint['id']}/rotate-secret").json()["secret"]
        receiver.secret = "whsec_" + "QUJD" * 11  # neither the old nor the new secret
        register(stack, "ws_CO_hook_2")
        assert receiver.wait_for(lambda got: len(got) >= 1, HANG_GUARD)
        assert receiver.received[0].verified is False and "No matching signature" in receiver.received[0].message
        receiver.secret = endpoint["secret"]  # the old one still verifies for 24 h, as does the new one
        assert receiver.wait_for(lambda got: any(r.verified for r in got), HANG_GUARD)
        assert receiver.received[-1].verified and rotated != endpoint["secret"]
        deliveries = attempts(stack, endpoint, len(receiver.received))
        assert (deliveries[-1]["status_code"], deliveries[-1]["response"]) == (401, "try again")


def test_kill_9_during_a_burst_to_a_slow_receiver_loses_no_event(stack):
    burst = 200
    with Receiver(delay=0.1) as receiver:
        add_endpoint(stack, receiver)

        def sender(checkout_ids):
            def send():
                session = requests.Session()
                for checkout_id in checkout_ids:
                    for _ in range(200):  # the server may be down for a moment: send again until it answers
                        try:
                            if register(stack, checkout_id, session).status_code in (200, 201):
                                break
                        except requests.RequestException:
                            time.sleep(0.05)
            return threading.Thread(target=send)

        # The first half goes in before the kill, the second half while the server is down and after.
        before = [sender([f"ws_CO_burst_{n}" for n in range(k, burst // 2, 4)]) for k in range(4)]
        after = [sender([f"ws_CO_burst_{n}" for n in range(burst // 2 + k, burst, 4)]) for k in range(4)]
        for thread in before:
            thread.start()
        assert receiver.wait_for(lambda got: len(got) >= 20, HANG_GUARD)
        stack.server.kill()  # kill -9 while deliveries are in flight
        pending = logged(stack) - receiver.delivered_ids()
        assert pending, "every event was delivered before the kill: nothing was in flight"
        for thread in after:
            thread.start()
        stack.server.start()
        for thread in before + after:
            thread.join(HANG_GUARD)
        events = logged(stack)
        assert len(events) == burst
        assert receiver.wait_for(lambda got: events <= {int(r.webhook_id) for r in got if r.status == 200},
                                 HANG_GUARD), f"missing: {sorted(events - receiver.delivered_ids())[:20]}"
        assert all(r.verified for r in receiver.received)
