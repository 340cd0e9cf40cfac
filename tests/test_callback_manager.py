import hashlib
import json
import logging
import sqlite3
import threading
import time

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from mpesa_agent.payments.callbacks import InvalidCallback, parse_callback
from mpesa_agent.server.manager import (MISMATCH_REASON, NO_RECEIPT_REASON, CallbackManager,
                                        InvalidRegistration, RegistrationConflict,
                                        UnknownPayment)
from mpesa_agent.server.store import Store, open_store, Transaction

pytestmark = pytest.mark.stores  # each test on SQLite and on PostgreSQL (tests/conftest.py)

# Verbatim copies of ../shared/daraja-samples/ (the repo must not depend on files outside it).
# callback_success_docs_v3_amount_1.00_no_balance_item.json (Safaricom's docs: Amount 1.00, no Balance item)
SAMPLE_SUCCESS = b"""{
    "Body": {
        "stkCallback": {
            "MerchantRequestID": "29115-34620561-1",
            "CheckoutRequestID": "ws_CO_191220191020363925",
            "ResultCode": 0,
            "ResultDesc": "The service request is processed successfully.",
            "CallbackMetadata": {
                "Item": [
                    {
                        "Name": "Amount",
                        "Value": 1.00
                    },
                    {
                        "Name": "MpesaReceiptNumber",
                        "Value": "NLJ7RT61SV"
                    },
                    {
                        "Name": "TransactionDate",
                        "Value": 20191219102115
                    },
                    {
                        "Name": "PhoneNumber",
                        "Value": 254708374149
                    }
                ]
            }
        }
    }
}
"""
SAMPLE_SUCCESS_ID, SAMPLE_SUCCESS_PHONE = "ws_CO_191220191020363925", "254708374149"
# callback_cancelled_1032_docs_v3.json (Safaricom's docs: no CallbackMetadata at all)
SAMPLE_CANCELLED = b"""{
    "Body": {
        "stkCallback": {
            "MerchantRequestID": "f1e2-4b95-a71d-b30d3cdbb7a7942864",
            "CheckoutRequestID": "ws_CO_21072024125243250722943992",
            "ResultCode": 1032,
            "ResultDesc": "Request cancelled by user"
        }
    }
}
"""
SAMPLE_CANCELLED_ID = "ws_CO_21072024125243250722943992"
# callback_no_response_1037_sandbox_2026.json (real sandbox, 2026)
SAMPLE_NO_RESPONSE = (b'{"Body":{"stkCallback":{"MerchantRequestID":"5dbd-4f93-a478-41cdaf2b9acd86873",'
                      b'"CheckoutRequestID":"ws_CO_220920261335362708374149","ResultCode":1037,'
                      b'"ResultDesc":"No response from user."}}}\n')
SAMPLE_NO_RESPONSE_ID = "ws_CO_220920261335362708374149"


RECEIPT_FOR_ID = object()  # make_stk_callback's default: receipt_for(checkout_request_id)


def receipt_for(checkout_request_id: str) -> str:
    """One M-Pesa receipt per payment (a receipt completes at most one): the seed's for ws_CO_1."""
    if checkout_request_id == "ws_CO_1":
        return "NLJ7RT61SV"
    return "R" + hashlib.sha1(str(checkout_request_id).encode()).hexdigest()[:9].upper()


def make_stk_callback(checkout_request_id="ws_CO_1", result_code=0, amount=500, receipt=RECEIPT_FOR_ID,
                      phone=254712345678, balance=True, extra=None, result_desc=None,
                      transaction_date=20191219102115, merchant_request_id="29115-34620561-1") -> dict:
    """An STK callback as Daraja sends it; success items only when result_code is 0."""
    stk = {"MerchantRequestID": merchant_request_id, "CheckoutRequestID": checkout_request_id,
           "ResultCode": result_code,
           "ResultDesc": result_desc or ("The service request is processed successfully."
                                         if str(result_code) == "0" else "Request cancelled by user")}
    if str(result_code) == "0":
        items = [{"Name": "Amount", "Value": amount}] if amount is not None else []
        receipt = receipt_for(checkout_request_id) if receipt is RECEIPT_FOR_ID else receipt
        items += [{"Name": "MpesaReceiptNumber", "Value": receipt}] if receipt is not None else []
        items += [{"Name": "Balance"}] if balance else []
        items += [{"Name": "TransactionDate", "Value": transaction_date}] if transaction_date is not None else []
        items += [{"Name": "PhoneNumber", "Value": phone}] if phone is not None else []
        stk["CallbackMetadata"] = {"Item": items}
    stk.update(extra or {})
    return {"Body": {"stkCallback": stk}}


def callback_body(**kwargs) -> bytes:
    return json.dumps(make_stk_callback(**kwargs)).encode()


@pytest.fixture
def manager(settings):
    store = open_store(settings.payments_db)
    yield CallbackManager(store, settings)
    store.close()


def register(manager, checkout_id="ws_CO_1", phone="0712345678", amount=500, description="lunch", **kwargs):
    return manager.register(checkout_id, phone, amount, description, **kwargs)


def ingest(manager, body: bytes):
    return manager.ingest(body, {"Content-Type": "application/json"}, "196.201.212.69")


def in_thread(function, *args):
    """Run `function` in a thread; returns (thread, results list) so the test can join and read."""
    results = []
    thread = threading.Thread(target=lambda: results.append(function(*args)))
    thread.start()
    return thread, results


def test_parses_the_real_success_sample_exactly():
    parsed = parse_callback(SAMPLE_SUCCESS)
    assert (parsed.checkout_request_id, parsed.result_code, parsed.state) == (SAMPLE_SUCCESS_ID, "0", "completed")
    assert str(parsed.items["Amount"]) == "1.00"  # exact, not the float 1.0
    assert parsed.items["PhoneNumber"] == 254708374149
    assert "Balance" not in parsed.items


@pytest.mark.parametrize("body, checkout_id, reason", [
    (SAMPLE_CANCELLED, SAMPLE_CANCELLED_ID, "Request cancelled by user"),
    (SAMPLE_NO_RESPONSE, SAMPLE_NO_RESPONSE_ID, "No response from the customer (phone unreachable or prompt ignored)"),
])
def test_parses_the_real_failure_samples(body, checkout_id, reason):
    parsed = parse_callback(body)
    assert (parsed.checkout_request_id, parsed.state, parsed.reason, parsed.items) == (checkout_id, "failed", reason, {})


@pytest.mark.parametrize("code, state", [
    (0, "completed"), ("0", "completed"), (0.0, "completed"), (1032, "failed"), ("1032", "failed"),
    ("SFC_IC0003", "failed"), (2001, "failed"), (77, "unknown"), ("XYZ", "unknown"),
])
def test_result_code_as_number_or_string(code, state):
    assert parse_callback(callback_body(result_code=code)).state == state


def test_old_result_desc_prefixes_are_stripped():
    for prefix in ("[STK_CB - ]", "[MpesaCB - ]"):
        parsed = parse_callback(callback_body(result_code=1032, result_desc=prefix + "Request cancelled by user"))
        assert parsed.result_desc == "Request cancelled by user"


def test_items_read_by_name_ignoring_missing_values_and_extra_keys():
    body = make_stk_callback(extra={"RelayTrace": {"hop": 1}})
    body["Body"]["stkCallback"]["CallbackMetadata"]["Item"].reverse()
    body["Body"]["stkCallback"]["CallbackMetadata"]["Item"].append({"Name": "PhoneNumber"})  # no Value
    body["Body"]["stkCallback"]["CallbackMetadata"]["Item"].append("junk")
    parsed = parse_callback(json.dumps(body).encode())
    assert parsed.items == {"PhoneNumber": 254712345678, "TransactionDate": 20191219102115,
                            "MpesaReceiptNumber": "NLJ7RT61SV", "Amount": 500}


@pytest.mark.parametrize("body, why", [
    (b"", "empty"), (b"not json", "not valid JSON"), (b"\xff\xfe", "UTF-8"), (b"[1, 2]", "stkCallback"),
    (b'{"Body": {}}', "stkCallback"), (b'{"Body": {"stkCallback": []}}', "stkCallback"),
    (callback_body(checkout_request_id=""), "CheckoutRequestID"),
    (callback_body(checkout_request_id=12), "CheckoutRequestID"),
    (callback_body(result_code=None), "ResultCode"), (callback_body(result_code=True), "ResultCode"),
    (callback_body(result_code=[0]), "ResultCode"), (callback_body(result_code="4999"), "still processing"),
    (b'{"Body": {"stkCallback": {"CheckoutRequestID": "ws_CO_1", "ResultCode": NaN}}}', "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_unusable_bodies_say_what_is_wrong(body, why):
    with pytest.raises(InvalidCallback, match=why):
        parse_callback(body)


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["Body", "stkCallback", "CheckoutRequestID", "ResultCode", "CallbackMetadata", "Item",
                         "Name", "Value", "x"]), children, max_size=4),
    max_leaves=12).map(lambda value: json.dumps(value).encode())))
def test_parsing_anything_either_works_or_raises_invalid_callback(body):
    try:
        parse_callback(body)
    except InvalidCallback:
        pass


def test_register_normalises_and_is_idempotent(manager):
    payment, created = register(manager, phone="+254 712-345-678", amount="500", description="  lunch  ")
    assert created and (payment.phone_number, payment.amount, payment.description) == ("254712345678", 500, "lunch")
    again, created_again = register(manager)
    assert not created_again and again == payment


def test_register_fills_in_a_merchant_id_once_and_conflicts_on_a_different_payment(manager):
    register(manager)
    assert register(manager, merchant_request_id="m-1").payment.merchant_request_id == "m-1"
    with pytest.raises(RegistrationConflict) as conflict:
        register(manager, amount=501, merchant_request_id="m-2")
    assert conflict.value.fields == ["amount", "merchant_request_id"]
    with pytest.raises(RegistrationConflict, match="phone_number, description"):
        register(manager, phone="0722000000", description="dinner")
    assert manager.status("ws_CO_1").amount == 500


@pytest.mark.parametrize("kwargs, field", [
    ({"checkout_id": ""}, "checkout_request_id"), ({"checkout_id": "ws CO/1"}, "checkout_request_id"),
    ({"checkout_id": 5}, "checkout_request_id"), ({"checkout_id": "x" * 101}, "checkout_request_id"),
    ({"phone": "12345"}, "phone_number"), ({"phone": True}, "phone_number"), ({"phone": ["0712345678"]}, "phone_number"),
    ({"phone": "0" * 5000}, "phone_number"),
    ({"amount": 0}, "amount"), ({"amount": -5}, "amount"), ({"amount": True}, "amount"), ({"amount": "1.5"}, "amount"),
    ({"amount": 10**30}, "amount"), ({"amount": [500]}, "amount"), ({"amount": "NaN"}, "amount"),
    ({"description": 5}, "description"), ({"description": "x" * 101}, "description"),
    ({"merchant_request_id": 7}, "merchant_request_id"),
])
def test_register_names_each_bad_field(manager, kwargs, field):
    with pytest.raises(InvalidRegistration) as invalid:
        register(manager, **kwargs)
    assert list(invalid.value.problems) == [field]


def test_success_callback_completes_the_payment(manager):
    register(manager)
    result = ingest(manager, callback_body())
    assert (result.outcome, result.payment.status) == ("applied", "completed")
    payment = manager.status("ws_CO_1")
    assert (payment.receipt, payment.paid_amount, payment.transaction_date, payment.settled_by) == (
        "NLJ7RT61SV", "500", "20191219102115", "callback")
    assert manager.store.callback(result.callback_id).outcome == "applied"


def test_real_success_sample_with_amount_1_00_completes(manager):
    register(manager, SAMPLE_SUCCESS_ID, SAMPLE_SUCCESS_PHONE, 1)
    assert ingest(manager, SAMPLE_SUCCESS).payment.status == "completed"
    assert manager.status(SAMPLE_SUCCESS_ID).paid_amount == "1.00"


@pytest.mark.parametrize("code, reason", [(1032, "Request cancelled by user"), ("1", "Insufficient M-Pesa balance"),
                                          (1037, "No response from the customer (phone unreachable or prompt ignored)")])
def test_failure_callback_fails_the_payment_with_a_reason(manager, code, reason):
    register(manager)
    payment = ingest(manager, callback_body(result_code=code)).payment
    assert (payment.status, payment.reason, payment.result_code) == ("failed", reason, str(code))


def test_unrecognised_code_is_unknown(manager):
    register(manager)
    payment = ingest(manager, callback_body(result_code=77, result_desc="Something new")).payment
    assert (payment.status, payment.reason) == ("unknown", "Unrecognised M-Pesa result code 77 (Something new)")


@pytest.mark.parametrize("kwargs, reason", [
    ({"amount": 499}, MISMATCH_REASON), ({"amount": "500.50"}, MISMATCH_REASON), ({"amount": None}, MISMATCH_REASON),
    ({"phone": 254722000000}, MISMATCH_REASON), ({"phone": "not a phone"}, MISMATCH_REASON),
    ({"phone": "2547*****999"}, MISMATCH_REASON),
    ({"receipt": None}, NO_RECEIPT_REASON), ({"receipt": ""}, NO_RECEIPT_REASON),
])
def test_a_success_that_does_not_match_is_never_completed(manager, kwargs, reason):
    register(manager)
    payment = ingest(manager, callback_body(**kwargs)).payment
    assert (payment.status, payment.reason) == ("unknown", reason)
    assert payment.review
    # The same callback again is a duplicate; a matching one afterwards is a conflict, not a success.
    assert ingest(manager, callback_body(**kwargs)).outcome == "duplicate"
    assert ingest(manager, callback_body(receipt="OTHER1")).outcome == "conflict"
    assert manager.status("ws_CO_1").status == "unknown"


@pytest.mark.parametrize("kwargs", [{"phone": None}, {"phone": "2547*****678"}, {"phone": "0712345678"},
                                    {"amount": "500.00"}, {"balance": False}])
def test_a_success_that_matches_in_another_form_completes(manager, kwargs):
    register(manager)
    assert ingest(manager, callback_body(**kwargs)).payment.status == "completed"


def test_duplicate_callback_changes_nothing(manager):
    register(manager)
    first = ingest(manager, callback_body())
    before = manager.status("ws_CO_1")
    duplicate = ingest(manager, callback_body())
    assert duplicate.outcome == "duplicate"
    assert manager.status("ws_CO_1") == before
    assert [cb.outcome for cb in manager.store.callbacks("ws_CO_1")] == ["applied", "duplicate"]
    assert before.callback_id == first.callback_id


@pytest.mark.parametrize("first, second", [
    ({}, {"result_code": 1032}), ({"result_code": 1032}, {}), ({}, {"receipt": "OTHER123"}),
])
def test_contradicting_callback_is_recorded_as_conflict_never_applied(manager, caplog, first, second):
    register(manager)
    settled = ingest(manager, callback_body(**first)).payment
    with caplog.at_level(logging.WARNING):
        result = ingest(manager, callback_body(**second))
    assert result.outcome == "conflict"
    after = manager.status("ws_CO_1")
    assert (after.status, after.receipt, after.reason) == (settled.status, settled.receipt, settled.reason)
    assert "conflicting callback" in caplog.text and after.review.startswith(f"callback #{result.callback_id}")


def test_a_later_final_callback_settles_an_unknown_code(manager):
    register(manager)
    ingest(manager, callback_body(result_code=77))
    assert ingest(manager, callback_body()).outcome == "applied"
    assert manager.status("ws_CO_1").status == "completed"


def test_invalid_callback_is_stored_and_changes_nothing(manager):
    register(manager)
    result = ingest(manager, callback_body(result_code=None))
    assert (result.outcome, result.checkout_request_id, result.payment.status) == ("invalid", "ws_CO_1", "pending")
    assert "ResultCode" in result.note
    garbage = ingest(manager, b"<xml/>")
    assert garbage.outcome == "invalid" and manager.store.callback(garbage.callback_id).body == b"<xml/>"


def test_rejected_callback_is_kept_for_review_and_never_applied(manager):
    register(manager)
    callback_id = manager.record_rejected(callback_body(), {}, "6.6.6.6", "wrong token")
    raw = manager.store.callback(callback_id)
    assert (raw.outcome, raw.note, raw.checkout_request_id) == ("rejected", "wrong token", "ws_CO_1")
    assert manager.status("ws_CO_1").status == "pending"
    assert manager.process_callback(callback_id).outcome == "rejected"
    assert manager.status("ws_CO_1").status == "pending"


def test_callback_before_registration_is_parked_then_matched(manager):
    parked = ingest(manager, callback_body(result_code=1032))
    assert (parked.outcome, parked.payment) == ("parked", None)
    payment, created = register(manager)
    assert created and (payment.status, payment.reason) == ("failed", "Request cancelled by user")
    assert manager.store.callback(parked.callback_id).outcome == "applied"


def test_several_parked_callbacks_first_wins(manager):
    ingest(manager, callback_body())
    ingest(manager, callback_body())
    ingest(manager, callback_body(result_code=1032))
    assert register(manager).payment.status == "completed"
    assert [cb.outcome for cb in manager.store.callbacks("ws_CO_1")] == ["applied", "duplicate", "conflict"]


def test_a_parked_mismatch_is_not_completed_at_registration(manager):
    ingest(manager, callback_body(amount=5))
    assert register(manager).payment.status == "unknown"


def test_callback_and_registration_racing_always_meet(manager):
    for n in range(30):
        checkout_id = f"ws_CO_race_{n}"
        thread, _ = in_thread(ingest, manager, callback_body(checkout_request_id=checkout_id))
        register(manager, checkout_id)
        thread.join()
        assert manager.status(checkout_id).status == "completed", n


def test_waiter_is_woken_by_a_callback_in_another_thread(manager):
    register(manager)
    thread, results = in_thread(manager.wait, "ws_CO_1", 10)
    time.sleep(0.2)
    assert manager.waiting() == 1
    ingest(manager, callback_body())
    thread.join(5)
    assert not thread.is_alive(), "woken by the callback, not by its 10 s timeout"
    assert results[0].status == "completed"
    assert manager.waiting() == 0


def test_many_waiters_on_one_payment_all_wake(manager):
    register(manager)
    waiters = [in_thread(manager.wait, "ws_CO_1", 10) for _ in range(20)]
    time.sleep(0.2)
    ingest(manager, callback_body(result_code=1032))
    for thread, results in waiters:
        thread.join(5)
        assert results[0].status == "failed"


def test_waiter_on_an_unregistered_id_is_woken_when_registration_matches_a_parked_callback(manager):
    thread, results = in_thread(manager.wait, "ws_CO_1", 10)
    time.sleep(0.1)
    ingest(manager, callback_body())  # parked: nobody registered it yet
    time.sleep(0.1)
    assert thread.is_alive()
    register(manager)
    thread.join(5)
    assert not thread.is_alive(), "woken by the registration, not by its 10 s timeout"
    assert results[0].status == "completed"


def test_a_watch_is_told_once_when_its_payment_settles_or_at_once_if_it_has(manager):
    register(manager)
    told = []
    stop = manager.watch("ws_CO_1", lambda: told.append("settled"))
    assert manager.waiting() == 1 and told == []
    ingest(manager, callback_body())
    ingest(manager, callback_body())  # a duplicate tells nobody again
    assert told == ["settled"]
    stop()
    stop()  # at its deadline too: harmless
    assert manager.waiting() == 0
    late = manager.watch("ws_CO_1", lambda: told.append("already"))  # settled before the watch began
    assert told == ["settled", "already"] and manager.waiting() == 0
    late()
    unwatched = manager.watch("ws_CO_never", lambda: told.append("never"))
    unwatched()  # stopped at its deadline: nothing left subscribed, never told
    assert manager.waiting() == 0 and told == ["settled", "already"]


def test_wait_on_a_settled_payment_returns_at_once(manager):
    register(manager)
    ingest(manager, callback_body())
    started = time.monotonic()
    assert manager.wait("ws_CO_1", 60).status == "completed"
    assert time.monotonic() - started < 30, "answered without waiting for the timeout"


def test_wait_times_out_pending_and_a_late_callback_still_settles(manager):
    register(manager)
    assert manager.wait("ws_CO_1", 0.2).status == "pending"
    assert manager.wait("ws_CO_1", 0).status == "pending"
    assert ingest(manager, callback_body()).outcome == "applied"
    assert manager.wait("ws_CO_1", 0).status == "completed"


def test_wait_on_an_id_nobody_registers_returns_none(manager):
    assert manager.wait("ws_CO_nobody", 0.1) is None
    assert manager.waiting() == 0


def test_pending_older_than_lists_only_open_payments(manager):
    register(manager, "ws_CO_1")
    register(manager, "ws_CO_2")
    register(manager, "ws_CO_3")
    ingest(manager, callback_body(checkout_request_id="ws_CO_2"))
    ingest(manager, callback_body(checkout_request_id="ws_CO_3", result_code=77))
    assert [p.checkout_request_id for p in manager.pending_older_than(0)] == ["ws_CO_1"]
    assert [p.checkout_request_id for p in manager.pending_older_than(0, include_unknown=True)] == ["ws_CO_1", "ws_CO_3"]
    assert manager.pending_older_than(3600) == []


def test_settle_from_query_settles_and_wakes(manager):
    register(manager)
    thread, results = in_thread(manager.wait, "ws_CO_1", 10)
    time.sleep(0.1)
    assert manager.settle_from_query("ws_CO_1", "pending", "4999").status == "pending"
    payment = manager.settle_from_query("ws_CO_1", "failed", "1032", "Request cancelled by user",
                                        "Request cancelled by user")
    thread.join(5)
    assert results[0] == payment
    assert (payment.status, payment.result_code, payment.settled_by) == ("failed", "1032", "query")


def test_settle_from_query_never_overrides_a_final_state(manager, caplog):
    register(manager)
    ingest(manager, callback_body())
    with caplog.at_level(logging.WARNING):
        payment = manager.settle_from_query("ws_CO_1", "failed", "1032")
    assert payment.status == "completed" and "STK Query says failed" in payment.review
    with pytest.raises(UnknownPayment):
        manager.settle_from_query("ws_CO_nobody", "completed", "0")
    with pytest.raises(ValueError):
        manager.settle_from_query("ws_CO_1", "paid")


def test_a_late_callback_adds_the_receipt_to_a_query_settled_success(manager):
    register(manager)
    manager.settle_from_query("ws_CO_1", "completed", "0", "processed")
    result = ingest(manager, callback_body())
    assert result.outcome == "duplicate"
    assert (result.payment.status, result.payment.receipt) == ("completed", "NLJ7RT61SV")


def test_a_callback_stored_before_a_crash_is_applied_at_start(manager, settings):
    register(manager)
    callback_id = manager.store.record_callback(callback_body(), {}, "196.201.212.69")  # crash before processing
    parked_id = manager.store.record_callback(callback_body(checkout_request_id="ws_CO_2"), {}, None)
    restarted = CallbackManager(open_store(settings.payments_db), settings)
    assert restarted.store.callback(callback_id).outcome == "applied"
    assert restarted.status("ws_CO_1").status == "completed"
    assert restarted.store.callback(parked_id).outcome == "parked"
    assert register(restarted, "ws_CO_2").payment.status == "completed"
    restarted.store.close()


def test_when_applying_fails_the_callback_stays_stored_for_the_next_start(manager, settings, monkeypatch):
    register(manager)
    monkeypatch.setattr(manager, "_apply", lambda *args: 1 / 0)
    result = ingest(manager, callback_body())
    assert (result.outcome, manager.status("ws_CO_1").status) == ("received", "pending")
    monkeypatch.undo()
    restarted = CallbackManager(open_store(settings.payments_db), settings)
    assert restarted.status("ws_CO_1").status == "completed"
    restarted.store.close()


def test_phone_numbers_stay_out_of_the_log(manager, caplog):
    register(manager)
    with caplog.at_level(logging.DEBUG):
        ingest(manager, callback_body(phone=254722000000))
    assert "needs review: " + MISMATCH_REASON in caplog.text
    assert "254722000000" not in caplog.text and "254712345678" not in caplog.text
    assert "254722000000" in manager.status("ws_CO_1").review


def test_one_mpesa_receipt_completes_one_payment_the_second_is_a_conflict_for_review(manager):
    register(manager, "ws_CO_A")
    register(manager, "ws_CO_B")
    assert ingest(manager, callback_body(checkout_request_id="ws_CO_A", receipt="UKYPST28TK")).outcome == "applied"
    second = ingest(manager, callback_body(checkout_request_id="ws_CO_B", receipt="UKYPST28TK"))
    assert manager.status("ws_CO_A").status == "completed"
    payment = manager.status("ws_CO_B")
    assert (payment.status, payment.reason) == ("unknown", "the M-Pesa receipt already completed another payment")
    assert "UKYPST28TK" in payment.review and "ws_CO_A" in payment.review and second.note
    with pytest.raises(Exception, match="(?i)unique|duplicate key"):  # the index is the backstop if code ever forgets
        with manager.store.transaction() as tx:
            tx.update_payment("ws_CO_B", status="completed", receipt="UKYPST28TK")


def test_a_receipt_confirmed_by_query_for_a_second_held_payment_is_not_completed(settings):
    store = open_store(settings.payments_db)
    manager = CallbackManager(store, settings.replace(verify_success_by_query=True))
    try:
        for checkout_id in ("ws_CO_A", "ws_CO_B"):
            register(manager, checkout_id)
            ingest(manager, callback_body(checkout_request_id=checkout_id, receipt="UKYPST28TK"))
        assert manager.settle_from_query("ws_CO_A", "completed", "0").status == "completed"
        second = manager.settle_from_query("ws_CO_B", "completed", "0")
        assert (second.status, second.reason) == ("unknown", "the M-Pesa receipt already completed another payment")
    finally:
        store.close()


def test_a_callback_stored_while_writes_fail_is_applied_again_as_soon_as_they_work(manager, monkeypatch):
    register(manager)
    full = (psycopg.errors.DiskFull("database or disk is full") if manager.store.dialect == "postgresql"
            else sqlite3.OperationalError("database or disk is full"))
    monkeypatch.setattr(Transaction, "set_callback_outcome", lambda *args, **kwargs: (_ for _ in ()).throw(full))
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(manager.wait("ws_CO_1", 30)))
    waiter.start()
    result = ingest(manager, callback_body())
    assert result.outcome == "received" and manager.store.callback(result.callback_id).outcome == "received"
    assert "disk is full" in manager.store.write_failure and manager.status("ws_CO_1").status == "pending"
    assert manager.reapply() == 0 and manager.store.callback(result.callback_id).outcome == "received"  # still full
    monkeypatch.undo()
    assert manager.reapply() == 1
    waiter.join(10)  # a hang guard: the re-applied callback wakes the waiter long before its 30 s
    assert woke and woke[0].status == "completed" and manager.store.write_failure is None
    assert manager.reapply() == 0


def test_refused_callbacks_are_counted_and_only_a_small_capped_sample_is_kept(manager):
    huge = callback_body() + b" " * 60_000
    ids = [manager.record_rejected(huge, {"X-Junk": "j" * 5000, "Host": "x"}, "6.6.6.6", "wrong token")
           for _ in range(200)]
    kept = [i for i in ids if i is not None]
    assert manager.rejected == 200 and 1 <= len(kept) <= 10
    for raw in manager.store.callbacks(outcome="rejected"):
        assert len(raw.body) <= 2048 and "X-Junk" not in raw.headers and "body cut to 2048" in raw.note
