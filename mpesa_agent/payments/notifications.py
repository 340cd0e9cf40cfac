"""The seed's notification JSON, built in one place for the callback server and the agent's tools.

Every notification has `status`, `message`, `payment_status` and `checkout_request_id`.
Money stays exact: whole amounts come out as int, anything else as its Decimal text, never float.
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from mpesa_agent.payments.states import COMPLETED, FAILED, PENDING, UNKNOWN
from mpesa_agent.payments.phones import InvalidPhoneNumber, display_phone, normalize_phone

PENDING_MESSAGE = "⏳ Waiting for the customer to approve the payment on their phone"
TIMEOUT_MESSAGE = "⏱️ Payment initiated but completion status unknown"
UNKNOWN_ADVICE = ("Check the customer's M-Pesa confirmation SMS before trying again; "
                  "this payment needs review")


def exact_amount(value: Any) -> int | str | None:
    """`500`, `500.0`, `"1.00"`, `Decimal("1.00")` -> int; `"1.50"` -> `"1.50"`; junk -> None."""
    if value is None or isinstance(value, bool) or value == "":
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    return int(number) if number == number.to_integral_value() else str(number)


def _digits_as_int(value: Any) -> int | str | None:
    """Daraja sends TransactionDate and PhoneNumber as JSON numbers: keep them numbers."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    if not text:
        return None
    return int(text) if text.isascii() and text.isdigit() else text


def _msisdn_or_text(phone_number: Any) -> str:
    """The MSISDN when the text is a valid number, else the text itself ("" when empty)."""
    text = str(phone_number or "").strip()
    try:
        return normalize_phone(text) if text else ""
    except InvalidPhoneNumber:
        return text


def payment_details(amount: Any, receipt: str | None = None, transaction_date: Any = None,
                    phone_number: Any = None) -> dict:
    """The seed's `payment_details`: Amount, MpesaReceiptNumber, TransactionDate, PhoneNumber."""
    return {
        "Amount": exact_amount(amount),
        "MpesaReceiptNumber": receipt or None,
        "TransactionDate": _digits_as_int(transaction_date),
        "PhoneNumber": _digits_as_int(phone_number),
    }


def success_notification(checkout_request_id: str | None, amount: Any, phone_number: Any,
                         context: str | None = None, details: Mapping | None = None) -> dict:
    """"💰 Payment completed successfully! 500 KSh sent to 0712345678 for lunch"."""
    message = "💰 Payment completed successfully!"
    shown_amount = exact_amount(amount)
    phone = display_phone(_msisdn_or_text(phone_number))
    if shown_amount is not None:
        message += f" {shown_amount} KSh sent"
        if phone:
            message += f" to {phone}"
    context = " ".join(str(context or "").split())
    if context:
        message += f" for {context}"
    if details is None:
        details = payment_details(amount, phone_number=_msisdn_or_text(phone_number))
    return {
        "status": "success",
        "message": message,
        "payment_status": COMPLETED,
        "payment_details": dict(details),
        "checkout_request_id": checkout_request_id,
    }


def failure_notification(checkout_request_id: str | None, reason: str | None) -> dict:
    """"❌ Payment failed: Request cancelled by user"."""
    reason = reason or "M-Pesa did not say why"
    return {
        "status": "failed",
        "message": f"❌ Payment failed: {reason}",
        "payment_status": FAILED,
        "error_message": reason,
        "checkout_request_id": checkout_request_id,
    }


def timeout_notification(checkout_request_id: str | None) -> dict:
    """A wait ran out while the payment is still pending; a late callback still settles it."""
    return {
        "status": "timeout",
        "message": TIMEOUT_MESSAGE,
        "payment_status": PENDING,
        "checkout_request_id": checkout_request_id,
    }


def pending_notification(checkout_request_id: str | None, message: str | None = None) -> dict:
    """A status check on a payment the customer has not answered yet."""
    return {
        "status": "pending",
        "message": message or PENDING_MESSAGE,
        "payment_status": PENDING,
        "checkout_request_id": checkout_request_id,
    }


def unknown_notification(checkout_request_id: str | None, reason: str | None) -> dict:
    """The outcome cannot be known (yet): neither success nor a confirmed failure."""
    reason = (reason or "no final answer from M-Pesa").rstrip(". ")
    return {
        "status": "unknown",
        "message": f"⚠️ Payment outcome unknown: {reason}. {UNKNOWN_ADVICE}",
        "payment_status": UNKNOWN,
        "reason": reason,
        "checkout_request_id": checkout_request_id,
    }


def notification_for(record: Mapping | Any) -> dict:
    """The notification for a stored payment (a `store.Payment` or its `to_dict()`)."""
    if not isinstance(record, Mapping):
        record = record.to_dict()
    checkout_id = record.get("checkout_request_id")
    status = record.get("status")
    if status == COMPLETED:
        paid_amount = record.get("paid_amount")
        details = payment_details(paid_amount if paid_amount not in (None, "") else record.get("amount"),
                                  record.get("receipt"), record.get("transaction_date"),
                                  record.get("paid_phone") or record.get("phone_number"))
        return success_notification(checkout_id, record.get("amount"), record.get("phone_number"),
                                    record.get("description"), details)
    if status == FAILED:
        return failure_notification(checkout_id, record.get("reason") or record.get("result_desc"))
    if status == UNKNOWN:
        return unknown_notification(checkout_id, record.get("reason"))
    return pending_notification(checkout_id)

