"""Chats with the real root agent through ADK's InMemoryRunner: each turn's tool calls, tool answers, reply."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from google.adk.runners import InMemoryRunner
from google.genai import types

from mpesa_agent.agent import root_agent
from mpesa_agent.offline_model import OfflineModel
from mpesa_agent.tools import WAIT_TOOL, Payments, agent_tools

APP = "mpesa_agent"
SEND = "send_instant_payment_with_tracking"
STATUS = "check_payment_status_realtime"
CONFIRMATION = "adk_request_confirmation"  # ADK's approve / reject step before a large push
WAIT = (WAIT_TOOL, {})  # the model's second call after a push: wait for the PIN


@dataclass
class Turn:
    calls: list[tuple[str, dict]]  # (tool name, args as the model wrote them), in order, without the waits
    results: list[dict]  # the tools' answers, in order (a push's acknowledgement, then its outcome)
    reply: str  # every text the model showed this turn, e.g. the progress line, then the outcome
    trajectory: list[tuple[str, dict]]  # every tool call, waits included
    approvals: int = 0  # ADK tool confirmations this turn asked for (answered from `answers`, else approved)
    hints: list[str] = field(default_factory=list)  # what each confirmation step showed the person


def offline_root_agent(payments: Payments):
    """A copy of `root_agent` with its tools bound to `payments`, on the offline model even with a GOOGLE_API_KEY."""
    return root_agent.clone(update={"tools": agent_tools(payments),
                                    "model": OfflineModel()})


def converse(payments: Payments, *messages, answers=()) -> list[Turn]:
    """Send `messages` (texts, or whole `types.Content`s, e.g. with an attached file) one by one in a new
    session; return what happened in each turn. `answers` are the person's answers to ADK's confirmation
    steps, in order (True approves, False rejects); past them, the person approves."""
    return asyncio.run(chat(payments, messages, answers))


async def chat(payments: Payments, messages, answers=()) -> list[Turn]:
    """`converse` for code already in an event loop."""
    answers = iter(answers)
    runner = InMemoryRunner(agent=offline_root_agent(payments), app_name=APP)
    session = await runner.session_service.create_session(app_name=APP, user_id="test")
    turns = []
    for text in messages:
        turn = Turn([], [], "", [])
        replies = []
        message = text if isinstance(text, types.Content) else types.Content(role="user", parts=[types.Part(text=text)])
        while message is not None:
            approvals = []
            async for event in runner.run_async(user_id="test", session_id=session.id, new_message=message):
                calls = event.get_function_calls()
                approvals += [call for call in calls if call.name == CONFIRMATION]
                turn.trajectory += [(call.name, dict(call.args or {})) for call in calls if call.name != CONFIRMATION]
                turn.results += [dict(result.response or {}) for result in event.get_function_responses()
                                 if result.name != CONFIRMATION]
                if event.content and not event.get_function_responses():
                    replies += [part.text for part in event.content.parts or [] if part.text]
            turn.approvals += len(approvals)
            turn.hints += [(call.args or {}).get("toolConfirmation", {}).get("hint", "") for call in approvals]
            message = types.Content(role="user", parts=[  # the person approves or rejects, as `answers` say
                types.Part(function_response=types.FunctionResponse(id=call.id, name=CONFIRMATION,
                                                                    response={"confirmed": next(answers, True)}))
                for call in approvals]) if approvals else None
        turn.calls = [call for call in turn.trajectory if call[0] != WAIT_TOOL]
        turn.reply = "\n".join(replies)
        turns.append(turn)
    await runner.close()
    return turns
