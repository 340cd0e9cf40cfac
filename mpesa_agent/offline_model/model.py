"""The embedded offline model: an ADK `BaseLlm` that runs payment chats without Gemini.

Stateless: every call re-reads the whole conversation in `llm_request.contents` (user texts, its
own function calls, the tools' answers), so slot filling works across turns, processes and
sessions. Text understanding lives in `intents.py`; this module holds the dialogue and replies.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import AsyncGenerator

from google.adk.models import BaseLlm, LlmRequest, LlmResponse
from google.adk.models.registry import LLMRegistry
from google.genai import types

from mpesa_agent.offline_model.intents import (HELP, LAST, LIST, MONEY_OUT, MORE_THAN_ONE_PHONE, NO, RETRY,
                                              RETRY_UNANSWERED, SEND, STATUS, TOTALS, YES, Message, Request,
                                              understand)
from mpesa_agent.payments.periods import EAT
from mpesa_agent.payments.phones import InvalidPhoneNumber, display_phone, normalize_phone

MODEL_NAME = "offline-mpesa"
SEND_TOOL = "send_instant_payment_with_tracking"
STATUS_TOOL = "check_payment_status_realtime"
WAIT_TOOL = "wait_for_payment"
RETRY_TOOL = "retry_payment"
RETRY_MANY_TOOL = "retry_unanswered_payments"
USE_THE_STEP = ("Please use the Approve or Reject step shown above: I send nothing until you approve it there.")
BULK_TOOL = "request_bulk_payment"
BULK_STATUS_TOOL = "bulk_payment_status"
LISTED = 50  # people named in a bulk list or answer; the rest are counted
TEXT_FILES = ("text/csv", "text/plain", "application/csv", "text/tab-separated-values", "application/vnd.ms-excel")
LAST_TOOL, LIST_TOOL, TOTALS_TOOL = "last_payment", "find_payments", "payment_totals"  # the stored records

ASK_AMOUNT = "How much should I request?"
ASK_PHONE = "To which phone number? (e.g. 0712345678)"
EXAMPLES = 'Try "send 500 to 0712345678 for lunch", "tuma 1k kwa 0722000000", or ask "did it go through?".'
HELP_TEXT = (
    "👋 I send M-Pesa payment requests (STK Push) and tell you the moment they are paid.\n"
    "Who pays whom: when you say \"send 500 to 0712345678 for lunch\", the owner of 0712345678 gets "
    "a prompt on their phone to pay 500 KSh to this business's M-Pesa PayBill/Till, and approves it "
    "with their M-Pesa PIN. No money leaves the merchant's account.\n" + EXAMPLES
)
MONEY_OUT_TEXT = (
    "I can't send money to a customer: an M-Pesa STK Push only asks a phone's owner to pay this business, "
    "so a \"refund\" through me would charge them again. Nothing was sent. Make refunds and reversals from "
    "your M-Pesa business account (the M-Pesa org portal, or Safaricom's Reversal / B2C APIs, which this "
    "agent does not use). To ask someone to pay you, say e.g. \"send 500 to 0712345678 for lunch\"."
)
REFUSAL = (
    "Sorry, I can only help with M-Pesa payment requests: I send an STK Push asking a phone's owner "
    "to pay this business, and tell you when it is paid. " + EXAMPLES
)
ASK_AGAIN_LATER = 'Ask me "did it go through?" in a minute and I\'ll check.'

_FAILURE_HINTS = (  # (words in the reason, next step); first match wins. Reasons: outcomes.py
    (("cancel",), 'They cancelled the prompt on their phone. Ask them to try again, then tell me "try again".'),
    (("pin is locked", "pin locked"),
     "Their M-Pesa PIN is locked; they must unlock it with Safaricom before they can pay."),
    (("pin", "initiator information"),
     'The M-Pesa PIN entered was wrong. Ask them to use the right PIN, then tell me "try again".'),
    (("limit", "minimum", "maximum"),
     "M-Pesa declined the amount for this customer. Request a different amount, or try another day."),
    (("insufficient",), "They don't have enough money in M-Pesa. Ask them to top up, or request a smaller amount."),
    (("same amount",), "Wait 2 minutes before asking this phone for the same amount again."),
    (("expired",), 'The prompt expired before they entered their PIN. Tell me "try again" to send a new one.'),
    (("no response", "unreachable", "cannot be reached", "could not be reached", "timeout", "timed out"),
     "Their phone did not respond: it may be off, out of network, or the prompt was ignored. "
     'Ask them to check their phone, then tell me "try again".'),
    (("could not send", "could not be delivered"),
     'The prompt did not reach their phone. Ask them to check it is on and has network, then say "try again".'),
    (("in progress", "busy"), 'M-Pesa is busy for this phone. Wait a minute or two, then say "try again".'),
    (("not permitted",), "This is a setup problem on the merchant side (shortcode or transaction type), "
                         "not the customer's: check MPESA_SHORTCODE and MPESA_TRANSACTION_TYPE."),
)
_ERROR_HINTS = (  # only when the message does not say what to do; rate first, it names the number
    (("too many", "rate limit", "recently"), "Wait a little, then try again."),
    (("amount", "shilling", "kes"), "Tell me a different whole-shilling amount."),
    (("phone", "number", "msisdn"), "Check the phone number (a Kenyan mobile like 0712345678) and tell me again."),
)


class OfflineModel(BaseLlm):
    """Understands payment requests and status questions; calls the agent's two payment tools."""

    model: str = MODEL_NAME

    @classmethod
    def supported_models(cls) -> list[str]:
        return [r"offline-mpesa.*"]

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        action = decide(llm_request.contents)
        if isinstance(action, Call):
            parts = [types.Part(function_call=types.FunctionCall(name=action.name, args=action.args))]
            if action.say:  # shown at once (adk web streams it) while the call runs
                parts.insert(0, types.Part(text=action.say))
        else:
            parts = [types.Part(text=action.text)]
        yield LlmResponse(
            content=types.Content(role="model", parts=parts),
            model_version=self.model,
            usage_metadata=types.GenerateContentResponseUsageMetadata(
                prompt_token_count=0, candidates_token_count=0, total_token_count=0
            ),
        )


LLMRegistry.register(OfflineModel)


@dataclass(frozen=True)
class Call:
    name: str
    args: dict
    say: str = ""  # text shown before the call's answer, e.g. "📱 Prompt sent ..."


@dataclass(frozen=True)
class Say:
    text: str


@dataclass(frozen=True)
class Event:
    kind: str  # "user", "model", "call" or "result"
    text: str = ""
    name: str = ""
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Draft:
    """A payment request still missing its amount or phone."""

    phone: str | None = None
    amount: int | None = None
    context: str = ""
    confirm: bool = False  # complete, and asked "(yes / no)": sent only on a yes
    requests: tuple[Request, ...] = ()  # several requests listed together, sent one after another on a yes


@dataclass
class Chat:
    """What the conversation so far has established."""

    draft: Draft | None = None
    last_send: dict | None = None
    last_result: tuple[str, dict] | None = None  # (tool, answer) of the latest payment tool call
    awaiting_confirmation: dict | None = None
    awaiting_approval: bool = False  # ADK's approve / reject step is open (a confirmation the person must click)
    payments: list[tuple[str, str | None]] = field(default_factory=list)  # (checkout ID, phone)
    batch_id: str | None = None  # the bulk request this chat sent last


def decide(contents: list[types.Content]) -> Call | Say:
    """The model's next move for this conversation."""
    events = _events(contents)
    if not events:
        return Say(HELP_TEXT)
    last = events[-1]
    if last.kind == "result":
        call = _call_for(events, len(events) - 1)
        args = call.data if call else {}
        if last.name == SEND_TOOL and args.get("wait_for_completion") is False \
                and last.data.get("status") == "pending" and last.data.get("checkout_request_id"):
            return Call(WAIT_TOOL, {}, say=_progress(args))
        if last.name == WAIT_TOOL:
            args = _send_args(_sent_with(events, last.data.get("checkout_request_id"))) or _send_args(_last_send(events))
            return _next_in_batch(events, reply_to_result(SEND_TOOL, args, last.data))
        if last.name == RETRY_TOOL:
            args = _retried_args(last.data)
            if last.data.get("status") == "pending" and last.data.get("checkout_request_id"):
                return Call(WAIT_TOOL, {}, say=_progress(args, again=True))
            return Say(reply_to_result(RETRY_TOOL, args, last.data))
        if last.name == RETRY_MANY_TOOL:
            return Say(reply_to_result(RETRY_MANY_TOOL, {}, last.data))
        if last.name == STATUS_TOOL:
            args = {**_send_args(_sent_with(events, args.get("checkout_request_id"))), **args}
            return Say(reply_to_result(last.name, args, last.data))
        if last.name == BULK_TOOL:
            return _bulk_sent(last.data)
        if last.name == BULK_STATUS_TOOL:
            return Say(bulk_reply(last.data))
        if last.name == LAST_TOOL:
            return Say(_reply_to_last(args, last.data))
        if last.name in (LIST_TOOL, TOTALS_TOOL):
            return Say(str(last.data.get("message") or "I got no answer from the payment records."))
        return _next_in_batch(events, reply_to_result(last.name, args, last.data))
    if last.kind != "user":
        return Say(HELP_TEXT)
    chat = _replay(events[:-1])
    action, _ = respond(chat, understand(last.text))
    return action


def _next_in_batch(events: list[Event], outcome: str) -> Call | Say:
    """After one request of a confirmed list has its outcome: show it and send the next, or sum up."""
    turn = max(i for i, e in enumerate(events) if e.kind == "user")
    chat = _replay(events[:turn])
    batch = chat.draft.requests if chat.draft and chat.draft.confirm and not chat.awaiting_confirmation else ()
    if not batch or understand(events[turn].text).intent not in (YES, RETRY):
        return Say(outcome)
    sent = sum(1 for e in events[turn:] if e.kind == "call" and e.name == SEND_TOOL)
    if sent < len(batch):
        return Call(SEND_TOOL, _request_args(batch[sent]), say=outcome)
    finals = [e.data for e in events[turn:] if e.kind == "result" and not (
        e.name == SEND_TOOL and e.data.get("status") == "pending" and e.data.get("checkout_request_id"))]
    paid = sum(1 for r in finals if str(r.get("status")).lower() in ("success", "completed"))
    return Say(f"{outcome}\nAll {len(batch)} requests are done: {paid} of {len(batch)} paid.")


def _request_args(request: Request) -> dict:
    return _draft_args(Draft(request.phone, request.amount, request.context))


def _list_requests(requests: tuple[Request, ...]) -> str:
    total = sum(r.amount for r in requests)
    lines = [f"{n}. {_money(r.amount)} to {r.phone}{f' for {r.context}' if r.context else ''}"
             for n, r in enumerate(requests, start=1)]
    return "\n".join([f"{len(requests)} payment requests, {_money(total)} in all:", *lines,
                      "Send them one after another? (yes / no)"])


def _events(contents: list[types.Content]) -> list[Event]:
    events: list[Event] = []
    for content in contents or []:
        texts: list[str] = []
        for part in content.parts or []:
            call, result = part.function_call, part.function_response
            if call:
                events.append(Event("call", name=call.name or "", data=dict(call.args or {})))
            elif result:
                data = result.response if isinstance(result.response, dict) else {"result": result.response}
                events.append(Event("result", name=result.name or "", data=dict(data)))
            elif part.text and not part.thought:
                texts.append(part.text)
            elif part.inline_data and (part.inline_data.mime_type or "").split(";")[0] in TEXT_FILES:
                texts.append((part.inline_data.data or b"").decode("utf-8-sig", "replace"))  # an attached CSV
        if texts:
            events.append(Event("user" if content.role == "user" else "model", text="\n".join(texts)))
    return events


def _call_for(events: list[Event], index: int) -> Event | None:
    """The function call that a function result at `index` answers."""
    name = events[index].name
    for event in reversed(events[:index]):
        if event.kind == "call" and event.name == name:
            return event
    return None


def _progress(args: dict, again: bool = False) -> str:
    phone = _phone_of(args) or args.get("phone_number")
    purpose = f" for {args['context']}" if args.get("context") else ""
    return (f"📱 Prompt sent {'again ' if again else ''}to {phone} for {_money(args.get('amount'))}{purpose} — "
            "waiting for their PIN…")


def _retried_args(result: dict) -> dict:
    """A retry's answer carries the payment's phone, amount and purpose: the arguments its send had."""
    return {key: result[key] for key in ("phone_number", "amount", "context") if result.get(key) not in (None, "")}


def _last_send(events: list[Event]) -> dict:
    return next((e.data for e in reversed(events) if e.kind == "call" and e.name == SEND_TOOL), {})


def _sent_with(events: list[Event], checkout_id: object) -> dict:
    """The send call's arguments for the payment with this checkout ID, if this chat made it."""
    for index, event in enumerate(events):
        if event.kind == "result" and event.name in (SEND_TOOL, RETRY_TOOL) and checkout_id \
                and event.data.get("checkout_request_id") == checkout_id:
            if event.name == RETRY_TOOL:
                return _retried_args(event.data)
            call = _call_for(events, index)
            return call.data if call else {}
    return {}


def _replay(events: list[Event]) -> Chat:
    """Re-live the conversation to learn the open draft, the payments made and any pending question."""
    chat = Chat()
    for index, event in enumerate(events):
        if event.kind == "user":
            _, chat.draft = respond(chat, understand(event.text))
            chat.awaiting_confirmation = None
        elif event.kind == "call" and event.name == SEND_TOOL:
            chat.draft, chat.last_send = None, event.data
        elif event.kind == "result":
            call = _call_for(events, index)
            args = call.data if call else {}
            chat.awaiting_approval = _asks_approval(event.data)
            if event.name == RETRY_TOOL and event.data.get("retry_of"):  # a new push: what "try again" repeats
                args = _retried_args(event.data)
                chat.draft, chat.last_send = None, args
                chat.last_result = (SEND_TOOL, event.data)
            checkout_id = event.data.get("checkout_request_id") or args.get("checkout_request_id")
            if event.name in (SEND_TOOL, STATUS_TOOL, WAIT_TOOL):
                chat.last_result = (SEND_TOOL if event.name == WAIT_TOOL else event.name, event.data)
            if event.name == SEND_TOOL:
                if event.data.get("status") == "needs_confirmation":
                    chat.awaiting_confirmation = args
            if event.name == BULK_TOOL and event.data.get("batch_id"):
                chat.batch_id, chat.last_result = event.data["batch_id"], (BULK_TOOL, event.data)
            if checkout_id:
                chat.payments.append((str(checkout_id), _phone_of(args)))
    return chat


def _phone_of(args: dict) -> str | None:
    try:
        return display_phone(normalize_phone(args.get("phone_number")))
    except InvalidPhoneNumber:
        return None


def _asks_approval(result: dict) -> bool:
    """The placeholder answer of a tool waiting for ADK's approve / reject step."""
    return result.get("status") == "needs_approval" or "requires confirmation" in str(result.get("error", ""))


def respond(chat: Chat, msg: Message) -> tuple[Call | Say, Draft | None]:
    """The answer to one user message, and the draft left open after it."""
    if chat.awaiting_approval and msg.intent in (YES, NO, RETRY):
        return Say(USE_THE_STEP), None
    if msg.intent == MONEY_OUT:  # never a push, whatever else the message holds; an open draft stays open
        return Say(MONEY_OUT_TEXT), chat.draft
    pending = chat.awaiting_confirmation
    if pending and msg.intent in (YES, RETRY):  # the send tool asks through ADK's confirmation step this time
        return Call(SEND_TOOL, _send_args(pending)), None
    if pending and msg.intent == NO:
        return Say("OK, I did not send it again."), None
    if chat.batch_id and (msg.asks_who_paid or (msg.intent == STATUS and not msg.checkout_id and not msg.phone
                                                and chat.last_result and chat.last_result[0] == BULK_TOOL)):
        return Call(BULK_STATUS_TOOL, {}), None  # no id: the tool reads the chat's last bulk request
    if msg.intent == SEND and msg.bulk:
        return _bulk_request(msg), None
    if msg.intent == STATUS and chat.draft and not chat.payments and not msg.phone and not msg.checkout_id:
        return Say(f"Nothing has been sent in this chat yet. {_questions(chat.draft)}"), chat.draft
    if msg.intent == STATUS:
        return _status(chat, msg), None
    if msg.intent == RETRY_UNANSWERED:
        return Call(RETRY_MANY_TOOL, {}), None
    if msg.intent == LAST:
        return Call(LAST_TOOL, {"phone_number": msg.phone} if msg.phone else {}), None
    if msg.intent == LIST:
        wanted = {"status": msg.status_filter, "period": msg.period, "phone_number": msg.phone}
        return Call(LIST_TOOL, {name: value for name, value in wanted.items() if value}), None
    if msg.intent == TOTALS:
        return Call(TOTALS_TOOL, {"period": msg.period or "today"}), None
    if msg.intent == RETRY:
        return _retry(chat, msg), None
    if chat.draft and chat.draft.confirm and msg.intent in (YES, RETRY):
        if chat.draft.requests:  # the rest follow one by one, each after the last one's outcome
            return Call(SEND_TOOL, _request_args(chat.draft.requests[0])), None
        return Call(SEND_TOOL, _draft_args(chat.draft)), None
    if msg.intent == SEND and msg.requests:
        return Say(_list_requests(msg.requests)), Draft(confirm=True, requests=msg.requests)
    if msg.correction and msg.intent == SEND and not chat.draft and chat.last_send:
        return _correct_last(chat, msg)
    if msg.intent == SEND or (chat.draft and msg.starts_with_purpose):
        return _fill(chat, msg)
    if chat.draft and msg.intent == NO:
        return Say("OK, cancelled. Nothing was sent."), None
    if chat.draft and chat.draft.requests and msg.intent != HELP:
        return Say(f"Send these {len(chat.draft.requests)} requests one after another? Please answer yes or no."), \
            chat.draft
    if chat.draft and chat.draft.confirm and msg.intent != HELP:
        return Say(f"Send {_money(chat.draft.amount)} to {chat.draft.phone}? Please answer yes or no."), chat.draft
    if chat.draft and msg.intent != HELP:
        return Say(f"Sorry, I didn't get that. {_questions(chat.draft)} Or say \"cancel\"."), chat.draft
    if msg.intent == HELP:
        return Say(HELP_TEXT), None
    if msg.intent == YES:
        return Say("There is nothing waiting for a yes. " + EXAMPLES), None
    if msg.intent == NO:
        return Say(_cannot_cancel(chat) or "OK, nothing was sent. " + EXAMPLES), None
    return Say(REFUSAL), None


def _retry(chat: Chat, msg: Message) -> Call | Say:
    """ "Try again": a failed payment is retried (a new push linked to it, approved by the person); one that
    never went out is sent again; a paid, pending or unknown one is never sent again (it may be paid)."""
    if msg.checkout_id:
        return Call(RETRY_TOOL, {"checkout_request_id": msg.checkout_id})
    if not chat.last_send:
        return Say("There is nothing to try again yet in this chat. " + EXAMPLES)
    tool, result = chat.last_result or ("", {})
    checkout_id, state = result.get("checkout_request_id"), str(result.get("payment_status") or "").lower()
    args = chat.last_send
    what = f"{_money(_amount_of(args))} to {_phone_of(args)}"
    if not checkout_id:  # it never reached a phone (refused, or M-Pesa never confirmed it: unknown)
        if str(result.get("status")).lower() == "unknown":
            return Say(f"M-Pesa never confirmed the request for {what}, so it may have reached their phone: I will "
                       "not send it again. Ask the customer whether they got a prompt.")
        return Call(SEND_TOOL, _send_args(args))
    if state == "failed":
        return Call(RETRY_TOOL, {} if tool == SEND_TOOL else {"checkout_request_id": checkout_id})
    ref = _checkout(checkout_id)
    if state == "completed":
        return Say(f"The request for {what} was paid, so I will not send it again (that would charge them twice). "
                   f'To ask for another payment, say e.g. "send {_amount_of(args)} to {_phone_of(args)}".{ref}')
    if state == "unknown":
        return Say(f"I can't tell whether the request for {what} was paid, so I will not send it again yet. "
                   f"{ASK_AGAIN_LATER}{ref}")
    return Say(f"The request for {what} is still waiting for their answer: they may still pay it, so I will not "
               f"send another prompt now. {ASK_AGAIN_LATER}{ref}")


def _bulk_request(msg: Message) -> Call | Say:
    """Three or more people: show the list and the total, and call the bulk tool, which ADK holds for
    the person's approval; a list with unreadable lines is sent back instead."""
    if msg.problems:
        shown = "\n".join(f"- {problem}" for problem in msg.problems[:LISTED])
        return Say(f"I could not read {len(msg.problems)} of the lines, so nothing was sent:\n{shown}\n"
                   "Fix them and send the whole list again (one phone,amount per line).")
    contexts = {r.context for r in msg.requests}
    description = msg.context or (_purpose_of(next(iter(contexts))) if len(contexts) == 1 else "")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for request in msg.requests:
        reference = _purpose_of(request.context)
        writer.writerow([request.phone, request.amount] + ([reference] if reference and reference != description else []))
    total = sum(r.amount for r in msg.requests)
    what = f" for {description}" if description else ""
    lines = [f"{n}. {_money(r.amount)} from {r.phone}"
             + (f" ({_purpose_of(r.context)})" if r.context and _purpose_of(r.context) != description else "")
             for n, r in enumerate(msg.requests[:LISTED], start=1)]
    if len(msg.requests) > LISTED:
        lines.append(f"… and {len(msg.requests) - LISTED} more")
    say = "\n".join([f"A bulk request{what}: {len(msg.requests)} people, {_money(total)} in all:", *lines,
                      "Approve it to send the prompts (nothing is sent until you do)."])
    return Call(BULK_TOOL, {"rows": out.getvalue(), "description": description}, say=say)


def _purpose_of(context: str) -> str:
    return re.sub(r"^(?:the|for)\s+", "", (context or "").strip(), flags=re.IGNORECASE)


def _bulk_sent(result: dict) -> Call | Say:
    """The bulk tool answered: follow an accepted batch until everyone has answered, else say why not."""
    status = str(result.get("status") or "").lower()
    if status == "accepted" and result.get("batch_id"):
        what = f" for {result['description']}" if result.get("description") else ""
        return Call(BULK_STATUS_TOOL, {"wait": True},
                    say=f"📤 Sending {result.get('item_count')} payment prompts{what} "
                        f"({_money(result.get('total_amount'))} in all). I'll tell you when everyone has answered…")
    message = str(result.get("message") or result.get("error") or "").strip()
    if not status and "rejected" in message.lower():
        return Say("🛑 Not sent: you rejected the bulk request. Nothing reached anyone's phone.")
    problems = "".join(f"\n- {problem}" for problem in result.get("problems") or [])
    return Say(f"{_sentence(message)}{problems}".strip() or "The bulk request was not sent.")


def bulk_reply(result: dict) -> str:
    """A bulk request's progress or outcome: the summary, then who has not paid and why."""
    if str(result.get("status")) == "error":
        return _sentence(str(result.get("message") or "I could not check the bulk request."))
    what = f" ({result['description']})" if result.get("description") else ""
    settled = result.get("status") == "settled"
    head = (f"{'✅' if settled else '⏳'} {result.get('summary')}{what}: "
            f"{_money(result.get('paid_amount'))} of {_money(result.get('total_amount'))} collected.")
    not_paid = result.get("not_paid") or []
    lines = [f"- {i['phone_number']} ({_money(i['amount'])}): {i['reason']}" for i in not_paid]
    if result.get("not_paid_count", 0) > len(not_paid):
        lines.append(f"… and {result['not_paid_count'] - len(not_paid)} more (the full list: "
                     f"GET /payment/bulk/{result.get('batch_id')}.csv)")
    if not lines:
        return head + " Everyone has paid." + _batch(result)
    tail = "" if settled else "\nAsk me \"who hasn't paid?\" again later."
    return "\n".join([head + " Not paid:", *lines]) + _batch(result) + tail


def _batch(result: dict) -> str:
    return f"\nBulk request ID: {result['batch_id']}" if result.get("batch_id") else ""


def _cannot_cancel(chat: Chat) -> str:
    """ "cancel" after the last request already went out: say what happened, never "nothing was sent"."""
    tool, result = chat.last_result or ("", {})
    status = str(result.get("status") or result.get("payment_status") or "").lower()
    if tool != SEND_TOOL or not result.get("checkout_request_id"):
        return ""
    args = chat.last_send or {}
    phone, amount, ref = _phone_of(args), _money(_amount_of(args)), _checkout(result.get("checkout_request_id"))
    if status in ("success", "completed"):
        return (f"That payment already went through: {phone} paid {amount}. It cannot be cancelled here; to give "
                f"the money back, send it to them from your M-Pesa.{ref}")
    if status == "failed":
        return f"The last request ({amount} to {phone}) was not paid, and I will not send it again.{ref}"
    return (f"The prompt for {amount} already went to {phone} and cannot be withdrawn from here; they can "
            f"decline it on their phone. I will not send it again.{ref}")


def _send_args(args: dict) -> dict:
    return {key: args[key] for key in ("phone_number", "amount", "context", "wait_for_completion") if key in args}


def _fill(chat: Chat, msg: Message) -> tuple[Call | Say, Draft | None]:
    """Merge this message into the open draft; send when phone and amount are both known."""
    draft = chat.draft or Draft()
    problems = [p for p in (msg.phone_problem, msg.amount_problem) if p]
    phone = msg.phone or draft.phone
    if msg.same_phone:
        phone = _phone_of(chat.last_send) if chat.last_send else None
        if not phone:
            problems.append("I don't have an earlier phone number in this chat.")
    if msg.phone_problem:
        phone = None
    amount = None if msg.amount_problem else (msg.amount or draft.amount)
    draft = Draft(phone=phone, amount=amount, context=msg.context or draft.context)
    if draft.phone and draft.amount and not problems and msg.later:  # "... kesho": never sent early unasked
        return Say(f"I can't send it {msg.later}: a request goes out the moment I send it, and the prompt "
                   f"waits on their phone for about a minute. Send {_money(draft.amount)} to {draft.phone} "
                   "now? (yes / no)"), replace(draft, confirm=True)
    if draft.phone and draft.amount and not problems:
        return Call(SEND_TOOL, _draft_args(draft)), None
    if (msg.phone_problem or "").startswith(MORE_THAN_ONE_PHONE):  # its example says what to write
        return Say(_sentence(msg.phone_problem)), Draft(context=draft.context)
    if problems:
        return Say(" ".join([_sentence(p) for p in problems] + [_questions(draft)])), draft
    return Say(_ask(draft)), draft


def _draft_args(draft: Draft) -> dict:
    return {"phone_number": draft.phone, "amount": draft.amount, "context": draft.context,
            "wait_for_completion": False}


def _correct_last(chat: Chat, msg: Message) -> tuple[Call | Say, Draft | None]:
    """ "no wait make it 250" / "samahani ni 0711 000 223" after a request: that request, corrected.

    If the first request never reached a phone (refused, or the prompt failed) the corrected one is
    sent at once; if it did, a second prompt is asked about first, so that nobody pays twice.
    """
    last = chat.last_send or {}
    if msg.phone_problem or msg.amount_problem:
        return _fill(Chat(draft=Draft()), msg)
    draft = Draft(phone=msg.phone or _phone_of(last), amount=msg.amount or _amount_of(last),
                  context=msg.context or str(last.get("context") or ""))
    if not (draft.phone and draft.amount):
        return Say(_ask(draft)), draft
    if (draft.phone, draft.amount) == (_phone_of(last), _amount_of(last)):
        return Say(f"That is the same as the last request ({_money(draft.amount)} to {draft.phone}). "
                   "What should I change?"), None
    tool, result = chat.last_result or ("", {})
    reached = tool == SEND_TOOL and result.get("status") not in ("error", "failed", "needs_confirmation")
    if not reached:
        return Call(SEND_TOOL, _draft_args(draft)), None
    earlier = f"The request for {_money(_amount_of(last))} to {_phone_of(last)} already went out"
    checkout_id = result.get("checkout_request_id")
    earlier += f" (checkout ID {checkout_id})." if checkout_id else "."
    purpose = f" for {draft.context}" if draft.context else ""
    return (Say(f"{earlier} Send a new request for {_money(draft.amount)} to {draft.phone}{purpose}? (yes / no)"),
            Draft(draft.phone, draft.amount, draft.context, confirm=True))


def _amount_of(args: dict) -> int | None:
    try:
        return int(args.get("amount"))
    except (TypeError, ValueError):
        return None


def _ask(draft: Draft) -> str:
    """Repeat what is known, then ask for the rest."""
    purpose = f" for {draft.context}" if draft.context else ""
    if draft.phone and not draft.amount:
        return f"OK, a payment request to {draft.phone}{purpose}. {ASK_AMOUNT}"
    if draft.amount and not draft.phone:
        return f"OK, {draft.amount:,} KSh{purpose}. {ASK_PHONE}"
    return f"Sure. {_questions(draft)}"


def _questions(draft: Draft) -> str:
    if draft.phone and not draft.amount:
        return ASK_AMOUNT
    if draft.amount and not draft.phone:
        return ASK_PHONE
    return f"{ASK_AMOUNT} And {ASK_PHONE[0].lower()}{ASK_PHONE[1:]}"


def _status(chat: Chat, msg: Message) -> Call | Say:
    if msg.checkout_id:
        return Call(STATUS_TOOL, {"checkout_request_id": msg.checkout_id})
    if msg.phone:
        for checkout_id, phone in reversed(chat.payments):
            if phone == msg.phone:
                return Call(STATUS_TOOL, {"checkout_request_id": checkout_id})
        return Call(LAST_TOOL, {"phone_number": msg.phone})  # asked in another chat: the stored records know
    tool, result = chat.last_result or ("", {})
    if tool == SEND_TOOL and not result.get("checkout_request_id"):
        earlier = " To check an earlier payment, send me its checkout ID (ws_CO_...)." if chat.payments else ""
        if result.get("status") == "unknown":
            return Say("M-Pesa never confirmed your last request, so I have no checkout ID to look up. "
                       "Ask the customer whether they got a prompt or an M-Pesa SMS." + earlier)
        return Say(f"Your last request did not go out, so there is nothing to check. It said: "
                   f"{result.get('message', '')}{earlier}")
    if chat.payments:
        return Call(STATUS_TOOL, {"checkout_request_id": chat.payments[-1][0]})
    return Call(LAST_TOOL, {})  # a new chat: the newest payment on record, whichever chat sent it


def _reply_to_last(args: dict, result: dict) -> str:
    """The newest stored payment (of a phone), in the words of a status answer, with when it was asked."""
    record = result.get("payment")
    if not isinstance(record, dict):
        return reply_to_result(STATUS_TOOL, args, result)
    try:
        asked = f" (asked {datetime.fromisoformat(record['created_at']).astimezone(EAT):%d %b %H:%M})"
    except (KeyError, TypeError, ValueError):
        asked = ""
    facts = {"phone_number": record.get("phone_number"), "amount": record.get("amount"),
             "context": record.get("description") or ""}
    head = f"Last payment request to {_phone_of(facts)}{asked}:" if args.get("phone_number") else \
        f"Your last payment request{asked}:"
    return f"{head}\n{reply_to_result(STATUS_TOOL, facts, result)}"


def reply_to_result(tool: str, args: dict, result: dict) -> str:
    """Tell the merchant what a tool answered, in their terms: who paid what, or why not and what next.

    The tools' dicts keep the brief's notification wording (an API contract); the chat says what the
    shop sees ("✅ 0712345678 paid 500 KSh for lunch. Receipt ..."), and every line about a payment
    ends with its checkout ID.
    """
    message = str(result.get("message") or result.get("error") or result.get("result") or "").strip()
    status = str(result.get("status") or result.get("payment_status") or "").lower()
    checkout_id = result.get("checkout_request_id") or args.get("checkout_request_id")
    checking = tool == STATUS_TOOL
    details = result.get("payment_details") or {}
    who = _phone_of(args) or _phone_of({"phone_number": details.get("PhoneNumber")}) or "The customer"
    amount = args.get("amount") or details.get("Amount")
    what = f"{_money(amount)}" if amount else "the request"
    purpose = f" for {args['context']}" if args.get("context") else ""
    ref = _checkout(checkout_id)
    if status in ("success", "completed"):
        receipt = details.get("MpesaReceiptNumber")
        paid = f"{who} paid {what}{purpose}." if amount else f"{who} paid{purpose}."
        return f"✅ {'Yes: ' if checking else ''}{paid}{f' Receipt {receipt}.' if receipt else ''}{ref}"
    if status == "failed":
        reason = str(result.get("error_message") or message.removeprefix("❌ Payment failed:")).strip()
        lowered = f"{reason} {message}".lower()
        hint = next((h for words, h in _FAILURE_HINTS if any(w in lowered for w in words)),
                    'Tell me "try again" to send a new request.')
        return f"❌ {who} did not pay {what}{purpose}: {_sentence(reason)}{ref}\n{hint}"
    if status in ("timeout", "pending"):
        if checking:
            return (f"⏳ Not paid yet: {who} has not answered the M-Pesa prompt{f' for {what}' if amount else ''}, "
                    f"so it is still pending.{ref}\n{ASK_AGAIN_LATER}")
        return (f"⏳ No answer yet from {who}{f' for {what}' if amount else ''}{purpose}: the prompt may still "
                f"be on their phone, so it is still pending.{ref}\n{ASK_AGAIN_LATER}")
    if status == "unknown":
        if not checkout_id:  # M-Pesa never acknowledged the push: there is nothing to look up
            return f"{_sentence(message)}\nPlease don't send it again until you know."
        return (f"{_sentence(message)}{ref}\nI can't tell yet whether {who} paid, so please don't send it "
                f"again yet. {ASK_AGAIN_LATER}")
    if status == "needs_confirmation":
        return f"{_sentence(message)} (yes / no)"
    if status == "needs_approval":
        return f"{_sentence(message)}\n{USE_THE_STEP}"
    if result.get("rejected") or (tool in (RETRY_TOOL, RETRY_MANY_TOOL) and status == "error"):  # says why, and what next
        return f"{'🛑 ' if result.get('rejected') else ''}{_sentence(message)}"
    if status == "retried":
        return message
    if status == "error":
        lowered = message.lower()
        if re.search(r"\b(?:try again|trying again|check|give)\b", lowered):
            hint = ""  # the tool already said what to do
        elif checking:
            hint = "Check the checkout ID (it starts with ws_CO_) and ask again."
        else:
            hint = next((h for words, h in _ERROR_HINTS if any(w in lowered for w in words)),
                        'If you can fix that, tell me again, e.g. "send 500 to 0712345678 for lunch".')
        if checkout_id and str(checkout_id) not in message:  # every answer about a payment names it
            return f"{_sentence(message)}{ref}\n{hint}".strip()
        return f"{_sentence(message)}\n{hint}".strip()
    if not status and "rejected" in message.lower():  # ADK's answer when the person rejected the push
        return (f"🛑 Not sent: you rejected the request{f' for {what}' if amount else ''} to {who}. "
                "Nothing reached their phone.")
    return _sentence(message) if message else "I got an answer I don't understand. " + ASK_AGAIN_LATER


def _sentence(text: str) -> str:
    """End with a full stop unless the text already ends a sentence."""
    text = text.strip()
    return text if not text or text[-1] in ".!?…" else text + "."


def _money(amount: object) -> str:
    try:
        return f"{int(amount):,} KSh"
    except (TypeError, ValueError):
        return f"{amount} KSh"


def _checkout(checkout_id: object) -> str:
    return f" Checkout ID: {checkout_id}" if checkout_id else ""
