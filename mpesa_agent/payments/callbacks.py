"""What a Daraja STK callback says, read from its raw bytes (no I/O): `parse_callback`.

Read by field name and result code, never by position or by `ResultDesc`'s wording; metadata items
by `Name`; money as exact Decimal. See DARAJA.md "Quirks seen in real callbacks".
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from mpesa_agent.payments.states import PENDING, classify, normalize_code

# The id Daraja gives a push; also what /payment/* accepts in a path.
CHECKOUT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
MAX_TEXT_FIELD = 100
# "[STK_CB - ]Request cancelled by user" (2017-2019 wording)
_DESC_PREFIX = re.compile(r"^\s*\[[A-Za-z_]+\s*-\s*\]\s*")


class InvalidCallback(ValueError):
    """The body is not a usable STK callback; `checkout_request_id` when it got that far."""

    def __init__(self, why: str, checkout_request_id: str | None = None):
        self.checkout_request_id = checkout_request_id
        super().__init__(why)


@dataclass(frozen=True)
class StkCallback:
    """What one STK callback says, read by field name and result code, never by position."""

    checkout_request_id: str
    merchant_request_id: str | None
    result_code: str
    result_desc: str
    state: str
    reason: str | None
    items: dict = field(default_factory=dict)  # CallbackMetadata item Name -> Value (only with a Value)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def has_lone_surrogate(value: Any) -> bool:
    """Parsed JSON holds a lone `\\ud800`-`\\udfff` escape: text that SQLite cannot store as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_callback(body: bytes) -> StkCallback:
    """Parse a raw STK callback body, or raise `InvalidCallback` saying what is wrong."""
    try:
        text = bytes(body).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidCallback("body is not UTF-8 text") from None
    if not text.strip():
        raise InvalidCallback("body is empty")
    try:
        data = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidCallback(f"body is not valid JSON ({exc})") from None
    if "\\u" in text and has_lone_surrogate(data):  # valid UTF-8 holds no surrogate: only an escape can
        raise InvalidCallback("body has a lone surrogate escape (\\ud800-\\udfff), which is not text")
    stk = data.get("Body") if isinstance(data, dict) else None
    stk = stk.get("stkCallback") if isinstance(stk, dict) else None
    if not isinstance(stk, dict):
        raise InvalidCallback('body has no "Body": {"stkCallback": {...}} object')
    checkout_id = stk.get("CheckoutRequestID")
    if not isinstance(checkout_id, str) or not checkout_id.strip() or len(checkout_id) > 200:
        raise InvalidCallback("CheckoutRequestID is missing or not text")
    checkout_id = checkout_id.strip()
    raw_code = stk.get("ResultCode")
    if (isinstance(raw_code, Decimal) and raw_code.is_finite() and raw_code == raw_code.to_integral_value()
            and raw_code.adjusted() < 20):  # int() of 1E+999999999 would never end
        raw_code = int(raw_code)
    if isinstance(raw_code, bool) or not isinstance(raw_code, (int, str)) or not str(raw_code).strip():
        raise InvalidCallback("ResultCode is missing or not a number or text", checkout_id)
    code = normalize_code(raw_code)
    desc = _DESC_PREFIX.sub("", str(stk.get("ResultDesc") or "")).strip()
    state, reason = classify(code, desc)
    if state == PENDING:
        raise InvalidCallback(f"ResultCode {code} (still processing) is not a final result", checkout_id)
    merchant_id = stk.get("MerchantRequestID")
    return StkCallback(checkout_id, str(merchant_id) if merchant_id is not None else None, code, desc,
                       state, reason, _metadata_items(stk.get("CallbackMetadata")))


def _metadata_items(metadata: Any) -> dict:
    items = metadata.get("Item") if isinstance(metadata, dict) else None
    if isinstance(items, dict):  # a single item not wrapped in a list
        items = [items]
    found = {}
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and isinstance(item.get("Name"), str) and "Value" in item:
            found.setdefault(item["Name"], item["Value"])
    return found
