"""The event log: written with each change, never changed, the truth a payment's record replays from,
and an SSE stream that resumes with Last-Event-ID without skipping or repeating an event."""
import asyncio
import json
import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bench.client import Connection
from harness import callback_server
from mpesa_agent.server.manager import CallbackManager
from mpesa_agent.server import events as events_module
from mpesa_agent.server.store import DATABASE_ERRORS, SCHEMA_VERSION, Event, Store, open_store
from tests.test_callback_manager import callback_body, register
from tests.test_store import make_version_1_database

pytestmark = pytest.mark.stores  # each test on SQLite and on PostgreSQL (tests/conftest.py)

TOKEN = "7e1d3c5b9a7e1d3c5b9a7e1d3c5b9a7e"
API_KEY = "events-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
APP_AUTH = {"Authorization": "Bearer test-api-key"}  # conftest's settings


@pytest.fixture
def manager(settings):
    store = open_store(settings.payments_db)
    yield CallbackManager(store, settings)
    store.close()


def types(manager, checkout_id="ws_CO_1") -> list[str]:
    return [event.type for event in manager.store.events(checkout_request_id=checkout_id)]


def test_an_events_json_is_its_dict_as_stored():
    event = Event(3, "payment.registered", "ws_CO_é", "2026-11-29T10:00:00.000+00:00", '{"payment":{"amount":1}}')
    assert json.loads(event.to_json()) == event.to_dict() == {
        "id": 3, "type": "payment.registered", "checkout_request_id": "ws_CO_é",
        "created_at": "2026-11-29T10:00:00.000+00:00", "data": {"payment": {"amount": 1}}}


def test_each_change_and_callback_is_an_event_with_the_payment_after_it(manager):
    register(manager)
    manager.ingest(callback_body(), {}, "127.0.0.1")
    manager.ingest(callback_body(), {}, "127.0.0.1")  # duplicate
    manager.ingest(callback_body(result_code=1032), {}, "127.0.0.1")  # contradiction
    assert types(manager) == ["payment.registered", "payment.completed", "callback.received", "callback.received",
                              "payment.conflict", "callback.received"]
    events = manager.store.events(checkout_request_id="ws_CO_1")
    assert [e.data["callback"]["outcome"] for e in events if e.type == "callback.received"] == [
        "applied", "duplicate", "conflict"]
    assert events[1].data["payment"]["status"] == "completed" and events[1].data["payment"]["receipt"] == "NLJ7RT61SV"
    assert events[-1].data["payment"] == manager.status("ws_CO_1").to_dict()
    assert [e.id for e in events] == sorted({e.id for e in events})


def test_an_early_callback_is_parked_then_applied_at_registration(manager):
    manager.ingest(callback_body(), {}, "127.0.0.1")
    assert types(manager) == ["callback.parked"]
    assert manager.store.events()[0].data == {"payment": None, "callback": {
        "id": 1, "outcome": "parked", "note": "no registration yet; applied when it is registered",
        "result_code": "0", "result_desc": "The service request is processed successfully.", "state": "completed",
        "metadata": {"Amount": 500, "MpesaReceiptNumber": "NLJ7RT61SV", "TransactionDate": 20191219102115,
                     "PhoneNumber": 254712345678}}}
    register(manager)
    assert types(manager) == ["callback.parked", "payment.registered", "payment.completed", "callback.received"]


def test_reconciler_evidence_is_logged_too(manager):
    register(manager)
    manager.record_query("ws_CO_1", "pending (ResultCode 4999)")
    manager.settle_from_query("ws_CO_1", "pending", "4999")  # no final answer: nothing to log
    manager.give_up("ws_CO_1", "no final answer")
    assert types(manager) == ["payment.registered", "payment.updated", "payment.unknown"]


def test_an_event_is_written_in_the_same_transaction_as_its_change(manager):
    register(manager)
    with pytest.raises(ZeroDivisionError):
        with manager.store.transaction() as tx:
            tx.update_payment("ws_CO_1", status="failed")
            tx.append_event("payment.failed", "ws_CO_1", {"payment": None})
            1 / 0
    assert manager.status("ws_CO_1").status == "pending" and types(manager) == ["payment.registered"]


def test_events_are_never_changed_or_deleted(manager):
    register(manager)
    with pytest.raises(DATABASE_ERRORS, match="append-only"):
        with manager.store.transaction() as tx:
            tx.conn.execute("UPDATE events SET type = 'payment.completed'")
    with pytest.raises(DATABASE_ERRORS, match="append-only"):
        with manager.store.transaction() as tx:
            tx.conn.execute("DELETE FROM events")
    assert types(manager) == ["payment.registered"]


def test_a_waiting_reader_is_woken_by_the_commit_not_the_timeout(manager):
    after = manager.store.last_event_id()
    woke = []
    reader = threading.Thread(target=lambda: woke.append(manager.store.wait_for_events(after, 30)))
    reader.start()
    register(manager)
    reader.join(10)  # a hang guard: the commit must wake it long before its 30 s
    assert woke == [True]
    assert manager.store.wait_for_events(manager.store.last_event_id(), 0.05) is False


def test_a_database_from_before_the_event_log_is_migrated(tmp_path):
    path = tmp_path / "old.db"
    make_version_1_database(path)
    store = Store(path)
    try:
        assert store.pragmas()["user_version"] == SCHEMA_VERSION
        assert store.payment("ws_CO_old").query_attempts == 0 and store.events() == []
    finally:
        store.close()


def test_a_database_from_a_newer_version_is_refused_with_its_path(tmp_path):
    path = tmp_path / "new.db"
    sqlite3.connect(path).execute("PRAGMA user_version = 99").connection.close()
    with pytest.raises(RuntimeError, match=f"{path}.*schema version 99"):
        Store(path)


def test_the_api_pages_the_log_and_filters_it(app, client):
    manager = app.extensions["callback_manager"]
    for n in range(5):
        register(manager, f"ws_CO_{n}")
    manager.ingest(callback_body(checkout_request_id="ws_CO_3"), {}, "127.0.0.1")
    first = client.get("/events?limit=2", headers=APP_AUTH).get_json()
    assert [e["checkout_request_id"] for e in first["events"]] == ["ws_CO_0", "ws_CO_1"]
    rest = client.get(f"/events?after={first['next_after']}", headers=APP_AUTH).get_json()
    end = rest["next_after"]
    assert len(rest["events"]) == 5 and client.get(f"/events?after={end}", headers=APP_AUTH).get_json() == {
        "events": [], "next_after": end, "last_id": end}
    completed = client.get("/events?type=payment.completed", headers=APP_AUTH).get_json()["events"]
    assert [e["checkout_request_id"] for e in completed] == ["ws_CO_3"]
    assert len(client.get("/events?checkout_request_id=ws_CO_3", headers=APP_AUTH).get_json()["events"]) == 3
    timeline = client.get("/payment/ws_CO_3/events", headers=APP_AUTH).get_json()
    assert [e["type"] for e in timeline["events"]] == ["payment.registered", "payment.completed", "callback.received"]
    assert client.get("/events/stream?after=0&timeout=0", headers={"Authorization": "Bearer x"}).status_code == 401
    assert client.get("/events", query_string={"access_token": "test-api-key"}).status_code == 401  # never a key in the URL


def test_the_stream_sends_frames_and_ends_at_its_timeout(app, client):
    register(app.extensions["callback_manager"])
    body = client.get("/events/stream?timeout=0.2", headers=APP_AUTH).get_data(as_text=True)
    assert body.startswith("retry: 2000\n\n")
    frame = body.split("\n\n")[1].split("\n")
    assert frame[:2] == ["id: 1", "event: payment.registered"]
    assert json.loads(frame[2].removeprefix("data: "))["data"]["payment"]["checkout_request_id"] == "ws_CO_1"


# ---- real processes -----------------------------------------------------------------------------

def post(session: requests.Session, url: str, **kwargs) -> requests.Response:
    """POST until the server answers: it may be down for a moment (killed and restarted)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return session.post(url, timeout=10, **kwargs)
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):  # killed mid-answer
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_after_bursts_and_kill_9s_each_payment_replays_from_its_events_to_its_stored_state(tmp_path):
    """Duplicates, contradictions and early callbacks from 8 senders, the server killed -9 twice
    mid-burst: every payment's last event holds exactly its stored record, and every stored
    callback has exactly one event saying what became of it."""
    server = callback_server(tmp_path, api_key=API_KEY, token=TOKEN).start()
    callback_url = f"{server.url}/callback/{TOKEN}"
    rng = random.Random(9)
    plans = []
    for n in range(160):
        code = rng.choice([0, 0, 0, 1032, 1037, 7777])
        plans.append((f"ws_CO_replay_{n:03d}", code, rng.random() < 0.3, rng.randint(0, 2), rng.random() < 0.25))
    local = threading.local()

    def run(plan):
        checkout_id, code, early, duplicates, contradict = plan
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        body = callback_body(checkout_request_id=checkout_id, result_code=code)
        send = lambda data: post(session, callback_url, data=data, headers={"Content-Type": "application/json"})
        if early:
            send(body)
        registration = post(session, f"{server.url}/payment/register", headers=AUTH, json={
            "checkout_request_id": checkout_id, "phone_number": "0712345678", "amount": 500, "description": "t"})
        assert registration.status_code in (200, 201), registration.text
        for _ in range(1 + duplicates):
            send(body)
        if contradict:
            send(callback_body(checkout_request_id=checkout_id, result_code=1032 if code == 0 else 0))

    try:
        with ThreadPoolExecutor(8) as pool:
            done = pool.map(run, plans)
            for kill_after in (40, 100):
                while _count_payments(tmp_path) < kill_after:
                    time.sleep(0.01)
                server.kill()
                server.start()
            list(done)
    finally:
        server.stop()

    store = Store(tmp_path / "payments.db")
    try:
        events = store.events(limit=1000) + store.events(after=1000, limit=1000) + store.events(after=2000, limit=1000)
        assert [e.id for e in events] == sorted({e.id for e in events}), "ids strictly increase"
        assert store.last_event_id() == events[-1].id
        replayed = {}
        for event in events:
            if event.data.get("payment") is not None:
                replayed[event.checkout_request_id] = event.data["payment"]
        for checkout_id, *_ in plans:
            assert replayed[checkout_id] == store.payment(checkout_id).to_dict(), checkout_id
        received = [e.data["callback"]["id"] for e in events if e.type == "callback.received"]
        parked = {e.data["callback"]["id"] for e in events if e.type == "callback.parked"}
        stored = store.callbacks()
        assert sorted(received) == [cb.id for cb in stored], "one final event per stored callback"
        assert parked <= set(received) and parked, "early callbacks were parked, then applied"
        assert {cb.outcome for cb in stored} <= {"applied", "duplicate", "conflict"}
        statuses = [store.payment(checkout_id).status for checkout_id, *_ in plans]
        assert {"completed", "failed", "unknown"} <= set(statuses) and "pending" not in statuses
    finally:
        store.close()


def _count_payments(folder) -> int:
    try:
        with sqlite3.connect(f"file:{folder / 'payments.db'}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM payments").fetchone()[0]
    except sqlite3.Error:
        return 0


class SseReader:
    """A plain SSE client that remembers the last id it saw, like a browser's EventSource."""

    def __init__(self, url: str):
        self.url, self.last_id, self.seen = url, None, []

    def read(self, stop_after: int | None = None, until_id: int | None = None, lasting: float = 60) -> None:
        """Read events until `stop_after` of them or event `until_id`, then disconnect; the server
        ends the stream after `lasting` seconds."""
        headers = dict(AUTH)
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        with requests.get(self.url, params={"timeout": lasting}, headers=headers, stream=True,
                          timeout=(5, 30)) as response:
            assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
            count, buffer = 0, b""
            for chunk in response.iter_content(chunk_size=None):  # as it arrives (iter_lines waits for 512 bytes)
                buffer += chunk
                *frames, buffer = buffer.split(b"\n\n")
                for frame in frames:
                    fields = dict(line.split(": ", 1) for line in frame.decode().split("\n") if ": " in line)
                    if "data" not in fields:
                        continue  # retry: or a keep-alive comment
                    event_id = int(fields["id"])
                    assert json.loads(fields["data"])["id"] == event_id
                    self.seen.append(event_id)
                    self.last_id, count = event_id, count + 1
                    if (stop_after and count >= stop_after) or (until_id and event_id >= until_id):
                        return  # leaving the with-block closes the connection: a disconnect


def test_an_sse_client_that_reconnects_misses_none_and_sees_none_twice_at_1000_events_a_second(tmp_path):
    """Two writers of one log: the server (16 lean HTTP clients: parked callbacks, then registrations)
    and a second process's store, which appends 50 events every 10 ms while the server is busy, so
    the log grows at well over 1,000 events/s however loaded the machine is. The SSE client drops
    the stream every 300 events and resumes with Last-Event-ID."""
    server = callback_server(tmp_path, api_key=API_KEY, token=TOKEN).start()
    port = int(server.url.rsplit(":", 1)[1])
    reader = SseReader(f"{server.url}/events/stream")
    payments, clients = 600, 16
    http_done = threading.Event()

    async def write(client: int) -> None:
        """Early callbacks then registrations: 4 events per payment (parked, registered, completed, received)."""
        connection = await Connection("127.0.0.1", port, AUTH).open()
        try:
            for n in range(client, payments, clients):
                checkout_id = f"ws_CO_sse_{n}"
                status, _ = await connection.request("POST", f"/callback/{TOKEN}",
                                                     callback_body(checkout_request_id=checkout_id))
                assert status == 200
                status, _ = await connection.json("POST", "/payment/register", {
                    "checkout_request_id": checkout_id, "phone_number": "0712345678", "amount": 500})
                assert status == 201
        finally:
            await connection.close()

    async def over_http() -> None:
        try:
            await asyncio.gather(*(write(client) for client in range(clients)))
        finally:
            http_done.set()

    def second_writer() -> int:
        """Registrations and their events in batches of 50, every 10 ms, until the HTTP clients are done."""
        store, batch = Store(tmp_path / "payments.db"), 0
        try:
            while not http_done.is_set():
                with store.transaction() as tx:
                    for n in range(50):
                        payment = tx.insert_payment(f"ws_CO_other_{batch}_{n}", "254712345678", 100, "bulk", None)
                        tx.append_event("payment.registered", payment.checkout_request_id, {"payment": payment.to_dict()})
                batch += 1
                time.sleep(0.01)
        finally:
            store.close()
        return batch * 50

    try:
        with ThreadPoolExecutor(2) as pool:
            started = time.monotonic()
            http = pool.submit(asyncio.run, over_http())
            other = pool.submit(second_writer)
            reconnects = 0
            while not (http.done() and other.done()):
                reader.read(stop_after=300, lasting=2)  # then disconnect, and reconnect with Last-Event-ID
                reconnects += 1
            http.result()
            seconds, written_elsewhere = time.monotonic() - started, other.result()
        last_id = payments * 4 + written_elsewhere
        if reader.last_id < last_id:
            reader.read(until_id=last_id, lasting=30)
        assert requests.get(f"{server.url}/events?after={last_id}", headers=AUTH, timeout=5).json()["events"] == []
    finally:
        server.stop()
    rate = last_id / seconds
    print(f"{last_id} events ({written_elsewhere} from the second writer) in {seconds:.2f} s ({rate:.0f}/s), "
          f"{reconnects} reconnects")
    assert reconnects >= 3, "the client must have reconnected while events were being written"
    assert reader.seen == list(range(1, last_id + 1)), "every event exactly once, in order"
    assert rate >= 1000, f"events were written at {rate:.0f}/s, not the 1,000/s this test is about"


def test_the_shared_tail_keeps_the_newest_events_and_sends_older_cursors_to_the_store(manager, monkeypatch):
    monkeypatch.setattr(events_module, "TAIL_KEPT", 5)
    tail = events_module.EventTail(manager.store)
    for n in range(4):  # 4 registrations: 4 events
        manager.register(f"ws_CO_tail_{n}", "0712345678", 10 + n)
    found, last = tail.after(0, None, None)
    assert [e.checkout_request_id for e in found] == [f"ws_CO_tail_{n}" for n in range(4)] and last == 4
    for n in range(4, 8):
        manager.register(f"ws_CO_tail_{n}", "0712345678", 10 + n)
    found, last = tail.after(5, None, None)  # 8 events now; the tail keeps ids 4-8
    assert [e.id for e in found] == [6, 7, 8] and last == 8
    assert tail.after(2, None, None) is None  # older than what is kept: the stream reads the store
    assert [e.id for e in tail.after(3, "payment.registered", "ws_CO_tail_6")[0]] == [7]
    assert tail.after(99, None, None) == ([], 8)  # a cursor ahead of the log gets nothing
