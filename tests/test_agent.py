"""The real root_agent on the offline model, with the real tools against a real simulator + callback server."""

import pytest
import requests

from mpesa_agent.offline_model import REFUSAL
from tests.conversation import SEND, STATUS, WAIT, converse
from test_callback_integration import payments, simulator_transaction, stack  # noqa: F401  (fixtures)

PROGRESS = "📱 Prompt sent to 0712345678 for 500 KSh for lunch — waiting for their PIN…"
SEED_SUCCESS = "💰 Payment completed successfully! 500 KSh sent to 0712345678 for lunch"  # the API's words
CANCELLED = ("❌ 0700001032 did not pay 100 KSh for test: Request cancelled by user. Checkout ID: {}\n"
             'They cancelled the prompt on their phone. Ask them to try again, then tell me "try again".')


def send_call(phone, amount, context="", **extra):
    return (SEND, {"phone_number": phone, "amount": amount, "context": context, "wait_for_completion": False,
                   **extra})


def pushes_to(stack, msisdn):
    transactions = requests.get(stack.base_url + "/simulator/transactions", timeout=5).json()["transactions"]
    return [t for t in transactions if t["phone_number"] == msisdn]


def test_the_seed_request_completes_in_one_turn(payments, stack):
    [turn] = converse(payments, "Send 500 to 0712345678 for lunch")

    assert turn.trajectory == [send_call("0712345678", 500, "lunch"), WAIT]
    accepted, result = turn.results
    receipt, checkout_id = result["payment_details"]["MpesaReceiptNumber"], result["checkout_request_id"]
    assert (accepted["status"], accepted["checkout_request_id"]) == ("pending", checkout_id)
    assert result["message"] == SEED_SUCCESS  # the tool keeps the brief's notification; the chat says who paid
    assert turn.reply == (f"{PROGRESS}\n"
                          f"✅ 0712345678 paid 500 KSh for lunch. Receipt {receipt}. Checkout ID: {checkout_id}")
    assert simulator_transaction(stack, result["checkout_request_id"])["queries"] == 0


def test_a_missing_amount_is_asked_for_and_the_answer_sends(payments):
    first, second = converse(payments, "send money to 0712345678", "500")

    assert first.calls == []
    assert first.reply == "OK, a payment request to 0712345678. How much should I request?"
    assert second.calls == [send_call("0712345678", 500)]
    assert "\n✅ 0712345678 paid 500 KSh. Receipt " in second.reply


def test_did_it_go_through_uses_the_last_checkout_id_without_asking_daraja(payments, stack):
    sent, asked = converse(payments, "Send 500 to 0712345678 for lunch", "did it go through?")

    checkout_id = sent.results[0]["checkout_request_id"]
    assert asked.calls == [(STATUS, {"checkout_request_id": checkout_id})]
    assert asked.reply.startswith("✅ Yes: 0712345678 paid 500 KSh for lunch. Receipt ")
    assert asked.reply.endswith(f"Checkout ID: {checkout_id}")
    assert simulator_transaction(stack, checkout_id)["queries"] == 0


def test_a_cancelled_payment_says_so_and_what_to_do(payments):
    [turn] = converse(payments, "send 100 to 0700001032 for test")

    assert turn.calls == [send_call("0700001032", 100, "test")]
    assert turn.results[-1]["status"] == "failed"
    assert turn.reply.split("\n", 1)[1] == CANCELLED.format(turn.results[-1]["checkout_request_id"])


def test_a_repeat_within_two_minutes_is_sent_only_after_the_approval_step(payments, stack):
    first, repeat = converse(payments, "send 60 to 0744000333 for tea", "send 60 to 0744000333 for tea")

    assert first.calls == repeat.calls == [send_call("0744000333", 60, "tea")]
    assert (first.approvals, repeat.approvals) == (0, 1)  # ADK's tool confirmation, approved as a person would
    assert "(yes / no)" not in repeat.reply
    assert "\n✅ 0744000333 paid 60 KSh for tea. Receipt " in repeat.reply
    assert len(pushes_to(stack, "254744000333")) == 2


def test_kenyan_phrasing(payments):
    [turn] = converse(payments, "tuma 1.5k kwa 0722 000 111")

    assert turn.calls == [send_call("0722000111", 1500)]
    assert turn.reply.startswith("📱 Prompt sent to 0722000111 for 1,500 KSh — waiting for their PIN…\n"
                                 "✅ 0722000111 paid 1,500 KSh. Receipt ")


@pytest.mark.parametrize("text", ["what's the weather in Nairobi?", "write me a poem about Mombasa"])
def test_other_requests_are_refused_without_a_tool_call(payments, stack, text):
    [turn] = converse(payments, text)

    assert turn.calls == []
    assert turn.reply == REFUSAL
    assert requests.get(stack.base_url + "/simulator/transactions", timeout=5).json()["transactions"] == []


def test_two_payments_in_one_message_push_both_only_after_yes(payments, stack):
    listed, declined = converse(payments, "send 70 to 0745 100 200 and 80 to 0746 100 200", "hapana")
    assert listed.calls == declined.calls == []
    assert pushes_to(stack, "254745100200") == pushes_to(stack, "254746100200") == []

    listed, yes = converse(payments, "send 70 to 0745 100 200 and 80 to 0746 100 200", "yes")
    assert yes.calls == [send_call("0745100200", 70), send_call("0746100200", 80)]
    assert [len(pushes_to(stack, msisdn)) for msisdn in ("254745100200", "254746100200")] == [1, 1]
    assert yes.reply.endswith("All 2 requests are done: 2 of 2 paid.")
