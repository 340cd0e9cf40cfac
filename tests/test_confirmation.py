"""ADK's tool confirmation for large pushes, through the real runner and the simulator: nothing
reaches the phone until the person approves, and nothing at all when they reject."""
import asyncio

import pytest
from google.adk.runners import InMemoryRunner
from google.genai import types

from harness import Stack
from mpesa_agent.tools import Payments
from tests.conversation import APP, offline_root_agent

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
