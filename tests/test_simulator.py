"""The Daraja simulator over real HTTP on 127.0.0.1, with a real callback receiver."""
import base64
import json
import re
import selectors
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from mpesa_agent.config import SANDBOX_PASSKEY
from mpesa_agent.simulator import create_app

ROOT = Path(__file__).resolve().parent.parent
NAIROBI = timezone(timedelta(hours=3))
SHORTCODE = "174379"
ORDINARY = "254712345678"
PUSH = "/mpesa/stkpush/v1/processrequest"
QUERY = "/mpesa/stkpushquery/v1/query"
# From Safaricom's Daraja 3.0 docs: a number, strings, and the order of the answers' keys.
DOCS_PUSH_REQUEST = {
    "BusinessShortCode": 174379,
    "Password": "MTc0Mzc5YmZiMjc5ZjlhYTliZGJjZjE1OGU5N2RkNzFhNDY3Y2QyZTBjODkzMDU5YjEwZjc4ZTZiNzJhZGExZWQyYzkxOTIwMjEwNjI4MDkyNDA4",
    "Timestamp": "20210628092408", "TransactionType": "CustomerPayBillOnline", "Amount": "1",
    "PartyA": "254722000000", "PartyB": "174379", "PhoneNumber": "254722111111",
    "CallBackURL": "https://mydomain.com/path", "AccountReference": "accountref", "TransactionDesc": "txndesc",
}
DOCS_ACK_KEYS = ["MerchantRequestID", "CheckoutRequestID", "ResponseCode", "ResponseDescription", "CustomerMessage"]
DOCS_QUERY_KEYS = ["ResponseCode", "ResponseDescription", "MerchantRequestID", "CheckoutRequestID", "ResultCode",
                   "ResultDesc"]


@pytest.fixture
def sim(start_simulator) -> str:
    return start_simulator()


class Receiver:
    """A tiny callback server that records what it is sent."""

    def __init__(self):
        self.calls: list[dict] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.calls.append({"path": self.path, "headers": dict(self.headers),
                                           "body": json.loads(body), "at": time.monotonic()})
                answer = b'{"ResultCode": 0, "ResultDesc": "Accepted"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/callback/0123456789abcdef0123456789abcdef"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def wait(self, count: int = 1, timeout: float = 3.0) -> list[dict]:
        """The first `count` callbacks' bodies, waiting up to `timeout` seconds."""
        return wait_for(lambda: len(self.calls) >= count and [c["body"] for c in self.calls], timeout)


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def wait_for(predicate, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.01)


def timestamp(at: datetime | None = None) -> str:
    return (at or datetime.now(NAIROBI)).strftime("%Y%m%d%H%M%S")


def password(ts: str, shortcode: str = SHORTCODE, passkey: str = SANDBOX_PASSKEY) -> str:
    return base64.b64encode(f"{shortcode}{passkey}{ts}".encode()).decode()


def get_token(base: str, key: str = "test-key", secret: str = "test-secret") -> str:
    answer = requests.get(f"{base}/oauth/v1/generate?grant_type=client_credentials", auth=(key, secret), timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def push_body(callback_url: str, phone: str = ORDINARY, amount=1, **fields) -> dict:
    ts = timestamp()
    body = {"BusinessShortCode": SHORTCODE, "Password": password(ts), "Timestamp": ts,
            "TransactionType": "CustomerPayBillOnline", "Amount": amount, "PartyA": phone,
            "PartyB": SHORTCODE, "PhoneNumber": phone, "CallBackURL": callback_url,
            "AccountReference": "INV001", "TransactionDesc": "lunch"}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def post(base: str, path: str, body, token: str | None = None, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token or get_token(base)}"}
    return requests.post(base + path, json=body, headers=headers, timeout=kwargs.pop("timeout", 5), **kwargs)


def push(base: str, callback_url: str, phone: str = ORDINARY, **fields) -> dict:
    """Push and return the ack, which must be Daraja's 200."""
    answer = post(base, PUSH, push_body(callback_url, phone, **fields))
    assert answer.status_code == 200, answer.text
    return answer.json()


def query(base: str, checkout_request_id: str, token: str | None = None, **fields) -> requests.Response:
    ts = timestamp()
    body = {"BusinessShortCode": SHORTCODE, "Password": password(ts), "Timestamp": ts,
            "CheckoutRequestID": checkout_request_id, **fields}
    return post(base, QUERY, body, token)


def rule(base: str, **spec) -> dict:
    answer = requests.post(f"{base}/simulator/rules", json=spec, timeout=5)
    assert answer.status_code == 201, answer.text
    return answer.json()


def transaction(base: str, checkout_request_id: str) -> dict:
    return requests.get(f"{base}/simulator/transactions/{checkout_request_id}", timeout=5).json()


def items(callback: dict) -> dict:
    """CallbackMetadata items by Name (a Balance item may have no Value)."""
    return {i["Name"]: i.get("Value") for i in callback["Body"]["stkCallback"]["CallbackMetadata"]["Item"]}


def assert_daraja_error(answer: requests.Response, status: int, code: str, message: str) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"requestId", "errorCode", "errorMessage"}
    assert (body["errorCode"], body["errorMessage"]) == (code, message)
    assert re.fullmatch(r"[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\d{7}", body["requestId"])


def test_oauth_issues_a_token_with_string_expiry(sim):
    answer = requests.get(f"{sim}/oauth/v1/generate?grant_type=client_credentials",
                          auth=("test-key", "test-secret"), timeout=5)
    assert answer.status_code == 200
    body = answer.json()
    assert body["expires_in"] == "3599"
    assert re.fullmatch(r"[A-Za-z0-9]{28}", body["access_token"])


@pytest.mark.parametrize("headers", [
    {"Authorization": "Basic " + base64.b64encode(b"test-key:wrong").decode()},
    {"Authorization": "Basic " + base64.b64encode(b"other:test-secret").decode()},
    {"Authorization": "Bearer something"},
    {},
])
def test_oauth_rejects_bad_credentials(sim, headers):
    answer = requests.get(f"{sim}/oauth/v1/generate?grant_type=client_credentials", headers=headers, timeout=5)
    assert_daraja_error(answer, 400, "400.008.01", "Invalid Authentication passed")


@pytest.mark.parametrize("query_string", ["", "?grant_type=password"])
def test_oauth_needs_client_credentials_grant(sim, query_string):
    answer = requests.get(f"{sim}/oauth/v1/generate{query_string}", auth=("test-key", "test-secret"), timeout=5)
    assert_daraja_error(answer, 400, "400.008.02", "Invalid grant type passed")


def test_a_new_token_invalidates_the_previous_one(sim, receiver):
    first = get_token(sim)
    second = get_token(sim)
    assert_daraja_error(post(sim, PUSH, push_body(receiver.url), first), 404, "404.001.03", "Invalid Access Token")
    assert post(sim, PUSH, push_body(receiver.url), second).status_code == 200


@pytest.mark.parametrize("authorization", ["", "Bearer ", "Bearer not-a-token", "Basic abc"])
def test_push_needs_a_valid_bearer_token(sim, receiver, authorization):
    answer = requests.post(sim + PUSH, json=push_body(receiver.url), headers={"Authorization": authorization}, timeout=5)
    assert_daraja_error(answer, 404, "404.001.03", "Invalid Access Token")


def test_tokens_expire_after_their_lifetime(start_simulator, receiver):
    base = start_simulator(token_ttl=0)
    assert_daraja_error(post(base, PUSH, push_body(receiver.url)), 404, "404.001.03", "Invalid Access Token")


def test_expire_tokens_mid_flow(sim, receiver):
    token = get_token(sim)
    assert post(sim, PUSH, push_body(receiver.url), token).status_code == 200
    assert requests.post(f"{sim}/simulator/expire-tokens", timeout=5).status_code == 200
    assert_daraja_error(post(sim, PUSH, push_body(receiver.url), token), 404, "404.001.03", "Invalid Access Token")
    assert post(sim, PUSH, push_body(receiver.url)).status_code == 200  # a fresh token works


def test_push_ack_is_dajaras_acknowledgement(sim, receiver):
    ack = push(sim, receiver.url)
    assert list(ack) == DOCS_ACK_KEYS
    assert ack["ResponseCode"] == "0"
    assert ack["ResponseDescription"] == ack["CustomerMessage"] == "Success. Request accepted for processing"
    assert re.fullmatch(r"[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\d{7}", ack["MerchantRequestID"])
    stamp = datetime.now(NAIROBI).strftime("%d%m%Y")
    assert re.fullmatch(rf"ws_CO_{stamp}\d{{6}}\d{{3}}712345678", ack["CheckoutRequestID"])


def test_the_docs_mixed_types_request_is_accepted(sim, receiver):
    """The official sample, with a fresh Timestamp and Password: its 2021 one is out of the window."""
    body = dict(DOCS_PUSH_REQUEST)
    assert body["Password"] == password(body["Timestamp"])
    ts = timestamp()
    body.update(Timestamp=ts, Password=password(ts), CallBackURL=receiver.url)
    assert isinstance(body["BusinessShortCode"], int) and isinstance(body["Amount"], str)
    answer = post(sim, PUSH, body)
    assert answer.status_code == 200, answer.text
    assert transaction(sim, answer.json()["CheckoutRequestID"])["amount"] == 1


@pytest.mark.parametrize("field, value", [
    ("BusinessShortCode", "abc"), ("BusinessShortCode", None),
    ("Password", None), ("Timestamp", "2024-01-01 10:00"), ("Timestamp", "20241301100000"),
    ("TransactionType", "CustomerPayBill"), ("Amount", "1.5"), ("Amount", 0), ("Amount", 1.5), ("Amount", True),
    ("PartyA", "0712345678"), ("PartyB", "till"), ("PhoneNumber", "25471234567"), ("PhoneNumber", "254812345678"),
    ("PhoneNumber", None), ("CallBackURL", "ftp://example.com/cb"), ("CallBackURL", "not a url"),
    ("CallBackURL", "https://example.com/cb path"), ("AccountReference", "A" * 13), ("AccountReference", ""),
    ("TransactionDesc", "D" * 14),
])
def test_push_rejects_invalid_fields_in_darajas_words(sim, receiver, field, value):
    body = push_body(receiver.url)
    body[field] = value
    if value is None:
        del body[field]
    assert_daraja_error(post(sim, PUSH, body), 400, "400.002.02", f"Bad Request - Invalid {field}")
    assert requests.get(f"{sim}/simulator/transactions", timeout=5).json() == {"transactions": []}


@pytest.mark.parametrize("hours", [-3, 2])
def test_push_rejects_a_timestamp_far_from_nairobi_time(sim, receiver, hours):
    ts = timestamp(datetime.now(NAIROBI) + timedelta(hours=hours))  # -3: UTC sent instead of EAT
    answer = post(sim, PUSH, push_body(receiver.url, Timestamp=ts, Password=password(ts)))
    assert_daraja_error(answer, 400, "400.002.02", "Bad Request - Invalid Timestamp")


def test_timestamp_window_can_be_switched_off(start_simulator, receiver):
    base = start_simulator(timestamp_tolerance=None)
    ts = "20210628092408"
    assert post(base, PUSH, push_body(receiver.url, Timestamp=ts, Password=password(ts))).status_code == 200


def test_push_with_wrong_password_is_wrong_credentials(sim, receiver):
    body = push_body(receiver.url, Password=password(timestamp(), passkey="not-the-passkey"))
    assert_daraja_error(post(sim, PUSH, body), 500, "500.001.1001", "Wrong credentials")


def test_push_for_an_unknown_shortcode(sim, receiver):
    body = push_body(receiver.url, BusinessShortCode=600999, PartyB="600999")
    assert_daraja_error(post(sim, PUSH, body), 500, "500.001.1001", "Merchant does not exist")


@pytest.mark.parametrize("data, content_type", [("{not json", "application/json"), ("[]", "application/json"),
                                                ('{"Amount": 1}', "text/plain")])
def test_push_rejects_a_body_that_is_not_a_json_object(sim, data, content_type):
    headers = {"Authorization": f"Bearer {get_token(sim)}", "Content-Type": content_type}
    answer = requests.post(sim + PUSH, data=data, headers=headers, timeout=5)
    assert_daraja_error(answer, 400, "400.002.05", "Invalid Request Payload")


def test_configured_shortcode_is_known_beside_the_sandbox_one(settings, start_simulator, receiver):
    base = start_simulator(passkeys={SHORTCODE: SANDBOX_PASSKEY, "600100": "secret-passkey"})
    ts = timestamp()
    body = push_body(receiver.url, BusinessShortCode="600100", PartyB=600100, Timestamp=ts,
                     Password=password(ts, "600100", "secret-passkey"))
    assert post(base, PUSH, body).status_code == 200


def test_success_callback_carries_metadata(sim, receiver):
    ack = push(sim, receiver.url, phone="254700000000", amount="500")
    [callback] = receiver.wait()
    stk = callback["Body"]["stkCallback"]
    assert (stk["MerchantRequestID"], stk["CheckoutRequestID"]) == (ack["MerchantRequestID"], ack["CheckoutRequestID"])
    assert (stk["ResultCode"], stk["ResultDesc"]) == (0, "The service request is processed successfully.")
    meta = items(callback)
    assert meta["Amount"] == 500 and isinstance(meta["Amount"], (int, float))
    assert re.fullmatch(r"[A-Z][A-Z0-9]{9}", meta["MpesaReceiptNumber"])
    assert isinstance(meta["TransactionDate"], int)
    assert abs(datetime.strptime(str(meta["TransactionDate"]), "%Y%m%d%H%M%S").replace(tzinfo=NAIROBI)
               - datetime.now(NAIROBI)) < timedelta(minutes=1)
    assert meta["PhoneNumber"] == 254700000000
    assert receiver.calls[0]["path"] == "/callback/0123456789abcdef0123456789abcdef"
    assert receiver.calls[0]["headers"]["Content-Type"] == "application/json"
    record = wait_for(lambda: (tx := transaction(sim, ack["CheckoutRequestID"]))["callbacks"] and tx)
    assert record["state"] == "final" and record["receipt"] == meta["MpesaReceiptNumber"]
    assert record["callbacks"][0]["status"] == 200


@pytest.mark.parametrize("phone, code, desc", [
    ("254700000001", 1, "The balance is insufficient for the transaction."),
    ("254700001032", 1032, "Request cancelled by user"),
    ("254700002001", 2001, "The initiator information is invalid."),
    ("254700001037", 1037, "No response from user."),
    ("254708374149", 1037, "No response from user."),
])
def test_failure_callbacks_have_no_metadata(sim, receiver, phone, code, desc):
    push(sim, receiver.url, phone=phone)
    [callback] = receiver.wait()
    assert callback["Body"]["stkCallback"]["ResultCode"] == code
    assert callback["Body"]["stkCallback"]["ResultDesc"] == desc
    assert "CallbackMetadata" not in callback["Body"]["stkCallback"]


def test_ordinary_numbers_succeed_after_the_configured_delay(start_simulator, receiver):
    base = start_simulator(callback_delay=0.3)
    started = time.monotonic()
    push(base, receiver.url)
    [callback] = receiver.wait()
    assert callback["Body"]["stkCallback"]["ResultCode"] == 0
    assert receiver.calls[0]["at"] - started >= 0.3


def test_slow_number_waits_twenty_seconds(sim, receiver):
    ack = push(sim, receiver.url, phone="254700000020")
    assert transaction(sim, ack["CheckoutRequestID"])["planned"] == {
        "result_code": 0, "delay": 20.0, "duplicate": 1, "lose_callback": False, "callback_before_ack": False,
        "rule_id": None}


def test_paybill_to_another_shortcode_fails_with_2028(sim, receiver):
    push(sim, receiver.url, PartyB="600000")
    assert receiver.wait()[0]["Body"]["stkCallback"]["ResultCode"] == 2028


def test_an_unreachable_callback_url_is_recorded_not_retried(sim):
    ack = push(sim, "http://127.0.0.1:9/callback/0123456789abcdef0123456789abcdef", phone="254700000000")
    record = wait_for(lambda: (tx := transaction(sim, ack["CheckoutRequestID"]))["callbacks"] and tx)
    time.sleep(0.1)
    [delivery] = transaction(sim, ack["CheckoutRequestID"])["callbacks"]
    assert delivery["status"] is None and "ConnectionError" in delivery["error"]
    assert "0123456789abcdef0123456789abcdef" not in delivery["error"]
    assert record["callback_url"] == "http://127.0.0.1:9/callback/0123…"


def test_a_callback_url_with_words_safaricom_blocks_is_never_called(sim, receiver):
    ack = push(sim, receiver.url.replace("/callback/", "/mpesa/"), phone="254700000000")
    record = wait_for(lambda: (tx := transaction(sim, ack["CheckoutRequestID"]))["callback_note"] and tx)
    assert "mpesa" in record["callback_note"] and record["callbacks"] == []
    assert receiver.calls == []


def test_query_says_still_processing_in_darajas_three_forms_then_final(sim, receiver):
    rule(sim, phone="0712345678", delay=60)
    ack = push(sim, receiver.url)
    token = get_token(sim)
    forms = set()
    for _ in range(30):
        answer = query(sim, ack["CheckoutRequestID"], token)
        body = answer.json()
        if answer.status_code == 200:
            assert (body["ResultCode"], body["ResultDesc"]) == ("4999", "The transaction is still under processing")
        else:
            assert answer.status_code == 500 and body["errorCode"] == "500.001.1001"
            assert body["requestId"] == ack["CheckoutRequestID"]
            assert body["errorMessage"] in ("The transaction is being processed", "")
        forms.add((answer.status_code, body.get("errorMessage")))
    assert len(forms) == 3
    assert receiver.calls == []
    acted = requests.post(f"{sim}/simulator/transactions/{ack['CheckoutRequestID']}/act", timeout=5)
    assert acted.status_code == 200 and acted.json()["state"] == "final"
    answer = query(sim, ack["CheckoutRequestID"], token)
    assert answer.status_code == 200
    assert list(answer.json()) == DOCS_QUERY_KEYS
    assert answer.json()["ResultCode"] == "0"
    assert answer.json()["ResultDesc"] == "The service request is processed successfully."
    assert receiver.wait()[0]["Body"]["stkCallback"]["ResultCode"] == 0


def test_concurrent_pushes_get_distinct_ids_and_one_callback_each(sim, receiver):
    token = get_token(sim)
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: post(sim, PUSH, push_body(receiver.url, phone="254700000000"), token),
                                range(20)))
    ids = {a.json()["CheckoutRequestID"] for a in answers}
    assert len(ids) == 20
    callbacks = receiver.wait(20)
    assert {c["Body"]["stkCallback"]["CheckoutRequestID"] for c in callbacks} == ids


def test_query_words_1037_unlike_the_callback(sim, receiver):
    ack = push(sim, receiver.url, phone="254708374149")
    receiver.wait()
    body = query(sim, ack["CheckoutRequestID"]).json()
    assert (body["ResultCode"], body["ResultDesc"]) == ("1037", "DS timeout user cannot be reached")


def test_query_for_an_unknown_id(sim):
    answer = query(sim, "ws_CO_01012026101010123712345678")
    assert_daraja_error(answer, 500, "500.001.1001", "The transaction does not Exist")


def test_query_checks_credentials_like_push(sim, receiver):
    ack = push(sim, receiver.url)
    wrong = query(sim, ack["CheckoutRequestID"], Password=password(timestamp(), passkey="nope"))
    assert_daraja_error(wrong, 500, "500.001.1001", "Wrong credentials")
    missing = query(sim, "")
    assert_daraja_error(missing, 400, "400.002.02", "Bad Request - Invalid CheckoutRequestID")


def test_query_from_another_shortcode_does_not_find_it(start_simulator, receiver):
    base = start_simulator(passkeys={SHORTCODE: SANDBOX_PASSKEY, "600100": "other"})
    ack = push(base, receiver.url)
    ts = timestamp()
    answer = query(base, ack["CheckoutRequestID"], BusinessShortCode="600100", Timestamp=ts,
                   Password=password(ts, "600100", "other"))
    assert_daraja_error(answer, 500, "500.001.1001", "The transaction does not Exist")


def test_rule_sets_the_result_for_a_phone_in_any_form(sim, receiver):
    rule(sim, phone="+254 712 345 678", result_code=1032, result_desc="Cancelled by the simulator")
    push(sim, receiver.url)
    stk = receiver.wait()[0]["Body"]["stkCallback"]
    assert (stk["ResultCode"], stk["ResultDesc"]) == (1032, "Cancelled by the simulator")


def test_rule_can_send_a_string_result_code(sim, receiver):
    rule(sim, phone=ORDINARY, result_code="SFC_IC0003")
    ack = push(sim, receiver.url)
    assert receiver.wait()[0]["Body"]["stkCallback"]["ResultCode"] == "SFC_IC0003"
    assert query(sim, ack["CheckoutRequestID"]).json()["ResultCode"] == "SFC_IC0003"


def test_rule_duplicate_sends_the_callback_n_times(sim, receiver):
    rule(sim, phone=ORDINARY, duplicate=3)
    ack = push(sim, receiver.url)
    callbacks = receiver.wait(3)
    assert {c["Body"]["stkCallback"]["CheckoutRequestID"] for c in callbacks} == {ack["CheckoutRequestID"]}
    receipts = {items(c)["MpesaReceiptNumber"] for c in callbacks}
    assert len(receipts) == 1
    record = wait_for(lambda: len((tx := transaction(sim, ack["CheckoutRequestID"]))["callbacks"]) == 3 and tx)
    assert [c["status"] for c in record["callbacks"]] == [200, 200, 200]


def test_rule_lose_callback_leaves_only_the_query(sim, receiver):
    rule(sim, phone=ORDINARY, lose_callback=True, result_code=1)
    ack = push(sim, receiver.url)
    record = wait_for(lambda: (tx := transaction(sim, ack["CheckoutRequestID"]))["state"] == "final" and tx)
    assert record["callbacks"] == [] and "lose_callback" in record["callback_note"]
    body = query(sim, ack["CheckoutRequestID"]).json()
    assert (body["ResultCode"], body["ResultDesc"]) == ("1", "The balance is insufficient for the transaction.")
    time.sleep(0.1)
    assert receiver.calls == []


def test_rule_callback_before_ack(sim, receiver):
    rule(sim, phone=ORDINARY, callback_before_ack=True)
    ack = push(sim, receiver.url)
    assert len(receiver.calls) == 1  # already there when the ack arrives
    assert receiver.calls[0]["body"]["Body"]["stkCallback"]["CheckoutRequestID"] == ack["CheckoutRequestID"]


def test_rule_ack_delay_times_the_client_out_but_the_push_goes_through(sim, receiver):
    rule(sim, phone=ORDINARY, ack_delay=0.5, delay=0)
    with pytest.raises(requests.ReadTimeout):
        post(sim, PUSH, push_body(receiver.url), timeout=0.2)
    [callback] = receiver.wait()  # the callback comes even though the client never saw an ack
    assert callback["Body"]["stkCallback"]["ResultCode"] == 0
    assert len(requests.get(f"{sim}/simulator/transactions", timeout=5).json()["transactions"]) == 1


@pytest.mark.parametrize("push_error, status, code, message", [
    ("spike_arrest", 500, "500.003.02", "Spike Arrest Violation"),
    ("subscriber_locked", 500, "500.001.1001",
     "Unable to lock subscriber, a transaction is already in process for the current subscriber"),
    ({"http_status": 503, "errorCode": "503.001.01", "errorMessage": "Service Unavailable"},
     503, "503.001.01", "Service Unavailable"),
])
def test_rule_push_error_refuses_the_push(sim, receiver, push_error, status, code, message):
    rule(sim, phone=ORDINARY, push_error=push_error)
    assert_daraja_error(post(sim, PUSH, push_body(receiver.url)), status, code, message)
    assert requests.get(f"{sim}/simulator/transactions", timeout=5).json() == {"transactions": []}
    time.sleep(0.1)
    assert receiver.calls == []


def test_rule_push_error_can_be_a_processed_push_with_a_broken_answer(sim, receiver):
    rule(sim, scope="next", push_error={"http_status": 502, "raw": "<html>Bad Gateway</html>", "processed": True})
    answer = post(sim, PUSH, push_body(receiver.url))
    assert (answer.status_code, answer.text) == (502, "<html>Bad Gateway</html>")
    assert receiver.wait()[0]["Body"]["stkCallback"]["ResultCode"] == 0


def test_rule_query_error_then_the_real_answer(sim, receiver):
    rule(sim, phone=ORDINARY, query_error="spike_arrest", query_error_times=2)
    ack = push(sim, receiver.url)
    receiver.wait()
    token = get_token(sim)
    for _ in range(2):
        assert_daraja_error(query(sim, ack["CheckoutRequestID"], token), 500, "500.003.02", "Spike Arrest Violation")
    assert query(sim, ack["CheckoutRequestID"], token).json()["ResultCode"] == "0"


def test_next_scope_rule_applies_to_the_next_n_pushes_only(sim, receiver):
    rule(sim, scope="next", count=2, result_code=1032)
    for _ in range(3):
        push(sim, receiver.url)
    codes = sorted(c["Body"]["stkCallback"]["ResultCode"] for c in receiver.wait(3))
    assert codes == [0, 1032, 1032]
    assert requests.get(f"{sim}/simulator/rules", timeout=5).json() == {"rules": []}


def test_act_now_with_a_chosen_result(sim, receiver):
    rule(sim, phone=ORDINARY, delay=60)
    ack = push(sim, receiver.url)
    url = f"{sim}/simulator/transactions/{ack['CheckoutRequestID']}/act"
    assert requests.post(url, json={"result_code": 2001}, timeout=5).status_code == 200
    assert receiver.wait()[0]["Body"]["stkCallback"]["ResultCode"] == 2001
    assert requests.post(url, timeout=5).status_code == 409
    assert requests.post(f"{sim}/simulator/transactions/ws_CO_nope/act", timeout=5).status_code == 404


@pytest.mark.parametrize("spec", [
    {"phone": "12345", "result_code": 1}, {"scope": "phone", "result_code": 1}, {"phone": ORDINARY},
    {"phone": ORDINARY, "delay": -1}, {"phone": ORDINARY, "duplicate": 0}, {"phone": ORDINARY, "surprise": 1},
    {"scope": "next", "push_error": "nonsense"}, {"scope": "all", "phone": ORDINARY, "result_code": 1},
    {"scope": "next", "lose_callback": "yes"}, [],
])
def test_bad_rules_are_refused_with_a_reason(sim, spec):
    answer = requests.post(f"{sim}/simulator/rules", json=spec, timeout=5)
    assert answer.status_code == 400 and answer.json()["error"]


def test_reset_forgets_rules_and_transactions(sim, receiver):
    rule(sim, scope="all", delay=60)
    push(sim, receiver.url)
    assert requests.post(f"{sim}/simulator/reset", timeout=5).json() == {"status": "reset"}
    assert requests.get(f"{sim}/simulator/transactions", timeout=5).json() == {"transactions": []}
    assert requests.get(f"{sim}/simulator/rules", timeout=5).json() == {"rules": []}


def test_lock_subscribers_refuses_a_second_push_while_the_first_waits(start_simulator, receiver):
    base = start_simulator(lock_subscribers=True)
    rule(base, phone=ORDINARY, delay=60)
    push(base, receiver.url)
    answer = post(base, PUSH, push_body(receiver.url))
    assert_daraja_error(answer, 500, "500.001.1001",
                        "Unable to lock subscriber, a transaction is already in process for the current subscriber")
    assert post(base, PUSH, push_body(receiver.url, phone="254700000000")).status_code == 200


def test_logs_one_line_per_request_without_secrets(sim, receiver, caplog):
    caplog.set_level("INFO", logger="mpesa_agent.simulator")
    token = get_token(sim)
    body = push_body(receiver.url, phone="254700000000", amount=500)
    ack = post(sim, PUSH, body, token).json()
    receiver.wait()
    wait_for(lambda: any("CALLBACK" in r.getMessage() for r in caplog.records))
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (SANDBOX_PASSKEY, body["Password"], "test-secret", token, "0123456789abcdef0123456789abcdef"):
        assert secret not in text
    assert re.search(rf"POST {PUSH} -> 200 in \d+ ms \| 254700000000 KES 500 {ack['CheckoutRequestID']}", text)
    assert re.search(r"CALLBACK POST http://127\.0\.0\.1:\d+/callback/0123… ws_CO_\d+ ResultCode 0 -> 200", text)


def test_control_api_answers_loopback_only(settings):
    client = create_app(settings).test_client()
    assert client.get("/simulator/health", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
    assert client.get("/simulator/health", environ_base={"REMOTE_ADDR": "10.0.0.5"}).status_code == 403


def test_unknown_paths_and_methods_answer_in_darajas_envelope(sim):
    assert_daraja_error(requests.get(sim + PUSH, timeout=5), 405, "405.001", "GET Method Not Allowed")
    assert_daraja_error(requests.get(f"{sim}/mpesa/nothing", timeout=5), 404, "404.003.01", "Resource not found")


def test_python_dash_m_serves_with_one_startup_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "mpesa_agent.simulator", "--port", "0", "--callback-delay", "0.5"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stderr, selectors.EVENT_READ)
        assert selector.select(timeout=10), "no startup line"
        line = proc.stderr.readline()
        match = re.search(r"Daraja simulator on (http://127\.0\.0\.1:\d+) .*callback delay 0.5 s", line)
        assert match, line
        assert requests.get(f"{match[1]}/simulator/health", timeout=5).json()["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=5)
