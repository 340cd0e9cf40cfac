"""What Daraja checks on STK Push and STK Query bodies, refused in Daraja's own words.

Independent of the client on purpose: nothing here is imported from daraja.py, phones.py or
errors.py, so a client mistake cannot hide behind a shared helper.
"""
from __future__ import annotations

import base64
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

NAIROBI = timezone(timedelta(hours=3), "EAT")  # Kenya keeps no daylight saving time
TRANSACTION_TYPES = ("CustomerPayBillOnline", "CustomerBuyGoodsOnline")
MSISDN = re.compile(r"254[17]\d{8}")
SHORTCODE = re.compile(r"\d{5,7}")
TIMESTAMP = re.compile(r"\d{14}")
MAX_ACCOUNT_REFERENCE = 12
MAX_TRANSACTION_DESC = 13
_ALNUM = string.ascii_uppercase + string.digits


class Rejected(Exception):
    """Daraja refuses the request; `reason` explains why, for the log line only."""

    def __init__(self, http_status: int, error_code: str, error_message: str, reason: str = ""):
        super().__init__(error_message)
        self.http_status = http_status
        self.error_code = error_code
        self.error_message = error_message
        self.reason = reason


def invalid(field: str, reason: str) -> Rejected:
    return Rejected(400, "400.002.02", f"Bad Request - Invalid {field}", reason)


def bad_payload(reason: str) -> Rejected:
    return Rejected(400, "400.002.05", "Invalid Request Payload", reason)


def envelope(error_code: str, error_message: str, request_id: str | None = None) -> dict:
    """Daraja's error body."""
    return {"requestId": request_id or new_request_id(), "errorCode": error_code,
            "errorMessage": error_message}


@dataclass(frozen=True)
class PushRequest:
    """A valid STK Push body, with Daraja's mixed types settled."""

    shortcode: str
    transaction_type: str
    amount: int
    party_a: str
    party_b: str
    phone: str
    callback_url: str
    account_reference: str
    transaction_desc: str


def check_push(body: object, passkeys: dict[str, str], now: datetime,
               tolerance: float | None) -> PushRequest:
    """Return the settled request, or raise Rejected for the first thing Daraja would refuse."""
    body = _object(body)
    shortcode = _digits(body, "BusinessShortCode", SHORTCODE)
    password = _text(body, "Password")
    timestamp = _timestamp(body, now, tolerance)
    transaction_type = _text(body, "TransactionType")
    if transaction_type not in TRANSACTION_TYPES:
        raise invalid("TransactionType", f"{transaction_type!r} is not one of {TRANSACTION_TYPES}")
    amount = _amount(body)
    party_a = _digits(body, "PartyA", MSISDN)
    party_b = _digits(body, "PartyB", SHORTCODE)
    phone = _digits(body, "PhoneNumber", MSISDN)
    callback_url = _callback_url(body)
    account_reference = _short_text(body, "AccountReference", MAX_ACCOUNT_REFERENCE)
    transaction_desc = _short_text(body, "TransactionDesc", MAX_TRANSACTION_DESC)
    check_credentials(shortcode, password, timestamp, passkeys)
    return PushRequest(shortcode, transaction_type, amount, party_a, party_b, phone, callback_url,
                       account_reference, transaction_desc)


def check_query(body: object, passkeys: dict[str, str], now: datetime,
                tolerance: float | None) -> tuple[str, str]:
    """Return (shortcode, CheckoutRequestID) of a valid STK Query body, or raise Rejected."""
    body = _object(body)
    shortcode = _digits(body, "BusinessShortCode", SHORTCODE)
    password = _text(body, "Password")
    timestamp = _timestamp(body, now, tolerance)
    checkout_request_id = _text(body, "CheckoutRequestID")
    check_credentials(shortcode, password, timestamp, passkeys)
    return shortcode, checkout_request_id


def check_credentials(shortcode: str, password: str, timestamp: str, passkeys: dict[str, str]) -> None:
    """Password must be base64(shortcode + passkey + timestamp) for a shortcode Daraja knows."""
    passkey = passkeys.get(shortcode)
    if passkey is None:
        raise Rejected(500, "500.001.1001", "Merchant does not exist", f"no passkey for shortcode {shortcode}")
    if not hmac.compare_digest(password.encode(), make_password(shortcode, passkey, timestamp).encode()):
        raise Rejected(500, "500.001.1001", "Wrong credentials",
                       "Password is not base64(BusinessShortCode + passkey + Timestamp)")


def make_password(shortcode: str, passkey: str, timestamp: str) -> str:
    """Daraja's Password: base64(BusinessShortCode + passkey + Timestamp)."""
    return base64.b64encode(f"{shortcode}{passkey}{timestamp}".encode()).decode()


def nairobi_now() -> datetime:
    return datetime.now(NAIROBI)


def new_request_id() -> str:
    """Like "1c5b-4ba8-815c-ac45c57a3db01495926"."""
    h = secrets.token_hex(12)
    return f"{h[:4]}-{h[4:8]}-{h[8:12]}-{h[12:24]}{secrets.randbelow(9_000_000) + 1_000_000}"


def new_checkout_request_id(phone: str, at: datetime) -> str:
    """Like "ws_CO_21072024125243250722943992": Nairobi time to the millisecond, then the number."""
    return f"ws_CO_{at:%d%m%Y%H%M%S}{at.microsecond // 1000:03d}{phone[3:]}"


def new_receipt(at: datetime) -> str:
    """Like "NLJ7RT61SV": a letter for the year (N = 2019), one for the month, eight more."""
    year = chr(ord("A") + min(max(at.year - 2006, 0), 25))
    month = "ABCDEFGHIJKL"[at.month - 1]
    return year + month + "".join(secrets.choice(_ALNUM) for _ in range(8))


def msisdn(raw: object) -> str | None:
    """Digits of a Kenyan mobile in any usual form (07.., +254 7.., 7..) as 2547..; else None."""
    digits = "".join(ch for ch in str(raw) if ch.isdigit())
    if len(digits) == 10 and digits[0] == "0":
        digits = "254" + digits[1:]
    elif len(digits) == 9:
        digits = "254" + digits
    return digits if MSISDN.fullmatch(digits) else None


def redact_url(url: str) -> str:
    """The callback URL without its secret last path segment (kept: 4 characters)."""
    parts = urlsplit(url)
    head, _, last = parts.path.rstrip("/").rpartition("/")
    if len(last) > 8:
        last = last[:4] + "…"
    return f"{parts.scheme}://{parts.netloc}{head}/{last}"


def redact_text(text: str, url: str) -> str:
    """`text` (an error message) without the callback URL's secret segment or query."""
    parts = urlsplit(url)
    secret = parts.path.rstrip("/").rpartition("/")[2]
    if len(secret) > 8:
        text = text.replace(secret, secret[:4] + "…")
    return text.replace(parts.query, "…") if parts.query else text


def _object(body: object) -> dict:
    if not isinstance(body, dict):
        raise bad_payload("the body is not a JSON object")
    return body


def _present(body: dict, field: str) -> object:
    value = body.get(field)
    if value is None or value == "" or isinstance(value, (bool, list, dict)):
        raise invalid(field, "missing or empty" if value in (None, "") else f"{type(value).__name__} given")
    return value


def _text(body: dict, field: str) -> str:
    value = _present(body, field)
    if not isinstance(value, str):
        raise invalid(field, f"must be a string, got {type(value).__name__}")
    return value


def _digits(body: dict, field: str, pattern: re.Pattern) -> str:
    """Daraja takes these as a JSON number or a string of digits."""
    value = _present(body, field)
    text = str(value) if isinstance(value, (int, str)) else ""
    if not pattern.fullmatch(text):
        raise invalid(field, f"{value!r} does not match {pattern.pattern}")
    return text


def _amount(body: dict) -> int:
    value = _present(body, "Amount")
    text = str(value) if isinstance(value, (int, str)) else ""
    if not text.isdigit() or int(text) < 1:
        raise invalid("Amount", f"{value!r} is not a whole number of KES >= 1")
    return int(text)


def _timestamp(body: dict, now: datetime, tolerance: float | None) -> str:
    value = _text(body, "Timestamp")
    try:
        if not TIMESTAMP.fullmatch(value):
            raise ValueError
        at = datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=NAIROBI)
    except ValueError:
        raise invalid("Timestamp", f"{value!r} is not YYYYMMDDHHmmss") from None
    off = (at - now).total_seconds()
    if tolerance is not None and abs(off) > tolerance:
        hint = " (UTC instead of Nairobi time?)" if abs(off + 3 * 3600) < 600 else ""
        raise invalid("Timestamp", f"{off / 3600:+.1f} h from Nairobi time{hint}")
    return value


def _callback_url(body: dict) -> str:
    url = _text(body, "CallBackURL")
    parts = urlsplit(url)
    if (any(ch.isspace() for ch in url) or parts.scheme not in ("http", "https")
            or not parts.hostname):
        raise invalid("CallBackURL", "not an absolute http(s) URL without spaces")
    return url


def _short_text(body: dict, field: str, limit: int) -> str:
    value = _present(body, field)
    text = str(value) if isinstance(value, (int, str)) else ""
    if not text or len(text) > limit:
        raise invalid(field, f"must be 1 to {limit} characters, got {len(text)}")
    return text
