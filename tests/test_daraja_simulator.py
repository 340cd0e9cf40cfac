"""The Daraja client against the simulator, end to end over real HTTP on 127.0.0.1."""
import time

import pytest
import requests

from mpesa_agent.daraja import DarajaClient
from mpesa_agent.daraja.errors import (AuthenticationError, OutcomeUnknownError, SubscriberLockedError,
                                ThrottledError)
from mpesa_agent.payments.states import COMPLETED, FAILED, PENDING

CALLBACK = "http://127.0.0.1:9/callback/0123456789abcdef0123456789abcdef"  # nobody listens: queries only


@pytest.fixture
def sim(start_simulator):
    return start_simulator(callback_delay=0.3)


@pytest.fixture
def client(settings, sim):
    return DarajaClient.from_settings(settings.replace(base_url=sim))


def rule(sim: str, **fields) -> None:
    requests.post(sim + "/simulator/rules", json=fields, timeout=5).raise_for_status()


def transactions(sim: str) -> list[dict]:
    return requests.get(sim + "/simulator/transactions", timeout=5).json()["transactions"]


def query_until_final(client, checkout_request_id: str, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while True:
        result = client.stk_query(checkout_request_id)
        if result.state != PENDING or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_push_then_query_pending_then_paid(client, sim):
    ack = client.stk_push("0712 345 678", 500, "INV001", "lunch", CALLBACK)
    assert ack.checkout_request_id.startswith("ws_CO_") and ack.response_code == "0"
    assert client.stk_query(ack.checkout_request_id).state == PENDING
    final = query_until_final(client, ack.checkout_request_id)
    assert (final.state, final.result_code) == (COMPLETED, "0")
    assert transactions(sim)[0]["phone_number"] == "254712345678"


def test_cancelled_is_a_failure_with_its_reason(client):
    ack = client.stk_push("0700001032", 10, "INV002", "test", CALLBACK)
    final = query_until_final(client, ack.checkout_request_id)
    assert (final.state, final.result_code, final.reason) == (FAILED, "1032", "Request cancelled by user")


def test_token_expiry_mid_flow_is_refreshed_once(client, sim):
    ack = client.stk_push("0712345678", 20, "INV003", "test", CALLBACK)
    requests.post(sim + "/simulator/expire-tokens", timeout=5).raise_for_status()
    assert client.stk_query(ack.checkout_request_id).checkout_request_id == ack.checkout_request_id


def test_wrong_passkey_is_refused(settings, sim):
    client = DarajaClient.from_settings(settings.replace(base_url=sim, passkey="0" * 64))
    with pytest.raises(AuthenticationError) as caught:
        client.stk_push("0712345678", 20, "INV004", "test", CALLBACK)
    assert "Wrong credentials" in str(caught.value)
    assert "0" * 64 not in str(caught.value)


@pytest.mark.parametrize("preset, error", [("spike_arrest", ThrottledError), ("subscriber_locked", SubscriberLockedError)])
def test_daraja_refusals_raise_their_error_and_send_nothing(client, sim, preset, error):
    rule(sim, scope="next", push_error=preset)
    with pytest.raises(error):
        client.stk_push("0712345678", 30, "INV005", "test", CALLBACK)
    assert transactions(sim) == []


def test_slow_acknowledgement_is_unknown_and_never_resent(settings, sim):
    client = DarajaClient.from_settings(settings.replace(base_url=sim))
    client.timeout = (2.0, 0.3)
    rule(sim, scope="next", ack_delay=1.0)
    with pytest.raises(OutcomeUnknownError, match="query"):
        client.stk_push("0712345678", 40, "INV006", "test", CALLBACK)
    time.sleep(1.0)
    assert len(transactions(sim)) == 1, "exactly one prompt reached the customer"
