import base64
import json
import logging
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest
import requests
import responses
from responses import matchers
from responses.registries import FirstMatchRegistry, OrderedRegistry
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from mpesa_agent.config import SANDBOX_PASSKEY, Settings
from mpesa_agent.daraja.client import (
    STK_PUSH_PATH, STK_QUERY_PATH, TOKEN_PATH, UNKNOWN_ID_REASON, DarajaClient, clean_account_reference,
    clean_description,
)
from mpesa_agent.daraja.errors import (
    AuthenticationError, DarajaServerError, InvalidRequestError, LiveMoneyRefused, OutcomeUnknownError, RequestRejectedError,
    SubscriberLockedError, ThrottledError, TransportError,
)

# Real payloads, copied verbatim from ../shared/daraja-samples/<file named above each>.
# oauth_response_ok_docs_v3_expires_in_number.json
OAUTH_OK = {"access_token": "c9SQxWWhmdVRlyh0zh8gZDTkubVF", "expires_in": 3599}
# stkpush_request_docs_v3_mixed_types.json: Password for 174379 + sandbox passkey + this Timestamp
DOCS_PASSWORD = ("MTc0Mzc5YmZiMjc5ZjlhYTliZGJjZjE1OGU5N2RkNzFhNDY3Y2QyZTBjODkzMDU5YjEwZjc4ZTZiNzJhZGExZWQy"
                 "YzkxOTIwMjEwNjI4MDkyNDA4")
DOCS_TIMESTAMP = "20210628092408"
# stkpush_response_ok_docs_v3.json
PUSH_OK = {
    "MerchantRequestID": "2654-4b64-97ff-b827b542881d3130",
    "CheckoutRequestID": "ws_CO_1007202409152617172396192",
    "ResponseCode": "0",
    "ResponseDescription": "Success. Request accepted for processing",
    "CustomerMessage": "Success. Request accepted for processing",
}
# stkpush_error_invalid_businessshortcode_400.002.02_docs_v3.json
INVALID_SHORTCODE = {"requestId": "1c5b-4ba8-815c-ac45c57a3db01495926", "errorCode": "400.002.02",
                     "errorMessage": "Bad Request - Invalid BusinessShortCode"}
# stkquery_response_success_docs_v3_resultcode_string.json
QUERY_SUCCESS = {"ResponseCode": "0", "ResponseDescription": "The service request has been accepted successfully",
                 "MerchantRequestID": "22205-34066-1", "CheckoutRequestID": "ws_CO_13012021093521236557",
                 "ResultCode": "0", "ResultDesc": "The service request is processed successfully."}
# stkquery_response_4999_still_processing_2026_partial.json
QUERY_4999 = {"ResultCode": "4999", "ResultDesc": "The transaction is still under processing"}
# stkquery_error_500.001.1001_does_not_exist_2026_partial.json
QUERY_DOES_NOT_EXIST = {"errorCode": "500.001.1001", "errorMessage": "The transaction does not Exist"}

CHECKOUT = PUSH_OK["CheckoutRequestID"]
BASE = "https://daraja.test"
SECRET = "test-secret"
BASIC = "Basic " + base64.b64encode(f"test-key:{SECRET}".encode()).decode()
DOCS_NOW = datetime(2021, 6, 28, 9, 24, 8)


def envelope(code, message, request_id="16813-15-1"):
    """Daraja's error answer, as quoted in ../shared/DARAJA.md."""
    return {"requestId": request_id, "errorCode": code, "errorMessage": message}


INVALID_TOKEN = envelope("404.001.03", "Invalid Access Token")
BEING_PROCESSED = envelope("500.001.1001", "The transaction is being processed", request_id=CHECKOUT)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make_client(**overrides):
    options = dict(consumer_key="test-key", consumer_secret=SECRET, shortcode="174379", passkey=SANDBOX_PASSKEY,
                   base_url=BASE, now=lambda: DOCS_NOW, clock=Clock())
    return DarajaClient(**(options | overrides))


def push(client, **overrides):
    args = dict(phone_number="254722111111", amount="1", account_reference="accountref", description="txndesc",
                callback_url="https://mydomain.com/path")
    return client.stk_push(**(args | overrides))


def push_body(**changes):
    """The docs sample request, as this client types it (strings for codes, a number for Amount)."""
    return {"BusinessShortCode": "174379", "Password": DOCS_PASSWORD, "Timestamp": DOCS_TIMESTAMP,
            "TransactionType": "CustomerPayBillOnline", "Amount": 1, "PartyA": "254722111111",
            "PartyB": "174379", "PhoneNumber": "254722111111", "CallBackURL": "https://mydomain.com/path",
            "AccountReference": "accountref", "TransactionDesc": "txndesc"} | changes


def bearer(token=OAUTH_OK["access_token"]):
    return matchers.header_matcher({"Authorization": f"Bearer {token}"})


def add_token(mock, token=OAUTH_OK["access_token"], expires_in=3599, status=200, **kwargs):
    if "json" not in kwargs and "body" not in kwargs:
        kwargs["json"] = {"access_token": token, "expires_in": expires_in}
    mock.get(BASE + TOKEN_PATH, status=status, **kwargs, match=[
        matchers.query_param_matcher({"grant_type": "client_credentials"}),
        matchers.header_matcher({"Authorization": BASIC}),
    ])


def add_push(mock, status=200, json=PUSH_OK, token=OAUTH_OK["access_token"], body=None, expected=None):
    match = [bearer(token), matchers.json_params_matcher(expected or push_body())]
    if body is None:
        mock.post(BASE + STK_PUSH_PATH, status=status, json=json, match=match)
    else:
        mock.post(BASE + STK_PUSH_PATH, status=status, body=body, match=match)


def add_query(mock, status=200, json=QUERY_SUCCESS, token=OAUTH_OK["access_token"], body=None):
    expected = {"BusinessShortCode": "174379", "Password": DOCS_PASSWORD, "Timestamp": DOCS_TIMESTAMP,
                "CheckoutRequestID": CHECKOUT}
    match = [bearer(token), matchers.json_params_matcher(expected)]
    if body is None:
        mock.post(BASE + STK_QUERY_PATH, status=status, json=json, match=match)
    else:
        mock.post(BASE + STK_QUERY_PATH, status=status, body=body, match=match)


def calls_to(mock, path):
    return sum(urlsplit(call.request.url).path == path for call in mock.calls)


@contextmanager
def strict_mock(registry=FirstMatchRegistry):
    """Fails on unused mocks and on any request no mock matched (even if the client swallowed it)."""
    with responses.RequestsMock(assert_all_requests_are_fired=True, registry=registry) as mock:
        yield mock
        unmatched = [call.request.url for call in mock.calls
                     if "Connection refused by Responses" in str(call.response)]
        assert not unmatched, f"unexpected requests: {unmatched}"


@pytest.fixture
def mock():
    with strict_mock() as mock:
        yield mock


def connection_refused():
    """What requests raises when nothing listens: nothing was sent."""
    return requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "Connection refused")))


# --- STK Push: what is sent and what comes back ---

def test_stk_push_sends_the_documented_request_and_returns_the_ack(mock):
    add_token(mock)
    add_push(mock)
    ack = push(make_client())
    assert ack.checkout_request_id == CHECKOUT
    assert ack.merchant_request_id == PUSH_OK["MerchantRequestID"]
    assert (ack.response_code, ack.phone_number, ack.amount) == ("0", "254722111111", 1)
    assert ack.customer_message == "Success. Request accepted for processing"
    assert ack.raw == PUSH_OK
    assert mock.calls[1].request.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("now", [
    DOCS_NOW,
    DOCS_NOW.replace(tzinfo=timezone(timedelta(hours=3))),
    datetime(2021, 6, 28, 6, 24, 8, tzinfo=timezone.utc),
], ids=["naive-nairobi", "eat", "utc"])
def test_password_and_timestamp_are_in_nairobi_time(mock, now):
    add_token(mock)
    add_query(mock)  # the matcher checks Password and Timestamp against the docs sample
    assert make_client(now=lambda: now).stk_query(CHECKOUT).state == "completed"


@pytest.mark.parametrize("phone", ["0722111111", "+254 722 111 111", "254722111111", "722-111-111", 254722111111])
def test_stk_push_normalises_every_phone_form(mock, phone):
    add_token(mock)
    add_push(mock)
    assert push(make_client(), phone_number=phone).phone_number == "254722111111"


def test_stk_push_cleans_reference_and_cuts_description(mock):
    add_token(mock)
    add_push(mock, expected=push_body(Amount=1200, AccountReference="INV001", TransactionDesc="Lunch with fr",
                                      PartyA="254110000000", PhoneNumber="254110000000"))
    ack = push(make_client(), phone_number="0110 000 000", amount="1,200", account_reference="INV-001",
               description="Lunch with friends at Java")
    assert ack.amount == 1200


def test_transaction_type_and_party_b_come_from_the_constructor(mock):
    add_token(mock)
    add_push(mock, expected=push_body(TransactionType="CustomerBuyGoodsOnline", PartyB="600000"))
    push(make_client(transaction_type="CustomerBuyGoodsOnline", party_b="600000"))


@pytest.mark.parametrize("overrides, field", [
    ({"phone_number": "0201234567"}, "phone_number"),
    ({"phone_number": "abc"}, "phone_number"),
    ({"amount": 0}, "amount"),
    ({"amount": "1.5"}, "amount"),
    ({"amount": "ten"}, "amount"),
    ({"account_reference": ""}, "account_reference"),
    ({"account_reference": "!!!"}, "account_reference"),
    ({"account_reference": "ABCDEFGHIJKLM"}, "account_reference"),
    ({"callback_url": ""}, "callback_url"),
    ({"callback_url": "ftp://mydomain.com/path"}, "callback_url"),
    ({"callback_url": "/callback/secret-token"}, "callback_url"),
    ({"callback_url": "https://mydomain.com/a b/secret-token"}, "callback_url"),
])
def test_stk_push_rejects_bad_input_before_any_request(mock, overrides, field):
    with pytest.raises(InvalidRequestError) as caught:
        push(make_client(), **overrides)
    assert caught.value.field == field
    assert "secret-token" not in str(caught.value)
    assert len(mock.calls) == 0


@pytest.mark.parametrize("raw, cleaned", [
    ("accountref", "accountref"), ("INV-001", "INV001"), ("Café 12", "Cafe12"), (12345, "12345"),
    ("ABCDEFGHIJKL", "ABCDEFGHIJKL"),
])
def test_clean_account_reference_keeps_letters_and_digits(raw, cleaned):
    assert clean_account_reference(raw) == cleaned


@pytest.mark.parametrize("raw, cleaned", [
    ("txndesc", "txndesc"), ("Lunch with friends at Java", "Lunch with fr"), ("lunch, drinks & more", "lunch drinks"),
    ("  rent   June ", "rent June"), ("", "Payment"), (None, "Payment"), ("🍔🍟", "Payment"),
])
def test_clean_description_cuts_to_13_and_never_empties(raw, cleaned):
    assert clean_description(raw) == cleaned


# --- The token ---

@pytest.mark.parametrize("expires_in", [3599, "3599"], ids=["number", "string"])
def test_token_is_cached_then_refreshed_a_few_minutes_before_expiry(mock, expires_in):
    clock = Clock()
    client = make_client(clock=clock)
    add_token(mock, expires_in=expires_in)
    add_token(mock, token="second-token")
    add_query(mock)
    add_query(mock, token="second-token")
    client.stk_query(CHECKOUT)
    clock.now = 3000  # within the hour, more than 5 minutes left: reuse
    client.stk_query(CHECKOUT)
    assert calls_to(mock, TOKEN_PATH) == 1
    clock.now = 3300  # under 5 minutes left: refresh first
    client.stk_query(CHECKOUT)
    assert calls_to(mock, TOKEN_PATH) == 2
    assert calls_to(mock, STK_QUERY_PATH) == 3


@pytest.mark.parametrize("expires_in", [None, "soon", 0, "nan"])
def test_odd_expires_in_falls_back_to_an_hour(mock, expires_in):
    clock = Clock()
    client = make_client(clock=clock)
    add_token(mock, expires_in=expires_in)
    add_query(mock)
    client.stk_query(CHECKOUT)
    clock.now = 3000
    client.stk_query(CHECKOUT)
    assert calls_to(mock, TOKEN_PATH) == 1


def test_concurrent_callers_fetch_one_token(mock):
    def slow_token(request):
        time.sleep(0.05)  # long enough for every thread to be waiting on the cache
        return 200, {}, json.dumps(OAUTH_OK)

    mock.add_callback(responses.GET, BASE + TOKEN_PATH, callback=slow_token,
                      match=[matchers.header_matcher({"Authorization": BASIC})])
    add_query(mock)
    client, start, states = make_client(), threading.Barrier(8), []

    def query():
        start.wait()
        states.append(client.stk_query(CHECKOUT).state)

    threads = [threading.Thread(target=query) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert states == ["completed"] * 8
    assert calls_to(mock, TOKEN_PATH) == 1


def test_invalid_access_token_refreshes_once_and_resends(mock):
    add_token(mock)
    add_token(mock, token="fresh-token")
    add_push(mock, status=404, json=INVALID_TOKEN)
    add_push(mock, token="fresh-token")
    assert push(make_client()).checkout_request_id == CHECKOUT
    assert (calls_to(mock, TOKEN_PATH), calls_to(mock, STK_PUSH_PATH)) == (2, 2)


@pytest.mark.parametrize("operation, add, path", [
    (push, add_push, STK_PUSH_PATH),
    (lambda client: client.stk_query(CHECKOUT), add_query, STK_QUERY_PATH),
], ids=["push", "query"])
def test_invalid_access_token_twice_is_an_authentication_error(mock, operation, add, path):
    add_token(mock)
    add_token(mock, token="fresh-token")
    add(mock, status=404, json=INVALID_TOKEN)
    add(mock, status=404, json=INVALID_TOKEN, token="fresh-token")
    with pytest.raises(AuthenticationError) as caught:
        operation(make_client())
    assert caught.value.error_code == "404.001.03"
    assert (calls_to(mock, TOKEN_PATH), calls_to(mock, path)) == (2, 2)


@pytest.mark.parametrize("status, kwargs", [
    (400, {"body": ""}),
    (401, {"body": ""}),
    (400, {"json": envelope("400.008.01", "Invalid Authentication passed")}),
    (400, {"json": envelope("400.008.02", "Invalid grant type passed")}),
], ids=["400-empty", "401", "400.008.01", "400.008.02"])
def test_refused_credentials_are_an_authentication_error_without_retry(mock, status, kwargs):
    add_token(mock, status=status, **kwargs)
    with pytest.raises(AuthenticationError):
        make_client().stk_query(CHECKOUT)
    assert calls_to(mock, TOKEN_PATH) == 1


def test_token_fetch_is_retried_once_after_a_server_error(mock):
    add_token(mock, status=503, body="<html>Service Unavailable</html>")
    add_token(mock)
    add_query(mock)
    assert make_client().stk_query(CHECKOUT).state == "completed"
    assert calls_to(mock, TOKEN_PATH) == 2


def test_token_fetch_gives_up_after_two_transport_failures(mock):
    add_token(mock, body=requests.ConnectTimeout("connect timed out"))
    add_token(mock, body=requests.ConnectTimeout("connect timed out"))
    with pytest.raises(TransportError):
        make_client().stk_query(CHECKOUT)
    assert calls_to(mock, TOKEN_PATH) == 2


# --- STK Push errors ---

@pytest.mark.parametrize("status, answer, cls", [
    (400, INVALID_SHORTCODE, RequestRejectedError),
    (500, envelope("500.003.02", "Spike Arrest Violation"), ThrottledError),
    (500, envelope("500.003.03", "Quota Violation"), ThrottledError),
    (500, envelope("500.001.1001", "Unable to lock subscriber, a transaction is already in process for the "
                                   "current subscriber"), SubscriberLockedError),
    (500, envelope("500.001.1001", "Wrong credentials"), AuthenticationError),
    (500, envelope("500.001.1001", "Merchant does not exist"), RequestRejectedError),
], ids=["400.002.02", "spike-arrest", "quota", "subscriber-locked", "wrong-credentials", "no-merchant"])
def test_daraja_error_answers_raise_their_class_and_keep_daraja_details(mock, status, answer, cls):
    add_token(mock)
    add_push(mock, status=status, json=answer)
    with pytest.raises(cls) as caught:
        push(make_client())
    error = caught.value
    assert type(error) is cls
    assert (error.error_code, error.error_message, error.request_id, error.http_status) == (
        answer["errorCode"], answer["errorMessage"], answer["requestId"], status)
    assert answer["errorMessage"] in str(error)
    assert calls_to(mock, STK_PUSH_PATH) == 1


def test_rejected_request_names_the_field_from_the_docs_sample(mock):
    add_token(mock)
    add_push(mock, status=400, json=INVALID_SHORTCODE)
    with pytest.raises(RequestRejectedError) as caught:
        push(make_client())
    assert caught.value.field == "BusinessShortCode"


@pytest.mark.parametrize("failure", [
    requests.ReadTimeout("Read timed out. (read timeout=30)"),
    requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))),
    requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead"),
], ids=["read-timeout", "connection-aborted", "broken-answer"])
def test_push_whose_answer_is_lost_is_outcome_unknown_and_never_resent(mock, failure):
    add_token(mock)
    mock.post(BASE + STK_PUSH_PATH, body=failure)
    with pytest.raises(OutcomeUnknownError) as caught:
        push(make_client())
    assert "Do not send it again" in str(caught.value) and "query" in str(caught.value)
    assert calls_to(mock, STK_PUSH_PATH) == 1


@pytest.mark.parametrize("status, kwargs", [
    (502, {"body": "<html><head><title>502 Bad Gateway</title></head></html>"}),
    (500, {"body": ""}),
    (503, {"json": envelope("503.001.01", "Service Unavailable")}),
    (200, {"body": "<html>captive portal</html>"}),
    (200, {"json": {"ResponseCode": "0"}}),
], ids=["502-html", "500-empty", "503-unknown-code", "200-html", "200-no-checkout-id"])
def test_push_with_an_unexplained_answer_is_outcome_unknown(mock, status, kwargs):
    add_token(mock)
    mock.post(BASE + STK_PUSH_PATH, status=status, **kwargs)
    with pytest.raises(OutcomeUnknownError) as caught:
        push(make_client())
    assert caught.value.http_status == status
    assert calls_to(mock, STK_PUSH_PATH) == 1


def test_push_answered_with_a_nonzero_response_code_is_rejected(mock):
    add_token(mock)
    add_push(mock, json={"ResponseCode": "1", "ResponseDescription": "Rejected"})
    with pytest.raises(RequestRejectedError, match="Rejected"):
        push(make_client())


@pytest.mark.parametrize("failure", [requests.ConnectTimeout("connect timed out"), connection_refused()],
                         ids=["connect-timeout", "refused"])
def test_push_that_never_connected_is_a_plain_transport_error(mock, failure):
    add_token(mock)
    mock.post(BASE + STK_PUSH_PATH, body=failure)
    with pytest.raises(TransportError) as caught:
        push(make_client())
    assert not isinstance(caught.value, OutcomeUnknownError)
    assert calls_to(mock, STK_PUSH_PATH) == 1


def test_errors_never_show_secrets(mock):
    token = OAUTH_OK["access_token"]
    echo = f"<html>debug: {SECRET} {SANDBOX_PASSKEY} {DOCS_PASSWORD} Bearer {token} {BASIC}</html>"
    add_token(mock)
    add_push(mock, status=502, body=echo)
    with pytest.raises(OutcomeUnknownError) as caught:
        push(make_client())
    text = str(caught.value)
    assert "debug" in text
    for secret in (SECRET, SANDBOX_PASSKEY, DOCS_PASSWORD[:40], token, BASIC.split()[1]):
        assert secret not in text


def test_a_short_secret_does_not_mangle_messages(mock):
    mock.get(BASE + TOKEN_PATH, status=400, json=envelope("400.008.01", "Invalid Authentication passed"))
    with pytest.raises(AuthenticationError) as caught:
        make_client(consumer_secret="s").stk_query(CHECKOUT)
    assert "Invalid Authentication passed" in str(caught.value)


def test_every_request_has_connect_and_read_timeouts(mock):
    class RecordingSession(requests.Session):
        timeouts = []

        def request(self, *args, **kwargs):
            self.timeouts.append(kwargs.get("timeout"))
            return super().request(*args, **kwargs)

    add_token(mock)
    add_push(mock)
    add_query(mock)
    client = make_client(session=RecordingSession())
    push(client)
    client.stk_query(CHECKOUT)
    assert RecordingSession.timeouts == [(5.0, 30.0)] * 3


def test_one_log_line_per_request_without_secrets(mock, caplog):
    caplog.set_level(logging.INFO, logger="mpesa_agent.daraja.client")
    add_token(mock)
    add_push(mock)
    push(make_client())
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("daraja token checkout=- status=200 ms=")
    assert lines[1].startswith(f"daraja stk_push checkout={CHECKOUT} status=200 ms=")
    assert not any(secret in " ".join(lines) for secret in (SECRET, SANDBOX_PASSKEY, OAUTH_OK["access_token"]))


# --- STK Query ---

@pytest.mark.parametrize("status, answer, result_code", [
    (500, BEING_PROCESSED, None),
    (200, BEING_PROCESSED, None),
    (500, envelope("500.001.1001", "", request_id=CHECKOUT), None),
    (200, QUERY_4999, "4999"),
], ids=["500-being-processed", "200-being-processed", "500-empty-message", "4999"])
def test_query_still_processing_is_pending_never_a_failure(mock, status, answer, result_code):
    add_token(mock)
    add_query(mock, status=status, json=answer)
    result = make_client().stk_query(CHECKOUT)
    assert (result.checkout_request_id, result.state, result.result_code) == (CHECKOUT, "pending", result_code)
    assert result.reason is None and result.result_desc
    assert result.raw == answer


def test_query_for_an_id_daraja_does_not_know_yet_is_pending_with_a_reason(mock):
    add_token(mock)
    add_query(mock, status=500, json=QUERY_DOES_NOT_EXIST)
    result = make_client().stk_query(CHECKOUT)
    assert (result.state, result.result_code, result.reason) == ("pending", None, UNKNOWN_ID_REASON)
    assert result.result_desc == "The transaction does not Exist"


def test_query_pending_then_paid():
    with strict_mock(OrderedRegistry) as mock:
        add_token(mock)
        add_query(mock, status=500, json=BEING_PROCESSED)
        add_query(mock, json=QUERY_4999)
        add_query(mock, json=QUERY_SUCCESS)
        client = make_client()
        assert [client.stk_query(CHECKOUT).state for _ in range(3)] == ["pending", "pending", "completed"]


@pytest.mark.parametrize("code, desc, state, reason", [
    ("0", "The service request is processed successfully.", "completed", None),
    (0, "The service request is processed successfully.", "completed", None),
    ("1032", "Request cancelled by user", "failed", "Request cancelled by user"),
    (1032, "Request cancelled by user", "failed", "Request cancelled by user"),
    ("1037", "DS timeout user cannot be reached", "failed",
     "No response from the customer (phone unreachable or prompt ignored)"),
    ("1", "The balance is insufficient for the transaction", "failed", "Insufficient M-Pesa balance"),
    ("7777", "Something new", "unknown", "Unrecognised M-Pesa result code 7777 (Something new)"),
])
def test_query_final_answers_map_on_result_code_string_or_number(mock, code, desc, state, reason):
    add_token(mock)
    add_query(mock, json=QUERY_SUCCESS | {"ResultCode": code, "ResultDesc": desc})
    result = make_client().stk_query(CHECKOUT)
    assert (result.state, result.result_code, result.result_desc, result.reason) == (state, str(code), desc, reason)


@pytest.mark.parametrize("status, kwargs, cls", [
    (500, {"json": envelope("500.003.02", "Spike Arrest Violation")}, ThrottledError),
    (500, {"json": envelope("500.003.03", "Quota Violation")}, ThrottledError),
    (500, {"json": envelope("500.001.1001", "Wrong credentials")}, AuthenticationError),
    (400, {"json": envelope("400.002.02", "Bad Request - Invalid CheckoutRequestID")}, RequestRejectedError),
    (502, {"body": "<html>Bad Gateway</html>"}, DarajaServerError),
    (200, {"body": requests.ReadTimeout("Read timed out.")}, TransportError),
], ids=["spike-arrest", "quota", "wrong-credentials", "400.002.02", "502-html", "read-timeout"])
def test_query_errors_raise_their_class(mock, status, kwargs, cls):
    add_token(mock)
    mock.post(BASE + STK_QUERY_PATH, status=status, **kwargs)
    with pytest.raises(cls) as caught:
        make_client().stk_query(CHECKOUT)
    assert type(caught.value) is cls  # a query is safe to repeat: never OutcomeUnknownError
    assert calls_to(mock, STK_QUERY_PATH) == 1


@pytest.mark.parametrize("checkout_id", ["", "  ", None])
def test_query_needs_a_checkout_request_id(mock, checkout_id):
    with pytest.raises(InvalidRequestError):
        make_client().stk_query(checkout_id)


def test_from_settings(settings):
    client = DarajaClient.from_settings(settings.replace(party_b="", transaction_type="CustomerBuyGoodsOnline"))
    assert (client.shortcode, client.party_b, client.base_url, client.transaction_type) == (
        "174379", "174379", "http://127.0.0.1:8002", "CustomerBuyGoodsOnline")
    assert DarajaClient.from_settings(settings).consumer_key == "test-key"


def test_production_without_the_live_money_switch_sends_nothing(mock):
    with pytest.raises(LiveMoneyRefused, match="MPESA_ALLOW_LIVE_MONEY=true"):
        push(make_client(live_money=False))
    assert len(mock.calls) == 0  # not even a token request


@pytest.mark.parametrize("env, allow, live", [("production", "", False), ("production", "true", True),
                                              ("sandbox", "", True), ("simulator", "", True)])
def test_the_client_follows_the_live_money_switch(env, allow, live):
    settings = Settings.from_env({"MPESA_ENV": env, "MPESA_ALLOW_LIVE_MONEY": allow}, load_files=False)
    assert DarajaClient.from_settings(settings).live_money is live
