"""The offline model driven through ADK's real runner, with fake tools that return the seed's notifications."""
import asyncio
from dataclasses import dataclass

import pytest
from google.adk.agents import Agent
from google.adk.models import LlmRequest
from google.adk.runners import InMemoryRunner, Runner
from google.genai import types

from mpesa_agent.payments import notifications as notes
from mpesa_agent.offline_model import HELP_TEXT, MODEL_NAME, OfflineModel, reply_to_result
from mpesa_agent.offline_model.model import ASK_AGAIN_LATER
from mpesa_agent.payments.states import FAILURE_REASONS

SEND = "send_instant_payment_with_tracking"
STATUS = "check_payment_status_realtime"
CHECKOUT_ID = "ws_CO_191220191020363925"


def success(amount=500, phone="0712345678", context="lunch", checkout_id=CHECKOUT_ID, receipt="NLJ7RT61SV"):
    details = notes.payment_details(amount, receipt, 20191219102115, "254712345678")
    return notes.success_notification(checkout_id, amount, phone, context, details)


def failure(reason, checkout_id=CHECKOUT_ID):
    return notes.failure_notification(checkout_id, reason)


def timeout(checkout_id=CHECKOUT_ID):
    return notes.timeout_notification(checkout_id)


def pending(checkout_id=CHECKOUT_ID):
    return notes.pending_notification(checkout_id)


def unknown(checkout_id=CHECKOUT_ID, reason="Unrecognised M-Pesa result code 42"):
    return notes.unknown_notification(checkout_id, reason)


def error(message):
    return {"status": "error", "message": message}


NEEDS_CONFIRMATION = {"status": "needs_confirmation", "phone_number": "254712345678", "amount": 500,
                      "message": "You already asked 0712345678 for 500 KSh 45 seconds ago. Send the same request again?"}


@dataclass
class Turn:
    calls: list  # [(tool name, args as the model wrote them)], without the waits after a push
    text: str  # the final reply (after a push: the outcome)
    progress: str = ""  # what was shown while the tools ran, e.g. "📱 Prompt sent ..."
    waits: int = 0


RETRY = "retry_payment"
RETRIED_ID = "ws_CO_291120261200000000712345678"


def retried(checkout_id=CHECKOUT_ID, phone="254712345678", amount=500, context="lunch"):
    """The retry tool's answer: the new push is pending, with the payment's phone, amount and purpose."""
    return {**notes.pending_notification(RETRIED_ID, "📱 A new prompt sent"), "retry_of": checkout_id, "attempt": 2,
            "phone_number": phone, "amount": amount, "context": context}


def make_tools(send_results, status_results, retry_results=()):
    """Fake tools with the real names and signatures, answering from queues (success by default)."""
    send_queue, status_queue, retry_queue, outcomes = list(send_results), list(status_results), list(retry_results), []

    async def retry_payment(checkout_request_id: str = "") -> dict:
        """Retry a failed payment."""
        answer = retry_queue.pop(0) if retry_queue else retried()
        if answer.get("status") == "pending":
            outcomes.append(success(answer["amount"], "0712345678", answer["context"], RETRIED_ID))
        return answer

    async def retry_unanswered_payments() -> dict:
        """Retry the ones that did not answer."""
        return {"status": "retried", "results": [], "message": "✅ 0712345678 paid 500 KSh.\nSent again: 1 of 1; paid: 1."}

    async def send_instant_payment_with_tracking(phone_number: str, amount: int, context: str = "",
                                                 wait_for_completion: bool = True) -> dict:
        """Send an STK Push and wait for its completion."""
        outcome = send_queue.pop(0) if send_queue else success(amount, phone_number, context)
        if wait_for_completion or outcome.get("status") not in FINAL or not outcome.get("checkout_request_id"):
            return outcome
        outcomes.append(outcome)  # what wait_for_payment will answer
        return notes.pending_notification(outcome["checkout_request_id"], "📱 Payment request sent.")

    async def wait_for_payment(checkout_request_id: str = "") -> dict:
        """Wait for the outcome of the last push."""
        return outcomes.pop(0)

    async def check_payment_status_realtime(checkout_request_id: str) -> dict:
        """The current status of a payment."""
        return status_queue.pop(0) if status_queue else success(checkout_id=checkout_request_id)

    async def last_payment(phone_number: str = "") -> dict:
        """The newest stored payment (of a phone)."""
        return {**success(checkout_id="ws_CO_STORED"), "payment": STORED}

    async def find_payments(status: str = "", period: str = "", phone_number: str = "", limit: int = 10) -> dict:
        """Stored payments."""
        return {"status": "success", "count": 1, "message": "1 payment request:\n✅ ... Checkout ID: ws_CO_STORED"}

    async def payment_totals(period: str = "today") -> dict:
        """Totals of a period."""
        return {"status": "success", "message": f"💰 You collected 500 KSh {period}"}

    return [send_instant_payment_with_tracking, check_payment_status_realtime, wait_for_payment, last_payment,
            find_payments, payment_totals, retry_payment, retry_unanswered_payments]


STORED = {"checkout_request_id": "ws_CO_STORED", "phone_number": "254712345678", "amount": 500,
          "description": "lunch", "status": "completed", "created_at": "2026-11-29T11:05:00.000+00:00"}
FINAL = ("success", "failed", "timeout", "pending", "unknown")


def converse(*messages, send_results=(), status_results=(), retry_results=(), fresh_model_each_turn=False) -> list[Turn]:
    """Run a multi-turn chat; return each turn's tool calls and reply text."""
    tools = make_tools(send_results, status_results, retry_results)
    runner = InMemoryRunner(agent=Agent(name="t", model=OfflineModel(), tools=tools), app_name="t")

    async def run() -> list[Turn]:
        nonlocal runner
        turns: list[Turn] = []
        session = await runner.session_service.create_session(app_name="t", user_id="u")
        for text in messages:
            if fresh_model_each_turn:  # a new model, agent and runner over the same stored session
                agent = Agent(name="t", model=OfflineModel(), tools=tools)
                runner = Runner(agent=agent, app_name="t", session_service=runner.session_service)
            calls, replies, progress = [], [], []
            message = types.Content(role="user", parts=[types.Part(text=text)])
            async for event in runner.run_async(user_id="u", session_id=session.id, new_message=message):
                calls += [(call.name, dict(call.args)) for call in event.get_function_calls()]
                if event.content and event.content.parts and not event.get_function_responses():
                    shown = [part.text for part in event.content.parts if part.text]
                    (progress if event.get_function_calls() else replies).extend(shown)
            waits = [c for c in calls if c[0] == "wait_for_payment"]
            assert all(args == {} for _, args in waits)
            turns.append(Turn([c for c in calls if c[0] != "wait_for_payment"], "\n".join(replies),
                              "\n".join(progress), len(waits)))
        return turns

    return asyncio.run(run())


def send_call(phone="0712345678", amount=500, context="", **extra):
    return (SEND, {"phone_number": phone, "amount": amount, "context": context, "wait_for_completion": False,
                   **extra})


def test_registered_by_name():
    agent = Agent(name="t", model=MODEL_NAME)
    assert isinstance(agent.canonical_model, OfflineModel)
    assert isinstance(Agent(name="t", model="offline-mpesa-v2").canonical_model, OfflineModel)


def test_the_seed_experience_in_one_turn():
    [turn] = converse("Send 500 to 0712345678 for lunch")
    assert turn.calls == [send_call(context="lunch")]
    assert turn.text == f"✅ 0712345678 paid 500 KSh for lunch. Receipt NLJ7RT61SV. Checkout ID: {CHECKOUT_ID}"


@pytest.mark.parametrize("text, call", [
    ("tuma 500 kwa 0712345678", send_call()),
    ("lipa 200 0712345678", send_call(amount=200)),
    ("request 300 from +254 712 345 678", send_call(amount=300)),
    ("charge 0712-345-678 1.5k ya rent", send_call(amount=1500, context="rent")),
    ("Ksh. 1,200 to 254712345678 for school fees.", send_call(amount=1200, context="school fees")),
    ("tuma mia tano kwa 0110 123 456 kwa ajili ya chakula", send_call("0110123456", 500, "chakula")),
])
def test_kenyan_phrasings_call_the_tool(text, call):
    [turn] = converse(text)
    assert turn.calls == [call]
    assert " paid " in turn.text


def test_missing_amount_is_asked_and_carried_to_the_next_turn():
    first, second = converse("send money to 0712345678", "500")
    assert first.calls == [] and "How much should I request?" in first.text and "0712345678" in first.text
    assert second.calls == [send_call()]


def test_missing_phone_is_asked_and_carried_with_the_purpose():
    first, second = converse("nitumie 1k for lunch", "0712 345 678")
    assert first.calls == [] and "To which phone number?" in first.text and "1,000 KSh" in first.text
    assert second.calls == [send_call(amount=1000, context="lunch")]


def test_both_missing_then_answered_one_by_one():
    turns = converse("I want to send money", "mia tano", "for lunch", "+254712345678")
    assert "How much should I request?" in turns[0].text
    assert "To which phone number?" in turns[1].text
    assert turns[2].calls == [] and "To which phone number?" in turns[2].text
    assert turns[3].calls == [send_call(context="lunch")]


def test_slot_filling_needs_no_state_in_the_model():
    first, second = converse("pay 500", "0712345678", fresh_model_each_turn=True)
    assert first.calls == [] and second.calls == [send_call()]


def test_invalid_phone_is_explained_and_asked_again():
    first, second = converse("send 500 to 0201234567", "0712345678")
    assert first.calls == []
    assert "0201234567" in first.text and "not a mobile number" in first.text and "To which phone number?" in first.text
    assert second.calls == [send_call()]


def test_short_phone_is_explained():
    [turn] = converse("send 500 to 07123456")
    assert turn.calls == [] and "8 digits" in turn.text


def test_cents_are_asked_about_not_rounded():
    first, second = converse("send 12.50 to 0712345678", "13")
    assert first.calls == [] and "whole shillings" in first.text and "How much should I request?" in first.text
    assert second.calls == [send_call(amount=13)]


@pytest.mark.parametrize("text", ["send 500 to 0712345678 x2", "send 500 twice to 0712345678",
                                  "tuma 500 mara mbili kwa 0712345678"])
def test_an_amount_asked_more_than_once_is_asked_about_not_guessed(text):
    first, second = converse(text, "1000")
    assert first.calls == [] and "500 KSh more than once?" in first.text
    assert second.calls == [send_call(amount=1000)]


def test_phone_digits_are_never_the_amount():
    [turn] = converse("send to 0712345678")
    assert turn.calls == [] and "How much should I request?" in turn.text


def test_a_correction_replaces_the_phone():
    turns = converse("send money to 0712345678", "actually 0722000000", "1k")
    assert turns[1].calls == [] and "0722000000" in turns[1].text
    assert turns[2].calls == [send_call("0722000000", 1000)]


def test_a_question_with_numbers_is_not_an_amount():
    first, second = converse("send money to 0712345678", "how much is 2+2")
    assert second.calls == [] and "How much should I request?" in second.text


def test_cancel_drops_the_draft():
    turns = converse("send money to 0712345678", "cancel", "500")
    assert "Nothing was sent" in turns[1].text
    assert turns[2].calls == [] and "To which phone number?" in turns[2].text


def test_an_unclear_answer_keeps_the_question():
    first, second, third = converse("send 500", "mama mboga", "0712345678")
    assert second.calls == [] and "To which phone number?" in second.text
    assert third.calls == [send_call()]


FAILURE_CASES = [  # outcomes.FAILURE_REASONS code -> words of the hint
    ("1", "top up"), ("2", "different amount"), ("3", "different amount"), ("4", "different amount"),
    ("8", "different amount"), ("17", "Wait 2 minutes"), ("26", "busy"), ("1001", "busy"),
    ("1019", "expired"), ("1025", "did not reach"), ("9999", "did not reach"), ("1031", "Ask them to try again"),
    ("1032", "Ask them to try again"), ("1036", "did not reach"), ("1037", "phone did not respond"),
    ("2001", "right PIN"), ("2028", "MPESA_SHORTCODE"), ("SFC_IC0003", "MPESA_SHORTCODE"), ("8006", "locked"),
]


@pytest.mark.parametrize("code, hint", FAILURE_CASES)
def test_failure_keeps_the_message_and_suggests_the_next_step(code, hint):
    reason = FAILURE_REASONS[code]
    [turn] = converse("send 500 to 0712345678", send_results=[failure(reason)])
    assert turn.text.startswith(f"❌ 0712345678 did not pay 500 KSh: {reason}") and hint in turn.text
    assert turn.text.split("\n")[0].endswith(f". Checkout ID: {CHECKOUT_ID}")


def test_every_known_failure_reason_has_a_specific_hint():
    assert set(FAILURE_REASONS) <= {c for c, _ in FAILURE_CASES}


@pytest.mark.parametrize("reason, hint", [
    ("DS timeout user cannot be reached", "phone did not respond"),
    ("The initiator information is invalid.", "right PIN"),
    ("Something new from M-Pesa", 'Tell me "try again"'),
])
def test_failure_hints_for_daraja_wordings(reason, hint):
    [turn] = converse("send 500 to 0712345678", send_results=[failure(reason)])
    assert hint in turn.text


def test_try_again_after_a_failure_retries_that_payment():
    first, second, third = converse("send 500 to 0712345678 for lunch", "try again", "try again",
                                    send_results=[failure("Request cancelled by user")])
    assert second.calls == [(RETRY, {})] and second.waits == 1  # the last payment; then its outcome
    assert second.progress == "📱 Prompt sent again to 0712345678 for 500 KSh for lunch — waiting for their PIN…"
    assert second.text == f"✅ 0712345678 paid 500 KSh for lunch. Receipt NLJ7RT61SV. Checkout ID: {RETRIED_ID}"
    assert third.calls == [] and "was paid, so I will not send it again" in third.text


@pytest.mark.parametrize("result, said", [
    (success(), "was paid, so I will not send it again (that would charge them twice)"),
    (timeout(), "is still waiting for their answer: they may still pay it"),
    (unknown(), "I can't tell whether the request for 500 KSh to 0712345678 was paid"),
])
def test_try_again_never_resends_what_may_have_been_paid(result, said):
    first, second = converse("send 500 to 0712345678 for lunch", "jaribu tena", send_results=[result])
    assert second.calls == [] and said in second.text and CHECKOUT_ID in second.text


def test_try_again_after_a_refusal_sends_it_afresh():
    first, second = converse("send 500 to 0712345678", "try again",
                             send_results=[error("Not sent: M-Pesa could not be reached. Nothing was sent; try again shortly.")])
    assert second.calls == [send_call()]


def test_retry_by_checkout_id_and_the_ones_that_did_not_answer():
    by_id, many = converse(f"retry {CHECKOUT_ID}", "retry the ones that didn't answer")
    assert by_id.calls == [(RETRY, {"checkout_request_id": CHECKOUT_ID})] and by_id.waits == 1
    assert many.calls == [("retry_unanswered_payments", {})] and many.text.endswith("Sent again: 1 of 1; paid: 1.")


def test_a_refused_or_rejected_retry_is_explained():
    refused = {"status": "error", "message": "Not sent again: the request for 500 KSh to 0712345678 cannot be "
                                            "retried: it was paid (receipt NLJ7RT61SV): a retry would charge the "
                                            "customer twice."}
    rejected = {"status": "error", "rejected": True,
                "message": "Not sent again: you rejected the retry. Nothing reached their phone."}
    one, two = converse(f"retry {CHECKOUT_ID}", f"retry {CHECKOUT_ID}", retry_results=[refused, rejected])
    assert one.text == refused["message"] and one.waits == 0
    assert two.text == "🛑 " + rejected["message"]


@pytest.mark.parametrize("result", [timeout(), pending()])
def test_timeout_and_pending_say_it_is_still_pending(result):
    [turn] = converse("send 500 to 0712345678", send_results=[result])
    assert turn.text == ("⏳ No answer yet from 0712345678 for 500 KSh: the prompt may still be on their phone, "
                         f"so it is still pending. Checkout ID: {CHECKOUT_ID}\n{ASK_AGAIN_LATER}")


def test_unknown_warns_not_to_resend():
    [turn] = converse("send 500 to 0712345678", send_results=[unknown()])
    assert unknown()["message"] in turn.text and "don't send it again" in turn.text
    assert CHECKOUT_ID in turn.text and "did it go through?" in turn.text


def test_unknown_without_an_id_does_not_check_an_older_payment():
    turns = converse("send 500 to 0712345678", "send 200 to 0712345678", "did it go through?",
                     send_results=[timeout("ws_CO_OLD"), unknown(None, "M-Pesa did not confirm the request")])
    assert "did it go through?" not in turns[1].text
    assert turns[2].calls == [] and "no checkout ID" in turns[2].text and "ws_CO_" in turns[2].text


def test_an_error_that_says_what_to_do_gets_no_extra_hint():
    message = ("Not sent: 0712345678 already got 5 payment requests recently. "
               "To protect the customer, try again in 2 minutes.")
    [turn] = converse("send 500 to 0712345678", send_results=[error(message)])
    assert turn.text == message


def test_error_message_is_shown_with_what_to_fix():
    message = "Not sent: Amount 200,000 KES is above the limit of 150,000 KES."
    [turn] = converse("send 200000 to 0712345678", send_results=[error(message)])
    assert turn.calls == [send_call(amount=200000)]
    assert message in turn.text and "different whole-shilling amount" in turn.text


def test_an_error_dict_from_adk_is_shown():
    assert "boom" in reply_to_result(SEND, {}, {"error": "boom"})


def test_status_after_a_timeout_checks_the_last_payment():
    first, second = converse("send 500 to 0712345678 for lunch", "did it go through?",
                             send_results=[timeout()], status_results=[success()])
    assert second.calls == [(STATUS, {"checkout_request_id": CHECKOUT_ID})]
    assert second.text == f"✅ Yes: 0712345678 paid 500 KSh for lunch. Receipt NLJ7RT61SV. Checkout ID: {CHECKOUT_ID}"


@pytest.mark.parametrize("question", ["has he paid?", "imefika?", "is the payment complete", "amelipa?"])
def test_status_phrasings_use_the_last_checkout_id(question):
    turns = converse("send 500 to 0712345678", question, send_results=[pending()], status_results=[pending()])
    assert turns[1].calls == [(STATUS, {"checkout_request_id": CHECKOUT_ID})]
    assert "still pending" in turns[1].text


def test_status_with_an_explicit_id():
    [turn] = converse("status of ws_CO_123", status_results=[failure("Request cancelled by user", "ws_CO_123")])
    assert turn.calls == [(STATUS, {"checkout_request_id": "ws_CO_123"})]
    assert turn.text.startswith("❌ The customer did not pay the request: Request cancelled by user. "
                                "Checkout ID: ws_CO_123\n") and "try again" in turn.text


def test_status_by_phone_picks_that_phones_payment():
    turns = converse("send 500 to 0712345678", "send 200 to 0722000000", "did 0712 345 678 pay?",
                     send_results=[pending("ws_CO_A"), pending("ws_CO_B")])
    assert turns[2].calls == [(STATUS, {"checkout_request_id": "ws_CO_A"})]


def test_status_in_a_new_chat_reads_the_newest_stored_payment():
    first, second = converse("did it go through?", "ws_CO_999")
    assert first.calls == [("last_payment", {})]
    assert first.text == ("Your last payment request (asked 29 Nov 14:05):\n✅ Yes: 0712345678 paid 500 KSh for lunch."
                          " Receipt NLJ7RT61SV. Checkout ID: ws_CO_STORED")
    assert second.calls == [(STATUS, {"checkout_request_id": "ws_CO_999"})]


@pytest.mark.parametrize("text, call", [
    ("did 0712 345 678 pay?", ("last_payment", {"phone_number": "0712345678"})),
    ("0712345678 ameshalipa?", ("last_payment", {"phone_number": "0712345678"})),
    ("my last payment", ("last_payment", {})),
    ("last payment ilienda aje", ("last_payment", {})),
    ("what happened to my last push", ("last_payment", {})),
    ("how much did I collect today?", ("payment_totals", {"period": "today"})),
    ("nimepokea ngapi leo", ("payment_totals", {"period": "today"})),
    ("mauzo ya wiki hii", ("payment_totals", {"period": "this_week"})),
    ("how much have we received this month", ("payment_totals", {"period": "this_month"})),
    ("total", ("payment_totals", {"period": "today"})),
    ("which payments failed this week?", ("find_payments", {"status": "failed", "period": "this_week"})),
    ("who hasn't paid?", ("find_payments", {"status": "unpaid"})),
    ("nani hajalipa leo", ("find_payments", {"status": "unpaid", "period": "today"})),
    ("show pending payments", ("find_payments", {"status": "pending"})),
    ("failed payments yesterday", ("find_payments", {"status": "failed", "period": "yesterday"})),
    ("payments from 0712345678", ("find_payments", {"phone_number": "0712345678"})),
    # as Kenyan shops type them: Swahili verb forms, Sheng, code-switching
    ("0712345678 alilipa?", ("last_payment", {"phone_number": "0712345678"})),
    ("zile zilifeli jana ni zipi", ("find_payments", {"status": "failed", "period": "yesterday"})),
    ("malipo gani yalifeli wiki hii", ("find_payments", {"status": "failed", "period": "this_week"})),
    ("stk zilizofail leo", ("find_payments", {"status": "failed", "period": "today"})),
    ("ambazo hazijalipwa", ("find_payments", {"status": "unpaid"})),
    ("nimekusanya how much leo", ("payment_totals", {"period": "today"})),
    ("hesabu ya leo", ("payment_totals", {"period": "today"})),
    ("how many paid today", ("payment_totals", {"period": "today"})),
])
def test_questions_about_stored_payments_read_the_server(text, call):
    [turn] = converse(text)
    assert turn.calls == [call]
    assert "ws_CO_STORED" in turn.text or "You collected" in turn.text


@pytest.mark.parametrize("text", ["kuna 3 members hawajalipa", "send 500 to 0712345678 for the last payment",
                                  "tuma 500 kwa 0712 345 678 leo", "lipa 200 kwa 0712345678 ya hesabu",
                                  "tuma kwa 0712345678 leo"])
def test_statements_and_requests_are_not_read_as_history_questions(text):
    [turn] = converse(text)
    assert all(name not in ("last_payment", "find_payments", "payment_totals") for name, _ in turn.calls)


def test_status_after_a_request_that_was_not_sent():
    first, second = converse("send 500 to 0712345678", "did it go through?",
                             send_results=[error("Not sent: M-Pesa could not be reached. Try again shortly.")])
    assert second.calls == [] and "did not go out" in second.text and "could not be reached" in second.text


def test_status_question_checks_the_payment_last_talked_about():
    turns = converse("send 500 to 0712345678", "check ws_CO_X", "did it go through?",
                     send_results=[error("Not sent: M-Pesa could not be reached.")])
    assert turns[2].calls == [(STATUS, {"checkout_request_id": "ws_CO_X"})]


@pytest.mark.parametrize("answer", ["yes", "ndio", "sawa", "go ahead", "Yes, send it"])
def test_confirming_a_repeat_sends_it_again_through_the_approval_step(answer):
    first, second = converse("send 500 to 0712345678 for lunch", answer, send_results=[NEEDS_CONFIRMATION])
    assert NEEDS_CONFIRMATION["message"] in first.text
    assert second.calls == [send_call(context="lunch")]  # ADK's tool confirmation asks the person this time
    assert " paid " in second.text


@pytest.mark.parametrize("answer", ["no", "hapana", "cancel"])
def test_declining_a_repeat_sends_nothing(answer):
    first, second = converse("send 500 to 0712345678", answer, send_results=[NEEDS_CONFIRMATION])
    assert second.calls == [] and "did not send" in second.text


def test_yes_without_a_question_sends_nothing():
    [turn] = converse("yes")
    assert turn.calls == []


@pytest.mark.parametrize("greeting", ["hi", "habari", "niaje", "help", "what can you do?"])
def test_help_says_who_pays_whom(greeting):
    [turn] = converse(greeting)
    assert turn.calls == [] and turn.text == HELP_TEXT
    assert "owner of 0712345678" in turn.text and "PIN" in turn.text
    assert "No money leaves the merchant's account" in turn.text


@pytest.mark.parametrize("text", ["write me a poem", "what's the weather"])
def test_other_requests_are_politely_refused(text):
    [turn] = converse(text)
    assert turn.calls == [] and "I can only help with M-Pesa payment requests" in turn.text


@pytest.mark.parametrize("text", [
    "refund 0712345678 500", "Refund the customer 0722000333 KSh 1,200", "reverse the 500 from 0712345678",
    "rudisha 500 kwa 0712345678", "mrudishie 0712345678 elfu moja", "send the money back to 0712345678, 500",
    "send 500 back to 0712345678", "pay out 2000 to 0712345678", "B2C 0712345678 300",
    "return 500 to 0712345678", "give 0712345678 back their 700",
])
def test_a_refund_or_reversal_is_never_a_push(text):
    """Money to a customer: a push would charge them instead, so it is explained and nothing is sent."""
    [turn] = converse(text)
    assert turn.calls == [] and "Nothing was sent" in turn.text and "refund" in turn.text.lower()


def test_a_refund_word_in_the_purpose_is_still_a_payment_request():
    [turn] = converse("send 500 to 0712345678 for the refundable deposit")
    assert turn.calls == [send_call(context="the refundable deposit")]


def test_a_customer_asked_to_pay_back_a_debt_is_a_payment_request():
    [turn] = converse("ask 0712345678 to pay me back 500")
    assert turn.calls == [send_call()]


def test_a_refund_question_keeps_the_open_draft():
    first, second, third = converse("send 500 for lunch", "refund 0712345678 500", "0712345678")
    assert second.calls == [] and "Nothing was sent" in second.text
    assert third.calls == [send_call(context="lunch")]


@pytest.mark.parametrize("text, when", [
    ("send 500 to 0712345678 kesho", "kesho"), ("send 500 to 0712345678 tomorrow at 9am for lunch", "tomorrow"),
    ("tuma 500 kwa 0712345678 kila mwezi", "kila mwezi"), ("send 500 to 0712345678 at 3pm", "at 3pm"),
    ("send 500 to 0712345678 on the 5th", "on the 5th"), ("send 500 to 0712345678 next week", "next week"),
])
def test_a_request_for_later_is_not_sent_now_unasked(text, when):
    """A push goes out at once and lasts a minute: "... kesho" is asked about, and sent only on a yes."""
    asked, approved = converse(text, "yes")
    assert asked.calls == [] and f"I can't send it {when}" in asked.text and "now? (yes / no)" in asked.text
    assert [(name, args["phone_number"], args["amount"]) for name, args in approved.calls] == [
        (SEND, "0712345678", 500)]


def test_a_request_for_later_declined_sends_nothing():
    asked, declined = converse("send 500 to 0712345678 kesho asubuhi", "hapana")
    assert asked.calls == [] and declined.calls == [] and "Nothing was sent" in declined.text


@pytest.mark.parametrize("text", ["send 500 to 0712345678 for tuesday", "send 2000 to 0712345678 for 5 days"])
def test_a_day_in_the_purpose_is_not_a_time_to_send(text):
    [turn] = converse(text)
    assert len(turn.calls) == 1 and turn.calls[0][0] == SEND


@pytest.mark.parametrize("cancel", [
    "cancel the request to 0712345678", "stop, don't send to 0712345678", "usitume kwa 0712345678",
    "don't send it to 0712345678", "do not send the prompt to 0712345678", "ghairi", "achana nayo 0712345678",
])
def test_a_cancellation_that_names_the_number_never_sends(cancel):
    """The number in "don't send it to 0712..." is what not to do: it must not complete the open draft."""
    asked, cancelled = converse("send 500 for lunch", cancel)
    assert asked.calls == [] and cancelled.calls == []
    assert "Nothing was sent" in cancelled.text


def test_a_negation_followed_by_a_new_number_sends_to_the_new_one():
    asked, corrected = converse("send 500 for lunch", "don't send to 0712345678, send to 0722000333")
    assert corrected.calls == [send_call("0722000333", context="lunch")]


@pytest.mark.parametrize("question", ["mbona haijaingia?", "why did it fail?", "ni nini ilifanyika?"])
def test_why_questions_after_a_request_check_its_status(question):
    first, second = converse("send 500 to 0712345678", question)
    assert [name for name, _ in second.calls] == [STATUS]


def test_same_number_reuses_the_last_phone():
    first, second = converse("send 500 to 0712345678", "send 200 to the same number")
    assert second.calls == [send_call(amount=200)]


def test_a_completed_payment_closes_the_draft():
    turns = converse("send 500 to 0712345678", "300")
    assert turns[1].calls == [] and "To which phone number?" in turns[1].text


def test_stream_mode_and_usage_metadata():
    async def run():
        request = LlmRequest(contents=[types.Content(role="user", parts=[types.Part(text="hi")])])
        return [r async for r in OfflineModel().generate_content_async(request, stream=True)]

    [response] = asyncio.run(run())
    assert response.content.parts[0].text == HELP_TEXT
    assert response.usage_metadata.total_token_count == 0


# Issue 14: every class of misreading, through ADK's runner. Each sends nothing it was not told.
@pytest.mark.parametrize("text, words", [
    ("send 500 to +255 712 345 678", "Tanzania number (+255)"),
    ("send 500 to +44 7911 123456", "United Kingdom number"),
    ("send 500 to 07911 123456", "has 11 digits"),
    ("tuma 500 kwa 020 2222 333", "landline"),
])
def test_foreign_and_landline_numbers_are_explained_and_nothing_is_sent(text, words):
    [turn] = converse(text)
    assert turn.calls == [] and words in turn.text and "To which phone number?" in turn.text


@pytest.mark.parametrize("typed", ["07I2345678", "07l2345678", "0712345O78"])
def test_a_number_typed_with_a_letter_is_explained_and_nothing_is_sent(typed):
    [turn] = converse(f"send 500 to {typed}")
    assert turn.calls == [] and "has a letter in it" in turn.text and "To which phone number?" in turn.text


def test_a_million_is_a_million():
    [turn] = converse("Tuma milioni moja kwa 0741 223 344")
    assert turn.calls == [send_call("0741223344", 1_000_000)]


def test_an_amount_given_in_a_later_turn_after_for():
    turns = converse("I'd like to request a payment", "from 0710 456 123", "for 3,000")
    assert turns[0].calls == turns[1].calls == []
    assert turns[2].calls == [send_call("0710456123", 3000)]


def test_a_cancelled_request_is_not_sent_when_a_number_follows():
    turns = converse("nataka kutuma 2k", "achana nayo", "0790112233")
    assert "Nothing was sent" in turns[1].text
    assert turns[2].calls == [] and "How much should I request?" in turns[2].text


def test_a_correction_in_the_same_message_is_applied():
    [turn] = converse("send 200 to 0757 889 900 no wait make it 250")
    assert turn.calls == [send_call("0757889900", 250)]


def test_a_correction_after_a_failed_request_is_sent_at_once():
    first, second = converse("tuma 500 kwa 0711 000 222", "samahani ni 0711 000 223",
                             send_results=[failure("Request cancelled by user")])
    assert second.calls == [send_call("0711000223", 500)]


def test_a_correction_after_a_request_that_went_out_is_confirmed_first():
    turns = converse("send 200 to 0757 889 900 for rent", "no wait make it 250", "yes")
    assert turns[1].calls == []
    assert "200 KSh to 0757889900 already went out" in turns[1].text
    assert "Send a new request for 250 KSh to 0757889900 for rent? (yes / no)" in turns[1].text
    assert turns[2].calls == [send_call("0757889900", 250, "rent")]


def test_a_correction_that_is_declined_sends_nothing():
    turns = converse("send 200 to 0757 889 900", "samahani ni 0757 889 901", "hapana")
    assert turns[1].calls == turns[2].calls == [] and "Nothing was sent" in turns[2].text


def test_a_correction_while_asking_replaces_the_slot():
    turns = converse("send to 0711 000 222", "samahani ni 0711 000 223", "300")
    assert turns[2].calls == [send_call("0711000223", 300)]


@pytest.mark.parametrize("text", ["niambie joke moja", "tell me a joke for 500", "nipe hadithi mbili"])
def test_off_topic_messages_with_number_words_start_nothing(text):
    first, second = converse(text, "0712345678")
    assert first.calls == [] and second.calls == []


@pytest.mark.parametrize("text, call", [
    ("send 500 to 0757 88 99 00", send_call("0757889900", 500)),
    ("1000ksh to0768123456", send_call("0768123456", 1000)),
])
def test_paired_and_glued_numbers(text, call):
    [turn] = converse(text)
    assert turn.calls == [call]


def test_a_split_that_could_be_read_two_ways_is_asked():
    [turn] = converse("send 100 712 345 678")
    assert turn.calls == [] and "can't tell where the phone number starts" in turn.text


def test_an_unknown_id_gets_one_answer_without_pending_words():
    message = ("I have no payment with checkout ID ws_CO_9, and M-Pesa does not know it either. Check the ID "
               "(copy it from the payment's message); a request sent a few seconds ago may not be known yet.")
    [turn] = converse("check ws_CO_9", status_results=[{**error(message), "checkout_request_id": "ws_CO_9"}])
    assert turn.text == message


def test_every_problem_is_a_sentence():
    [turn] = converse("send 0 to 0712345678")
    assert turn.text == "Amount must be at least 1 KES, got 0. How much should I request?"


@pytest.mark.parametrize("result", [success(), failure("Request cancelled by user"), timeout(), pending(), unknown()])
def test_every_answer_about_a_payment_shows_its_checkout_id(result):
    first, second = converse("send 500 to 0712345678 for lunch", "did it go through?",
                             send_results=[result], status_results=[result])
    assert f"Checkout ID: {CHECKOUT_ID}" in first.text and f"Checkout ID: {CHECKOUT_ID}" in second.text


def test_a_status_answer_names_who_paid_what_from_the_send():
    first, second = converse("send 500 to 0712345678 for lunch", "did it go through?",
                             send_results=[timeout()], status_results=[failure("Request cancelled by user")])
    assert second.text.startswith("❌ 0712345678 did not pay 500 KSh for lunch: Request cancelled by user. "
                                  f"Checkout ID: {CHECKOUT_ID}\nThey cancelled the prompt")


def test_the_prompt_is_announced_before_the_outcome():
    [turn] = converse("Send 500 to 0712345678 for lunch")
    assert turn.progress == "📱 Prompt sent to 0712345678 for 500 KSh for lunch — waiting for their PIN…"
    assert turn.waits == 1 and turn.text.startswith("✅ 0712345678 paid 500 KSh for lunch.")


def test_a_refused_push_is_not_waited_for():
    [turn] = converse("send 500 to 0712345678", send_results=[error("Not sent: M-Pesa could not be reached.")])
    assert turn.waits == 0 and turn.progress == ""


def test_two_payments_in_one_message_are_listed_and_sent_one_after_another_on_yes():
    first, second = converse("send 500 to 0712345678 for lunch and 300 to 0722000111", "yes",
                             send_results=[success(500, "0712345678", "lunch", "ws_CO_1"),
                                           failure("Request cancelled by user", "ws_CO_2")])
    assert first.calls == []
    assert first.text == ("2 payment requests, 800 KSh in all:\n1. 500 KSh to 0712345678 for lunch\n"
                          "2. 300 KSh to 0722000111\nSend them one after another? (yes / no)")
    assert second.calls == [send_call("0712345678", 500, "lunch"), send_call("0722000111", 300)]
    assert second.waits == 2
    assert "✅ 0712345678 paid 500 KSh for lunch." in second.progress  # shown before the second prompt
    assert second.text.startswith("❌ 0722000111 did not pay 300 KSh: Request cancelled by user.")
    assert second.text.endswith("All 2 requests are done: 1 of 2 paid.")


def test_the_same_amount_each_from_several_phones():
    first, second = converse("request 200 each from 0711000111, 0722000222", "sawa")
    assert "2 payment requests, 400 KSh in all:" in first.text
    assert second.calls == [send_call("0711000111", 200), send_call("0722000222", 200)]


@pytest.mark.parametrize("answer", ["no", "achana nayo"])
def test_a_declined_list_sends_nothing(answer):
    turns = converse("tuma 500 kwa 0712345678 na 300 kwa 0722000111", "what?", answer, "0733000111")
    assert all(turn.calls == [] for turn in turns)
    assert turns[1].text == "Send these 2 requests one after another? Please answer yes or no."
    assert "Nothing was sent" in turns[2].text


def test_a_list_that_cannot_be_paired_is_asked_about():
    [turn] = converse("send 500 and 300 to 0712345678 and 0722000111")
    assert turn.calls == [] and "give each number its amount" in turn.text


def test_who_owes_is_the_purpose():
    [turn] = converse("Wanjiku owes me 350, her number is 0712 345 678")
    assert turn.calls == [send_call("0712345678", 350, "Wanjiku's debt")]


def test_cancel_after_a_completed_payment_says_it_went_through():
    _, cancel = converse("send 500 to 0712345678 for lunch", "cancel")
    assert cancel.calls == []
    assert cancel.text.startswith("That payment already went through: 0712345678 paid 500 KSh. It cannot be "
                                  "cancelled here")
    assert "Nothing was sent" not in cancel.text and "nothing was sent" not in cancel.text
    assert cancel.text.endswith(f"Checkout ID: {CHECKOUT_ID}")


def test_cancel_while_the_prompt_is_pending_says_it_cannot_be_withdrawn():
    _, cancel = converse("send 500 to 0712345678", "usitume", send_results=[timeout()])
    assert cancel.calls == [] and "already went to 0712345678 and cannot be withdrawn" in cancel.text


def test_two_numbers_without_their_amounts_get_one_clear_question():
    [turn] = converse("send 500 and 300 to 0766 100 600 and 0777 100 600")
    assert turn.calls == []
    assert turn.text == ('I see more than one phone number (0766100600, 0777100600). For several requests, give each '
                         'number its amount, like "500 to 0712345678 and 300 to 0722000111".')
