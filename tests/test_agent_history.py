"""Questions about past payments through ADK's real runner, answered from the callback server's records
(real simulator and server processes): each chat below is a new session, so nothing comes from chat state."""
import pytest

from harness import Stack
from mpesa_agent.tools import Payments
from tests.conversation import converse


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("agent_history"), PAYMENT_WAIT_SECONDS="8",
               SIMULATOR_CALLBACK_DELAY="0.05") as stack:
        yield stack


@pytest.fixture(scope="module")
def made(stack):
    """A paid lunch and a cancelled request, sent in their own chat; {phone: final tool answer}."""
    payments = Payments(stack.settings)
    [paid] = converse(payments, "Send 500 to 0712345678 for lunch")
    [cancelled] = converse(payments, "tuma 100 kwa 0700001032 ya test")
    return payments, {"0712345678": paid.results[-1], "0700001032": cancelled.results[-1]}


def test_did_a_number_pay_works_in_a_new_chat(made):
    payments, results = made
    [turn] = converse(payments, "did 0712 345 678 pay?")
    checkout_id = results["0712345678"]["checkout_request_id"]
    assert turn.calls == [("last_payment", {"phone_number": "0712345678"})]
    assert turn.reply.startswith("Last payment request to 0712345678 (asked ")
    assert turn.reply.endswith(f"✅ Yes: 0712345678 paid 500 KSh for lunch. Receipt "
                               f"{results['0712345678']['payment_details']['MpesaReceiptNumber']}. "
                               f"Checkout ID: {checkout_id}")


@pytest.mark.parametrize("text", ["my last payment", "last payment ilienda aje", "did it go through?"])
def test_the_last_payment_is_found_from_any_chat(made, text):
    payments, results = made
    [turn] = converse(payments, text)
    checkout_id = results["0700001032"]["checkout_request_id"]
    assert turn.calls == [("last_payment", {})]
    assert turn.reply.startswith("Your last payment request (asked ")
    assert f"❌ 0700001032 did not pay 100 KSh for test: Request cancelled by user. Checkout ID: {checkout_id}" \
        in turn.reply


@pytest.mark.parametrize("text", ["how much did I collect today?", "nimepokea ngapi leo"])
def test_how_much_was_collected_today(made, text):
    payments, _ = made
    [turn] = converse(payments, text)
    assert turn.calls == [("payment_totals", {"period": "today"})]
    assert turn.reply.startswith("💰 You collected 500 KSh today from 1 paid request.\nOf 2 requests, 1 failed.\n"
                                 "Completion rate: 50%.\nFailures: Request cancelled by user (1).")


def test_which_payments_failed_this_week_lists_them_with_their_checkout_ids(made):
    payments, results = made
    [turn] = converse(payments, "which payments failed this week?")
    assert turn.calls == [("find_payments", {"status": "failed", "period": "this_week"})]
    lines = turn.reply.split("\n")
    assert lines[0] == "1 failed payment request this week:"
    assert lines[1].endswith(f": 0700001032 did not pay 100 KSh for test: Request cancelled by user. "
                             f"Checkout ID: {results['0700001032']['checkout_request_id']}")


@pytest.mark.parametrize("text", ["who hasn't paid?", "nani hajalipa?"])
def test_who_has_not_paid_names_only_the_customers_still_owing(made, text):
    payments, results = made
    [turn] = converse(payments, text)
    assert turn.calls == [("find_payments", {"status": "unpaid"})]
    assert turn.reply.startswith("1 customer has not paid in the last 7 days:\n")
    assert results["0700001032"]["checkout_request_id"] in turn.reply and "0712345678" not in turn.reply
