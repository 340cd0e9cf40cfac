"""Errors raised by the Daraja client; `error_class` maps Daraja's answers onto them.

```
DarajaError
├── InvalidRequestError        local validation failed before sending (phone, amount, ...)
├── LiveMoneyRefused           production without MPESA_ALLOW_LIVE_MONEY=true: nothing sent
├── RequestRejectedError       400.002.02 etc.; `.field` names the field Daraja rejected
├── AuthenticationError        bad consumer key/secret, or token still invalid after one refresh
├── ThrottledError             500.003.02 spike arrest / 500.003.03 quota
├── SubscriberLockedError      500.001.1001 "Unable to lock subscriber": retry after >= 1 min
├── DarajaServerError          other Daraja error answers
└── TransportError             could not reach Daraja (nothing was sent: connect failure)
    └── OutcomeUnknownError    the push may have gone through (read timeout, 5xx without a
                               Daraja error envelope, broken answer): never re-send, query first
```
Every error keeps Daraja's `error_code`, `error_message`, `request_id` and `http_status`; its
`str()` is for people and never holds a secret (the client scrubs them before raising).
"""
from __future__ import annotations

import re

_FIELD = re.compile(r"Invalid\s+([A-Za-z][A-Za-z0-9]*)\s*$")  # "Bad Request - Invalid PhoneNumber"
AUTH_CODES = frozenset({"400.008.01", "400.008.02", "404.001.03", "404.001.04"})
THROTTLE_CODES = frozenset({"500.003.02", "500.003.03"})


class DarajaError(Exception):
    """Base class: something went wrong talking to Daraja."""

    summary = "Daraja returned an error"

    def __init__(self, message: str | None = None, *, error_code: str | None = None,
                 error_message: str | None = None, request_id: str | None = None,
                 http_status: int | None = None, field: str | None = None):
        self.message = message or self.summary
        self.error_code = error_code or None
        self.error_message = error_message or None
        self.request_id = request_id or None
        self.http_status = http_status
        self.field = field
        super().__init__(self.message)

    def __str__(self) -> str:
        text = self.message
        if self.error_message and self.error_message not in text:
            text = f"{text}: {self.error_message}"
        details = [f"{label} {value}" for label, value in (
            ("errorCode", self.error_code), ("HTTP", self.http_status), ("requestId", self.request_id)) if value]
        return f"{text} ({', '.join(details)})" if details else text


class InvalidRequestError(DarajaError):
    """The request failed local validation; nothing was sent. `.field` names the argument."""

    summary = "The payment request is invalid"


class LiveMoneyRefused(DarajaError):
    """MPESA_ENV=production without MPESA_ALLOW_LIVE_MONEY=true: no prompt is sent to anyone."""

    summary = ("Live money is switched off: with MPESA_ENV=production a payment prompt is sent only when "
               "MPESA_ALLOW_LIVE_MONEY=true is also set (in .env.local)")


class RequestRejectedError(DarajaError):
    """Daraja refused the request as malformed; `.field` is parsed from "Invalid <Field>"."""

    summary = "Daraja rejected the request"

    def __init__(self, message: str | None = None, **details):
        super().__init__(message, **details)
        if self.field is None and self.error_message:
            match = _FIELD.search(self.error_message)
            self.field = match.group(1) if match else None


class AuthenticationError(DarajaError):
    """Daraja refused the consumer key/secret, or the access token even after a refresh."""

    summary = ("Daraja refused the credentials (check MPESA_CONSUMER_KEY, MPESA_CONSUMER_SECRET, "
               "and MPESA_PASSKEY for the shortcode)")


class ThrottledError(DarajaError):
    """Daraja's spike arrest or quota limit was hit; slow down."""

    summary = "Daraja is throttling requests; wait before trying again"


class SubscriberLockedError(DarajaError):
    """The customer's phone has another M-Pesa transaction in progress; retry after >= 1 minute."""

    summary = "Another M-Pesa transaction is in progress on this phone; try again in a minute or two"


class DarajaServerError(DarajaError):
    """Any other error answer from Daraja."""

    summary = "Daraja could not handle the request"


class TransportError(DarajaError):
    """Daraja could not be reached; nothing was sent."""

    summary = "Could not reach Daraja"


class OutcomeUnknownError(TransportError):
    """The STK Push may have reached Daraja: never re-send it, find out what happened first."""

    summary = ("The STK Push outcome is unknown: it may have reached the customer's phone. "
               "Do not send it again; query its status or wait for the callback first")


def error_class(http_status: int | None, error_code: str | None = None,
                error_message: str | None = None) -> type[DarajaError]:
    """The error class for a Daraja error answer (HTTP status, `errorCode`, `errorMessage`).

    500.001.1001 covers unrelated failures, so the message decides as much as the code.
    """
    code = (error_code or "").strip()
    text = (error_message or "").lower()
    if code in AUTH_CODES or http_status in (401, 403) or "wrong credentials" in text:
        return AuthenticationError
    if code in THROTTLE_CODES or http_status == 429 or "spike arrest" in text or "quota violation" in text:
        return ThrottledError
    if "lock subscriber" in text:
        return SubscriberLockedError
    if code.startswith("400.") or http_status == 400 or "merchant does not exist" in text:
        return RequestRejectedError
    return DarajaServerError
