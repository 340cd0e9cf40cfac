"""ADK's tool confirmation for large pushes, repeats within 2 minutes and every retry, through the real
runner and the simulator: nothing reaches the phone until the person approves, and nothing at all when
they reject."""
import asyncio

import pytest
from google.adk.runners import InMemoryRunner
from google.genai import types

from harness import Stack
from mpesa_agent.tools import Payments
from tests.conversation import APP, converse, offline_root_agent

CONFIRM = "adk_request_confirmation"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("confirm"), SIMULATOR_CALLBACK_DELAY="0.2", PAYMENT_WAIT_SECONDS="20") as stack:
        yield stack


async def run(runner, session_id: str, message: types.Content) -> tuple[list[types.FunctionCall], str]:
    calls, texts = [], []
    async for event in runner.run_async(user_id="u", session_id=session_id, new_message=message):
        for part in (event.content.parts if event.content and event.content.parts else []):
            if part.function_call:
                calls.append(part.function_call)
            if part.text:
                texts.append(part.text)
    return calls, "\n".join(texts)


def confirm_round(stack, phone: str, amount: int, approve: bool) -> tuple[int, str, int]:
    """Ask for a push of `amount`; (pushes before answering, the final reply, pushes after)."""
    async def go():
        runner = InMemoryRunner(agent=offline_root_agent(Payments(stack.settings)), app_name=APP)
        session = await runner.session_service.create_session(app_name=APP, user_id="u")
        ask = types.Content(role="user", parts=[types.Part(text=f"Send {amount} to {phone} for rent")])
        calls, _ = await run(runner, session.id, ask)
        [request] = [call for call in calls if call.name == CONFIRM]
        assert request.args["originalFunctionCall"]["args"]["amount"] == amount
        assert request.args["toolConfirmation"]["hint"] == (
            f"Send an M-Pesa prompt to {phone} for {amount:,} KSh for rent? It is above 10,000 KSh, so I ask you first.")
        before = len(stack.pushes_to("254" + phone[1:]))
        answer = types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
            id=request.id, name=CONFIRM, response={"confirmed": approve}))])
        _, reply = await run(runner, session.id, answer)
        return before, reply, len(stack.pushes_to("254" + phone[1:]))
    return asyncio.run(asyncio.wait_for(go(), 90))


def test_a_rejected_large_push_reaches_no_phone(stack):
    before, reply, after = confirm_round(stack, "0722100200", 20_000, approve=False)
    assert (before, after) == (0, 0)
    assert reply.startswith("🛑 Not sent: you rejected the request for 20,000 KSh to 0722100200."), reply


def test_an_approved_large_push_is_sent_once_and_reported(stack):
    before, reply, after = confirm_round(stack, "0722100300", 20_000, approve=True)
    assert (before, after) == (0, 1)
    assert "✅ 0722100300 paid 20,000 KSh for rent." in reply, reply


def test_a_repeat_within_two_minutes_is_asked_through_the_confirmation_step(stack):
    phone = "254722100400"
    first, rejected, approved = converse(Payments(stack.settings), *["Send 60 to 0722100400 for tea"] * 3,
                                         answers=[False, True])
    assert (first.approvals, rejected.approvals, approved.approvals) == (0, 1, 1)
    assert rejected.hints[0].startswith("You already asked 0722100400 for 60 KSh ") and rejected.hints[0].endswith(
        " ago. Send the same request again? They get a second M-Pesa prompt."), rejected.hints
    assert rejected.reply.startswith("🛑 Not sent: you rejected the request for 60 KSh to 0722100400."), rejected.reply
    assert "✅ 0722100400 paid 60 KSh for tea." in approved.reply, approved.reply
    assert len(stack.pushes_to(phone)) == 2  # the first and the approved repeat, never the rejected one


@pytest.mark.parametrize("approve", [False, True])
def test_a_retry_in_chat_is_sent_only_once_approved(stack, approve):
    phone = "0700001032"  # the simulator's customer cancels every prompt
    before = len(stack.pushes_to("254700001032"))
    failed, retry = converse(Payments(stack.settings), f"send {70 + approve} to {phone} for tea", "try again",
                             answers=[approve])
    assert "did not pay" in failed.reply and retry.approvals == 1
    assert retry.hints == [f"Send a new M-Pesa prompt to {phone} for {70 + approve} KSh for tea? The first request "
                           "failed: Request cancelled by user."]
    assert len(stack.pushes_to("254700001032")) == before + 1 + approve
    if approve:
        assert [name for name, _ in retry.trajectory] == ["retry_payment", "wait_for_payment"]
        [new] = [result for result in retry.results if result.get("retry_of")]
        assert (new["attempt"], new["retry_of"]) == (2, failed.results[0]["checkout_request_id"])
        assert retry.reply.startswith(f"📱 Prompt sent again to {phone} for 71 KSh for tea"), retry.reply
    else:
        assert retry.reply == "🛑 Not sent again: you rejected the retry. Nothing reached their phone."


def test_retry_the_ones_that_did_not_answer_lists_them_for_approval(stack):
    phones = ("0700001037", "0708374149")  # neither customer answers
    before = {phone: len(stack.pushes_to("254" + phone[1:])) for phone in phones}
    sent, confirmed, retried = converse(
        Payments(stack.settings), f"send 80 to {phones[0]} and 90 to {phones[1]} for dues", "yes",
        "retry the ones that didn't answer")
    assert confirmed.reply.endswith("All 2 requests are done: 0 of 2 paid."), confirmed.reply
    [hint] = retried.hints
    assert hint.startswith("Send a new M-Pesa prompt to the 2 customer(s) who did not answer, 170 KSh in all?"), hint
    assert f"80 KSh to {phones[0]}" in hint and f"90 KSh to {phones[1]}" in hint
    assert retried.calls == [("retry_unanswered_payments", {})]
    assert retried.reply.endswith("Sent again: 2 of 2; paid: 0."), retried.reply
    assert {phone: len(stack.pushes_to("254" + phone[1:])) for phone in phones} == {
        phone: count + 2 for phone, count in before.items()}
