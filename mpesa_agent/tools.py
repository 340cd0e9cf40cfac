"""The agent's tools: send an STK Push and track it, check a payment's status, wait for one, and
bulk requests (many people at once, sent by the callback server) with their progress.

`make_tools(payments)` builds them bound to one `Payments`; `mpesa_agent.agent` wires the process's.
Both are `async` (a waiting sync tool freezes `adk web`); blocking HTTP runs in a thread.
They never raise at the model: every problem comes back as a dict with a message for a person.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mpesa_agent.payments import notifications as notes
from mpesa_agent.payments.callbacks import CHECKOUT_ID_PATTERN
from google.adk.tools import FunctionTool, ToolContext

from mpesa_agent.config import Settings
from mpesa_agent.daraja import DarajaClient
from mpesa_agent.daraja.client import UNKNOWN_ID_REASON
from mpesa_agent.daraja.push import push_and_register
from mpesa_agent.daraja.errors import (AuthenticationError, DarajaError, InvalidRequestError, LiveMoneyRefused,
                                     OutcomeUnknownError, RequestRejectedError, SubscriberLockedError,
                                     ThrottledError, TransportError)
from mpesa_agent.payments.states import COMPLETED, FAILED, PENDING
from mpesa_agent.payments.phones import InvalidAmount, InvalidPhoneNumber, display_phone, masked_phone, normalize_phone, parse_amount
from mpesa_agent.tracking import TrackingClient, TrackingRejected, TrackingUnavailable

log = logging.getLogger(__name__)

REPEAT_WINDOW = 120  # Daraja's rule 17: same amount to the same phone within 2 minutes
RECONNECT_GRACE = 5.0  # how long a wait keeps trying a restarting callback server
REMEMBERED_PAYMENTS = 10_000  # per Payments, for STK Query fallbacks; the oldest are forgotten
BLOCKING_THREADS = 128  # blocking HTTP calls (mostly long-polls) one Payments runs at once
TOOL_NAMES = ("send_instant_payment_with_tracking", "check_payment_status_realtime")
BULK_TOOL, BULK_STATUS_TOOL = "request_bulk_payment", "bulk_payment_status"
BULK_POLL_SECONDS = 1.0  # how often a waiting bulk_payment_status reads the batch
BULK_SHOWN = 50  # people listed by name in a bulk answer; the rest are counted
LAST_BATCH_ID = "mpesa_last_batch_id"  # session state: the bulk request this chat sent last


def _remember(memory: dict, key: str, value) -> None:
    memory[key] = value
    while len(memory) > REMEMBERED_PAYMENTS:
        memory.pop(next(iter(memory)))


@dataclass(frozen=True)
class QuerySchedule:
    """STK Query fallback timing: Daraja asks for the first query after ~15-20 s, then 5-10 s apart."""

    first: float = 17.0
    every: float = 7.0


def duration(seconds: float) -> str:
    """45 -> "45 seconds", 600 -> "10 minutes", 90 -> "2 minutes": what a person reads, rounded up."""
    seconds = max(1, int(seconds + 0.999))
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def error(message: str, **extra) -> dict:
    return {"status": "error", "message": message, **extra}


class Payments:
    """Sends and tracks payments for the tools; one per process, holding the guardrail state."""

    def __init__(self, settings: Settings, daraja: DarajaClient | None = None,
                 tracking: TrackingClient | None = None, schedule: QuerySchedule = QuerySchedule(),
                 clock=time.monotonic):
        self.settings = settings
        self.daraja = daraja or DarajaClient.from_settings(settings)
        self.tracking = tracking or TrackingClient.from_settings(settings)
        self.schedule = schedule
        self.clock = clock
        self._lock = threading.Lock()
        self._pushes: dict[str, deque] = defaultdict(deque)  # msisdn -> (time, amount)
        self._sent: dict[str, tuple[str, int, str]] = {}  # checkout id -> (msisdn, amount, context)
        # Final outcomes this process learned by STK Query while the callback server could not
        # tell; the server's record catches up when its reconciler queries.
        self._queried: dict[str, dict] = {}
        self._untracked: dict[str, float] = {}  # sent without a registration: waited on by STK Query
        # Long-polls hold a thread for minutes: they get their own pool, so that a few waiting payments
        # cannot fill asyncio's default one (min(32, CPUs + 4) threads) and stall every other tool call.
        # Threads start on demand, and exit once this object is garbage-collected.
        self._pool = ThreadPoolExecutor(max_workers=BLOCKING_THREADS, thread_name_prefix="mpesa-tools")

    async def send(self, phone_number, amount, context: str = "", wait_for_completion: bool = True,
                   confirm_repeat: bool = False) -> dict:
        try:
            msisdn = normalize_phone(phone_number)
            amount = parse_amount(amount, maximum=self.settings.max_amount)
        except (InvalidPhoneNumber, InvalidAmount) as exc:
            return error(f"Not sent: {exc}.")
        context = " ".join(str(context or "").split())[:100]
        refusal = self._guard(msisdn, amount, confirm_repeat)
        if refusal:
            return refusal
        def register(ack) -> None:
            self.tracking.register(ack.checkout_request_id, msisdn, amount, context, ack.merchant_request_id)

        try:
            pushed = await self._blocking(push_and_register, self.daraja, register, msisdn, amount, context,
                                          self.settings.callback_url)
        except DarajaError as exc:
            return self._push_failed(msisdn, amount, exc)
        checkout_id = pushed.ack.checkout_request_id
        _remember(self._sent, checkout_id, (msisdn, amount, context))
        registered = pushed.registered
        if not registered:  # tracked by STK Query instead
            _remember(self._untracked, checkout_id, self.clock())
        if not wait_for_completion:
            return notes.pending_notification(
                checkout_id, f"📱 Payment request sent to {display_phone(msisdn)}: they should see an "
                             f"M-Pesa prompt for {amount} KSh. Ask me later whether it went through.")
        started = self.clock()
        if registered:
            return await self._wait(checkout_id, started + self.settings.wait_seconds)
        return await self._poll_daraja(checkout_id, started, started + self.settings.wait_seconds)

    async def wait(self, checkout_request_id) -> dict:
        """Wait for the outcome of a payment sent with wait_for_completion=False."""
        checkout_id = str(checkout_request_id or "").strip()
        if not CHECKOUT_ID_PATTERN.match(checkout_id):
            return error("Which payment? Give its checkout request ID (ws_CO_...).")
        started = self.clock()
        if checkout_id in self._untracked:
            return await self._poll_daraja(checkout_id, self._untracked[checkout_id], started + self.settings.wait_seconds)
        return await self._wait(checkout_id, started + self.settings.wait_seconds)

    async def status(self, checkout_request_id) -> dict:
        checkout_id = str(checkout_request_id or "").strip()
        if not CHECKOUT_ID_PATTERN.match(checkout_id):
            return error(f"{checkout_id!r} is not a payment ID; it looks like ws_CO_2611202612..."
                         if checkout_id else "Which payment? Give its checkout request ID (ws_CO_...).")
        try:
            result = await self._blocking(self.tracking.status, checkout_id)
            if result.get("payment_status") == PENDING and checkout_id in self._queried:
                return self._queried[checkout_id]
            return result
        except TrackingRejected as exc:
            if exc.status_code != 404:
                return error(f"The callback server refused the status check: {exc}",
                             checkout_request_id=checkout_id)
            log.warning("status %s: not known to the callback server; asking Daraja", checkout_id)
        except TrackingUnavailable as exc:
            log.warning("status %s: %s; falling back to STK Query", checkout_id, exc)
        return await self._query_once(checkout_id)

    async def bulk(self, rows, description: str = "") -> dict:
        """Start a bulk request on the callback server: `rows` are `phone,amount[,reference]` lines."""
        rows = str(rows or "").strip()
        if not rows:
            return error("Not sent: the list is empty. Give one phone,amount per line.")
        description = " ".join(str(description or "").split())[:100]
        try:
            answer = await self._blocking(self.tracking.bulk_create, rows, description)
        except TrackingRejected as exc:
            problems = [f"line {p.get('line')}: {p.get('reason')}" for p in exc.body.get("problems") or []]
            if problems:
                return error("Not sent: some lines have a problem, and nothing goes out until every line is right. "
                             "Fix them and send the whole list again.", problems=problems[:BULK_SHOWN])
            return error(f"Not sent: {exc}.")
        except TrackingUnavailable as exc:  # never sent again by itself: the list may be queued already
            return error(f"The callback server did not answer ({exc}), so I cannot tell whether the list was queued. "
                         "Don't send it again before checking its bulk requests (GET /payment/bulk).")
        return bulk_answer(answer["batch"], accepted=True)

    async def bulk_status(self, batch_id, wait: bool = False) -> dict:
        """A bulk request's progress; with `wait`, once everyone has answered (or after PAYMENT_WAIT_SECONDS)."""
        batch_id = str(batch_id or "").strip()
        if not batch_id.startswith("bat_"):
            return error("Which bulk request? There is none in this chat yet; give its ID (bat_...).")
        deadline = self.clock() + (self.settings.wait_seconds if wait else 0)
        while True:
            try:
                report = await self._blocking(self.tracking.bulk_report, batch_id)
            except TrackingRejected as exc:
                return error(f"The callback server refused: {exc}.", batch_id=batch_id)
            except TrackingUnavailable as exc:
                return error(f"Could not reach the callback server ({exc}); ask again in a moment.", batch_id=batch_id)
            if report["settled"] or self.clock() >= deadline:
                return bulk_answer(report)
            await asyncio.sleep(max(0.0, min(BULK_POLL_SECONDS, deadline - self.clock())))

    async def _blocking(self, function, *args):
        """Run blocking HTTP off the event loop, on this object's own thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(function, *args))

    def _guard(self, msisdn: str, amount: int, confirm_repeat: bool) -> dict | None:
        """Per-phone rate limit, and no identical push within 2 minutes unless confirmed."""
        now = self.clock()
        with self._lock:
            pushes = self._pushes[msisdn]
            while pushes and now - pushes[0][0] > max(self.settings.rate_limit_window, REPEAT_WINDOW):
                pushes.popleft()
            in_window = [p for p in pushes if now - p[0] <= self.settings.rate_limit_window]
            if len(in_window) >= self.settings.rate_limit_count:
                wait = int(self.settings.rate_limit_window - (now - in_window[0][0])) + 1
                return error(f"Not sent: {display_phone(msisdn)} already got {len(in_window)} payment "
                             f"requests recently. To protect the customer, try again in {duration(wait)}.")
            repeat = next((t for t, a in reversed(pushes) if a == amount and now - t <= REPEAT_WINDOW), None)
            if repeat is not None and not confirm_repeat:
                ago = int(now - repeat)
                return {"status": "needs_confirmation",
                        "message": f"You already asked {display_phone(msisdn)} for {amount} KSh {duration(ago)} ago. "
                                   "Send the same request again?",
                        "phone_number": msisdn, "amount": amount}
            pushes.append((now, amount))
        return None

    def _push_failed(self, msisdn: str, amount: int, exc: DarajaError) -> dict:
        phone = display_phone(msisdn)
        if isinstance(exc, OutcomeUnknownError):
            log.warning("push to %s: outcome unknown (%s); not re-sending", masked_phone(msisdn), exc)
            return notes.unknown_notification(
                None, f"M-Pesa did not confirm the request to {phone} ({exc.error_message or 'no answer'}). "
                      "It may still reach the phone, so I will not re-send it by myself; ask the customer "
                      "whether they got a prompt before trying again")
        self._forget_push(msisdn, amount)  # nothing was sent: it must not count against the phone
        if isinstance(exc, LiveMoneyRefused):
            return error(f"Not sent: {exc}.")
        if isinstance(exc, (InvalidRequestError, RequestRejectedError)):
            return error(f"Not sent: M-Pesa rejected the request: {exc}.")
        if isinstance(exc, ThrottledError):
            return error("Not sent: M-Pesa is throttling requests right now. Try again in a minute.")
        if isinstance(exc, SubscriberLockedError):
            return error(f"Not sent: {phone} has another M-Pesa transaction in progress. "
                         "Try again in 1-3 minutes.")
        if isinstance(exc, AuthenticationError):
            return error("Not sent: M-Pesa refused our credentials. Check MPESA_CONSUMER_KEY, "
                         "MPESA_CONSUMER_SECRET and MPESA_PASSKEY in .env.local.")
        if isinstance(exc, TransportError):
            return error("Not sent: M-Pesa could not be reached. Nothing was sent; try again shortly.")
        return error(f"Not sent: M-Pesa answered with an error: {exc}.")

    def _forget_push(self, msisdn: str, amount: int) -> None:
        with self._lock:
            pushes = self._pushes[msisdn]
            if pushes and pushes[-1][1] == amount:
                pushes.pop()

    async def _wait(self, checkout_id: str, deadline: float) -> dict:
        """Long-poll the callback server; ride out a restart; fall back to STK Query if it stays down.

        Daraja never re-sends a callback, so one that came while the server was down is gone:
        once the server is back, STK Query is asked once before waiting again.
        """
        down_since = None
        while True:
            remaining = max(0.0, deadline - self.clock())
            try:
                if down_since is None:
                    result = await self._blocking(self.tracking.wait, checkout_id, remaining)
                else:  # a quick look: is the server back?
                    result = await self._blocking(self.tracking.status, checkout_id)
            except TrackingRejected as exc:
                log.warning("wait %s refused (%s); falling back to STK Query", checkout_id, exc)
                return await self._poll_daraja(checkout_id, self.clock() - self.schedule.first, deadline)
            except TrackingUnavailable as exc:
                down_since = down_since or self.clock()
                if self.clock() - down_since > RECONNECT_GRACE or remaining <= 0:
                    log.warning("wait %s: callback server lost (%s); falling back to STK Query", checkout_id, exc)
                    return await self._poll_daraja(checkout_id, self.clock() - self.schedule.first, deadline)
                await asyncio.sleep(0.25)
                continue
            if result.get("payment_status") != PENDING:
                return result
            if down_since is not None:
                down_since = None
                log.warning("wait %s: callback server back; asking STK Query for a callback lost meanwhile",
                            checkout_id)
                queried = await self._query_once(checkout_id, quiet=True)
                if queried.get("payment_status") != PENDING:
                    return queried
                continue  # long-poll again; at the deadline it answers at once with the timeout
            if self.clock() >= deadline:
                return result

    async def _poll_daraja(self, checkout_id: str, started: float, deadline: float) -> dict:
        """STK Query on Daraja's schedule until a final answer or the deadline."""
        next_query = started + self.schedule.first
        while True:
            now = self.clock()
            if next_query > deadline:
                return notes.timeout_notification(checkout_id)
            if next_query > now:
                await asyncio.sleep(next_query - now)
            result = await self._query_once(checkout_id, quiet=True)
            if result.get("payment_status") != PENDING:
                return result
            next_query = max(self.clock(), next_query) + self.schedule.every

    async def _query_once(self, checkout_id: str, quiet: bool = False) -> dict:
        try:
            result = await self._blocking(self.daraja.stk_query, checkout_id)
        except ThrottledError:
            return notes.pending_notification(checkout_id)
        except DarajaError as exc:
            if quiet:
                log.warning("query %s failed: %s", checkout_id, exc)
                return notes.pending_notification(checkout_id)
            return error(f"Could not check {checkout_id}: {exc}", checkout_request_id=checkout_id)
        if result.state in (COMPLETED, FAILED):
            notification = self._query_notification(checkout_id, result)
            _remember(self._queried, checkout_id, notification)
            return notification
        if result.state == PENDING:
            if result.reason == UNKNOWN_ID_REASON and not quiet:
                return error(f"I have no payment with checkout ID {checkout_id}, and M-Pesa does not know it "
                             "either. Check the ID (copy it from the payment's message); a request sent "
                             "a few seconds ago may not be known yet.", checkout_request_id=checkout_id)
            if result.reason and not quiet:
                return notes.pending_notification(checkout_id, f"⏳ No final answer yet: {result.reason}.")
            return notes.pending_notification(checkout_id)
        return notes.unknown_notification(checkout_id, result.reason or result.result_desc)

    def _query_notification(self, checkout_id: str, result) -> dict:
        msisdn, amount, context = self._sent.get(checkout_id, ("", None, ""))
        if result.state == COMPLETED:
            details = {**notes.payment_details(amount, phone_number=msisdn), "VerifiedBy": "STK Query"}
            return notes.success_notification(checkout_id, amount, msisdn, context, details)
        return notes.failure_notification(checkout_id, result.reason or result.result_desc)


def bulk_answer(report: dict, accepted: bool = False) -> dict:
    """What the bulk tools answer: the counts, who has not paid and why, and a message for people."""
    not_paid = [{"phone_number": display_phone(item["phone_number"]), "amount": item["amount"],
                 "outcome": item["outcome"], "reason": item["reason"]} for item in report.get("not_paid", [])]
    status = "accepted" if accepted else ("settled" if report["settled"] else "in_progress")
    what = f" for {report['description']}" if report.get("description") else ""
    if accepted:
        message = (f"📤 {report['item_count']} payment requests{what}, {report['total_amount']:,} KSh in all, are "
                   "queued: the server sends the prompts one by one.")
    else:
        message = f"{'✅' if status == 'settled' else '⏳'} {report['summary']}{what}."
        message += "".join(f"\n- {i['phone_number']} ({i['amount']:,} KSh): {i['reason']}" for i in not_paid[:BULK_SHOWN])
    return {"status": status, "batch_id": report["id"], "message": message, "summary": report["summary"],
            "description": report.get("description", ""), "item_count": report["item_count"],
            "total_amount": report["total_amount"], "paid_amount": report["paid_amount"],
            "counts": {name: value["count"] for name, value in report["by_outcome"].items() if value["count"]},
            "not_paid": not_paid[:BULK_SHOWN], "not_paid_count": len(not_paid)}


def make_bulk_tools(payments: Payments) -> list:
    """The bulk tools: start a bulk request (behind ADK's confirmation in agent_tools), and follow it."""

    async def request_bulk_payment(rows: str, description: str = "", tool_context: ToolContext = None) -> dict:
        """Ask several customers to pay at once (a bulk request): each phone gets one M-Pesa prompt, sent by
        the callback server at a pace Daraja accepts. Call it only after showing the person the whole list
        and the total; they approve or reject the call before anything is sent.

        Args:
            rows: One customer per line as CSV: "phone,amount" or "phone,amount,reference", e.g.
                "0712345678,500\n0722000000,500,June". A header line is allowed.
            description: What the requests are for, e.g. "chama contribution" (a row without a reference uses it).

        Returns:
            A dict with `status` "accepted" (then call bulk_payment_status with wait=True), or "error" with a
            `message` and `problems` (each bad line and why; nothing was sent). Also `batch_id`, `summary`,
            `item_count`, `total_amount`.
        """
        try:
            result = await payments.bulk(rows, description)
            if tool_context is not None and result.get("batch_id"):
                tool_context.state[LAST_BATCH_ID] = result["batch_id"]
            return result
        except Exception as exc:
            log.exception("request_bulk_payment failed")
            return error(f"Something went wrong while sending the bulk request ({type(exc).__name__}). "
                         "Check the callback server's bulk requests before trying again.")

    async def bulk_payment_status(batch_id: str = "", wait: bool = False, tool_context: ToolContext = None) -> dict:
        """How a bulk request is going: how many paid, who has not paid and why (no M-Pesa call).

        Args:
            batch_id: The bulk request's ID (bat_...); empty means the one this chat sent last.
            wait: True right after request_bulk_payment: wait (up to about 2 minutes) until everyone has answered.

        Returns:
            A dict with `status` ("settled", "in_progress" or "error"), `summary` (e.g. "28 of 30 paid,
            1 cancelled, 1 did not answer"), `counts`, `paid_amount`, `not_paid` (phone, amount, reason) and a
            `message` to show the person.
        """
        batch_id = batch_id or (tool_context.state.get(LAST_BATCH_ID, "") if tool_context else "")
        try:
            return await payments.bulk_status(batch_id, wait)
        except Exception as exc:
            log.exception("bulk_payment_status failed")
            return error(f"Something went wrong while checking the bulk request ({type(exc).__name__}).",
                         batch_id=batch_id)

    return [request_bulk_payment, bulk_payment_status]


def agent_tools(payments: Payments) -> list:
    """The agent's tools as ADK wires them: a push above PAYMENT_CONFIRM_ABOVE (and within
    PAYMENT_MAX_AMOUNT, above which the tool refuses anyway), and every bulk request, is approved or
    rejected by the person through ADK's tool confirmation before anything is sent (adk web shows the step)."""
    send, status = make_tools(payments)
    settings = payments.settings

    def needs_approval(phone_number: str, amount: int, context: str = "", wait_for_completion: bool = True,
                       confirm_repeat: bool = False, tool_context: ToolContext = None) -> bool:
        try:
            whole = parse_amount(amount, maximum=settings.max_amount)
        except InvalidAmount:
            return False  # the tool refuses it, with its own message
        return whole > settings.confirm_above

    bulk, bulk_status = make_bulk_tools(payments)
    return [FunctionTool(send, require_confirmation=needs_approval), status, make_wait_tool(payments),
            FunctionTool(bulk, require_confirmation=True), bulk_status]


def make_tools(payments: Payments) -> list:
    """The agent's two tools, bound to `payments` (ADK reads their names, docstrings and type hints)."""

    async def send_instant_payment_with_tracking(phone_number: str, amount: int, context: str = "",
                                                 wait_for_completion: bool = True,
                                                 confirm_repeat: bool = False,
                                                 tool_context: ToolContext = None) -> dict:
        """Ask a customer to pay by M-Pesa STK Push, then report the outcome as soon as it is known.

        The phone's owner gets an M-Pesa prompt to pay the merchant's shortcode and approves it with
        their PIN; no money leaves the merchant's account.

        Args:
            phone_number: The customer's Kenyan mobile number, in any usual form (0712345678, +254712345678).
            amount: Whole Kenya shillings to request, at least 1.
            context: What the payment is for, e.g. "lunch" (shown in the messages).
            wait_for_completion: Wait for the customer's answer (up to about 2 minutes) before replying.
                False answers "pending" as soon as M-Pesa accepted the push: tell the person, then call
                wait_for_payment for the outcome.
            confirm_repeat: True only after the person confirmed re-sending the same amount to the
                same phone within 2 minutes (a previous call answered "needs_confirmation").

        Returns:
            A dict with `status` ("success", "failed", "timeout", "pending", "unknown",
            "needs_confirmation" or "error"), a `message` to show the person, `payment_status`, and
            `checkout_request_id` to check the payment later; `payment_details` on success,
            `error_message` on failure.
        """
        try:
            result = await payments.send(phone_number, amount, context, wait_for_completion, confirm_repeat)
            if tool_context is not None and result.get("checkout_request_id"):
                tool_context.state[LAST_CHECKOUT_ID] = result["checkout_request_id"]
            return result
        except Exception as exc:  # the model must get an answer, never a traceback
            log.exception("send_instant_payment_with_tracking failed")
            return error(f"Something went wrong while sending the payment request ({type(exc).__name__}). "
                         "Check the server logs before trying again.")

    async def check_payment_status_realtime(checkout_request_id: str) -> dict:
        """Get a payment's current status from the real-time callback system.

        The answer comes from the callback server's record, with no M-Pesa API call; only if that
        server is unreachable or does not know the payment is M-Pesa asked (STK Query).

        Args:
            checkout_request_id: The payment's ID from the send result, e.g. "ws_CO_26112026125423123712345678".

        Returns:
            A dict with `status` ("success", "failed", "pending", "unknown" or "error"), a `message`
            to show the person, `payment_status` and `checkout_request_id`.
        """
        try:
            return await payments.status(checkout_request_id)
        except Exception as exc:
            log.exception("check_payment_status_realtime failed")
            return error(f"Something went wrong while checking the payment ({type(exc).__name__}).")

    return [send_instant_payment_with_tracking, check_payment_status_realtime]


WAIT_TOOL = "wait_for_payment"
LAST_CHECKOUT_ID = "mpesa_last_checkout_id"  # session state: the payment the last send started


def make_wait_tool(payments: Payments):
    """The third tool: wait for a payment that was sent with wait_for_completion=False."""

    async def wait_for_payment(checkout_request_id: str = "", tool_context: ToolContext = None) -> dict:
        """Wait until the customer answers the M-Pesa prompt, then report the outcome.

        Call it right after send_instant_payment_with_tracking(..., wait_for_completion=False) answered
        "pending" and you told the person the prompt is on its way; it waits up to about 2 minutes.

        Args:
            checkout_request_id: The payment's ID; empty means the payment this chat sent last.

        Returns:
            The same dict as send_instant_payment_with_tracking with wait_for_completion=True.
        """
        checkout_id = checkout_request_id or (tool_context.state.get(LAST_CHECKOUT_ID, "") if tool_context else "")
        try:
            return await payments.wait(checkout_id)
        except Exception as exc:
            log.exception("wait_for_payment failed")
            return error(f"Something went wrong while waiting for the payment ({type(exc).__name__}).",
                         checkout_request_id=checkout_id)

    return wait_for_payment


def __getattr__(name: str):
    """`from mpesa_agent.tools import send_instant_payment_with_tracking`: the agent's wired tools."""
    if name in TOOL_NAMES:
        from mpesa_agent import agent  # late: agent.py imports this module
        return getattr(agent, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
