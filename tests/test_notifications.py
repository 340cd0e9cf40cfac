from decimal import Decimal

import pytest

from mpesa_agent.payments.notifications import (exact_amount, failure_notification, notification_for,
                                       payment_details, pending_notification, success_notification,
                                       timeout_notification, unknown_notification)

SEED_DETAILS = {"Amount": 500, "MpesaReceiptNumber": "NLJ7RT61SV", "TransactionDate": 20191219102115,
                "PhoneNumber": 254712345678}


def record(**changes) -> dict:
    base = {"checkout_request_id": "ws_CO_1", "phone_number": "254712345678", "amount": 500,
            "description": "lunch", "status": "completed", "reason": None, "result_desc": None,
            "receipt": "NLJ7RT61SV", "transaction_date": "20191219102115", "paid_phone": "254712345678",
            "paid_amount": "500"}
    return {**base, **changes}


def test_success_is_the_seed_json_plus_the_checkout_id():
    assert success_notification("ws_CO_1", 500, "254712345678", "lunch", SEED_DETAILS) == {
        "status": "success",
        "message": "💰 Payment completed successfully! 500 KSh sent to 0712345678 for lunch",
        "payment_status": "completed",
        "payment_details": SEED_DETAILS,
        "checkout_request_id": "ws_CO_1",
    }


def test_success_without_context_matches_the_seed_text_exactly():
    note = success_notification("ws_CO_1", 500, "0712345678", "", SEED_DETAILS)
    assert note["message"] == "💰 Payment completed successfully! 500 KSh sent to 0712345678"


def test_success_when_amount_and_phone_are_not_known():
    note = success_notification("ws_CO_1", None, "", None, None)
    assert note["message"] == "💰 Payment completed successfully!"
    assert note["payment_details"] == {"Amount": None, "MpesaReceiptNumber": None, "TransactionDate": None,
                                       "PhoneNumber": None}


def test_success_builds_details_from_the_registration_when_none_are_given():
    note = success_notification("ws_CO_1", Decimal("500"), "+254 712 345 678", "lunch", None)
    assert note["payment_details"] == {"Amount": 500, "MpesaReceiptNumber": None, "TransactionDate": None,
                                       "PhoneNumber": 254712345678}
    assert "500 KSh sent to 0712345678 for lunch" in note["message"]


def test_failure_timeout_pending_and_unknown_texts():
    assert failure_notification("ws_CO_1", "Request cancelled by user") == {
        "status": "failed", "message": "❌ Payment failed: Request cancelled by user",
        "payment_status": "failed", "error_message": "Request cancelled by user", "checkout_request_id": "ws_CO_1"}
    assert timeout_notification("ws_CO_1") == {
        "status": "timeout", "message": "⏱️ Payment initiated but completion status unknown",
        "payment_status": "pending", "checkout_request_id": "ws_CO_1"}
    assert pending_notification("ws_CO_1") == {
        "status": "pending", "message": "⏳ Waiting for the customer to approve the payment on their phone",
        "payment_status": "pending", "checkout_request_id": "ws_CO_1"}
    unknown = unknown_notification("ws_CO_1", "Unrecognised M-Pesa result code 77.")
    assert unknown["status"] == unknown["payment_status"] == "unknown"
    assert unknown["message"].startswith("⚠️ Payment outcome unknown: Unrecognised M-Pesa result code 77. ")
    assert unknown["message"].endswith("needs review")
    assert unknown["checkout_request_id"] == "ws_CO_1"


def test_pending_takes_a_custom_message_and_unknown_works_without_an_id():
    assert pending_notification("ws_CO_1", "📱 Sent")["message"] == "📱 Sent"
    assert unknown_notification(None, None)["checkout_request_id"] is None


@pytest.mark.parametrize("value, expected", [
    (500, 500), ("1.00", 1), (Decimal("2.0"), 2), (1.0, 1), ("1.50", "1.50"), (None, None), (True, None),
    ("lots", None), ("NaN", None), ("", None),
])
def test_amounts_stay_exact(value, expected):
    assert exact_amount(value) == expected
    assert type(exact_amount(value)) is type(expected)


def test_details_keep_daraja_numbers_as_numbers():
    assert payment_details("1.00", "NLJ7RT61SV", "20191219102115", "254708374149") == {
        "Amount": 1, "MpesaReceiptNumber": "NLJ7RT61SV", "TransactionDate": 20191219102115,
        "PhoneNumber": 254708374149}
    assert payment_details(1, None, "", "2547****149")["PhoneNumber"] == "2547****149"


def test_notification_for_each_state():
    assert notification_for(record()) == success_notification("ws_CO_1", 500, "254712345678", "lunch", SEED_DETAILS)
    failed = notification_for(record(status="failed", reason="Request cancelled by user"))
    assert failed == failure_notification("ws_CO_1", "Request cancelled by user")
    assert notification_for(record(status="unknown", reason="why"))["status"] == "unknown"
    assert notification_for(record(status="pending")) == pending_notification("ws_CO_1")


def test_notification_for_uses_the_paid_amount_in_details_and_the_registered_one_in_the_message():
    note = notification_for(record(paid_amount="1.00", amount=1, description=""))
    assert note["payment_details"]["Amount"] == 1
    assert note["message"] == "💰 Payment completed successfully! 1 KSh sent to 0712345678"


def test_notification_for_a_query_settled_success_has_no_receipt():
    note = notification_for(record(receipt=None, transaction_date=None, paid_phone=None, paid_amount=None))
    assert note["payment_details"] == {"Amount": 500, "MpesaReceiptNumber": None, "TransactionDate": None,
                                       "PhoneNumber": 254712345678}


def test_notification_for_accepts_an_object_with_to_dict():
    class Row:
        def to_dict(self):
            return record(status="failed", reason=None, result_desc="DS timeout")

    assert notification_for(Row())["error_message"] == "DS timeout"
