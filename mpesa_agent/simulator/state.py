"""The simulator's memory: tokens, outcome rules, transactions, and the customer who acts."""
from __future__ import annotations

import hmac
import itertools
import logging
import random
import secrets
import string
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Mapping

import requests

from mpesa_agent.config import SANDBOX_PASSKEY, SANDBOX_SHORTCODE, Settings

from .checks import (PushRequest, Rejected, nairobi_now, new_checkout_request_id, new_receipt,
                     new_request_id, redact_text, redact_url)
from .rules import (CALLBACK_DESCS, ERROR_PRESETS, FALLBACK_DESC, MAGIC_NUMBERS, QUERY_DESCS, Plan,
                    Rule, error_answer, parse_rule, valid_result_code)

log = logging.getLogger("mpesa_agent.simulator")

SIMULATOR_CONSUMER_KEY = "simulator-consumer-key"
SIMULATOR_CONSUMER_SECRET = "simulator-consumer-secret"
MAX_TRANSACTIONS = 10_000  # oldest forgotten first, so a long run does not grow without end
# Safaricom blocks callback URLs containing these words: the callback silently never comes.
BLOCKED_URL_WORDS = ("m-pesa", "mpesa", "safaricom", "exe", "exec", "cmd", "sql", "query")

_TOKEN_CHARS = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Options:
    """How this simulator behaves; `create_app(**overrides)` replaces any of these."""

    consumer_key: str = SIMULATOR_CONSUMER_KEY
    consumer_secret: str = field(default=SIMULATOR_CONSUMER_SECRET, repr=False)
    passkeys: Mapping[str, str] = field(default_factory=dict, repr=False)  # shortcode -> passkey
    callback_delay: float = 2.0
    callback_timeout: float = 10.0
    token_ttl: int = 3599
    timestamp_tolerance: float | None = 3600.0  # None accepts any well-formed Timestamp
    lock_subscribers: bool = False
    max_amount: int = 250_000
    seed: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "Options":
        """Credentials, shortcodes (the configured one and the sandbox's) and the callback delay."""
        return cls(
            consumer_key=settings.consumer_key or SIMULATOR_CONSUMER_KEY,
            consumer_secret=settings.consumer_secret or SIMULATOR_CONSUMER_SECRET,
            passkeys={SANDBOX_SHORTCODE: SANDBOX_PASSKEY, settings.shortcode: settings.passkey},
            callback_delay=settings.simulator_callback_delay,
        )


@dataclass
class Transaction:
    checkout_request_id: str
    merchant_request_id: str
    request: PushRequest
    plan: Plan
    created_at: datetime
    state: str = "pending"  # -> "final" when the customer acts
    result_code: int | str | None = None
    result_desc: str | None = None
    query_desc: str | None = None
    finished_at: datetime | None = None
    receipt: str | None = None
    callbacks: list = field(default_factory=list)
    callback_note: str | None = None
    queries: int = 0
    query_errors_sent: int = 0
    timer: threading.Timer | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        r, p = self.request, self.plan
        return {
            "checkout_request_id": self.checkout_request_id,
            "merchant_request_id": self.merchant_request_id,
            "state": self.state,
            "phone_number": r.phone, "amount": r.amount, "shortcode": r.shortcode, "party_a": r.party_a,
            "party_b": r.party_b, "transaction_type": r.transaction_type,
            "account_reference": r.account_reference, "transaction_desc": r.transaction_desc,
            "callback_url": redact_url(r.callback_url),
            "created_at": self.created_at.isoformat(timespec="milliseconds"),
            "planned": {"result_code": p.result_code, "delay": p.delay, "duplicate": p.duplicate,
                        "lose_callback": p.lose_callback, "callback_before_ack": p.callback_before_ack,
                        "rule_id": p.rule_id},
            "result_code": self.result_code, "result_desc": self.result_desc,
            "finished_at": self.finished_at and self.finished_at.isoformat(timespec="milliseconds"),
            "receipt": self.receipt,
            "callbacks": list(self.callbacks), "callback_note": self.callback_note,
            "queries": self.queries,
        }


class Simulator:
    """Thread-safe state behind one simulator app."""

    def __init__(self, options: Options):
        self.options = options
        self._lock = threading.RLock()
        self._rng = random.Random(options.seed)
        self._token: str | None = None
        self._token_expires = 0.0
        self._rules: list[Rule] = []
        self._rule_ids = itertools.count(1)
        self._transactions: dict[str, Transaction] = {}

    def check_client(self, key: str, secret: str) -> bool:
        good_key = hmac.compare_digest(key.encode(), self.options.consumer_key.encode())
        return hmac.compare_digest(secret.encode(), self.options.consumer_secret.encode()) and good_key

    def issue_token(self) -> str:
        """A new token; like Safaricom says, it invalidates the previous one."""
        token = "".join(secrets.choice(_TOKEN_CHARS) for _ in range(28))
        with self._lock:
            self._token, self._token_expires = token, time.monotonic() + self.options.token_ttl
        return token

    def token_valid(self, token: str) -> bool:
        with self._lock:
            current, expires = self._token, self._token_expires
        return bool(current) and hmac.compare_digest(token.encode(), current.encode()) and time.monotonic() < expires

    def expire_tokens(self) -> None:
        with self._lock:
            self._token = None

    def add_rule(self, spec: object) -> Rule:
        """Validate a control-API rule and keep it; raises ValueError saying what is wrong."""
        rule = parse_rule(spec, next(self._rule_ids))
        with self._lock:
            self._rules.append(rule)
        return rule

    def rules(self) -> list[dict]:
        with self._lock:
            return [rule.to_json() for rule in self._rules]

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def reset(self) -> None:
        with self._lock:
            for tx in self._transactions.values():
                if tx.timer:
                    tx.timer.cancel()
            self._transactions.clear()
            self._rules.clear()

    def _plan(self, req: PushRequest) -> Plan:
        """The outcome for this push: magic number or default, what the request forces, then a rule."""
        code, delay = MAGIC_NUMBERS.get(req.phone, (0, None))
        plan = Plan(result_code=code, delay=self.options.callback_delay if delay is None else delay)
        if req.amount > self.options.max_amount:
            plan = replace(plan, result_code=3)
        elif req.transaction_type == "CustomerPayBillOnline" and req.party_b != req.shortcode:
            plan = replace(plan, result_code=2028)  # a PayBill is paid to its own shortcode
        for rule in reversed(self._rules):  # the newest matching rule wins
            if rule.phone in (None, req.phone):
                if rule.max_per_second is not None and rule.admits(time.monotonic()):
                    continue  # under the rate: this rule lets the push through
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count == 0:
                        self._rules.remove(rule)
                return replace(plan, rule_id=rule.id, **rule.effects)
        return plan

    def push(self, req: PushRequest) -> tuple[Transaction | None, Plan]:
        """Accept a valid push: (transaction, plan); no transaction when the plan's error says so."""
        with self._lock:
            plan = self._plan(req)
            if plan.push_error and not plan.push_error.get("processed"):
                return None, plan
            if self.options.lock_subscribers and any(
                    tx.state == "pending" and tx.request.phone == req.phone for tx in self._transactions.values()):
                raise Rejected(500, "500.001.1001", ERROR_PRESETS["subscriber_locked"]["errorMessage"],
                               "another push to this number is still waiting for the customer")
            at = nairobi_now()
            checkout_request_id = new_checkout_request_id(req.phone, at)
            while checkout_request_id in self._transactions:
                at += timedelta(milliseconds=1)
                checkout_request_id = new_checkout_request_id(req.phone, at)
            tx = Transaction(checkout_request_id, new_request_id(), req, plan, at)
            self._transactions[checkout_request_id] = tx
            while len(self._transactions) > MAX_TRANSACTIONS:
                self._transactions.pop(next(iter(self._transactions)))
            if not plan.callback_before_ack:
                tx.timer = threading.Timer(plan.delay, self._customer_acts, args=(checkout_request_id,))
                tx.timer.daemon = True
                tx.timer.start()
        return tx, plan

    def act_before_ack(self, tx: Transaction) -> None:
        """For callback_before_ack: the customer acts and the callback is POSTed, in this thread."""
        time.sleep(tx.plan.delay)
        self._customer_acts(tx.checkout_request_id)

    def act(self, checkout_request_id: str, result_code=None, result_desc: str | None = None) -> Transaction:
        """The customer acts now (control API); the callback goes out from a background thread."""
        if result_code is not None and not valid_result_code(result_code):
            raise ValueError("result_code must be a number or a short code like SFC_IC0003")
        if result_desc is not None and not (isinstance(result_desc, str) and result_desc):
            raise ValueError("result_desc must be a non-empty string")
        with self._lock:
            tx = self._transactions.get(checkout_request_id)
            if tx is None:
                raise KeyError(checkout_request_id)
            if not self._finish(tx, result_code, result_desc):
                raise ValueError(f"{checkout_request_id} is already final (ResultCode {tx.result_code})")
        threading.Thread(target=self._deliver, args=(tx,), daemon=True).start()
        return tx

    def _customer_acts(self, checkout_request_id: str) -> None:
        with self._lock:
            tx = self._transactions.get(checkout_request_id)
            if tx is None or not self._finish(tx):
                return
        self._deliver(tx)

    def _finish(self, tx: Transaction, result_code=None, result_desc: str | None = None) -> bool:
        """Make the transaction final (lock held); False when it already was."""
        if tx.state != "pending":
            return False
        if tx.timer:
            tx.timer.cancel()
        tx.state, tx.finished_at = "final", nairobi_now()
        if result_code is None:
            result_code, result_desc = tx.plan.result_code, result_desc or tx.plan.result_desc
        code = str(result_code)
        tx.result_code = result_code
        tx.result_desc = result_desc or CALLBACK_DESCS.get(code, FALLBACK_DESC)
        tx.query_desc = result_desc or QUERY_DESCS.get(code, FALLBACK_DESC)
        if str(result_code) == "0":
            tx.receipt = new_receipt(tx.finished_at)
        return True

    def _deliver(self, tx: Transaction) -> None:
        """POST the callback (once, or `duplicate` times); never retried, like Daraja."""
        url = tx.request.callback_url
        blocked = [w for w in BLOCKED_URL_WORDS if w in url.lower()]
        note = None
        if tx.plan.lose_callback:
            note = "not sent: lose_callback rule"
        elif blocked:
            note = f"not sent: CallBackURL contains {', '.join(blocked)}, which Safaricom blocks"
        if note:
            with self._lock:
                tx.callback_note = note
            log.info("CALLBACK %s %s ResultCode %s %s", redact_url(url), tx.checkout_request_id, tx.result_code, note)
            return
        body = self.callback_body(tx)
        for _ in range(tx.plan.duplicate):
            started = time.perf_counter()
            status, error = None, None
            try:
                answer = requests.post(url, json=body, timeout=self.options.callback_timeout,
                                       headers={"Businessshortcode": tx.request.shortcode})
                status = answer.status_code
            except Exception as exc:  # a broken receiver must never break the simulator
                error = redact_text(f"{type(exc).__name__}: {exc}", url)
            ms = round((time.perf_counter() - started) * 1000)
            with self._lock:
                tx.callbacks.append({"at": nairobi_now().isoformat(timespec="milliseconds"),
                                     "status": status, "error": error, "ms": ms})
            log.info("CALLBACK POST %s %s ResultCode %s -> %s in %d ms", redact_url(url),
                     tx.checkout_request_id, tx.result_code, status or error.partition(":")[0], ms)

    def callback_body(self, tx: Transaction) -> dict:
        """Daraja's callback JSON; metadata varies like real ones (Amount 500 or 500.0, Balance or not)."""
        callback = {"MerchantRequestID": tx.merchant_request_id, "CheckoutRequestID": tx.checkout_request_id,
                    "ResultCode": tx.result_code, "ResultDesc": tx.result_desc}
        if tx.receipt:
            with self._lock:
                as_float, with_balance = self._rng.random() < 0.5, self._rng.random() < 0.5
            items = [{"Name": "Amount", "Value": float(tx.request.amount) if as_float else tx.request.amount},
                     {"Name": "MpesaReceiptNumber", "Value": tx.receipt}]
            if with_balance:
                items.append({"Name": "Balance"})
            items += [{"Name": "TransactionDate", "Value": int(tx.finished_at.strftime("%Y%m%d%H%M%S"))},
                      {"Name": "PhoneNumber", "Value": int(tx.request.phone)}]
            callback["CallbackMetadata"] = {"Item": items}
        return {"Body": {"stkCallback": callback}}

    def query(self, shortcode: str, checkout_request_id: str) -> tuple[int, dict | str]:
        """(HTTP status, body) of STK Query, in the forms Daraja uses."""
        with self._lock:
            tx = self._transactions.get(checkout_request_id)
            if tx is None or tx.request.shortcode != shortcode:
                return 500, {"requestId": new_request_id(), "errorCode": "500.001.1001",
                             "errorMessage": "The transaction does not Exist"}
            tx.queries += 1
            plan = tx.plan
            if plan.query_error and (plan.query_error_times is None or tx.query_errors_sent < plan.query_error_times):
                tx.query_errors_sent += 1
                return error_answer(plan.query_error)
            ids = {"MerchantRequestID": tx.merchant_request_id, "CheckoutRequestID": checkout_request_id}
            if tx.state == "pending":
                return self._rng.choice([
                    (500, {"requestId": checkout_request_id, "errorCode": "500.001.1001",
                           "errorMessage": "The transaction is being processed"}),
                    (200, {"ResponseCode": "0", "ResponseDescription": "The service request has been accepted successfully",
                           **ids, "ResultCode": "4999", "ResultDesc": "The transaction is still under processing"}),
                    (500, {"requestId": checkout_request_id, "errorCode": "500.001.1001", "errorMessage": ""}),
                ])
            return 200, {"ResponseCode": "0", "ResponseDescription": "The service request has been accepted successfully",
                         **ids, "ResultCode": str(tx.result_code), "ResultDesc": tx.query_desc}

    def transactions(self) -> list[dict]:
        with self._lock:
            return [tx.to_json() for tx in self._transactions.values()]

    def transaction(self, checkout_request_id: str) -> dict | None:
        with self._lock:
            tx = self._transactions.get(checkout_request_id)
            return tx.to_json() if tx else None
