"""Send one STK Push and register it for tracking: the one place both happen, for the agent's tools
(registering over HTTP) and the callback server's bulk sender (registering in its own store)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from mpesa_agent.daraja.client import DEFAULT_DESCRIPTION, DarajaClient, StkPushAck
from mpesa_agent.payments.phones import masked_phone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pushed:
    """Daraja accepted the push; `registered` False: tracking it failed (`problem` says why)."""

    ack: StkPushAck
    registered: bool
    problem: Exception | None = None


def account_reference(context: str) -> str:
    """Daraja's AccountReference from what the payment is for: letters and digits, at most 12,
    shown to the customer; "Payment" when nothing is left."""
    return "".join(ch for ch in context if ch.isascii() and ch.isalnum())[:12] or DEFAULT_DESCRIPTION


def push_and_register(daraja: DarajaClient, register: Callable[[StkPushAck], object], msisdn: str, amount: int,
                      context: str, callback_url: str) -> Pushed:
    """STK Push, then `register(ack)`. A push error raises (a DarajaError: nothing to register, and
    OutcomeUnknownError when it may have reached the phone). Once Daraja accepted the push, a failed
    registration never raises: the caller gets the ack with `registered=False`, so an accepted push
    can never be mistaken for an unsent one and sent again."""
    ack = daraja.stk_push(msisdn, amount, account_reference(context), context or DEFAULT_DESCRIPTION, callback_url)
    log.info("push %s accepted for %s KES %d", ack.checkout_request_id, masked_phone(msisdn), amount)
    try:
        register(ack)
    except Exception as exc:  # the push is out: whatever went wrong here, it must not look unsent
        log.warning("push %s accepted but not registered (%s: %s)", ack.checkout_request_id, type(exc).__name__, exc)
        return Pushed(ack, False, exc)
    return Pushed(ack, True)
