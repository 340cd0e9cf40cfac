import io
import json
import logging
import sqlite3
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from callback_server import create_app, main
from mpesa_agent.server import serve
from mpesa_agent.server.api import wait_timeout
from mpesa_agent.server.serve import ensure_api_key
from mpesa_agent.config import ConfigError
from mpesa_agent.server.store import Store, open_store, Transaction
from test_callback_manager import (SAMPLE_CANCELLED, SAMPLE_CANCELLED_ID, SAMPLE_NO_RESPONSE,
                                   SAMPLE_NO_RESPONSE_ID, SAMPLE_SUCCESS, SAMPLE_SUCCESS_ID,
                                   SAMPLE_SUCCESS_PHONE, callback_body)

pytestmark = pytest.mark.stores  # each test on SQLite and on PostgreSQL (tests/conftest.py)

TOKEN = "0123456789abcdef0123456789abcdef"  # the token in conftest's MPESA_CALLBACK_URL
CALLBACK = f"/callback/{TOKEN}"
AUTH = {"Authorization": "Bearer test-api-key"}


def payload(**changes) -> dict:
    base = {"checkout_request_id": "ws_CO_1", "phone_number": "254712345678", "amount": 500,
            "description": "lunch"}
    return {k: v for k, v in {**base, **changes}.items() if v is not ...}


def register(client, **changes):
    return client.post("/payment/register", json=payload(**changes), headers=AUTH)


def post_callback(client, body: bytes, path=CALLBACK, **kwargs):
    return client.post(path, data=body, content_type="application/json", **kwargs)


def assert_error(response, status_code, *words):
    assert response.status_code == status_code, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "error", body
    for word in words:
        assert word in body["error"], body["error"]
    return body


def test_create_app_needs_an_api_key_and_a_callback_token(settings):
    with pytest.raises(ConfigError, match="CALLBACK_API_KEY"):
        create_app(settings.replace(callback_api_key=""))
    with pytest.raises(ConfigError, match="secret token"):
        create_app(settings.replace(callback_url="http://127.0.0.1:8001/callback/short"))
    with pytest.raises(ConfigError, match="collides"):
        create_app(settings.replace(callback_url="http://127.0.0.1:8001/payment/0123456789abcdef0123456789abcdef"))


def test_each_app_owns_its_manager(app, settings):
    other = create_app(settings)
    assert app.extensions["callback_manager"] is not other.extensions["callback_manager"]
    other.extensions["callback_manager"].store.close()


@pytest.mark.parametrize("method, path", [("post", "/payment/register"), ("get", "/payment/status/ws_CO_1"),
                                          ("get", "/payment/wait/ws_CO_1?timeout=0"), ("get", "/payment/nope")])
@pytest.mark.parametrize("headers, words", [
    ({}, "missing API key"), ({"Authorization": "Bearer"}, "missing API key"),
    ({"Authorization": "Basic dGVzdC1hcGkta2V5"}, "missing API key"),
    ({"Authorization": "Bearer wrong"}, "wrong API key"), ({"Authorization": "Bearer test-api-keyX"}, "wrong API key"),
    ({"Authorization": "Bearer tëst"}, "wrong API key"),
])
def test_payment_api_needs_the_bearer_key(client, method, path, headers, words):
    response = getattr(client, method)(path, json=payload(), headers=headers)
    assert_error(response, 401, words)
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_health_and_callbacks_need_no_api_key(client):
    assert client.get("/health").status_code == 200
    assert post_callback(client, callback_body()).status_code == 200


def test_register_new_then_same_again_then_conflict(client):
    first = register(client, phone_number="0712 345 678")
    assert first.status_code == 201
    body = first.get_json()
    assert (body["status"], body["created"], body["payment_status"]) == ("registered", True, "pending")
    assert body["payment"]["phone_number"] == "254712345678" and body["payment"]["amount"] == 500
    again = register(client)
    assert again.status_code == 200 and again.get_json()["created"] is False
    conflict = assert_error(register(client, amount=600), 409, "already registered", "amount")
    assert conflict["fields"] == ["amount"]


def test_register_without_description_and_with_merchant_id(client):
    response = register(client, description=..., merchant_request_id="29115-34620561-1")
    assert response.status_code == 201
    assert response.get_json()["payment"]["description"] == ""
    assert response.get_json()["payment"]["merchant_request_id"] == "29115-34620561-1"


@pytest.mark.parametrize("body, words", [
    (b"", "empty"), (b"not json", "not valid JSON"), (b"[1, 2]", "JSON object, not list"), (b'"x"', "not str"),
    (b"\xff\xfe\x00", "not valid JSON"), (b'{"amount": NaN}', "not valid JSON"), (b"{" * 50_000, "not valid JSON"),
    (b'{"amount": 1' + b"0" * 5000 + b"}", "not valid JSON"),
])
def test_register_refuses_bodies_that_are_not_a_json_object(client, body, words):
    assert_error(client.post("/payment/register", data=body, content_type="application/json", headers=AUTH), 400, *words)


@pytest.mark.parametrize("changes, field, words", [
    ({"checkout_request_id": ...}, "checkout_request_id", "missing field"),
    ({"phone_number": ..., "amount": ...}, "phone_number", "missing fields: phone_number, amount"),
    ({"amount": ""}, "amount", "missing field"),
    ({"checkout_request_id": 12}, "checkout_request_id", "CheckoutRequestID"),
    ({"checkout_request_id": "ws CO 1"}, "checkout_request_id", "CheckoutRequestID"),
    ({"phone_number": "12345"}, "phone_number", "not a valid Kenyan mobile number"),
    ({"phone_number": True}, "phone_number", "must be text"),
    ({"phone_number": {"n": 1}}, "phone_number", "must be text"),
    ({"amount": -5}, "amount", "at least 1"), ({"amount": 0}, "amount", "at least 1"),
    ({"amount": 10**12}, "amount", "above the limit"), ({"amount": 1e300}, "amount", "above the limit"),
    ({"amount": True}, "amount", "missing"), ({"amount": 12.5}, "amount", "whole shillings"),
    ({"amount": "five"}, "amount", "not a number"), ({"amount": [500]}, "amount", "must be a number"),
    ({"description": 5}, "description", "must be text"), ({"description": "x" * 101}, "description", "at most 100"),
    ({"merchant_request_id": ["m"]}, "merchant_request_id", "must be text"),
])
def test_register_names_the_bad_field(client, changes, field, words):
    body = assert_error(register(client, **changes), 400, field, words)
    assert field in body["fields"]


def test_register_accepts_amounts_written_the_usual_ways(client):
    assert register(client, checkout_request_id="ws_CO_a", amount="1,500").get_json()["payment"]["amount"] == 1500
    assert register(client, checkout_request_id="ws_CO_b", amount=500.0).get_json()["payment"]["amount"] == 500


@hypothesis_settings(max_examples=120, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["checkout_request_id", "phone_number", "amount", "description",
                                        "merchant_request_id", "other"]),
                       st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
                       | st.lists(st.integers(), max_size=2), max_size=6))
def test_no_registration_payload_causes_a_server_error(client, data):
    response = client.post("/payment/register", data=json.dumps(data), content_type="application/json", headers=AUTH)
    assert response.status_code in (200, 201, 400, 409), response.get_data(as_text=True)
    assert response.is_json


def test_status_of_an_unknown_payment_is_404(client):
    body = assert_error(client.get("/payment/status/ws_CO_nobody", headers=AUTH), 404, "ws_CO_nobody")
    assert body["checkout_request_id"] == "ws_CO_nobody"


def test_status_is_the_seed_notification_plus_the_record(client):
    register(client)
    pending = client.get("/payment/status/ws_CO_1", headers=AUTH).get_json()
    assert (pending["status"], pending["payment_status"], pending["checkout_request_id"]) == ("pending", "pending", "ws_CO_1")
    assert pending["message"] == "⏳ Waiting for the customer to approve the payment on their phone"
    post_callback(client, callback_body())
    done = client.get("/payment/status/ws_CO_1", headers=AUTH).get_json()
    assert done["status"] == "success" and done["payment"]["status"] == "completed"
    assert done["message"] == "💰 Payment completed successfully! 500 KSh sent to 0712345678 for lunch"
    assert done["payment_details"] == {"Amount": 500, "MpesaReceiptNumber": "NLJ7RT61SV",
                                       "TransactionDate": 20191219102115, "PhoneNumber": 254712345678}


def test_json_answers_keep_emoji_readable(client):
    register(client)
    assert "⏳".encode() in client.get("/payment/status/ws_CO_1", headers=AUTH).data


@pytest.mark.parametrize("raw, expected", [
    (None, 120), ("5", 5), ("2.5", 2.5), ("-3", 0), ("100000", 300), ("1e9", 300),
])
def test_wait_timeout_is_clamped(raw, expected):
    assert wait_timeout(raw) == (expected, None)


@pytest.mark.parametrize("raw", ["", "abc", "nan", "inf", "-inf", "1e999", "5s"])
def test_wait_timeout_must_be_a_number(client, raw):
    register(client)
    assert_error(client.get(f"/payment/wait/ws_CO_1?timeout={raw}", headers=AUTH), 400, "timeout must be a number")


def test_wait_times_out_with_the_timeout_notification_and_a_late_callback_still_settles(client):
    register(client)
    started = time.monotonic()
    body = client.get("/payment/wait/ws_CO_1?timeout=0.3", headers=AUTH).get_json()
    assert time.monotonic() - started >= 0.25, "it waited for the timeout"
    assert body["status"] == "timeout" and body["payment_status"] == "pending"
    assert body["message"] == "⏱️ Payment initiated but completion status unknown"
    assert post_callback(client, callback_body(result_code=1032)).status_code == 200
    body = client.get("/payment/wait/ws_CO_1?timeout=0", headers=AUTH).get_json()
    assert (body["status"], body["error_message"]) == ("failed", "Request cancelled by user")
    assert body["message"] == "❌ Payment failed: Request cancelled by user"


def test_a_negative_timeout_answers_at_once(client):
    register(client)
    started = time.monotonic()
    assert client.get("/payment/wait/ws_CO_1?timeout=-50", headers=AUTH).get_json()["status"] == "timeout"
    assert time.monotonic() - started < 30, "clamped to 0, not to the 120 s default"


def test_waiter_is_woken_by_a_callback_posted_from_another_thread(app, client):
    register(client)
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(
        app.test_client().get("/payment/wait/ws_CO_1?timeout=10", headers=AUTH)))
    waiter.start()
    time.sleep(0.2)
    assert post_callback(app.test_client(), callback_body()).get_json() == {"ResultCode": 0, "ResultDesc": "Accepted"}
    waiter.join(5)
    assert not waiter.is_alive(), "woken by the callback, not by its 10 s timeout"
    assert answers[0].status_code == 200 and answers[0].get_json()["status"] == "success"


def test_waiting_on_an_unregistered_id_catches_a_registration_that_matches_a_parked_callback(app, client):
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(
        app.test_client().get("/payment/wait/ws_CO_1?timeout=10", headers=AUTH)))
    waiter.start()
    post_callback(client, callback_body())
    time.sleep(0.2)
    assert waiter.is_alive()
    register(client)
    waiter.join(5)
    assert answers[0].get_json()["status"] == "success"


def test_waiting_on_an_id_never_registered_is_404_at_the_timeout(client):
    assert_error(client.get("/payment/wait/ws_CO_nobody?timeout=0.1", headers=AUTH), 404, "ws_CO_nobody")


@pytest.mark.parametrize("body, checkout_id, phone, amount, status", [
    (SAMPLE_SUCCESS, SAMPLE_SUCCESS_ID, SAMPLE_SUCCESS_PHONE, 1, "success"),
    (SAMPLE_CANCELLED, SAMPLE_CANCELLED_ID, "0722943992", 1, "failed"),
    (SAMPLE_NO_RESPONSE, SAMPLE_NO_RESPONSE_ID, "0708374149", 1, "failed"),
])
def test_real_samples_are_accepted_and_settle(client, body, checkout_id, phone, amount, status):
    register(client, checkout_request_id=checkout_id, phone_number=phone, amount=amount)
    response = post_callback(client, body, headers={"Businessshortcode": "174379"})
    assert (response.status_code, response.get_json()) == (200, {"ResultCode": 0, "ResultDesc": "Accepted"})
    assert client.get(f"/payment/status/{checkout_id}", headers=AUTH).get_json()["status"] == status


def test_the_raw_body_is_committed_before_daraja_gets_its_200(client, settings):
    response = post_callback(client, SAMPLE_SUCCESS, headers={"Businessshortcode": "174379"},
                             environ_base={"REMOTE_ADDR": "196.201.212.69"})
    assert response.status_code == 200
    fresh = open_store(settings.payments_db)  # another connection: only committed data is visible
    [raw] = fresh.callbacks()
    assert (raw.body, raw.source_addr, raw.outcome) == (SAMPLE_SUCCESS, "196.201.212.69", "parked")
    assert raw.headers["Businessshortcode"] == "174379"
    fresh.close()


@pytest.mark.parametrize("failure, status_code, words, retry_after", [
    (sqlite3.OperationalError("database or disk is full"), 503,
     "the payments database is unavailable for a moment; send the request again", "1"),
    (sqlite3.IntegrityError("UNIQUE constraint failed: callbacks.id"), 500, "internal error", None),  # a bug
], ids=["database unavailable", "broken constraint"])
def test_no_accepted_answer_when_the_body_could_not_be_stored(app, client, monkeypatch, failure, status_code, words,
                                                              retry_after):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(Transaction, "insert_callback", fail)
    response = post_callback(client, SAMPLE_SUCCESS)
    assert_error(response, status_code, words)
    assert response.headers.get("Retry-After") == retry_after
    assert "Accepted" not in response.get_data(as_text=True)


def test_a_duplicate_callback_is_accepted_and_changes_nothing(app, client):
    register(client)
    post_callback(client, callback_body())
    before = client.get("/payment/status/ws_CO_1", headers=AUTH).get_json()
    assert post_callback(client, callback_body()).status_code == 200
    assert client.get("/payment/status/ws_CO_1", headers=AUTH).get_json() == before
    outcomes = [cb.outcome for cb in app.extensions["callback_manager"].store.callbacks()]
    assert outcomes == ["applied", "duplicate"]


def test_a_contradicting_callback_is_accepted_recorded_and_not_applied(app, client):
    register(client)
    post_callback(client, callback_body())
    assert post_callback(client, callback_body(result_code=1032)).status_code == 200
    assert client.get("/payment/status/ws_CO_1", headers=AUTH).get_json()["status"] == "success"
    assert app.extensions["callback_manager"].store.callbacks()[-1].outcome == "conflict"


def test_a_mismatched_success_is_never_reported_as_success(client):
    register(client)
    post_callback(client, callback_body(amount=5))
    body = client.get("/payment/status/ws_CO_1", headers=AUTH).get_json()
    assert (body["status"], body["payment_status"]) == ("unknown", "unknown")
    assert "does not match the registered payment" in body["message"]


@pytest.mark.parametrize("body, words", [
    (b"not json", "not valid JSON"), (b"", "empty"), (b'{"Body": {}}', "stkCallback"),
    (callback_body(result_code=None), "ResultCode"),
])
def test_an_invalid_callback_is_stored_and_answered_400(app, client, body, words):
    register(client)
    response = post_callback(client, body)
    assert response.status_code == 400
    answer = response.get_json()
    assert answer["ResultCode"] == 1 and answer["ResultDesc"].startswith("Rejected: ") and words in answer["ResultDesc"]
    [raw] = app.extensions["callback_manager"].store.callbacks()
    assert (raw.body, raw.outcome) == (body, "invalid")
    assert client.get("/payment/status/ws_CO_1", headers=AUTH).get_json()["status"] == "pending"


@pytest.mark.parametrize("path", [f"/callback/{TOKEN[:-1]}X", "/callback/wrong", f"/callback/{TOKEN}0",
                                  "/callback/t%C3%ABst"])
def test_a_wrong_token_is_404_leaves_the_payment_alone_and_is_kept_for_review(app, client, path):
    register(client)
    response = post_callback(client, callback_body(), path=path)
    assert_error(response, 404, "not found")
    assert client.get("/payment/status/ws_CO_1", headers=AUTH).get_json()["status"] == "pending"
    [raw] = app.extensions["callback_manager"].store.callbacks()
    assert (raw.outcome, raw.note, raw.checkout_request_id) == ("rejected", "wrong token in the callback URL", "ws_CO_1")


def test_the_callback_path_without_a_token_is_404(client):
    assert_error(post_callback(client, callback_body(), path="/callback"), 404)
    assert_error(post_callback(client, callback_body(), path="/callback/"), 404)


def test_a_callback_body_over_64_kib_is_413_and_not_stored(app, client):
    register(client)
    assert_error(post_callback(client, b"{" + b" " * (64 * 1024) + b"}"), 413, "at most 65536 bytes")
    chunked = client.post(CALLBACK, input_stream=io.BytesIO(b"x" * 70_000),  # no Content-Length
                          environ_base={"wsgi.input_terminated": True}, content_type="application/json")
    assert_error(chunked, 413)
    assert app.extensions["callback_manager"].store.callbacks() == []


def test_register_body_over_64_kib_is_413(client):
    assert_error(client.post("/payment/register", data=b"x" * 70_000, headers=AUTH), 413, "too large")


def test_untrusted_source_is_403_when_an_allow_list_is_set(settings):
    app = create_app(settings.replace(trusted_callback_ips=("196.201.212.0/24",), trusted_proxies=("127.0.0.1",)))
    client = app.test_client()
    manager = app.extensions["callback_manager"]
    manager.register("ws_CO_1", "0712345678", 500, "lunch")
    denied = post_callback(client, callback_body(), environ_base={"REMOTE_ADDR": "6.6.6.6"})
    assert denied.status_code == 403 and denied.get_json()["ResultCode"] == 1
    spoofed = post_callback(client, callback_body(), environ_base={"REMOTE_ADDR": "6.6.6.6"},
                            headers={"X-Forwarded-For": "196.201.212.69"})  # 6.6.6.6 is no trusted proxy
    assert spoofed.status_code == 403
    assert manager.status("ws_CO_1").status == "pending"
    relayed = post_callback(client, callback_body(), environ_base={"REMOTE_ADDR": "127.0.0.1"},
                            headers={"X-Forwarded-For": "10.0.0.1, 196.201.212.69"})
    assert relayed.status_code == 200 and manager.status("ws_CO_1").status == "completed"
    assert [(cb.outcome, cb.source_addr) for cb in manager.store.callbacks()] == [
        ("rejected", "6.6.6.6"), ("rejected", "6.6.6.6"), ("applied", "196.201.212.69")]
    manager.store.close()


def test_unknown_paths_and_methods_answer_json(client):
    assert_error(client.get("/nope"), 404, "not found")
    response = client.get(CALLBACK)
    assert_error(response, 405, "GET is not allowed here; use POST")
    assert "POST" in response.headers["Allow"]
    assert_error(client.delete("/payment/status/ws_CO_1", headers=AUTH), 405, "use GET")
    assert_error(client.get("/payment/register", headers=AUTH), 405, "use POST")


def test_an_unexpected_error_is_json_500_and_logged_without_the_token(app, client, monkeypatch, caplog):
    monkeypatch.setattr(app.extensions["callback_manager"], "ingest", lambda *a: 1 / 0)
    with caplog.at_level(logging.ERROR):
        assert_error(post_callback(client, callback_body()), 500, "ZeroDivisionError")
    assert "unexpected error in POST /callback/<token>" in caplog.text and TOKEN not in caplog.text


def test_logs_never_show_the_token_or_the_api_key(client, caplog):
    with caplog.at_level(logging.DEBUG):
        register(client)
        post_callback(client, callback_body())
        post_callback(client, callback_body(), path="/callback/wrong")
        client.get("/payment/status/ws_CO_1", headers={"Authorization": "Bearer wrong"})
    assert "callback #1 ws_CO_1: applied" in caplog.text
    assert TOKEN not in caplog.text and "test-api-key" not in caplog.text


def test_health_reports_the_database_and_counts(client, settings, app, monkeypatch):
    register(client)
    post_callback(client, callback_body())
    body = client.get("/health").get_json()
    assert body == {"status": "ok", "db": app.extensions["callback_manager"].store.described, "payments": {"completed": 1},
                    "callbacks": {"applied": 1}, "waiting": 0, "rejected": 0}

    def broken():
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(app.extensions["callback_manager"].store, "counts", broken)
    assert_error(client.get("/health"), 503, "database not usable")


def test_ensure_api_key_generates_one_into_env_local_keeping_existing_lines(settings):
    local = settings.root / ".env.local"
    local.write_text("MPESA_CONSUMER_KEY=mine")  # no trailing newline
    local.chmod(0o644)  # as `cat >> .env.local` makes it
    updated, source = ensure_api_key(settings.replace(callback_api_key=""))
    key = updated.callback_api_key
    assert len(key) >= 40 and str(local) in source and key not in source
    lines = local.read_text().splitlines()
    assert lines[0] == "MPESA_CONSUMER_KEY=mine" and lines[-1] == f"CALLBACK_API_KEY={key}"
    assert local.stat().st_mode & 0o777 == 0o600, "a file holding a secret is readable by its owner only"
    again, source = ensure_api_key(settings.replace(callback_api_key=key))
    assert again.callback_api_key == key and source == f"CALLBACK_API_KEY in {local}"
    (settings.root / ".env").write_text("CALLBACK_API_KEY=test-api-key\n")
    assert ensure_api_key(settings)[1] == f"CALLBACK_API_KEY in {settings.root / '.env'}"
    assert ensure_api_key(settings.replace(callback_api_key="k2"))[1] == "CALLBACK_API_KEY from the settings given to the server"


def test_main_prints_where_callbacks_go_with_the_token_masked(settings, monkeypatch, capsys):
    served = {}

    class Server:
        serve_forever = staticmethod(lambda: None)
        stop = staticmethod(lambda timeout=None: None)

    monkeypatch.setattr(serve, "wsgi_server", lambda app, host, port, connections, per_source, header: served.update(
        app=app, host=host, port=port, connections=connections, per_source=per_source) or Server())
    db = settings.root / "other" / "p.db"
    assert main(["--port", "9999", "--connections", "11000", "--per-source", "50", "--db", str(db)],
                settings=settings.replace(callback_api_key="")) == 0
    out = capsys.readouterr().out
    assert TOKEN not in out and served["app"].config["MPESA_SETTINGS"].callback_api_key not in out
    assert "Daraja callbacks expected at POST /callback/0123… " in out
    assert f"Store: SQLite {db} (WAL, synchronous=FULL)" in out
    assert "API key for /payment/* and /events (Authorization: Bearer ...): generated on first start" in out
    assert (served["host"], served["port"], served["connections"], served["per_source"]) == (
        "127.0.0.1", 9999, 11000, 50) and db.is_file()
    served["app"].extensions["callback_manager"].store.close()


def test_main_explains_a_bad_configuration(settings, capsys):
    assert main([], settings=settings.replace(callback_url="")) == 1
    assert "Configuration error: MPESA_CALLBACK_URL" in capsys.readouterr().err


@pytest.mark.parametrize("path", [CALLBACK, "/payment/register"])
def test_a_body_shorter_than_its_content_length_is_400_and_stores_nothing(app, path):
    from werkzeug.test import EnvironBuilder
    environ = EnvironBuilder(path=path, method="POST", headers=AUTH, data=b"").get_environ()
    environ.update({"wsgi.input": io.BytesIO(callback_body()[:50]), "CONTENT_LENGTH": str(len(callback_body()))})
    answers = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: answers.append(status)))
    assert answers == ["400 BAD REQUEST"] and json.loads(body)["status"] == "error"
    store = app.extensions["callback_manager"].store
    assert store.callbacks() == [] and store.counts()["payments"] == {}


def test_registration_and_callback_ack_bodies_and_headers(app, client):
    response = register(client)
    assert (response.status_code, response.content_type) == (201, "application/json")
    assert response.get_json()["payment"]["checkout_request_id"] == "ws_CO_1"
    assert register(client).status_code == 200
    assert register(client, amount=501).status_code == 409
    ack = post_callback(client, callback_body())
    assert (ack.status_code, ack.content_type, ack.get_data()) == (
        200, "application/json", b'{"ResultCode":0,"ResultDesc":"Accepted"}\n')
    assert client.post("/payment/register", json=payload(), headers={"Authorization": "Bearer nope"}).status_code == 401


@pytest.mark.parametrize("make, words", [
    (lambda path: path.write_bytes(b"this is not sqlite, just text " * 100), "not a SQLite database"),
    (lambda path: path.mkdir(), "it is a folder, not a file"),
    (lambda path: sqlite3.connect(path).execute("PRAGMA user_version = 99").connection.close(), "schema version 99"),
])
def test_a_bad_database_at_start_is_one_line_with_its_path_and_a_non_zero_exit(settings, capsys, make, words):
    db = settings.root / "bad" / "payments.db"
    db.parent.mkdir()
    make(db)
    assert main(["--db", str(db)], settings=settings) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"Database error: {db}") and words in err[0], err
    assert "Traceback" not in err[0] and "PAYMENTS_DB" in err[0]


def test_health_says_degraded_while_the_database_refuses_writes(app, client, monkeypatch):
    register(client)
    full = sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(Transaction, "set_callback_outcome", lambda *args, **kwargs: (_ for _ in ()).throw(full))
    assert post_callback(client, callback_body()).status_code == 200  # stored (as received) before the answer
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["status"] == "degraded"
    assert "disk is full" in health.get_json()["error"] and health.get_json()["callbacks"] == {"received": 1}
    monkeypatch.undo()
    assert app.extensions["callback_manager"].reapply() == 1
    assert client.get("/health").get_json()["status"] == "ok"
    assert client.get("/payment/status/ws_CO_1", headers=AUTH).get_json()["payment_status"] == "completed"


def test_wrong_token_floods_are_counted_not_stored(app, client):
    for _ in range(100):
        assert post_callback(client, callback_body() + b" " * 50_000, path="/callback/" + "f" * 32).status_code == 404
    health = client.get("/health").get_json()
    assert health["rejected"] == 100 and health["callbacks"]["rejected"] <= 10
    store = app.extensions["callback_manager"].store
    assert sum(len(raw.body) for raw in store.callbacks(outcome="rejected")) <= 10 * 2048
