"""Retrying a failed payment from its dashboard page, through Flask's test client on both stores:
the button is offered only when the payment may be retried, says in words that a new prompt will
reach the phone, needs the CSRF token, asks again within 2 minutes of the last identical push,
calls the API's own retry (server/retries.py) and shows the new attempt and the chain. The pushes
go to the Daraja simulator over real HTTP, whose transaction list is the witness."""
import re

import pytest
import requests

from mpesa_agent.daraja import DarajaClient
from tests.test_dashboard import csrf, pay, sign_in

pytestmark = pytest.mark.stores


@pytest.fixture
def simulator(app, settings, start_simulator) -> str:
    url = start_simulator(callback_delay=3600)  # the new prompts stay unanswered: no callback to a server
    app.extensions["retries"].daraja = DarajaClient.from_settings(settings.replace(base_url=url))
    return url


@pytest.fixture
def signed_in(client):
    assert sign_in(client).status_code == 302
    return client


def pushes(simulator: str) -> list[dict]:
    return requests.get(simulator + "/simulator/transactions", timeout=5).json()["transactions"]


def text(answer) -> str:
    return re.sub(r"\s+", " ", answer.get_data(as_text=True))


def test_a_failed_payment_is_retried_after_a_confirmation_in_words_and_shows_the_chain(app, signed_in, simulator):
    pay(app, "ws_CO_1", 1032)
    page = text(signed_in.get("/dashboard/payments/ws_CO_1"))
    box = re.search(r'<details class="card confirm retry" id="retry-box">(.*?)</details>', page).group(1)
    assert "A new M-Pesa prompt for KES 500 will reach 0712345678's phone now" in box
    assert "It is a new payment, linked to this one" in box and "confirm_repeat" not in box
    token = csrf(signed_in, "/dashboard/payments/ws_CO_1")

    forged = signed_in.post("/dashboard/payments/ws_CO_1/retry", data={"csrf_token": "forged"})
    assert forged.status_code == 400 and pushes(simulator) == []

    asked = signed_in.post("/dashboard/payments/ws_CO_1/retry", data={"csrf_token": token})
    said = text(asked)  # the first request was less than 2 minutes ago: asked again, nothing sent
    assert asked.status_code == 409 and pushes(simulator) == []
    assert "Not sent yet: 0712345678 was asked for KES 500 less than 2 minutes ago" in said
    assert '<input type="hidden" name="confirm_repeat" value="yes">' in said and "Yes, send a second prompt now" in said

    sent = signed_in.post("/dashboard/payments/ws_CO_1/retry", data={"csrf_token": token, "confirm_repeat": "yes"})
    assert sent.status_code == 302
    new_id = re.match(r"/dashboard/payments/([^?]+)\?retried=new$", sent.headers["Location"]).group(1)
    assert [t["checkout_request_id"] for t in pushes(simulator)] == [new_id]
    new = text(signed_in.get(sent.headers["Location"]))
    assert "A new prompt went to 0712345678 for KES 500: this is attempt 2" in new
    attempts = re.search(r'<ol class="attempts">(.*?)</ol>', new).group(1)
    assert 'href="/dashboard/payments/ws_CO_1"' in attempts and "Request cancelled by user" in attempts
    assert re.search(r'data-attempt="2" aria-current="true">.*this payment', attempts)
    assert 'id="retry-box"' not in new and 'id="no-retry"' not in new  # pending: nothing to retry yet

    original = text(signed_in.get("/dashboard/payments/ws_CO_1"))
    assert 'id="retry-box"' not in original and f'href="/dashboard/payments/{new_id}"' in original
    assert "Retried: a new prompt was sent, as a new payment" in original  # the timeline's event

    again = signed_in.post("/dashboard/payments/ws_CO_1/retry", data={"csrf_token": token, "confirm_repeat": "yes"})
    assert again.headers["Location"] == f"/dashboard/payments/{new_id}?retried=again"
    assert "This retry had already been sent (attempt 2), so no other prompt was sent" in text(
        signed_in.get(again.headers["Location"]))
    assert len(pushes(simulator)) == 1


def test_a_paid_payment_offers_no_retry_and_refuses_one_in_words(app, signed_in, simulator):
    pay(app, "ws_CO_1", 0)
    page = text(signed_in.get("/dashboard/payments/ws_CO_1"))
    assert 'id="retry-box"' not in page and 'id="no-retry"' not in page
    token = csrf(signed_in, "/dashboard/payments/ws_CO_1")
    refused = signed_in.post("/dashboard/payments/ws_CO_1/retry", data={"csrf_token": token, "confirm_repeat": "yes"})
    assert refused.status_code == 409 and pushes(simulator) == []
    assert "it was paid (receipt NLJ7RT61SV): a retry would charge the customer twice" in text(refused)
    assert signed_in.post("/dashboard/payments/ws_CO_nope/retry", data={"csrf_token": token}).status_code == 404


def test_an_unknown_payment_says_why_it_is_not_retried_and_nobody_signed_out_can_retry(app, client, simulator):
    manager = app.extensions["callback_manager"]
    manager.register("ws_CO_1", "0712345678", 500, "lunch", None)
    with manager.store.transaction() as tx:
        tx.update_payment("ws_CO_1", status="unknown", reason="no final answer from M-Pesa")
    assert client.post("/dashboard/payments/ws_CO_1/retry").status_code == 302  # to the sign-in page
    sign_in(client)
    page = text(client.get("/dashboard/payments/ws_CO_1"))
    assert 'id="retry-box"' not in page
    assert "No retry offered: its outcome is unknown, so the customer may have paid" in page
    assert pushes(simulator) == []
