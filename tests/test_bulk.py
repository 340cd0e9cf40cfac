"""Bulk payment requests: validation (rules and API), and the durable job against real processes
(the simulator and the callback server): mixed outcomes, kill -9 mid-batch, cancel, throttling."""
import io
import sqlite3
import time
from collections import Counter

import pytest
import requests

from harness import Stack
from mpesa_agent.payments.bulk import ItemView, Row, rows_from_csv, rows_from_json, summary, validate
from mpesa_agent.server.batches import Batches
from mpesa_agent.server.manager import CallbackManager
from mpesa_agent.server.store import SCHEMA_VERSION, Store

pytestmark = pytest.mark.stores  # every test taking db_kind (through app, client or db_target) runs on both stores
AUTH = {"Authorization": "Bearer test-api-key"}
SETTLE_WITHIN = 60.0  # seconds: a hang guard, never a timing assertion


def phones(count: int, start: int = 0) -> list[str]:
    return [f"07{12_000_000 + start + n:08d}" for n in range(count)]


def msisdn(phone: str) -> str:
    return "254" + phone[1:]


# --- validation: the rules --------------------------------------------------------------------


def test_every_bad_row_is_named_with_its_line_and_reason():
    rows = rows_from_csv("phone,amount,reference\n0712345678,500,A1\n0712 345 678,50,A2\n\nabc,0\n0722000000,1.5\n"
                         "0733000000,200000\n0744000000,100,A5,extra\n")
    valid, problems = validate(rows, max_amount=150_000)
    assert [row.phone_number for row in valid] == ["254712345678"]
    assert [(p.line, p.field) for p in problems] == [
        (3, "phone_number"), (5, "phone_number"), (5, "amount"), (6, "amount"), (7, "amount"), (8, None)]
    reasons = [p.reason for p in problems]
    assert "already on line 2" in reasons[0] and "whole shillings" in reasons[3] and "above the limit" in reasons[4]
    assert "too many columns" in reasons[5]


def test_csv_without_a_header_and_json_items_are_numbered_as_given():
    assert rows_from_csv("0712345678,500\n0722000000,300,rent\n") == [
        (1, {"phone_number": "0712345678", "amount": "500"}),
        (2, {"phone_number": "0722000000", "amount": "300", "reference": "rent"})]
    assert rows_from_csv("Amount,Phone\n500,0712345678\n") == [(2, {"phone_number": "0712345678", "amount": "500"})]
    valid, problems = validate(rows_from_json([{"phone_number": "+254 712 345 678", "amount": 500}, "x",
                                               {"phone": "0722000000", "amount": 1, "colour": "red"}]), 150_000)
    assert [row.line for row in valid] == [1] and [(p.line, p.reason) for p in problems] == [
        (2, "must be an object with phone_number and amount"), (3, "unknown field: colour")]


def test_the_same_amount_asked_of_a_phone_within_two_minutes_is_refused():
    valid, problems = validate(rows_from_json([{"phone_number": "0712345678", "amount": 500},
                                               {"phone_number": "0722000000", "amount": 500}]),
                               150_000, recent={"254712345678": 500, "254722000000": 400})
    assert [row.line for row in valid] == [2] and "less than 2 minutes ago" in problems[0].reason


def test_the_summary_says_who_paid_and_why_others_did_not_in_words():
    def item(n, state, status=None, reason=None):
        return ItemView(n, n, f"2547120000{n:02d}", 500, "", state, None, f"ws_CO_{n}", status, reason)
    items = [item(n, "sent", "completed") for n in range(28)]
    items += [item(28, "sent", "failed", "Request cancelled by user"),
              item(29, "sent", "failed", "No response from the customer (phone unreachable or prompt ignored)")]
    assert summary(items) == "28 of 30 paid, 1 cancelled, 1 did not answer"
    assert summary(items[:2] + [item(40, "queued"), item(41, "cancelled")]) == \
        "2 of 4 paid, 1 not sent yet, 1 not sent (batch cancelled)"


# --- validation: the API ----------------------------------------------------------------------


def test_nothing_is_stored_when_a_row_is_bad_unless_skip_invalid(client, app):
    items = [{"phone_number": "0712345678", "amount": 500}, {"phone_number": "0712345678", "amount": 300},
             {"phone_number": "07123", "amount": 100}]
    refused = client.post("/payment/bulk", json={"description": "chama", "items": items}, headers=AUTH)
    assert refused.status_code == 400
    body = refused.get_json()
    assert body["error"].startswith("2 of 3 rows are invalid, so nothing was sent")
    assert [(p["line"], p["field"]) for p in body["problems"]] == [(2, "phone_number"), (3, "phone_number")]
    assert client.get("/payment/bulk", headers=AUTH).get_json() == {"batches": []}
    accepted = client.post("/payment/bulk", json={"description": "chama", "items": items, "skip_invalid": True},
                           headers=AUTH)
    assert accepted.status_code == 201 and accepted.headers["Location"].startswith("/payment/bulk/bat_")
    batch = accepted.get_json()["batch"]
    assert (batch["item_count"], batch["total_amount"], len(batch["skipped"])) == (1, 500, 2)
    assert [e.type for e in app.extensions["callback_manager"].store.events()] == ["batch.started"]


@pytest.mark.parametrize("kwargs, problem", [
    ({"json": {"items": []}}, '"items" must be a non-empty list'),
    ({"json": {"items": [{"phone_number": "0712345678", "amount": 5}], "skip_invalid": "yes"}}, "skip_invalid"),
    ({"json": {"items": [], "currency": "USD"}}, "unknown field: currency"),
    ({"data": "phone,amount\n", "content_type": "text/csv"}, "header but no rows"),
    ({"data": b"\xff\xfe0712", "content_type": "text/csv"}, "UTF-8"),
    ({"data": {"description": "x"}, "content_type": "multipart/form-data"}, "attach the CSV"),
    ({"data": "nonsense", "content_type": "application/json"}, "not valid JSON"),
])
def test_a_request_that_is_wrong_as_a_whole_is_a_clear_400(client, kwargs, problem):
    response = client.post("/payment/bulk", headers=AUTH, **kwargs)
    assert response.status_code == 400 and problem in response.get_json()["error"]


def test_a_csv_arrives_as_a_body_or_as_a_multipart_file(client):
    body = client.post("/payment/bulk?description=rent&skip_invalid=false", data="0712345678,500,A1\n0722000000,300\n",
                       content_type="text/csv", headers=AUTH).get_json()["batch"]
    upload = client.post("/payment/bulk", headers=AUTH, content_type="multipart/form-data", data={
        "description": "school fees", "file": (io.BytesIO(b"phone,amount\n0733000000,1000\n"), "fees.csv")}
                         ).get_json()["batch"]
    assert (body["description"], body["total_amount"], upload["description"], upload["total_amount"]) == (
        "rent", 800, "school fees", 1000)
    csv_text = client.get(f"/payment/bulk/{body['id']}.csv", headers=AUTH).get_data(as_text=True)
    assert csv_text.splitlines()[1] == "1,1,254712345678,500,A1,queued,not sent yet,,"
    assert client.get("/payment/bulk/bat_nobody", headers=AUTH).status_code == 404
    assert client.get(f"/payment/bulk/{body['id']}").status_code == 401


# --- the durable job, with real processes -----------------------------------------------------


def bulk_stack(tmp_path, rate: float, db, **env) -> Stack:
    return Stack(tmp_path, db=db, SIMULATOR_CALLBACK_DELAY="0", BULK_PUSHES_PER_SECOND=str(rate),
                 BULK_THROTTLE_PAUSE_SECONDS="0.2", RECONCILE_AFTER_SECONDS="1", **env)


def start_batch(stack: Stack, items: list[dict], description: str = "chama") -> str:
    response = stack.api("POST", "/payment/bulk", json={"description": description, "items": items})
    assert response.status_code == 201, response.text
    return response.json()["batch"]["id"]


def report(stack: Stack, batch_id: str) -> dict:
    response = stack.api("GET", f"/payment/bulk/{batch_id}?items=true")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(stack: Stack, batch_id: str, done, within: float = SETTLE_WITHIN) -> dict:
    """Poll the batch until `done(report)`; fail with the last report after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            found = report(stack, batch_id)
        except requests.ConnectionError:  # a restarting server
            found = None
        if found is not None and done(found):
            return found
        assert time.monotonic() < deadline, f"batch not done after {within} s: {found and found['summary']}"
        time.sleep(0.05)


def pushes(stack: Stack) -> Counter:
    """MSISDN -> STK Pushes the simulator processed (each one a PIN prompt on that phone)."""
    return Counter(t["phone_number"] for t in stack.control("GET", "/transactions")["transactions"])


def test_a_200_item_batch_with_mixed_outcomes_settles_with_exactly_the_expected_counts(tmp_path, db_target):
    numbers = phones(200)
    outcomes = {**{p: 1032 for p in numbers[:20]}, **{p: 1037 for p in numbers[20:35]},
                **{p: 1 for p in numbers[35:45]}, **{p: 2001 for p in numbers[45:50]}}
    with bulk_stack(tmp_path, rate=400, db=db_target) as stack:
        for phone, code in outcomes.items():
            stack.control("POST", "/rules", json={"phone": phone, "result_code": code})
        items = [{"phone_number": p, "amount": 100 + n, "reference": f"M{n}"} for n, p in enumerate(numbers)]
        batch_id = start_batch(stack, items)
        done = wait_for(stack, batch_id, lambda r: r["settled_at"])  # written with its batch.settled event
        sent = pushes(stack)
        events = [e["type"] for e in stack.api("GET", "/events?limit=1000").json()["events"]
                  if e["type"].startswith("batch.")]
    assert done["summary"] == ("150 of 200 paid, 20 cancelled, 15 did not answer, 10 had too little on M-Pesa, "
                               "5 entered a wrong PIN")
    counts = {name: value["count"] for name, value in done["by_outcome"].items() if value["count"]}
    assert counts == {"completed": 150, "failed": 50}
    paid = sum(100 + n for n, p in enumerate(numbers) if p not in outcomes)
    assert done["paid_amount"] == done["by_outcome"]["completed"]["amount"] == paid
    assert {item["phone_number"] for item in done["not_paid"]} == {msisdn(p) for p in outcomes}
    assert {i["reason"] for i in done["failed"] if i["phone_number"] == msisdn(numbers[0])} == {"Request cancelled by user"}
    assert sent == Counter({msisdn(p): 1 for p in numbers})
    assert all(item["checkout_request_id"] and item["state"] == "sent" for item in done["items"])
    assert events[0] == "batch.started" and events[-2:] == ["batch.finished", "batch.settled"]
    assert events.count("batch.progress") >= 5


def test_kill_9_twice_mid_batch_every_item_pushed_at_most_once_and_settled(tmp_path, db_target):
    numbers = phones(150, start=500)
    with bulk_stack(tmp_path, rate=60, db=db_target) as stack:
        batch_id = start_batch(stack, [{"phone_number": p, "amount": 10} for p in numbers])
        for sent_at_least in (30, 80):
            wait_for(stack, batch_id, lambda r: r["item_count"] - r["by_outcome"]["queued"]["count"] >= sent_at_least)
            stack.restart_server(hard=True)
        done = wait_for(stack, batch_id, lambda r: r["settled"])
        sent = pushes(stack)
    items = done["items"]
    crashed = [i for i in items if i["state"] == "unknown"]
    assert len(crashed) <= 2 and all("server stopped while sending" in i["reason"] for i in crashed)
    assert all(i["state"] == "sent" for i in items if i not in crashed)
    assert all(sent[i["phone_number"]] == 1 for i in items if i not in crashed)  # exactly once
    assert all(sent[i["phone_number"]] <= 1 for i in crashed)  # at most once, and never re-sent
    assert set(sent) <= {msisdn(p) for p in numbers}
    assert done["by_outcome"]["completed"]["count"] == 150 - len(crashed)
    assert done["status"] == "sent" and done["settled"]


def test_cancel_stops_the_pushes_not_yet_sent(tmp_path, db_target):
    numbers = phones(40, start=800)
    with bulk_stack(tmp_path, rate=10, db=db_target) as stack:
        batch_id = start_batch(stack, [{"phone_number": p, "amount": 20} for p in numbers])
        wait_for(stack, batch_id, lambda r: r["by_outcome"]["completed"]["count"] >= 3)
        answer = stack.api("POST", f"/payment/bulk/{batch_id}/cancel").json()
        done = wait_for(stack, batch_id, lambda r: r["settled"])
        again = stack.api("POST", f"/payment/bulk/{batch_id}/cancel").json()
        sent = pushes(stack)
    assert answer["status"] == "cancelled" and answer["cancelled"] >= 30
    cancelled = [i for i in done["items"] if i["state"] == "cancelled"]
    assert len(cancelled) == answer["cancelled"] and again["cancelled"] == 0
    assert all(i["reason"] == "not sent: the batch was cancelled" for i in cancelled)
    assert set(sent) == {i["phone_number"] for i in done["items"] if i["state"] == "sent"}
    assert all(count == 1 for count in sent.values())
    assert done["summary"] == f"{40 - len(cancelled)} of 40 paid, {len(cancelled)} not sent (batch cancelled)"


def test_daraja_throttling_slows_the_batch_without_losing_or_repeating_items(tmp_path, db_target):
    numbers = phones(40, start=900)
    with bulk_stack(tmp_path, rate=200, db=db_target) as stack:
        stack.control("POST", "/rules", json={"scope": "all", "max_per_second": 10,
                                              "push_error": {"http_status": 429, "errorCode": "500.003.02",
                                                             "errorMessage": "Spike Arrest Violation"}})
        batch_id = start_batch(stack, [{"phone_number": p, "amount": 30} for p in numbers])
        done = wait_for(stack, batch_id, lambda r: r["settled"])
        transactions = stack.control("GET", "/transactions")["transactions"]
    assert done["throttled"] > 0 and done["summary"] == "40 of 40 paid"
    assert Counter(t["phone_number"] for t in transactions) == Counter({msisdn(p): 1 for p in numbers})
    times = sorted(t["created_at"] for t in transactions)
    assert times[-1][:19] > times[0][:19]  # spread over more than one second: the batch was slowed


@pytest.mark.sqlite_only
def test_a_version_4_database_gets_the_bulk_tables_and_payments_batch_id(tmp_path):
    path = tmp_path / "v3.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:  # as version 4 (the history indexes) left it
        conn.executescript("DROP TABLE batch_items; DROP TABLE batches; ALTER TABLE payments DROP COLUMN batch_id;"
                           "PRAGMA user_version = 4;")
    store = Store(path)
    try:
        assert store.pragmas()["user_version"] == SCHEMA_VERSION >= 5
        batch_id = Batches(store).create("chama", [Row(1, "254712345678", 500)], [])
        CallbackManager(store).register("ws_CO_v3", "0712345678", 500, "chama", batch_id=batch_id)
        assert store.payment("ws_CO_v3").batch_id == batch_id
        assert Batches(store).report(batch_id)["summary"] == "0 of 1 paid, 1 not sent yet"
    finally:
        store.close()
