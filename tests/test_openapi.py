"""The OpenAPI document at /openapi.json stays true: every route is in it and every documented
answer is produced by a real request and validates against the document's schema."""
import re
import sqlite3

import pytest
import schemathesis
from jsonschema import Draft202012Validator, FormatChecker

from callback_server import create_app
from harness import free_port
from mpesa_agent.daraja import DarajaClient
from mpesa_agent.server.openapi import openapi_spec
from mpesa_agent.server.store import Transaction
from test_callback_manager import callback_body

TOKEN = "0123456789abcdef0123456789abcdef"  # the token in conftest's MPESA_CALLBACK_URL
AUTH = {"Authorization": "Bearer test-api-key"}
REGISTRATION = {"checkout_request_id": "ws_CO_1", "phone_number": "0712345678", "amount": 500, "description": "lunch"}
CALLBACK = "/callback/{token}"
REGISTER, STATUS, WAIT = "/payment/register", "/payment/status/{checkout_request_id}", "/payment/wait/{checkout_request_id}"
TIMELINE, STREAM = "/payment/{checkout_request_id}/events", "/events/stream"


def documented(spec: dict) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, operations in spec["paths"].items() for method in operations}


def routes(app) -> set[tuple[str, str]]:
    """Flask's rules as OpenAPI paths: `<checkout_request_id>` -> `{checkout_request_id}`. The dashboard's
    HTML pages (/dashboard*) are for people signed in with a cookie, not part of the API for programs."""
    return {(re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule), method)
            for rule in app.url_map.iter_rules() if not rule.endpoint.startswith("dashboard.")
            for method in rule.methods - {"HEAD", "OPTIONS"}}


@pytest.mark.parametrize("callback_url, callback_path", [
    (f"http://127.0.0.1:8001/callback/{TOKEN}", CALLBACK),
    (f"https://pay.example.com/hooks/daraja/{TOKEN}", "/hooks/daraja/{token}"),
])
def test_every_route_is_in_the_document_and_nothing_else(settings, callback_url, callback_path):
    app = create_app(settings.replace(callback_url=callback_url))
    spec = app.test_client().get("/openapi.json").get_json()
    assert documented(spec) == routes(app)
    assert (callback_path, "POST") in documented(spec)
    app.extensions["callback_manager"].store.close()


def test_the_document_is_valid_openapi_3_1_served_without_a_key_and_without_the_token(app):
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    spec = response.get_json()
    assert spec == openapi_spec("/callback") and spec["openapi"].startswith("3.1")
    assert TOKEN not in response.get_data(as_text=True) and "test-api-key" not in response.get_data(as_text=True)
    for schema in spec["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    loaded = schemathesis.openapi.from_dict(spec)  # schemathesis refuses a document it cannot use
    assert len(list(loaded.get_all_operations())) == len(documented(spec))
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            bearer = operation["security"] == [{"bearerAuth": []}]
            assert bearer == path.startswith(("/payment/", "/payments", "/events", "/webhooks")), path
            assert ("401" in operation["responses"]) == bearer, path


def check(spec: dict, path: str, method: str, response) -> None:
    """The status is documented for this operation and the JSON body validates against its schema."""
    responses = spec["paths"][path][method.lower()]["responses"]
    answer = responses.get(str(response.status_code))
    assert answer is not None, f"{method} {path}: {response.status_code} is not documented"
    assert response.mimetype == "application/json", (method, path, response.status_code)
    schema = {**answer["content"]["application/json"]["schema"], "components": spec["components"]}
    Draft202012Validator(schema, format_checker=FormatChecker()).validate(response.get_json())
    for header in answer.get("headers", {}):
        assert header in response.headers, (method, path, response.status_code, header)


def test_every_documented_answer_is_real_and_validates(app, settings, monkeypatch, start_simulator):
    """Each (operation, status) in the document, produced by a real request and validated."""
    spec = openapi_spec("/callback")
    client = app.test_client()
    manager = app.extensions["callback_manager"]
    seen: set[tuple[str, str, str]] = set()

    def call(path: str, method: str, url: str, client=client, **kwargs):
        response = client.open(url, method=method, **kwargs)
        check(spec, path, method, response)
        seen.add((path, method, str(response.status_code)))
        return response

    def post_callback(body: bytes, token=TOKEN, **kwargs):
        return call(CALLBACK, "POST", f"/callback/{token}", data=body, content_type="application/json", **kwargs)

    assert call(REGISTER, "POST", REGISTER, json=REGISTRATION, headers=AUTH).status_code == 201
    assert call(REGISTER, "POST", REGISTER, json=REGISTRATION, headers=AUTH).status_code == 200
    for body in ({**REGISTRATION, "amount": "five"}, {"amount": 5}, "not json", [1]):
        kwargs = {"data": body} if isinstance(body, str) else {"json": body}
        assert call(REGISTER, "POST", REGISTER, headers=AUTH, **kwargs).status_code == 400
    assert call(REGISTER, "POST", REGISTER, json={**REGISTRATION, "amount": 600}, headers=AUTH).status_code == 409
    assert call(REGISTER, "POST", REGISTER, json=REGISTRATION).status_code == 401
    assert call(REGISTER, "POST", REGISTER, data=b"x" * 70_000, headers=AUTH).status_code == 413

    outcomes = {"ws_CO_paid": {}, "ws_CO_cancelled": {"result_code": 1032}, "ws_CO_odd": {"result_code": 7777},
                "ws_CO_mismatch": {"amount": 5}, "ws_CO_query": None}
    for checkout_id, changes in outcomes.items():
        call(REGISTER, "POST", REGISTER, json={**REGISTRATION, "checkout_request_id": checkout_id}, headers=AUTH)
        if changes is not None:
            assert post_callback(callback_body(checkout_request_id=checkout_id, **changes)).status_code == 200
    manager.settle_from_query("ws_CO_query", "completed", 0, "The service request is processed successfully.")
    assert post_callback(callback_body(checkout_request_id="ws_CO_parked")).status_code == 200
    assert post_callback(b'{"Body": {}}').status_code == 400
    assert post_callback(callback_body(), token="wrong").status_code == 404
    assert post_callback(b"{" + b" " * 70_000 + b"}").status_code == 413

    statuses = {}
    for checkout_id in ("ws_CO_1", *outcomes):
        statuses[checkout_id] = call(STATUS, "GET", f"/payment/status/{checkout_id}", headers=AUTH).get_json()["status"]
        call(WAIT, "GET", f"/payment/wait/{checkout_id}?timeout=0", headers=AUTH)
    assert statuses == {"ws_CO_1": "pending", "ws_CO_paid": "success", "ws_CO_cancelled": "failed",
                        "ws_CO_odd": "unknown", "ws_CO_mismatch": "unknown", "ws_CO_query": "success"}
    for path, url in ((STATUS, "/payment/status/ws_CO_nobody"), (WAIT, "/payment/wait/ws_CO_nobody?timeout=0")):
        assert call(path, "GET", url, headers=AUTH).status_code == 404
        assert call(path, "GET", url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert call(WAIT, "GET", "/payment/wait/ws_CO_1?timeout=soon", headers=AUTH).status_code == 400
    assert call("/health", "GET", "/health").status_code == 200
    assert call("/openapi.json", "GET", "/openapi.json").status_code == 200

    listed = call("/payments", "GET", "/payments?status=completed&limit=10", headers=AUTH).get_json()["payments"]
    assert {p["checkout_request_id"] for p in listed} == {"ws_CO_paid", "ws_CO_query"}
    for bad in ("status=paid", "limit=0", "limit=x"):
        assert call("/payments", "GET", f"/payments?{bad}", headers=AUTH).status_code == 400
    assert call("/payments", "GET", "/payments").status_code == 401
    history = "/payment/history"
    first = call(history, "GET", f"{history}?limit=2", headers=AUTH).get_json()
    assert len(first["payments"]) == 2 and first["next_cursor"]
    rest = call(history, "GET", f"{history}?limit=100&cursor={first['next_cursor']}", headers=AUTH).get_json()
    assert rest["next_cursor"] is None and len(first["payments"] + rest["payments"]) == len(statuses)
    for bad in ("status=paid", "phone=123", "limit=0", "cursor=x", "since=yesterday", "min_amount=0.5"):
        assert call(history, "GET", f"{history}?{bad}", headers=AUTH).get_json()["parameter"] == bad.split("=")[0]
    assert call(history, "GET", history).status_code == 401
    exported = client.get(f"{history}.csv?status=completed", headers=AUTH)
    assert (exported.status_code, exported.mimetype) == (200, "text/csv")
    assert exported.get_data(as_text=True).count("\r\n") == 3  # the header and two payments
    seen.add((f"{history}.csv", "GET", "200"))
    assert call(f"{history}.csv", "GET", f"{history}.csv?status=paid", headers=AUTH).status_code == 400
    assert call(f"{history}.csv", "GET", f"{history}.csv").status_code == 401
    figures = call("/payment/analytics", "GET", "/payment/analytics", headers=AUTH).get_json()
    assert figures["by_status"]["completed"]["count"] == 2 and figures["failure_reasons"][0]["result_codes"] == ["1032"]
    assert call("/payment/analytics", "GET", "/payment/analytics?since=2026-13-01", headers=AUTH).status_code == 400
    assert call("/payment/analytics", "GET", "/payment/analytics").status_code == 401
    page = call("/events", "GET", "/events?limit=5", headers=AUTH).get_json()
    assert len(page["events"]) == 5 and page["next_after"] == page["events"][-1]["id"]
    for bad in ("after=-1", "limit=0", "type=payment.paid", "checkout_request_id=a%20b"):
        assert call("/events", "GET", f"/events?{bad}", headers=AUTH).status_code == 400
    assert call("/events", "GET", "/events").status_code == 401
    timeline = call(TIMELINE, "GET", "/payment/ws_CO_paid/events", headers=AUTH).get_json()
    assert [e["type"] for e in timeline["events"]] == ["payment.registered", "payment.completed", "callback.received"]
    assert call(TIMELINE, "GET", "/payment/ws_CO_nobody/events", headers=AUTH).status_code == 404
    assert call(TIMELINE, "GET", "/payment/ws_CO_paid/events").status_code == 401
    assert call(STREAM, "GET", STREAM, headers={**AUTH, "Last-Event-ID": "x"}).status_code == 400
    assert call(STREAM, "GET", STREAM).status_code == 401
    stream = client.get(STREAM, headers={**AUTH, "Last-Event-ID": str(page["next_after"] - 1)}, buffered=False)
    assert (stream.status_code, stream.mimetype) == (200, "text/event-stream")
    chunks = iter(stream.response)
    assert next(chunks).startswith(b"retry:") and f"id: {page['next_after']}\n".encode() in next(chunks)
    stream.close()
    seen.add((STREAM, "GET", "200"))

    hooks, hook, replay, deliveries = "/webhooks", "/webhooks/{endpoint_id}", "/webhooks/{endpoint_id}/replay", \
        "/webhooks/{endpoint_id}/deliveries"
    created = call(hooks, "POST", hooks, json={"url": "https://93.184.215.14/hook", "events": ["*"]}, headers=AUTH)
    assert created.status_code == 201
    endpoint = created.get_json()["id"]
    assert call(hooks, "POST", hooks, json={"url": "http://127.0.0.1/hook", "events": ["*"]}, headers=AUTH).status_code == 400
    assert call(hooks, "POST", hooks, json={}).status_code == 401
    assert call(hooks, "GET", hooks, headers=AUTH).get_json()["webhooks"][0]["id"] == endpoint
    assert call(hooks, "GET", hooks).status_code == 401
    assert call(hook, "PATCH", f"/webhooks/{endpoint}", json={"events": ["payment.completed"]}, headers=AUTH).status_code == 200
    assert call(hook, "PATCH", f"/webhooks/{endpoint}", json={}, headers=AUTH).status_code == 400
    assert call(hook, "PATCH", "/webhooks/ep_nobody", json={"enabled": True}, headers=AUTH).status_code == 404
    assert call(hook, "PATCH", f"/webhooks/{endpoint}", json={}).status_code == 401
    rotate = "/webhooks/{endpoint_id}/rotate-secret"
    assert call(rotate, "POST", f"/webhooks/{endpoint}/rotate-secret", headers=AUTH).status_code == 200
    assert call(rotate, "POST", "/webhooks/ep_nobody/rotate-secret", headers=AUTH).status_code == 404
    assert call(rotate, "POST", f"/webhooks/{endpoint}/rotate-secret").status_code == 401
    assert call(replay, "POST", f"/webhooks/{endpoint}/replay", json={"event_id": 1}, headers=AUTH).status_code == 202
    assert call(replay, "POST", f"/webhooks/{endpoint}/replay", json={"since": "2020-01-01T00:00:00Z"},
                headers=AUTH).get_json()["queued"] >= 1
    assert call(replay, "POST", f"/webhooks/{endpoint}/replay", json={"event_id": 10**9}, headers=AUTH).status_code == 400
    assert call(replay, "POST", "/webhooks/ep_nobody/replay", json={"event_id": 1}, headers=AUTH).status_code == 404
    assert call(replay, "POST", f"/webhooks/{endpoint}/replay", json={"event_id": 1}).status_code == 401
    assert call(deliveries, "GET", f"/webhooks/{endpoint}/deliveries", headers=AUTH).get_json()["deliveries"] == []
    assert call(deliveries, "GET", f"/webhooks/{endpoint}/deliveries?limit=0", headers=AUTH).status_code == 400
    assert call(deliveries, "GET", "/webhooks/ep_nobody/deliveries", headers=AUTH).status_code == 404
    assert call(deliveries, "GET", f"/webhooks/{endpoint}/deliveries").status_code == 401
    assert call(hook, "DELETE", f"/webhooks/{endpoint}", headers=AUTH).get_json() == {"deleted": endpoint}
    assert call(hook, "DELETE", f"/webhooks/{endpoint}", headers=AUTH).status_code == 404
    assert call(hook, "DELETE", f"/webhooks/{endpoint}").status_code == 401

    retry, retries = "/payment/{checkout_request_id}/retry", app.extensions["retries"]
    assert call(retry, "POST", "/payment/ws_CO_cancelled/retry").status_code == 401
    assert call(retry, "POST", "/payment/ws_CO_nobody/retry", headers=AUTH).status_code == 404
    assert call(retry, "POST", "/payment/ws_CO_cancelled/retry", data="not json", headers=AUTH).status_code == 400
    assert call(retry, "POST", "/payment/ws_CO_paid/retry", headers=AUTH).get_json()["payment_status"] == "completed"
    assert call(retry, "POST", "/payment/ws_CO_cancelled/retry", headers=AUTH).status_code == 429  # 7 to one phone
    monkeypatch.setattr(retries, "settings", settings.replace(rate_limit_count=100))
    assert call(retry, "POST", "/payment/ws_CO_cancelled/retry", headers=AUTH).get_json()["needs"] == "confirm_repeat"
    confirmed = {"json": {"confirm_repeat": True}, "headers": AUTH}
    monkeypatch.setattr(retries, "daraja", DarajaClient.from_settings(settings.replace(base_url=f"http://127.0.0.1:{free_port()}")))
    assert call(retry, "POST", "/payment/ws_CO_cancelled/retry", **confirmed).get_json()["sent"] is False
    monkeypatch.setattr(retries, "daraja", DarajaClient.from_settings(settings.replace(base_url=start_simulator())))
    assert call(retry, "POST", "/payment/ws_CO_cancelled/retry", **confirmed).status_code == 201
    assert call(retry, "POST", "/payment/ws_CO_cancelled/retry", **confirmed).get_json()["created"] is False
    chain = call(STATUS, "GET", "/payment/status/ws_CO_cancelled", headers=AUTH).get_json()["attempts"]
    assert [(p["attempt"], p["retry_of"]) for p in chain] == [(1, None), (2, "ws_CO_cancelled")]
    bulk, report, report_csv, cancel = ("/payment/bulk", "/payment/bulk/{batch_id}", "/payment/bulk/{batch_id}.csv",
                                        "/payment/bulk/{batch_id}/cancel")
    items = [{"phone_number": "0733111222", "amount": 500}, {"phone_number": "0712", "amount": 5}]
    accepted = call(bulk, "POST", bulk, json={"description": "chama", "items": items, "skip_invalid": True}, headers=AUTH)
    assert accepted.status_code == 201
    batch_id = accepted.get_json()["batch"]["id"]
    assert call(bulk, "POST", bulk, json={"items": items}, headers=AUTH).get_json()["problems"][0]["line"] == 2
    assert call(bulk, "POST", bulk, json={"items": items}).status_code == 401
    assert call(bulk, "POST", bulk, data="0712345678," + "1" * 1_100_000, content_type="text/csv",
                headers=AUTH).status_code == 413
    assert call(bulk, "GET", bulk, headers=AUTH).get_json()["batches"][0]["id"] == batch_id
    assert call(bulk, "GET", f"{bulk}?limit=0", headers=AUTH).status_code == 400
    assert call(bulk, "GET", bulk).status_code == 401
    assert call(report, "GET", f"{bulk}/{batch_id}?items=true", headers=AUTH).get_json()["items"][0]["outcome"] == "queued"
    assert call(report, "GET", f"{bulk}/{batch_id}?items=maybe", headers=AUTH).status_code == 400
    assert call(report, "GET", f"{bulk}/bat_nobody", headers=AUTH).status_code == 404
    assert call(report, "GET", f"{bulk}/{batch_id}").status_code == 401
    as_csv = client.get(f"{bulk}/{batch_id}.csv", headers=AUTH)
    assert (as_csv.status_code, as_csv.mimetype) == (200, "text/csv")
    seen.add((report_csv, "GET", "200"))
    assert call(report_csv, "GET", f"{bulk}/bat_nobody.csv", headers=AUTH).status_code == 404
    assert call(report_csv, "GET", f"{bulk}/{batch_id}.csv").status_code == 401
    assert call(cancel, "POST", f"{bulk}/{batch_id}/cancel", headers=AUTH).get_json()["cancelled"] == 1
    assert call(cancel, "POST", f"{bulk}/bat_nobody/cancel", headers=AUTH).status_code == 404
    assert call(cancel, "POST", f"{bulk}/{batch_id}/cancel").status_code == 401
    assert call("/events", "GET", "/events?type=batch.finished", headers=AUTH).get_json()["events"][0]["data"][
        "batch"]["status"] == "cancelled"

    guarded = create_app(settings.replace(trusted_callback_ips=("196.201.212.0/24",)))
    assert post_callback(callback_body(), client=guarded.test_client(),
                         environ_base={"REMOTE_ADDR": "6.6.6.6"}).status_code == 403
    guarded.extensions["callback_manager"].store.close()

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Transaction, "insert_callback", broken)
    assert post_callback(callback_body()).status_code == 503
    monkeypatch.setattr(Transaction, "insert_callback", bug)
    assert post_callback(callback_body()).status_code == 500
    monkeypatch.setattr(manager.store, "counts", broken)
    assert call("/health", "GET", "/health").status_code == 503

    every = {(path, method.upper(), status) for path, operations in spec["paths"].items()
             for method, operation in operations.items() for status in operation["responses"]}
    assert seen == every
