"""Daraja client: OAuth token, STK Push and STK Query, with Daraja's quirks handled in one place."""
from __future__ import annotations

import base64
import logging
import math
import re
import threading
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
from urllib3.exceptions import ConnectTimeoutError

from mpesa_agent.payments import states as outcomes
from mpesa_agent.config import Settings
from mpesa_agent.daraja.errors import (
    AuthenticationError, DarajaError, DarajaServerError, InvalidRequestError, LiveMoneyRefused, OutcomeUnknownError,
    RequestRejectedError, ThrottledError, TransportError, error_class,
)
from mpesa_agent.payments.phones import InvalidAmount, InvalidPhoneNumber, normalize_phone, parse_amount

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
TOKEN_REFRESH_MARGIN = 300.0  # fetch a new token this many seconds before the old one expires
DEFAULT_TOKEN_LIFETIME = 3599.0
TOKEN_FETCH_ATTEMPTS = 2  # a token fetch is safe to repeat; an STK Push is not
ACCOUNT_REFERENCE_MAX = 12
TRANSACTION_DESC_MAX = 13
DEFAULT_DESCRIPTION = "Payment"
MAX_DETAIL = 160  # characters of an unexpected answer kept in an error

TOKEN_PATH = "/oauth/v1/generate"
STK_PUSH_PATH = "/mpesa/stkpush/v1/processrequest"
STK_QUERY_PATH = "/mpesa/stkpushquery/v1/query"
INVALID_TOKEN_CODE = "404.001.03"
PROCESSING_CODE = "500.001.1001"
UNKNOWN_ID_REASON = ("Daraja does not know this CheckoutRequestID yet: a push sent moments ago can "
                     "briefly be unknown, but an id that stays unknown was never Daraja's")

try:
    NAIROBI = ZoneInfo("Africa/Nairobi")
except ZoneInfoNotFoundError:  # no tz database on this machine; Kenya keeps UTC+3 all year
    NAIROBI = timezone(timedelta(hours=3), "EAT")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StkPushAck:
    """Daraja accepted the push for processing; this is not a payment."""

    merchant_request_id: str
    checkout_request_id: str
    response_code: str
    response_description: str
    customer_message: str
    phone_number: str
    amount: int
    raw: dict


@dataclass(frozen=True)
class StkQueryResult:
    """What STK Query says: completed, failed, pending (still processing) or unknown."""

    checkout_request_id: str
    state: str
    result_code: str | None
    result_desc: str
    reason: str | None
    raw: dict


class DarajaClient:
    """One merchant's connection to Daraja (sandbox, production or the simulator, by `base_url`).

    Holds one OAuth token, shared by all threads and refreshed before it expires, and one
    `requests.Session`. Every request has a connect and a read timeout.
    """

    def __init__(self, consumer_key: str, consumer_secret: str, shortcode: str, passkey: str,
                 base_url: str, transaction_type: str = "CustomerPayBillOnline",
                 party_b: str | None = None,
                 timeout: float | tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] | None = None,
                 session: requests.Session | None = None, live_money: bool = True):
        self.consumer_key = consumer_key
        self.live_money = live_money  # False: stk_push refuses (production without the switch)
        self._consumer_secret = consumer_secret
        self.shortcode = str(shortcode)
        self._passkey = passkey
        self.base_url = base_url.rstrip("/")
        self.transaction_type = transaction_type
        self.party_b = str(party_b or shortcode)
        self.timeout = timeout
        self._clock = clock
        self._now = now or (lambda: datetime.now(NAIROBI))
        self._session = session or requests.Session()
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_refresh_at = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "DarajaClient":
        """A client for the environment `settings` describe."""
        return cls(settings.consumer_key, settings.consumer_secret, settings.shortcode, settings.passkey,
                   settings.base_url, transaction_type=settings.transaction_type,
                   party_b=settings.party_b or None,
                   live_money=settings.mpesa_env != "production" or settings.allow_live_money)

    def stk_push(self, phone_number: object, amount: object, account_reference: object,
                 description: object, callback_url: str) -> StkPushAck:
        """Ask the phone's owner to pay this shortcode; returns Daraja's acknowledgement.

        The phone takes any usual Kenyan form; the amount must be whole KES. The account reference
        is shown to the customer, so it is never cut: letters and digits are kept and more than
        12 of them is an InvalidRequestError. The description is only a note, so it is cut to 13.
        Never re-sent on its own: if the push may have reached Daraja (read timeout, 5xx, broken
        answer) it raises OutcomeUnknownError; if it never left (connect failure), TransportError.
        """
        if not self.live_money:
            raise LiveMoneyRefused()
        msisdn = _checked(normalize_phone, phone_number, "phone_number", InvalidPhoneNumber)
        whole_kes = _checked(parse_amount, amount, "amount", InvalidAmount)
        password, timestamp = self._password()
        body = {
            "BusinessShortCode": self.shortcode,
            "Password": password,
            "Timestamp": timestamp,
            "TransactionType": self.transaction_type,
            "Amount": whole_kes,
            "PartyA": msisdn,
            "PartyB": self.party_b,
            "PhoneNumber": msisdn,
            "CallBackURL": clean_callback_url(callback_url),
            "AccountReference": clean_account_reference(account_reference),
            "TransactionDesc": clean_description(description),
        }
        response = self._post("stk_push", STK_PUSH_PATH, body, push=True)
        data = _json(response)
        if not response.ok or data.get("errorCode"):
            raise self._error(response, data, push=True, secrets=(password,))
        checkout_id = _text(data.get("CheckoutRequestID"))
        code = outcomes.normalize_code(data.get("ResponseCode"))
        if code and code != "0":
            raise RequestRejectedError(error_code=code, error_message=_text(data.get("ResponseDescription")),
                                       http_status=response.status_code)
        if not checkout_id:
            raise OutcomeUnknownError(error_message="Daraja's answer has no CheckoutRequestID",
                                      http_status=response.status_code)
        return StkPushAck(
            merchant_request_id=_text(data.get("MerchantRequestID")),
            checkout_request_id=checkout_id,
            response_code=code,
            response_description=_text(data.get("ResponseDescription")),
            customer_message=_text(data.get("CustomerMessage")),
            phone_number=msisdn,
            amount=whole_kes,
            raw=data,
        )

    def stk_query(self, checkout_request_id: str) -> StkQueryResult:
        """Ask Daraja how a push ended; "still processing" in any of its forms is `pending`.

        "The transaction does not Exist" is also `pending` (reason UNKNOWN_ID_REASON): Daraja
        answers it with the same code as "being processed", and a push it acknowledged moments
        ago can briefly be unknown. Callers give up after their own deadline.
        """
        checkout_id = _text(checkout_request_id)
        if not checkout_id:
            raise InvalidRequestError("CheckoutRequestID is missing", field="checkout_request_id")
        password, timestamp = self._password()
        body = {"BusinessShortCode": self.shortcode, "Password": password, "Timestamp": timestamp,
                "CheckoutRequestID": checkout_id}
        response = self._post("stk_query", STK_QUERY_PATH, body, checkout_id=checkout_id)
        data = _json(response)
        code, message = _text(data.get("errorCode")), _text(data.get("errorMessage"))
        if code == PROCESSING_CODE:
            lowered = message.lower()
            if not lowered or "being processed" in lowered or "under processing" in lowered:
                return StkQueryResult(checkout_id, outcomes.PENDING, None,
                                      message or "The transaction is being processed", None, data)
            if "does not exist" in lowered:
                return StkQueryResult(checkout_id, outcomes.PENDING, None, message, UNKNOWN_ID_REASON, data)
        if not response.ok or code:
            raise self._error(response, data, secrets=(password,))
        result_desc = _text(data.get("ResultDesc"))
        state, reason = outcomes.classify(data.get("ResultCode"), result_desc)
        return StkQueryResult(checkout_id, state, outcomes.normalize_code(data.get("ResultCode")) or None,
                              result_desc, reason, data)

    def _post(self, operation: str, path: str, body: dict, *, push: bool = False,
              checkout_id: str | None = None) -> requests.Response:
        """POST with the current token; on 404.001.03 refresh it and send once more.

        Resending is safe then, even for a push: Daraja refused the token before processing.
        """
        token = self._access_token()
        response = self._send(operation, path, body, token, push=push, checkout_id=checkout_id)
        if _text(_json(response).get("errorCode")) == INVALID_TOKEN_CODE:
            token = self._access_token(refused=token)
            response = self._send(operation, path, body, token, push=push, checkout_id=checkout_id)
        return response

    def _send(self, operation: str, path: str, body: dict, token: str, *, push: bool,
              checkout_id: str | None) -> requests.Response:
        return self._request(operation, "POST", path, push=push, checkout_id=checkout_id, json=body,
                             headers={"Authorization": f"Bearer {token}"})

    def _request(self, operation: str, method: str, path: str, *, push: bool = False,
                 checkout_id: str | None = None, **kwargs) -> requests.Response:
        """One HTTP request with timeouts, logged in one line; requests' errors become ours."""
        started = time.perf_counter()
        status: object = "-"
        try:
            response = self._session.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
            status = response.status_code
            checkout_id = checkout_id or _text(_json(response).get("CheckoutRequestID")) or None
            return response
        except requests.RequestException as exc:
            status = type(exc).__name__
            raise self._transport_error(exc, push) from exc
        finally:
            log.info("daraja %s checkout=%s status=%s ms=%d", operation, checkout_id or "-", status,
                     (time.perf_counter() - started) * 1000)

    def _transport_error(self, exc: requests.RequestException, push: bool) -> TransportError:
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        nothing_sent = (isinstance(exc, (requests.ConnectTimeout, requests.exceptions.SSLError,
                                         requests.exceptions.ProxyError))
                        or isinstance(reason, ConnectTimeoutError))  # includes refused / DNS failure
        detail = self._scrub(f"{type(exc).__name__}: {exc}")[:MAX_DETAIL]
        if push and not nothing_sent:
            return OutcomeUnknownError(error_message=detail)
        return TransportError(f"Could not reach Daraja at {self.base_url}", error_message=detail)

    def _access_token(self, refused: str | None = None) -> str:
        """The shared token; fetched when missing, due for refresh, or `refused` by Daraja.

        The lock makes concurrent callers wait for one fetch instead of each fetching (every new
        token invalidates the previous one).
        """
        with self._token_lock:
            if self._token and self._token != refused and self._clock() < self._token_refresh_at:
                return self._token
            for _ in range(TOKEN_FETCH_ATTEMPTS - 1):
                try:
                    return self._fetch_token()
                except (TransportError, DarajaServerError):
                    pass  # already logged by _request; the last attempt raises
            return self._fetch_token()

    def _fetch_token(self) -> str:
        started = self._clock()
        response = self._request("token", "GET", TOKEN_PATH, params={"grant_type": "client_credentials"},
                                 auth=(self.consumer_key, self._consumer_secret))
        data = _json(response)
        token = _text(data.get("access_token"))
        if not response.ok or not token:
            cls = error_class(response.status_code, _text(data.get("errorCode")), _text(data.get("errorMessage")))
            if 400 <= response.status_code < 500 and cls is not ThrottledError:
                cls = AuthenticationError  # the OAuth endpoint refuses bad credentials in several ways
            raise self._error(response, data, cls=cls)
        lifetime = _seconds(data.get("expires_in"))
        self._token = token
        self._token_refresh_at = started + lifetime - min(TOKEN_REFRESH_MARGIN, lifetime / 2)
        return token

    def _password(self) -> tuple[str, str]:
        """Password and Timestamp for a request: base64(shortcode + passkey + timestamp), EAT."""
        now = self._now()
        if now.tzinfo is not None:
            now = now.astimezone(NAIROBI)
        timestamp = now.strftime("%Y%m%d%H%M%S")
        password = base64.b64encode(f"{self.shortcode}{self._passkey}{timestamp}".encode()).decode()
        return password, timestamp

    def _error(self, response: requests.Response, data: dict, *, push: bool = False,
               secrets: tuple[str, ...] = (), cls: type[DarajaError] | None = None) -> DarajaError:
        """The error for a Daraja error answer; a push's unexplained 5xx is OutcomeUnknownError."""
        code, message = _text(data.get("errorCode")), _text(data.get("errorMessage"))
        cls = cls or error_class(response.status_code, code, message)
        if push and cls is DarajaServerError and response.status_code >= 500:
            cls = OutcomeUnknownError
        detail = self._scrub(message or " ".join(response.text.split()), *secrets)  # before cutting
        return cls(error_code=code, error_message=detail[:MAX_DETAIL],
                   request_id=_text(data.get("requestId")), http_status=response.status_code)

    def _scrub(self, text: str, *extra: str) -> str:
        """`text` with every secret of this client masked; whole tokens only, so words survive."""
        basic = base64.b64encode(f"{self.consumer_key}:{self._consumer_secret}".encode()).decode()
        for secret in (self._consumer_secret, self._passkey, self._token, basic, *extra):
            if secret:
                text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
        return text


def clean_account_reference(raw: object) -> str:
    """Letters and digits only; longer than 12 is rejected, not cut, as the customer sees it."""
    text = _ascii(raw, r"[^A-Za-z0-9]")
    if not text:
        raise InvalidRequestError("Account reference must contain letters or digits",
                                  field="account_reference")
    if len(text) > ACCOUNT_REFERENCE_MAX:
        raise InvalidRequestError(
            f"Account reference {text!r} is {len(text)} characters; M-Pesa shows it to the customer "
            f"and takes at most {ACCOUNT_REFERENCE_MAX}", field="account_reference")
    return text


def clean_description(raw: object) -> str:
    """Letters, digits and single spaces, cut to 13 characters; "Payment" if nothing is left."""
    text = " ".join(_ascii(raw, r"[^A-Za-z0-9 ]").split())
    return text[:TRANSACTION_DESC_MAX].rstrip() or DEFAULT_DESCRIPTION


def clean_callback_url(raw: object) -> str:
    """An absolute http(s) URL; the message never repeats it, as its path holds a secret."""
    url = _text(raw)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
        raise InvalidRequestError("Callback URL must be an absolute http(s) URL without spaces",
                                  field="callback_url")
    return url


def _checked(parse: Callable, raw: object, name: str, error: type[ValueError]):
    try:
        return parse(raw)
    except error as exc:
        raise InvalidRequestError(str(exc), field=name) from None


def _ascii(raw: object, drop: str) -> str:
    text = unicodedata.normalize("NFKD", "" if raw is None else str(raw))
    return re.sub(drop, "", text.encode("ascii", "ignore").decode())


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _json(response: requests.Response) -> dict:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _seconds(raw: object) -> float:
    """`expires_in` as a number of seconds; it comes as 3599 or "3599"."""
    try:
        seconds = float(_text(raw))
    except ValueError:
        return DEFAULT_TOKEN_LIFETIME
    return seconds if math.isfinite(seconds) and seconds > 0 else DEFAULT_TOKEN_LIFETIME
