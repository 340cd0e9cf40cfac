"""The tools' guardrails and input handling, without any server (nothing here reaches HTTP)."""
import asyncio

import pytest

from mpesa_agent import agent, tools
from mpesa_agent.tools import TOOL_NAMES, Payments, make_tools


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Unreachable:
    """Stands in for the Daraja and tracking clients where a test must not get that far."""

    def __getattr__(self, name):
        raise AssertionError(f"{name} must not be called")


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def payments(settings, clock):
    return Payments(settings.replace(rate_limit_count=4, rate_limit_window=600, max_amount=1000),
                    daraja=Unreachable(), tracking=Unreachable(), clock=clock)


def test_rate_limit_per_phone(payments, clock):
    for amount in (10, 20, 30, 35):
        assert payments._guard("254712345678", amount, False) is None
        clock.now += 1
    refused = payments._guard("254712345678", 40, False)
    assert refused["status"] == "error" and "try again in" in refused["message"]
    assert payments._guard("254722000000", 40, False) is None, "another phone has its own budget"
    clock.now += 601
    assert payments._guard("254712345678", 40, False) is None


def test_identical_push_within_two_minutes_needs_confirmation(payments, clock):
    assert payments._guard("254712345678", 500, False) is None
    clock.now += 30
    asked = payments._guard("254712345678", 500, False)
    assert asked["status"] == "needs_confirmation"
    assert "0712345678" in asked["message"] and "500 KSh" in asked["message"] and "30 seconds ago" in asked["message"]
    assert payments._guard("254712345678", 700, False) is None, "a different amount is not a repeat"
    assert payments._guard("254712345678", 500, True) is None, "the person confirmed"
    clock.now += 121
    assert payments._guard("254712345678", 500, False) is None


@pytest.mark.parametrize("phone, amount, words", [
    ("0201234567", 100, "not a mobile number"),
    ("12345", 100, "not a valid Kenyan mobile number"),
    ("0712345678", "12.50", "whole shillings"),
    ("0712345678", 0, "at least 1"),
    ("0712345678", 5000, "above the limit of 1,000"),
])
def test_bad_input_is_refused_before_any_call(payments, phone, amount, words):
    result = asyncio.run(payments.send(phone, amount, "x"))
    assert result["status"] == "error" and words in result["message"]


@pytest.mark.parametrize("checkout_id", ["", "   ", "not an id!", "x" * 101, "ws_CO_1/../x"])
def test_status_refuses_what_is_not_an_id(payments, checkout_id):
    assert asyncio.run(payments.status(checkout_id))["status"] == "error"


def test_make_tools_binds_the_product_names_to_its_argument(payments):
    send, status = make_tools(payments)
    assert (send.__name__, status.__name__) == TOOL_NAMES
    assert asyncio.run(status("not an id!"))["status"] == "error"
    crashed = asyncio.run(send("0712345678", 100))  # the Daraja stand-in raises: the model still gets a dict
    assert crashed["status"] == "error" and crashed["message"].startswith("Something went wrong")


def test_the_agents_wired_tools_are_importable_from_the_tools_module():
    assert [getattr(tool, "name", None) or tool.__name__ for tool in agent.root_agent.tools] == [
        *TOOL_NAMES, tools.WAIT_TOOL, *tools.HISTORY_TOOL_NAMES, tools.BULK_TOOL, tools.BULK_STATUS_TOOL,
        tools.RETRY_TOOL, tools.RETRY_MANY_TOOL]
    assert tools.send_instant_payment_with_tracking is agent.send_instant_payment_with_tracking
    assert tools.check_payment_status_realtime is agent.check_payment_status_realtime
    with pytest.raises(AttributeError):
        tools.configure  # noqa: B018 (the old module-global setup is gone)


def test_production_without_the_live_money_switch_prompts_nobody():
    from mpesa_agent.config import Settings
    from mpesa_agent.daraja import DarajaClient

    settings = Settings.from_env({"MPESA_ENV": "production", "MPESA_CONSUMER_KEY": "k", "MPESA_CONSUMER_SECRET": "s",
                                  "MPESA_BASE_URL": "http://127.0.0.1:9"}, load_files=False)
    payments = Payments(settings, daraja=DarajaClient.from_settings(settings), tracking=Unreachable())
    result = asyncio.run(payments.send("0712345678", 500, "lunch"))
    assert result["status"] == "error" and result["message"].startswith("Not sent: Live money is switched off")
    assert "MPESA_ALLOW_LIVE_MONEY=true" in result["message"]


@pytest.mark.parametrize("seconds, words", [(1, "1 second"), (45, "45 seconds"), (59.2, "1 minute"),
                                            (90, "2 minutes"), (597, "10 minutes"), (600, "10 minutes")])
def test_durations_are_said_in_words(seconds, words):
    assert tools.duration(seconds) == words


def test_the_rate_limit_says_minutes(payments, clock):
    for amount in (10, 20, 30, 35):
        payments._guard("254712345678", amount, False)
        clock.now += 1
    assert payments._guard("254712345678", 40, False)["message"].endswith("try again in 10 minutes.")


class UnknownEverywhere:
    """The callback server has no such payment (404) and Daraja does not know the ID."""

    def status(self, checkout_id):
        from mpesa_agent.tracking import TrackingRejected
        raise TrackingRejected(404, {"error": "unknown checkout_request_id"})

    def stk_query(self, checkout_id):
        from mpesa_agent.daraja.client import UNKNOWN_ID_REASON, StkQueryResult
        return StkQueryResult(checkout_id, "pending", None, "The transaction does not Exist", UNKNOWN_ID_REASON, {})


def test_an_id_nobody_knows_gets_one_clear_answer(settings):
    fake = UnknownEverywhere()
    payments = Payments(settings, daraja=fake, tracking=fake)
    answer = asyncio.run(payments.status("ws_CO_000000000000"))
    assert answer == {"status": "error", "checkout_request_id": "ws_CO_000000000000",
                      "message": "I have no payment with checkout ID ws_CO_000000000000, and M-Pesa does not know "
                                 "it either. Check the ID (copy it from the payment's message); a request sent a "
                                 "few seconds ago may not be known yet."}


def test_the_wait_tool_asks_for_an_id_when_none_is_known(payments):
    wait = tools.make_wait_tool(payments)
    assert asyncio.run(wait())["message"] == "Which payment? Give its checkout request ID (ws_CO_...)."
