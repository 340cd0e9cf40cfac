"""The whole loop with real processes on 127.0.0.1: simulator + callback server + the agent's tools.

Run with `python test_callback_integration.py` or under pytest (./test.sh runs it).
"""
from __future__ import annotations

import asyncio
import sys
import time

import pytest
import requests

from mpesa_agent.config import Settings
from mpesa_agent.tools import Payments, QuerySchedule, make_tools
from mpesa_agent.tracking import TrackingClient
from harness import Stack, free_port

TOKEN = "0123456789abcdef0123456789abcdef"
API_KEY = "integration-test-key"
FAST_QUERIES = QuerySchedule(first=0.3, every=0.3)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Simulator and callback server as real processes; yields their settings."""
    with Stack(tmp_path_factory.mktemp("stack"), token=TOKEN, api_key=API_KEY, PAYMENT_WAIT_SECONDS="8",
               BULK_PUSHES_PER_SECOND="20") as stack:
        yield stack.settings


@pytest.fixture
def payments(stack):
    """A fresh simulator and this test's own Payments (guardrail state) on the stack."""
    requests.post(stack.base_url + "/simulator/reset", timeout=5).raise_for_status()
    return Payments(stack, schedule=FAST_QUERIES)


def simulator_rule(settings: Settings, **rule) -> None:
    requests.post(settings.base_url + "/simulator/rules", json=rule, timeout=5).raise_for_status()


def simulator_transaction(settings: Settings, checkout_request_id: str) -> dict:
    response = requests.get(f"{settings.base_url}/simulator/transactions/{checkout_request_id}", timeout=5)
    response.raise_for_status()
    return response.json()


def send(payments: Payments, phone: str, amount=500, context="lunch", **kwargs) -> dict:
    """The agent's send tool, bound to `payments`."""
    send_instant_payment_with_tracking, _ = make_tools(payments)
    return asyncio.run(send_instant_payment_with_tracking(phone, amount, context, **kwargs))


def status(payments: Payments, checkout_request_id: str) -> dict:
    """The agent's status tool, bound to `payments`."""
    _, check_payment_status_realtime = make_tools(payments)
    return asyncio.run(check_payment_status_realtime(checkout_request_id))


def test_success_is_reported_from_the_callback_with_zero_queries(payments, stack):
    started = time.monotonic()
    result = send(payments, "0712 345 678", "500", "lunch")
    elapsed = time.monotonic() - started

    assert result["status"] == "success", result
    assert result["message"] == "💰 Payment completed successfully! 500 KSh sent to 0712345678 for lunch"
    assert result["payment_status"] == "completed"
    assert result["payment_details"]["Amount"] == 500
    assert result["payment_details"]["PhoneNumber"] == 254712345678
    assert len(result["payment_details"]["MpesaReceiptNumber"]) == 10
    assert elapsed < 5, "the waiter must wake on the callback, not at its timeout"
    transaction = simulator_transaction(stack, result["checkout_request_id"])
    assert transaction["queries"] == 0
    assert status(payments, result["checkout_request_id"])["payment_status"] == "completed"


@pytest.mark.parametrize("phone, reason", [
    ("0700001032", "Request cancelled by user"),
    ("0700002001", "Wrong M-Pesa PIN entered"),
    ("0700000001", "Insufficient M-Pesa balance"),
])
def test_failures_carry_the_reason(payments, phone, reason):
    result = send(payments, phone, 100, "test")
    assert result["status"] == "failed", result
    assert result["error_message"] == reason
    assert result["message"] == f"❌ Payment failed: {reason}"
    assert result["checkout_request_id"].startswith("ws_CO_")


def test_no_response_from_the_customer(payments, stack):
    simulator_rule(stack, phone="0700001037", delay=0.3)
    result = send(payments, "0700001037", 20, "test")
    assert result["status"] == "failed"
    assert "No response" in result["error_message"]


def test_late_callback_after_the_wait_timed_out_still_settles(payments, stack):
    simulator_rule(stack, phone="0722000111", delay=2.5)
    payments = Payments(stack.replace(wait_seconds=1), schedule=FAST_QUERIES)
    result = send(payments, "0722000111", 75, "airtime")
    assert result["status"] == "timeout", result
    assert result["message"] == "⏱️ Payment initiated but completion status unknown"
    assert result["payment_status"] == "pending"

    checkout_id, deadline = result["checkout_request_id"], time.monotonic() + 10
    while status(payments, checkout_id)["payment_status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
    final = status(payments, checkout_id)
    assert final["status"] == "success", final
    assert final["payment_details"]["Amount"] == 75


def test_callback_server_down_falls_back_to_stk_query(payments, stack):
    closed = f"http://127.0.0.1:{free_port()}"
    tracking = TrackingClient(closed, API_KEY, register_backoff=(0.05,))
    payments = Payments(stack, tracking=tracking, schedule=FAST_QUERIES)
    result = send(payments, "0733000222", 120, "rent")
    assert result["status"] == "success", result
    assert result["payment_details"]["VerifiedBy"] == "STK Query"
    assert simulator_transaction(stack, result["checkout_request_id"])["queries"] >= 1

    failed = send(payments, "0700001032", 120, "rent")
    assert failed["status"] == "failed"
    assert failed["error_message"] == "Request cancelled by user"


def test_repeat_within_two_minutes_needs_confirmation(payments, stack):
    first = send(payments, "0744000333", 60, "tea")
    assert first["status"] == "success"
    again = send(payments, "0744000333", 60, "tea")
    assert again["status"] == "needs_confirmation"
    pushes = [t for t in requests.get(stack.base_url + "/simulator/transactions", timeout=5).json()["transactions"]
              if t["phone_number"] == "254744000333"]
    assert len(pushes) == 1, "the customer must not be prompted twice without confirmation"
    # the person approved (ADK's confirmation step in the chat, confirm=true over MCP)
    confirmed = asyncio.run(payments.send("0744000333", 60, "tea", confirm_repeat=True))
    assert confirmed["status"] == "success"


def test_bad_input_is_an_error_dict_not_an_exception(payments):
    assert send(payments, "0201234567")["status"] == "error"
    assert "whole shillings" in send(payments, "0712345678", "12.50")["message"]
    assert status(payments, "not an id!")["status"] == "error"


def test_many_waiting_payments_do_not_stall_other_tool_calls(payments, stack):
    phones = [f"07550001{n:02d}" for n in range(10)]
    for phone in phones:
        simulator_rule(stack, phone=phone, delay=2.5)
    done: list[str] = []
    send_instant_payment_with_tracking, check_payment_status_realtime = make_tools(payments)

    async def scenario():
        async def send_one(phone):
            await send_instant_payment_with_tracking(phone, 30, "load")
            done.append("send")

        async def check_one():
            while not requests.get(stack.base_url + "/simulator/transactions", timeout=5).json()["transactions"]:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # let every send reach its long-poll
            await check_payment_status_realtime("ws_CO_unknown_to_everyone")
            done.append("status")

        await asyncio.gather(*(send_one(phone) for phone in phones), check_one())

    asyncio.run(scenario())
    assert done[0] == "status", "a status check waited behind the long-polls"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
