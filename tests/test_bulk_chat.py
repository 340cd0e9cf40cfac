"""Bulk requests in chat, through the real ADK runner against the simulator and the callback server:
the list and the total are shown, ADK's tool confirmation holds the request until the person
approves, then the summary; a pasted list, an attached CSV, "who hasn't paid?", and a rejection."""
import asyncio

import pytest
from google.adk.runners import InMemoryRunner
from google.genai import types

from harness import Stack
from mpesa_agent.tools import Payments
from tests.conversation import APP, converse, offline_root_agent

BULK, STATUS = "request_bulk_payment", "bulk_payment_status"
CONFIRM = "adk_request_confirmation"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("bulkchat"), SIMULATOR_CALLBACK_DELAY="0", BULK_PUSHES_PER_SECOND="50",
               PAYMENT_WAIT_SECONDS="30") as stack:
        yield stack


def test_request_from_each_for_the_chama_is_approved_sent_and_summed_up(stack):
    [turn, unpaid] = converse(Payments(stack.settings),
                              "Request 510 from each of 0712 300 001, 0700001032, 0700001037 for the chama",
                              "who hasn't paid?")
    assert turn.approvals == 1
    [(bulk, args), (status, wait)] = turn.calls
    assert (bulk, status, wait) == (BULK, STATUS, {"wait": True})  # the tool knows the chat's batch
    assert args == {"rows": "0712300001,510\n0700001032,510\n0700001037,510\n", "description": "chama"}
    assert "A bulk request for chama: 3 people, 1,530 KSh in all:\n1. 510 KSh from 0712300001" in turn.reply
    assert "✅ 1 of 3 paid, 1 cancelled, 1 did not answer (chama): 510 KSh of 1,530 KSh collected." in turn.reply
    assert "- 0700001032 (510 KSh): Request cancelled by user" in turn.reply
    assert [stack.pushes_to(p)[0]["amount"] for p in ("254712300001", "254700001032", "254700001037")] == [510] * 3
    assert unpaid.calls == [(STATUS, {})] and unpaid.approvals == 0
    assert "- 0700001037 (510 KSh): No response from the customer" in unpaid.reply


def test_a_pasted_list_with_an_unreadable_line_is_sent_back_and_nothing_is_sent(stack):
    [turn] = converse(Payments(stack.settings), "0712300101,200,June\n0722300101,abc\n0733300101,300\n07,5")
    assert turn.calls == [] and turn.approvals == 0
    assert "I could not read 2 of the lines, so nothing was sent" in turn.reply and "line 2 (0722300101,abc)" in turn.reply
    assert stack.pushes_to("254712300101") == []


def test_an_attached_csv_becomes_a_bulk_request(stack):
    csv_file = types.Part(inline_data=types.Blob(mime_type="text/csv", data=b"phone,amount,reference\n"
                                                 b"0712300201,120,A1\n0722300201,130,A2\n0733300201,140,A3\n"))
    message = types.Content(role="user", parts=[types.Part(text="request these for school fees"), csv_file])
    [turn] = converse(Payments(stack.settings), message)
    [(bulk, args), _] = turn.calls
    assert args["rows"] == "0712300201,120,A1\n0722300201,130,A2\n0733300201,140,A3\n"
    assert args["description"] == "school fees"
    assert "✅ 3 of 3 paid" in turn.reply and "Everyone has paid." in turn.reply


def test_a_rejected_bulk_request_reaches_no_phone(stack):
    async def go():
        runner = InMemoryRunner(agent=offline_root_agent(Payments(stack.settings)), app_name=APP)
        session = await runner.session_service.create_session(app_name=APP, user_id="u")
        ask = types.Content(role="user", parts=[types.Part(
            text="request 90 each from 0712300301, 0722300301, 0733300301")])
        calls, texts = [], []
        async for event in runner.run_async(user_id="u", session_id=session.id, new_message=ask):
            calls += event.get_function_calls()
        [request] = [call for call in calls if call.name == CONFIRM]
        answer = types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
            id=request.id, name=CONFIRM, response={"confirmed": False}))])
        async for event in runner.run_async(user_id="u", session_id=session.id, new_message=answer):
            texts += [part.text for part in (event.content.parts if event.content else None) or [] if part.text]
        await runner.close()
        return "\n".join(texts)
    batches = len(stack.api("GET", "/payment/bulk").json()["batches"])
    reply = asyncio.run(asyncio.wait_for(go(), 60))
    assert reply == "🛑 Not sent: you rejected the bulk request. Nothing reached anyone's phone."
    assert len(stack.api("GET", "/payment/bulk").json()["batches"]) == batches  # no batch was even created
    assert stack.pushes_to("254712300301") == []
