"""Daraja result codes mapped to payment states and reasons a person understands.

Map on `ResultCode` (number or string), never on `ResultDesc`, whose wording changes.
"""
from __future__ import annotations

COMPLETED = "completed"
FAILED = "failed"
PENDING = "pending"
UNKNOWN = "unknown"

STILL_PROCESSING_CODE = "4999"

FAILURE_REASONS = {
    "1": "Insufficient M-Pesa balance",
    "2": "Declined: amount below the minimum allowed",
    "3": "Declined: amount above the maximum allowed",
    "4": "Declined: daily transfer limit reached",
    "8": "Declined: account balance limit reached",
    "17": "Declined: the same amount was requested from this phone within 2 minutes",
    "26": "M-Pesa system busy, try again shortly",
    "1001": "Another M-Pesa transaction is in progress on this phone; try again in 1-3 minutes",
    "1019": "The payment request expired before it was completed",
    "1025": "M-Pesa could not send the payment prompt",
    "9999": "M-Pesa could not send the payment prompt",
    "1031": "Request cancelled by user",
    "1032": "Request cancelled by user",
    "1036": "The payment prompt could not be delivered to the phone",
    "1037": "No response from the customer (phone unreachable or prompt ignored)",
    "2001": "Wrong M-Pesa PIN entered",
    "2028": "Not permitted: wrong transaction type or receiving shortcode",
    "SFC_IC0003": "Not permitted: the receiving shortcode or operator does not exist",
    "8006": "The customer's M-Pesa PIN is locked",
}


def normalize_code(result_code: object) -> str:
    """`0`, `"0"`, `0.0` and `" 0 "` are all `"0"`; anything else keeps its text."""
    if isinstance(result_code, bool) or result_code is None:
        return ""
    if isinstance(result_code, float) and result_code.is_integer():
        return str(int(result_code))
    return str(result_code).strip()


def classify(result_code: object, result_desc: str = "") -> tuple[str, str | None]:
    """Return `(state, reason)`: completed, failed with a reason, pending (4999) or unknown."""
    code = normalize_code(result_code)
    if code == "0":
        return COMPLETED, None
    if code == STILL_PROCESSING_CODE:
        return PENDING, None
    if code in FAILURE_REASONS:
        return FAILED, FAILURE_REASONS[code]
    detail = f" ({result_desc.strip()})" if result_desc and result_desc.strip() else ""
    return UNKNOWN, f"Unrecognised M-Pesa result code {code or 'missing'}{detail}"
