import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from mpesa_agent.server.store import APPLIED, PARKED, RECEIVED, SCHEMA_VERSION, open_store
from mpesa_agent.server.store import INTEGRITY_ERRORS
from harness import ROOT

pytestmark = pytest.mark.stores  # each test on SQLite and on PostgreSQL (tests/conftest.py)


@pytest.fixture
def store(db_kind, tmp_path, db_target):
    store = open_store(tmp_path / "nested" / "dir" / "payments.db" if db_kind == "sqlite" else db_target)
    yield store
    store.close()


def add_payment(store, checkout_id="ws_CO_1", amount=500):
    with store.transaction() as tx:
        return tx.insert_payment(checkout_id, "254712345678", amount, "lunch", None)


@pytest.mark.sqlite_only
def test_creates_folders_schema_wal_and_full_sync(store, tmp_path):
    assert (tmp_path / "nested" / "dir" / "payments.db").is_file()
    assert store.pragmas() == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "user_version": SCHEMA_VERSION}
    assert store.counts() == {"payments": {}, "callbacks": {}}


def test_payment_round_trip_keeps_money_as_integer(store):
    payment = add_payment(store)
    assert (payment.status, payment.amount, payment.phone_number) == ("pending", 500, "254712345678")
    assert store.payment("ws_CO_1") == payment
    assert store.payment("ws_CO_2") is None
    with store.reader() as conn:
        kind = "typeof" if store.dialect == "sqlite" else "pg_typeof"
        assert conn.execute(f"SELECT {kind}(amount)::text FROM payments" if kind == "pg_typeof" else
                            f"SELECT {kind}(amount) FROM payments").fetchone()[0] in ("integer", "bigint")


def test_schema_refuses_bad_states_and_amounts(store):
    with pytest.raises(INTEGRITY_ERRORS):
        add_payment(store, amount=0)
    add_payment(store)
    with pytest.raises(INTEGRITY_ERRORS), store.transaction() as tx:
        tx.update_payment("ws_CO_1", status="paid")
    with pytest.raises(ValueError, match="not updatable"), store.transaction() as tx:
        tx.update_payment("ws_CO_1", amount=1)


def test_a_failed_transaction_is_rolled_back(store):
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.insert_payment("ws_CO_1", "254712345678", 500, "", None)
        raise RuntimeError("boom")
    assert store.payment("ws_CO_1") is None


def test_raw_callbacks_are_kept_byte_for_byte_with_redacted_credentials(store):
    body = b'{"Body": {"stkCallback": {"Amount": 1.00}}}\xff'
    callback_id = store.record_callback(body, {"Content-Type": "application/json", "Authorization": "Bearer s3cret",
                                               "Businessshortcode": "174379"}, "196.201.212.69")
    raw = store.callback(callback_id)
    assert raw.body == body
    assert raw.headers == {"Content-Type": "application/json", "Authorization": "<redacted>",
                           "Businessshortcode": "174379"}
    assert (raw.source_addr, raw.outcome, raw.processed_at) == ("196.201.212.69", RECEIVED, None)
    assert store.callbacks(outcome=RECEIVED) == [raw]


def test_parked_callbacks_are_found_by_checkout_id(store):
    first = store.record_callback(b"{}", {}, None)
    second = store.record_callback(b"{}", {}, None)
    with store.transaction() as tx:
        tx.set_callback_outcome(first, PARKED, "no registration yet", "ws_CO_1")
        tx.set_callback_outcome(second, APPLIED, None, "ws_CO_1")
    with store.transaction() as tx:
        assert [cb.id for cb in tx.parked_callbacks("ws_CO_1")] == [first]
    assert store.parked_with_payment() == []
    add_payment(store)
    assert store.parked_with_payment() == [first]


def test_everything_survives_reopening(store):
    add_payment(store)
    callback_id = store.record_callback(b"raw", {"X": "1"}, "1.2.3.4")
    reopened = open_store(store.path or store.url)
    assert reopened.payment("ws_CO_1") == store.payment("ws_CO_1")
    assert reopened.callback(callback_id).body == b"raw"
    reopened.close()


def test_pending_older_than(store):
    add_payment(store)
    assert [p.checkout_request_id for p in store.pending_older_than(0)] == ["ws_CO_1"]
    assert store.pending_older_than(3600) == []


def test_many_threads_write_at_once_without_losing_anything(store):
    errors = []

    def work(n):
        try:
            for i in range(10):
                add_payment(store, f"ws_CO_{n}_{i}")
                store.record_callback(b"{}", {}, None)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    run_in_threads(work, 16)
    assert errors == []
    assert store.counts() == {"payments": {"pending": 160}, "callbacks": {RECEIVED: 160}}


def test_group_commit_keeps_each_failure_to_itself_and_returns_only_once_on_disk(store):
    """Concurrent transactions share commits; a failing one rolls back alone; a return means committed."""
    durable, errors = [], []

    def work(n):
        other = open_store(store.path or store.url)  # separate connections see only committed data
        for i in range(30):
            checkout_id = f"ws_CO_{n}_{i}"
            try:
                with store.transaction() as tx:
                    tx.insert_payment(checkout_id, "254712345678", 1 + i, "", None)
                    if i % 4 == 0:
                        raise ValueError("refused")
            except ValueError:
                continue
            if other.payment(checkout_id) is not None:
                durable.append(checkout_id)
            else:
                errors.append(checkout_id)
        other.close()

    run_in_threads(work, 16)
    assert errors == []
    assert sorted(p.checkout_request_id for p in store.payments_with_status("pending")) == sorted(durable)
    assert len(durable) == 16 * 22


GREENLETS_SHARE_COMMITS = """
from gevent import monkey; monkey.patch_all()
import sqlite3, sys, gevent
from mpesa_agent.server.store import Store
store = Store(sys.argv[1])
commits = []
store._writer.set_trace_callback(lambda sql: sql == "COMMIT" and commits.append(sql))
def work(n):
    with store.transaction() as tx:
        tx.insert_payment(f"ws_CO_{n}", "254712345678", 1 + n, "", None)
    seen = sqlite3.connect(sys.argv[1]).execute("SELECT 1 FROM payments WHERE checkout_request_id = ?", (f"ws_CO_{n}",))
    assert seen.fetchone() is not None  # returned: committed, seen by another connection
gevent.joinall([gevent.spawn(work, n) for n in range(20)], raise_error=True)
print(len(commits), len(store.payments_with_status("pending")))
"""


def test_greenlets_that_write_at_once_share_one_commit_under_gevent(tmp_path):
    """Served under gevent, a block and its COMMIT ran back to back, so each callback paid an fsync
    of its own; the first to finish now yields once, and every greenlet that is ready joins its batch."""
    done = subprocess.run([sys.executable, "-c", GREENLETS_SHARE_COMMITS, str(tmp_path / "p.db")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    commits, stored = map(int, done.stdout.split())
    assert stored == 20
    assert commits <= 2, commits  # 20 without the yield


def test_callers_who_ask_for_counts_while_one_runs_share_its_answer(store):
    """/health needs no key: a flood of it must cost one count at a time, not one each."""
    add_payment(store)
    release, scans, answers = threading.Event(), [], []

    def slow_scan(read):
        scans.append(1)
        release.wait(10)
        return read()

    store.run_apart = slow_scan
    threads = [threading.Thread(target=lambda: answers.append(store.counts())) for _ in range(5)]
    for thread in threads:
        thread.start()
    for _ in range(500):  # the first count is under way; the others arrive while it is held
        if scans:
            break
        time.sleep(0.01)
    assert scans, "counts() did not run through run_apart"
    time.sleep(0.3)
    release.set()
    for thread in threads:
        thread.join(10)
    assert answers == [{"payments": {"pending": 1}, "callbacks": {}}] * 5
    assert len(scans) <= 2, scans  # 5 without sharing (2 only if a thread was descheduled for 0.3 s)
    assert store.counts() == answers[0] and len(scans) >= 2  # a later caller counts afresh


def test_a_count_that_fails_raises_and_leaves_nothing_for_the_next_caller(store):
    def broken(read):
        raise sqlite3.OperationalError("disk I/O error")

    store.run_apart = broken
    with pytest.raises(sqlite3.OperationalError):
        store.counts()
    store.run_apart = lambda read: read()
    assert store.counts() == {"payments": {}, "callbacks": {}}  # nothing left half-shared


def test_a_transaction_inside_another_in_one_thread_is_refused_not_deadlocked(store):
    with pytest.raises(RuntimeError, match="inside another"), store.transaction():
        with store.transaction():
            pass  # pragma: no cover
    add_payment(store)  # the writer is usable again
    assert store.payment("ws_CO_1").status == "pending"


def test_insert_payment_returns_exactly_what_is_stored_and_to_dict_has_every_field(store):
    with store.transaction() as tx:
        payment = tx.insert_payment("ws_CO_9", "254712345678", 7, "", "29115-1")
    assert store.payment("ws_CO_9") == payment
    assert list(payment.to_dict()) == list(payment.__dataclass_fields__)
    assert payment.to_dict()["merchant_request_id"] == "29115-1" and payment.to_dict()["query_attempts"] == 0


def run_in_threads(work, count: int) -> None:
    """work(0) .. work(count - 1), each in its own thread, all at once; returns when all are done."""
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def make_version_1_database(path, amount: int = 5) -> None:
    """A database as the first release wrote it (schema version 1): no reconciler columns, no event log."""
    old = sqlite3.connect(path)
    old.executescript(f"""
        CREATE TABLE callbacks (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at TEXT NOT NULL, source_addr TEXT,
            headers TEXT NOT NULL, body BLOB NOT NULL, checkout_request_id TEXT, outcome TEXT NOT NULL, note TEXT,
            processed_at TEXT);
        CREATE TABLE payments (checkout_request_id TEXT PRIMARY KEY, merchant_request_id TEXT,
            phone_number TEXT NOT NULL, amount INTEGER NOT NULL, description TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'pending', result_code TEXT, result_desc TEXT, reason TEXT, receipt TEXT,
            transaction_date TEXT, paid_phone TEXT, paid_amount TEXT, settled_by TEXT, review TEXT,
            callback_id INTEGER, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, settled_at TEXT);
        INSERT INTO payments (checkout_request_id, phone_number, amount, created_at, updated_at)
            VALUES ('ws_CO_old', '254712345678', {amount}, '2026-01-01T00:00:00.000+00:00', '2026-01-01T00:00:00.000+00:00');
        PRAGMA user_version = 1;""")
    old.close()
