"""The agent's tools: send an STK Push and track it, check a payment's status, wait for it, read
the stored history (the last payment, a filtered list, the totals of a period), and bulk requests
(many people at once, sent by the callback server) with their progress.

`make_tools(payments)` builds the brief's two bound to one `Payments`; `agent_tools(payments)` all of
them, as `mpesa_agent.agent` wires the process's. The history tools read the callback server, not
the chat, so they answer the same in every chat.
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
from datetime import datetime, timezone

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
from mpesa_agent.payments.periods import EAT, PERIODS, InvalidTime, period as period_span, stamp
from mpesa_agent.payments.record import FIELD_NAMES, Payment
from mpesa_agent.payments.retry import NO_ANSWER_CODES, check_push, retry_refusal
from mpesa_agent.payments.states import COMPLETED, FAILED, PENDING, normalize_code
from mpesa_agent.payments.phones import InvalidAmount, InvalidPhoneNumber, display_phone, masked_phone, normalize_phone, parse_amount
from mpesa_agent.tracking import TrackingClient, TrackingRejected, TrackingUnavailable

log = logging.getLogger(__name__)

RECONNECT_GRACE = 5.0  # how long a wait keeps trying a restarting callback server
REMEMBERED_PAYMENTS = 10_000  # per Payments, for STK Query fallbacks; the oldest are forgotten
BLOCKING_THREADS = 128  # blocking HTTP calls (mostly long-polls) one Payments runs at once
TOOL_NAMES = ("send_instant_payment_with_tracking", "check_payment_status_realtime")
RETRY_TOOL, RETRY_MANY_TOOL = "retry_payment", "retry_unanswered_payments"
RECENT_IN_CHAT = 20  # the chat's latest payments "retry the ones that didn't answer" looks at
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
        """Per-phone rate limit, and no identical push within PAYMENT_REPEAT_WINDOW unless confirmed
        (the rule is payments/retry.py's `check_push`, which the server's retries apply too)."""
        now = self.clock()
        with self._lock:
            pushes = self._pushes[msisdn]
            while pushes and now - pushes[0][0] > max(self.settings.rate_limit_window, self.settings.repeat_window):
                pushes.popleft()
            check = self._check(pushes, amount, now, confirm_repeat)
            if check.verdict == "rate_limited":
                return error(f"Not sent: {display_phone(msisdn)} already got {check.recent} payment "
                             f"requests recently. To protect the customer, try again in {duration(check.wait)}.")
            if check.verdict == "repeat":
                return {"status": "needs_confirmation",
                        "message": f"You already asked {display_phone(msisdn)} for {amount} KSh {duration(check.ago)} "
                                   "ago. Send the same request again?",
                        "phone_number": msisdn, "amount": amount}
            pushes.append((now, amount))
        return None

    def _check(self, pushes, amount: int, now: float, confirmed: bool = False):
        return check_push(pushes, amount, now, count=self.settings.rate_limit_count,
                          window=self.settings.rate_limit_window, repeat_window=self.settings.repeat_window,
                          confirmed=confirmed)

    def approval_question(self, phone_number, amount, context: str = "") -> str | None:
        """What the person must approve before this push (ADK's tool confirmation), or None: an amount above
        PAYMENT_CONFIRM_ABOVE, or the same push again within PAYMENT_REPEAT_WINDOW."""
        try:
            msisdn = normalize_phone(phone_number)
            whole = parse_amount(amount, maximum=self.settings.max_amount)
        except (InvalidPhoneNumber, InvalidAmount):
            return None  # the tool refuses it, with its own message
        with self._lock:
            check = self._check(tuple(self._pushes.get(msisdn, ())), whole, self.clock())
        phone, purpose = display_phone(msisdn), f" for {context}" if context else ""
        if check.verdict == "repeat":
            return (f"You already asked {phone} for {whole:,} KSh {duration(check.ago)} ago. Send the same request "
                    "again? They get a second M-Pesa prompt.")
        if whole > self.settings.confirm_above:
            return (f"Send an M-Pesa prompt to {phone} for {whole:,} KSh{purpose}? It is above "
                    f"{self.settings.confirm_above:,} KSh, so I ask you first.")
        return None

    def note_push(self, msisdn: str, amount: int) -> None:
        """A push this process did not send itself (a retry the server sent) still counts for the guard."""
        with self._lock:
            self._pushes[msisdn].append((self.clock(), amount))

    async def retry_check(self, checkout_request_id) -> dict:
        """May this payment be retried? `status` "retryable" with a question for the person, else why not."""
        checkout_id = str(checkout_request_id or "").strip()
        if not CHECKOUT_ID_PATTERN.match(checkout_id):
            return error("Which payment should I retry? Give its checkout request ID (ws_CO_...).")
        try:
            found = await self._blocking(self.tracking.status, checkout_id)
        except TrackingRejected as exc:
            if exc.status_code == 404:
                return error(f"I have no payment with checkout ID {checkout_id} to retry. Check the ID.",
                             checkout_request_id=checkout_id)
            return error(f"The callback server refused to look up {checkout_id}: {exc}", checkout_request_id=checkout_id)
        except TrackingUnavailable:
            return error("Not sent again: the callback server cannot be reached, and retries go through it. "
                         "Try again shortly.", checkout_request_id=checkout_id)
        payment = _payment(found.get("payment") or {})
        if payment is None:
            return error(f"The callback server's answer about {checkout_id} has no payment record.")
        phone, purpose = display_phone(payment.phone_number), f" for {payment.description}" if payment.description else ""
        facts = {"checkout_request_id": checkout_id, "phone_number": payment.phone_number, "amount": payment.amount,
                 "context": payment.description, "payment_status": payment.status, "result_code": payment.result_code}
        refusal = retry_refusal(payment)
        if refusal:
            return error(f"Not sent again: the request for {payment.amount:,} KSh to {phone} cannot be retried: "
                         f"{refusal}.", **facts)
        if payment.retried_as:
            return error(f"The request for {payment.amount:,} KSh to {phone} was already retried (checkout ID "
                         f"{payment.retried_as}). If that one failed too, ask me to retry it.", **facts)
        return {"status": "retryable", **facts,
                "message": f"Send a new M-Pesa prompt to {phone} for {payment.amount:,} KSh{purpose}? The first "
                           f"request failed: {payment.reason or payment.result_desc or 'no reason given'}."}

    async def retry(self, checkout_request_id: str, wait_for_completion: bool = False) -> dict:
        """Retry a failed payment through the callback server (the person approved it); a new push, linked."""
        checkout_id = str(checkout_request_id or "").strip()
        try:
            answer = await self._blocking(self.tracking.retry, checkout_id, True)
        except TrackingRejected as exc:
            sent = exc.body.get("sent", False)
            message = f"{exc}".rstrip(".")
            if sent is None:  # the server's push may have reached the phone: never again by itself
                return notes.unknown_notification(None, f"Not confirmed: {message}")
            return error(f"Not sent again: {message}.", checkout_request_id=checkout_id)
        except TrackingUnavailable:
            return error("Not sent again: the callback server cannot be reached, and retries go through it. "
                         "Try again shortly.", checkout_request_id=checkout_id)
        payment = _payment(answer.get("payment") or {})
        new_id = answer["checkout_request_id"]
        if answer.get("created"):
            self.note_push(payment.phone_number, payment.amount)
        _remember(self._sent, new_id, (payment.phone_number, payment.amount, payment.description))
        facts = {"retry_of": checkout_id, "attempt": payment.attempt, "phone_number": payment.phone_number,
                 "amount": payment.amount, "context": payment.description}
        if wait_for_completion and payment.status == PENDING:
            return {**await self._wait(new_id, self.clock() + self.settings.wait_seconds), **facts}
        if payment.status != PENDING:
            return {**notes.notification_for(payment), **facts}
        return {**notes.pending_notification(new_id, f"📱 {answer.get('message', 'Sent again')}"), **facts}

    async def unanswered(self, checkout_request_ids) -> list[dict]:
        """Of these payments, the ones that failed because the customer never answered, not retried yet."""
        found = []
        for checkout_id in dict.fromkeys(checkout_request_ids):
            checked = await self.retry_check(checkout_id)
            if checked["status"] == "retryable" and normalize_code(checked["result_code"]) in NO_ANSWER_CODES:
                found.append(checked)
        return found

    async def retry_many(self, checkout_request_ids, wait_for_completion: bool = True) -> dict:
        """Retry each payment (approved as a list), then wait for all their outcomes at once."""
        sent = [await self.retry(checkout_id) for checkout_id in checkout_request_ids]
        if wait_for_completion:
            deadline = self.clock() + self.settings.wait_seconds
            sent = await asyncio.gather(*(
                self._wait_with(result, deadline) if result.get("status") == "pending" else _same(result)
                for result in sent))
        lines = [_outcome_line(result) for result in sent]
        done = sum(1 for result in sent if result.get("checkout_request_id") and result.get("retry_of"))
        paid = sum(1 for result in sent if result.get("payment_status") == COMPLETED)
        return {"status": "retried", "results": list(sent),
                "message": "\n".join([*lines, f"Sent again: {done} of {len(sent)}; paid: {paid}."])}

    async def _wait_with(self, result: dict, deadline: float) -> dict:
        return {**await self._wait(result["checkout_request_id"], deadline),
                **{key: result[key] for key in ("retry_of", "attempt", "phone_number", "amount", "context")}}

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


def _payment(data: dict) -> Payment | None:
    """The server's payment JSON as a Payment (fields this version does not know are left out)."""
    try:
        return Payment(**{name: data[name] for name in FIELD_NAMES if name in data})
    except TypeError:
        return None


async def _same(result: dict) -> dict:
    return result


def _outcome_line(result: dict) -> str:
    """One line per retried payment, as the merchant reads it."""
    phone = display_phone(result["phone_number"]) if result.get("phone_number") else "?"
    amount = f"{int(result['amount']):,} KSh" if result.get("amount") else "the request"
    status, ref = result.get("payment_status"), f" Checkout ID: {result.get('checkout_request_id')}"
    if status == COMPLETED:
        return f"✅ {phone} paid {amount}.{ref}"
    if status == FAILED:
        return f"❌ {phone} did not pay {amount}: {result.get('error_message') or 'failed'}.{ref}"
    if status == PENDING:
        return f"⏳ No answer yet from {phone} for {amount}.{ref}"
    return f"{phone}, {amount}: {result.get('message', '')}".strip()


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
    """The agent's tools as ADK wires them (send, status, wait, the history tools, the bulk tools, then the
    retry tools). Through ADK's tool confirmation (adk web shows an approve / reject step, the API carries
    it) the person approves before anything reaches a phone: a push above PAYMENT_CONFIRM_ABOVE (and within
    PAYMENT_MAX_AMOUNT, above which the tool refuses anyway), the same push again within
    PAYMENT_REPEAT_WINDOW, every bulk request, and every retry (the retry tools ask themselves, naming the
    payments)."""
    send, status = make_tools(payments)

    def needs_approval(phone_number: str, amount: int, context: str = "", wait_for_completion: bool = True,
                       tool_context: ToolContext = None) -> bool:
        return payments.approval_question(phone_number, amount, context) is not None

    bulk, bulk_status = make_bulk_tools(payments)
    return [SendTool(send, needs_approval, payments), status, make_wait_tool(payments),
            *make_history_tools(payments), FunctionTool(bulk, require_confirmation=True), bulk_status,
            *make_retry_tools(payments)]


class SendTool(FunctionTool):
    """The send tool behind ADK's tool confirmation (`require_confirmation` decides per call)."""

    def __init__(self, func, needs_approval, payments: Payments):
        super().__init__(func, require_confirmation=needs_approval)
        self.payments = payments

    def question(self, args: dict) -> str | None:
        return self.payments.approval_question(args.get("phone_number"), args.get("amount"), args.get("context") or "")


def explain_approval(tool, args: dict, tool_context: ToolContext, tool_response) -> None:
    """The agent's after_tool_callback: ADK's own approve / reject hint names the function; the person
    reads what would be sent and why they are asked instead (adk web shows the hint)."""
    asked = tool_context.actions.requested_tool_confirmations.get(tool_context.function_call_id)
    if asked is not None and isinstance(tool, SendTool):
        asked.hint = tool.question(args) or asked.hint
    return None


def make_tools(payments: Payments) -> list:
    """The agent's two tools, bound to `payments` (ADK reads their names, docstrings and type hints)."""

    async def send_instant_payment_with_tracking(phone_number: str, amount: int, context: str = "",
                                                 wait_for_completion: bool = True,
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

        A large amount, or the same amount to the same phone again within 2 minutes, is first approved
        or rejected by the person (ADK's tool confirmation); a rejected call answers with an error.

        Returns:
            A dict with `status` ("success", "failed", "timeout", "pending", "unknown",
            "needs_confirmation" or "error"), a `message` to show the person, `payment_status`, and
            `checkout_request_id` to check the payment later; `payment_details` on success,
            `error_message` on failure.
        """
        approved = bool(tool_context is not None and tool_context.tool_confirmation
                        and tool_context.tool_confirmation.confirmed)
        try:
            result = await payments.send(phone_number, amount, context, wait_for_completion, confirm_repeat=approved)
            _remember_in_chat(tool_context, result.get("checkout_request_id"))
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


CHAT_CHECKOUT_IDS = "mpesa_checkout_ids"  # session state: this chat's payments, newest last
APPROVED_RETRIES = "mpesa_retries_to_approve"  # session state: what the person is asked to approve


def _remember_in_chat(tool_context: ToolContext | None, checkout_id: str | None) -> None:
    if tool_context is None or not checkout_id:
        return
    tool_context.state[LAST_CHECKOUT_ID] = checkout_id
    earlier = [i for i in tool_context.state.get(CHAT_CHECKOUT_IDS, []) if i != checkout_id]
    tool_context.state[CHAT_CHECKOUT_IDS] = [*earlier, checkout_id][-RECENT_IN_CHAT:]


def _ask_approval(tool_context: ToolContext, tool: str, question: str, checkout_ids: list[str], **facts) -> dict:
    """ADK's tool confirmation, asked by the tool itself so that the person reads what would be sent again;
    once approved, exactly `checkout_ids` are retried (kept in the session state under the tool's name)."""
    tool_context.state[f"{APPROVED_RETRIES}:{tool}"] = checkout_ids
    tool_context.request_confirmation(hint=question, payload={"checkout_request_ids": checkout_ids})
    tool_context.actions.skip_summarization = True
    return {"status": "needs_approval", "message": question, "checkout_request_ids": checkout_ids, **facts}


def _approval(tool_context: ToolContext | None) -> bool | None:
    """None: not asked yet; True / False: the person approved / rejected."""
    confirmation = tool_context.tool_confirmation if tool_context is not None else None
    return None if confirmation is None else bool(confirmation.confirmed)


async def _guarded(work, tool: str, doing: str) -> dict:
    """A tool's answer, never a traceback: an unexpected error becomes a message the model can pass on."""
    try:
        return await work
    except Exception as exc:
        log.exception("%s failed", tool)
        return error(f"Something went wrong while {doing} ({type(exc).__name__}). "
                     "Check the server logs before trying again.")


def make_retry_tools(payments: Payments) -> list:
    """Retry tools: each retry is a new STK Push linked to the failed one, sent by the callback server
    (POST /payment/{id}/retry) after the person approved it through ADK's tool confirmation."""

    async def retry_payment(checkout_request_id: str = "", tool_context: ToolContext = None) -> dict:
        """Send a failed payment request again: a new M-Pesa prompt for the same phone and amount, linked to it.

        Only a payment M-Pesa said failed can be retried (never a paid, pending or unknown one: the customer
        may have paid). The person approves the retry first (a confirmation step shows what is sent again).

        Args:
            checkout_request_id: The failed payment's ID; empty means the payment this chat sent last.

        Returns:
            "pending" with the new payment's `checkout_request_id` once M-Pesa accepted the new push: tell
            the person, then call wait_for_payment for the outcome. "error" with a `message` when it may
            not be retried or the person rejected it.
        """
        return await _guarded(_retry_one(payments, checkout_request_id, tool_context), RETRY_TOOL,
                              "retrying the payment")

    async def retry_unanswered_payments(tool_context: ToolContext = None) -> dict:
        """Send again every payment request of this chat that failed because the customer never answered
        (no response, prompt expired or not delivered), after the person approves the list; waits for
        their outcomes (up to about 2 minutes).

        Returns:
            "retried" with a `message` listing each outcome and `results`; "error" when there is nothing
            to retry or the person rejected it.
        """
        return await _guarded(_retry_unanswered(payments, tool_context), RETRY_MANY_TOOL, "retrying")

    return [retry_payment, retry_unanswered_payments]


async def _retry_one(payments: Payments, checkout_request_id: str, tool_context: ToolContext | None) -> dict:
    state = tool_context.state if tool_context is not None else {}
    approved = _approval(tool_context)
    if approved is None:
        checkout_id = checkout_request_id or state.get(LAST_CHECKOUT_ID, "")
        checked = await payments.retry_check(checkout_id)
        if checked["status"] != "retryable":
            return checked
        if tool_context is None:
            return error("A retry needs the person's approval.")
        return _ask_approval(tool_context, RETRY_TOOL, checked["message"], [checkout_id],
                             **{k: checked[k] for k in ("phone_number", "amount", "context")})
    [checkout_id] = state.get(f"{APPROVED_RETRIES}:{RETRY_TOOL}") or [checkout_request_id]
    if not approved:
        return error("Not sent again: you rejected the retry. Nothing reached their phone.",
                     checkout_request_id=checkout_id, rejected=True)
    result = await payments.retry(checkout_id)
    _remember_in_chat(tool_context, result.get("checkout_request_id") if result.get("retry_of") else None)
    return result


async def _retry_unanswered(payments: Payments, tool_context: ToolContext | None) -> dict:
    if tool_context is None:
        return error("Retrying needs the chat's payments and the person's approval.")
    approved = _approval(tool_context)
    if approved is None:
        found = await payments.unanswered(tool_context.state.get(CHAT_CHECKOUT_IDS, [])[-RECENT_IN_CHAT:])
        if not found:
            return error("No payment in this chat failed for want of an answer, so there is nothing to "
                         "retry. (Paid, pending, cancelled and unknown ones are never retried.)")
        lines = [f"{n}. {int(p['amount']):,} KSh to {display_phone(p['phone_number'])}"
                 f"{' for ' + p['context'] if p['context'] else ''} ({p['checkout_request_id']})"
                 for n, p in enumerate(found, start=1)]
        question = "\n".join([f"Send a new M-Pesa prompt to the {len(found)} customer(s) who did not answer, "
                               f"{sum(int(p['amount']) for p in found):,} KSh in all?", *lines])
        return _ask_approval(tool_context, RETRY_MANY_TOOL, question, [p["checkout_request_id"] for p in found])
    if not approved:
        return error("Not sent again: you rejected the retries. Nothing reached their phones.", rejected=True)
    result = await payments.retry_many(tool_context.state.get(f"{APPROVED_RETRIES}:{RETRY_MANY_TOOL}", []))
    for one in result["results"]:
        _remember_in_chat(tool_context, one.get("checkout_request_id") if one.get("retry_of") else None)
    return result


def __getattr__(name: str):
    """`from mpesa_agent.tools import send_instant_payment_with_tracking`: the agent's wired tools."""
    if name in TOOL_NAMES:
        from mpesa_agent import agent  # late: agent.py imports this module
        return getattr(agent, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


HISTORY_TOOL_NAMES = ("last_payment", "find_payments", "payment_totals")
LIST_LIMIT = 20  # payments one chat answer lists, at most
UNPAID_SCAN = 200  # payments read to find who has not paid (the newest request per phone)
PERIOD_WORDS = {"today": "today", "yesterday": "yesterday", "this_week": "this week", "last_week": "last week",
                "this_month": "this month", "last_month": "last month", "last_7_days": "in the last 7 days",
                "last_30_days": "in the last 30 days"}
STATUS_MARKS = {"completed": "✅", "failed": "❌", "pending": "⏳", "unknown": "❔"}


def payment_line(payment: dict) -> str:
    """One stored payment as the merchant reads it, ending with its checkout ID."""
    phone, amount = display_phone(payment["phone_number"]), f"{payment['amount']:,} KSh"
    purpose = f" for {payment['description']}" if payment.get("description") else ""
    when = datetime.fromisoformat(payment["created_at"]).astimezone(EAT).strftime("%d %b %H:%M")
    status = payment["status"]
    if status == COMPLETED:
        what = f"{phone} paid {amount}{purpose}" + (f", receipt {payment['receipt']}" if payment.get("receipt") else "")
    elif status == FAILED:
        what = f"{phone} did not pay {amount}{purpose}: {payment.get('reason') or 'failed'}"
    elif status == PENDING:
        what = f"{phone} has not answered the prompt for {amount}{purpose} yet"
    else:
        what = f"{phone}, {amount}{purpose}: outcome unknown ({payment.get('reason') or 'no final answer'})"
    return f"{STATUS_MARKS.get(status, '')} {when}: {what}. Checkout ID: {payment['checkout_request_id']}"


def _period(name: str) -> tuple[str, str, str] | dict:
    """(since, until, words) of a named period, or an error the model can act on."""
    key = str(name or "").strip().lower().replace(" ", "_")
    try:
        since, until = period_span(key, datetime.now(timezone.utc))
    except InvalidTime:
        return error(f"I don't know the period {name!r}; use one of {', '.join(PERIODS)}.")
    return stamp(since), stamp(until), PERIOD_WORDS[key]


def _phone_filter(phone_number) -> str | dict:
    """The MSISDN to filter on ("" for none), or an error the model can act on."""
    if not str(phone_number or "").strip():
        return ""
    try:
        return normalize_phone(phone_number)
    except InvalidPhoneNumber as exc:
        return error(f"{exc}.")


def make_history_tools(payments: Payments) -> list:
    """Three read-only tools over the callback server's stored payments (GET /payment/history, /payment/analytics)."""
    tracking = payments.tracking

    async def read(function, *args, **kwargs) -> dict:
        try:
            return await payments._blocking(functools.partial(function, *args, **kwargs))
        except TrackingRejected as exc:
            return error(f"The callback server refused the question: {exc}.")
        except TrackingUnavailable as exc:
            return error(f"I can't reach the payment records right now ({exc}); try again in a moment.")

    async def last_payment(phone_number: str = "") -> dict:
        """The newest payment request, of one customer or of anyone, from the stored records (any chat).

        Use it for "did 0712345678 pay?" when this chat has no payment to that number, "my last
        payment", "last payment ilienda aje", and "did it go through?" before any payment in this chat.

        Args:
            phone_number: The customer's number in any Kenyan form; empty means the newest of all.

        Returns:
            The payment's status notification (`status`, `message`, `payment_status`,
            `checkout_request_id`, and `payment_details` or `error_message`) with `payment`, the
            stored record, and `line`, the payment as the merchant reads it; `status` "not_found" when
            there is none.
        """
        phone = _phone_filter(phone_number)
        if isinstance(phone, dict):
            return phone
        page = await read(tracking.history, phone=phone, limit=1)
        if page.get("status") == "error":
            return page
        if not page.get("payments"):
            whom = f" to {display_phone(phone)}" if phone else ""
            return {"status": "not_found", "message": f"I have no payment request{whom} on record yet."}
        record = page["payments"][0]
        return {**notes.notification_for(record), "payment": record, "line": payment_line(record)}

    async def find_payments(status: str = "", period: str = "", phone_number: str = "", limit: int = 10) -> dict:
        """List stored payment requests, newest first, each with its checkout ID (any chat's).

        Use it for "which payments failed this week?", "who hasn't paid?" (status "unpaid"),
        "pending payments today", "payments from 0712345678".

        Args:
            status: "completed", "failed", "pending", "unknown", or "unpaid": the customers whose
                latest request in the period is not paid (one line per customer). Empty: all.
            period: today, yesterday, this_week, last_week, this_month, last_month, last_7_days or
                last_30_days; empty: any time ("unpaid" defaults to last_7_days).
            phone_number: Only this customer's requests (any Kenyan form).
            limit: At most this many lines (1-20).

        Returns:
            `status` "success", `count`, `payments` (the stored records) and `message`: one line per
            payment, to show as it is.
        """
        wanted = str(status or "").strip().lower()
        unpaid = wanted == "unpaid"
        span = _period(period or ("last_7_days" if unpaid else "")) if (period or unpaid) else ("", "", "")
        if isinstance(span, dict):
            return span
        since, until, words = span
        phone = _phone_filter(phone_number)
        if isinstance(phone, dict):
            return phone
        try:
            limit = max(1, min(int(limit), LIST_LIMIT))
        except (TypeError, ValueError):
            limit = 10
        page = await read(tracking.history, status="" if unpaid else wanted, phone=phone, since=since, until=until,
                          limit=UNPAID_SCAN if unpaid else limit)
        if page.get("status") == "error":
            return page
        found = page.get("payments", [])
        if unpaid:  # the newest request per phone, when it is not paid
            newest: dict[str, dict] = {}
            for record in found:
                newest.setdefault(record["phone_number"], record)
            found = [record for record in newest.values() if record["status"] != COMPLETED][:limit]
        kind = wanted
        scope = " ".join(part for part in (words, f"to {display_phone(phone)}" if phone else "") if part)
        if not found:
            if unpaid:
                return {"status": "success", "count": 0, "payments": [],
                        "message": f"Everyone you asked {words} has paid." if words else "Everyone has paid."}
            return {"status": "success", "count": 0, "payments": [],
                    "message": f"No {kind + ' ' if kind else ''}payment requests{' ' + scope if scope else ''}."}
        if unpaid:
            head = f"{len(found)} customer{'s' if len(found) != 1 else ''} {'have' if len(found) != 1 else 'has'} " \
                   f"not paid{' ' + scope if scope else ''}:"
        else:
            more = " (the newest)" if page.get("next_cursor") else ""
            head = f"{len(found)} {kind + ' ' if kind else ''}payment request{'s' if len(found) != 1 else ''}" \
                   f"{' ' + scope if scope else ''}{more}:"
        return {"status": "success", "count": len(found), "payments": found,
                "message": "\n".join([head, *(payment_line(record) for record in found)])}

    async def payment_totals(period: str = "today") -> dict:
        """How much was collected in a period, and how many requests were paid, failed or are pending.

        Use it for "how much did I collect today?", "nimepokea ngapi leo", "total this week".

        Args:
            period: today, yesterday, this_week, last_week, this_month, last_month, last_7_days or last_30_days.

        Returns:
            `status` "success", `collected` (KES of completed payments), counts per state (`completed`,
            `failed`, `pending`, `unknown`), `completion_rate` (completed / (completed + failed), or
            null), `failure_reasons` and `message`, to show as it is.
        """
        span = _period(period or "today")
        if isinstance(span, dict):
            return span
        since, until, words = span
        figures = await read(tracking.analytics, since, until)
        if figures.get("status") == "error":
            return figures
        counts = {state: figures["by_status"][state]["count"] for state in ("completed", "failed", "pending", "unknown")}
        collected = figures["by_status"]["completed"]["amount"]
        rate = figures.get("completion_rate")
        if not figures["count"]:
            return {"status": "success", "period": words, "collected": 0, **counts, "requests": 0,
                    "completion_rate": None, "failure_reasons": [], "message": f"No payment requests {words}."}
        lines = [f"💰 You collected {collected:,} KSh {words} from {counts['completed']} paid "
                 f"request{'s' if counts['completed'] != 1 else ''}."]
        others = [f"{counts[s]} {w}" for s, w in (("failed", "failed"), ("pending", "still pending"),
                                                   ("unknown", "unknown")) if counts[s]]
        if others:
            lines.append(f"Of {figures['count']} requests, " + ", ".join(others) + ".")
        if rate is not None:
            lines.append(f"Completion rate: {rate:.0%}.")
        if figures.get("failure_reasons"):
            lines.append("Failures: " + "; ".join(f"{r['reason']} ({r['count']})" for r in figures["failure_reasons"][:3])
                         + ".")
        return {"status": "success", "period": words, "collected": collected, **counts, "requests": figures["count"],
                "completion_rate": rate, "failure_reasons": figures.get("failure_reasons", []),
                "message": "\n".join(lines)}

    return [last_payment, find_payments, payment_totals]
