"""Webhook endpoints and their outbox, in one process: the outbox row is written with its event,
URLs are checked against server-side request forgery, signatures follow Standard Webhooks."""
import sqlite3
from collections import Counter
from types import SimpleNamespace
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from mpesa_agent.config import ConfigError, Settings
from mpesa_agent.payments.webhooks import signed_headers
from mpesa_agent.server.dispatcher import PER_ENDPOINT, Dispatcher
from mpesa_agent.server.outbox import Attempt, Outbox, retry_delay, url_problem
from mpesa_agent.server.store import SCHEMA_VERSION, Store, open_store
from tests.test_store import make_version_1_database

pytestmark = pytest.mark.stores  # each test on SQLite and on PostgreSQL (tests/conftest.py)

AUTH = {"Authorization": "Bearer test-api-key"}
PUBLIC_URL = "https://93.184.215.14/hooks"  # an address literal: no DNS needed


def add(client, events=("*",), url=PUBLIC_URL, **extra):
    response = client.post("/webhooks", json={"url": url, "events": list(events), **extra}, headers=AUTH)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def register(client, checkout_id="ws_CO_1"):
    response = client.post("/payment/register", headers=AUTH, json={
        "checkout_request_id": checkout_id, "phone_number": "0712345678", "amount": 5})
    assert response.status_code == 201


def outbox_rows(app) -> list[tuple]:
    with app.extensions["webhooks"].store.reader() as conn:
        return [tuple(row) for row in conn.execute(
            "SELECT o.endpoint_id, e.type FROM webhook_outbox o JOIN events e ON e.id = o.event_id ORDER BY o.id")]


def test_an_outbox_row_per_subscribed_enabled_endpoint_is_written_with_the_event(app, client):
    every, completed, off = add(client), add(client, ["payment.completed"]), add(client)
    assert client.patch(f"/webhooks/{off['id']}", json={"enabled": False}, headers=AUTH).status_code == 200
    register(client)
    assert outbox_rows(app) == [(every["id"], "payment.registered")]
    assert every["secret"].startswith("whsec_") and "secret" not in client.get("/webhooks", headers=AUTH).get_json()["webhooks"][0]
    assert completed["events"] == ["payment.completed"]


def test_an_event_rolled_back_leaves_no_outbox_row(app, client):
    add(client)
    store = app.extensions["webhooks"].store
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.append_event("payment.updated", "ws_CO_x", {"payment": None})
            assert len(tx.conn.execute("SELECT * FROM webhook_outbox").fetchall()) == 1
            raise RuntimeError("the change failed")
    assert outbox_rows(app) == [] and store.events() == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/x", "http://localhost/x", "http://10.1.2.3/x",
                                 "http://192.168.1.1/x", "http://169.254.169.254/latest/meta-data", "http://[::1]/x",
                                 "http://[::ffff:127.0.0.1]/x", "http://0.0.0.0/x", "http://100.64.0.1/x"])
def test_loopback_and_private_urls_are_refused_unless_allowed(url):
    assert "not a public address" in url_problem(url, allow_private=False)
    assert url_problem(url, allow_private=True) is None


@pytest.mark.parametrize("url", ["ftp://93.184.215.14/x", "93.184.215.14/x", "http://", "http://a b/", 42, None,
                                 "http://93.184.215.14:99999/x", "https://no-such-host.invalid/x"])
def test_urls_that_are_not_http_or_do_not_resolve_are_refused(url):
    assert url_problem(url, allow_private=False)


def test_the_api_refuses_bad_endpoints_with_each_field_named(client):
    answer = client.post("/webhooks", json={"url": "http://127.0.0.1/x", "events": ["payment.paid"], "colour": 1},
                         headers=AUTH)
    assert answer.status_code == 400
    assert set(answer.get_json()["fields"]) == {"url", "events", "colour"}
    assert client.post("/webhooks", json={"url": PUBLIC_URL, "events": []}, headers=AUTH).status_code == 400
    assert client.get("/webhooks").status_code == 401


def test_signatures_verify_with_standardwebhooks_and_a_rotated_secret_signs_too(app, client):
    endpoint = add(client)
    rotated = client.post(f"/webhooks/{endpoint['id']}/rotate-secret", headers=AUTH).get_json()
    register(client)
    outbox = app.extensions["webhooks"]
    [delivery] = outbox.due(float("inf"), 10)
    assert delivery.secrets == (rotated["secret"], endpoint["secret"])
    headers = signed_headers(str(delivery.event.id), delivery.body, delivery.secrets, time.time())
    for secret in (endpoint["secret"], rotated["secret"]):
        message = Webhook(secret).verify(delivery.body, headers)
        assert message["type"] == "payment.registered" and message["data"]["id"] == delivery.event.id
        assert message["timestamp"] == message["data"]["created_at"]
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 44).verify(delivery.body, headers)
    with outbox.store.transaction() as tx:  # 24 h later
        tx.conn.execute("UPDATE webhook_endpoints SET previous_secret_expires_at = '2000-01-01T00:00:00.000+00:00'")
    assert outbox.due(float("inf"), 10)[0].secrets == (rotated["secret"],)


def test_failures_are_retried_on_the_schedule_then_the_endpoint_is_disabled_with_a_note(app, client):
    endpoint = add(client)
    register(client)
    outbox = app.extensions["webhooks"]
    schedule = (10.0, 20.0)
    for attempt in (1, 2, 3):
        [delivery] = outbox.due(float("inf"), 10)
        assert delivery.attempts == attempt - 1
        notes = outbox.record([Attempt(delivery, 500, 3.0, "boom", "2026-01-01T00:00:00.000+00:00")], schedule, 1000.0)
    assert notes and "still failed after 3 attempts (last: HTTP 500)" in notes[0]
    listed = client.get("/webhooks", headers=AUTH).get_json()["webhooks"][0]
    assert listed["enabled"] is False and "PATCH enabled=true" in listed["note"]
    attempts = client.get(f"/webhooks/{endpoint['id']}/deliveries", headers=AUTH).get_json()["deliveries"]
    assert [(a["attempt"], a["status_code"], a["success"]) for a in attempts] == [(3, 500, False), (2, 500, False),
                                                                                  (1, 500, False)]
    assert outbox.due(float("inf"), 10) == [] and outbox.counts() == {"failed": 1}
    client.patch(f"/webhooks/{endpoint['id']}", json={"enabled": True}, headers=AUTH)
    assert client.get("/webhooks", headers=AUTH).get_json()["webhooks"][0]["note"] is None


def test_one_slow_or_dead_endpoint_never_takes_every_sender(app, client, settings):
    first, second = add(client), add(client)
    for n in range(2 * PER_ENDPOINT + 5):
        register(client, f"ws_CO_{n}")
    dispatcher, sent = Dispatcher(app.extensions["webhooks"], settings, threads=2 * PER_ENDPOINT), []
    dispatcher._pool = SimpleNamespace(submit=lambda send, delivery: sent.append(delivery.endpoint_id))
    dispatcher.run_once()
    dispatcher.run_once()  # nothing finished: nothing more is sent
    assert Counter(sent) == {first["id"]: PER_ENDPOINT, second["id"]: PER_ENDPOINT}


def test_retry_delays_follow_the_schedule_with_jitter():
    schedule = (5.0, 300.0)
    assert retry_delay(1, schedule, rand=lambda: 0.0) == pytest.approx(4.0)
    assert retry_delay(2, schedule, rand=lambda: 1.0) == pytest.approx(360.0)
    assert retry_delay(3, schedule) is None


def test_replay_queues_one_event_or_a_time_range_of_subscribed_ones(app, client):
    endpoint = add(client, ["payment.registered"])
    register(client, "ws_CO_1")
    register(client, "ws_CO_2")
    replay = f"/webhooks/{endpoint['id']}/replay"
    assert client.post(replay, json={"since": "2000-01-01T00:00:00Z"}, headers=AUTH).get_json()["queued"] == 2
    assert client.post(replay, json={"since": "2000-01-01", "until": "2000-01-02"}, headers=AUTH).get_json()["queued"] == 0
    assert client.post(replay, json={"event_id": 1}, headers=AUTH).status_code == 202
    assert len(outbox_rows(app)) == 5
    for bad in ({}, {"since": "yesterday"}, {"event_id": "1"}, {"event_id": 1, "since": "2000-01-01"}, {"x": 1}):
        assert client.post(replay, json=bad, headers=AUTH).status_code == 400, bad


def test_older_databases_get_the_webhook_tables(tmp_path):
    path = tmp_path / "old.db"
    make_version_1_database(path)
    Store(path).close()
    with sqlite3.connect(path) as conn:  # as version 2 left it: no webhook tables
        conn.executescript("DROP TABLE webhook_attempts; DROP TABLE webhook_outbox; DROP TABLE webhook_endpoints;"
                           "PRAGMA user_version = 2;")
    store = Store(path)
    try:
        assert store.pragmas()["user_version"] == SCHEMA_VERSION
        assert Outbox(store).list() == [] and Outbox(store).counts() == {}
    finally:
        store.close()


def test_the_retry_schedule_can_be_set_and_is_checked():
    assert Settings.from_env({"WEBHOOK_RETRY_SCHEDULE": "0.5, 2,10"}, load_files=False).webhook_retry_schedule == (0.5, 2.0, 10.0)
    assert len(Settings.from_env({}, load_files=False).webhook_retry_schedule) == 9
    with pytest.raises(ConfigError, match="WEBHOOK_RETRY_SCHEDULE"):
        Settings.from_env({"WEBHOOK_RETRY_SCHEDULE": "5,soon"}, load_files=False)
