"""Durable SQLite store of payments and of every raw callback, safe under many server threads.

Durability: WAL journal with `synchronous=FULL`, so a commit is on disk before it returns, and a
200 answered to Daraja after a commit survives a process crash *and* a power cut (`NORMAL` would
survive a crash but may lose the last commits on power loss). Each commit costs one fsync of
the WAL (~0.5 ms here), so writes are group-committed: one writer connection, and a write
transaction is a SAVEPOINT inside the open batch; the first thread to finish its block yields
once (`time.sleep(0)`: under gevent, every greenlet that is ready runs its block into the same
batch), then commits the batch with everything done so far, and the others wait for that
commit, so concurrent callbacks and registrations share one fsync and nobody returns before
their work is on disk. Without the yield a greenlet's block and COMMIT ran back to back and
every callback paid a COMMIT of its own (docs/benchmark.md, "Group commit under gevent").
Writers queue on a Python lock instead of SQLite's busy handler, which sleeps up to 100 ms.

Reads use a small pool of connections (opening one costs ~0.1 ms): thousands of held
connections may be open, and most never touch the database. Served under gevent, the COMMIT's
fsync (0.2 ms here) holds the event loop: running it on a native thread instead cost 0.3 ms of
CPU per commit in hand-offs, more than it saved (docs/benchmark.md). The writer stays open, so the
WAL is not checkpointed and deleted every time the last reader closes. Batches run in
`BEGIN IMMEDIATE`, which takes the write lock up front, so read-then-write decisions cannot race.
Money is INTEGER (registered amounts) or exact Decimal text (amounts read from callbacks).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import psycopg

from mpesa_agent.payments.record import FIELD_NAMES, FIELDS, UPDATABLE, Payment
from mpesa_agent.payments.states import CallbackOutcome

log = logging.getLogger(__name__)

SCHEMA_VERSION = 6  # 1: payments and callbacks; 2: the event log, one receipt per completed payment; 3: webhooks;
# 4: history indexes (issue 11); 5: bulk requests (batches, batch_items, payments.batch_id; issue 13);
# 6: retries (payments.retry_of / attempt / retried_as, the payment_retries table; issue 13)
BUSY_TIMEOUT_SECONDS = 15.0
IDLE_READERS_KEPT = 16  # more are opened when many threads read at once, and closed afterwards
MAX_EVENTS_PAGE = 1000
EVENT_POLL_SECONDS = 1.0

# What either database raises: for callers that must tell "the database said no" from a bug.
DATABASE_ERRORS = (sqlite3.Error, psycopg.Error)
INTEGRITY_ERRORS = (sqlite3.IntegrityError, psycopg.IntegrityError)
RECEIVED, APPLIED, DUPLICATE, PARKED, CONFLICT, REJECTED, INVALID = CallbackOutcome
CALLBACK_OUTCOMES = tuple(CallbackOutcome)
PAYMENT_COLUMNS = ", ".join(FIELD_NAMES)  # in field order, so a row builds a Payment positionally

# Portable DDL: SQLite runs it as written, PostgreSQL through `postgres_ddl` (server/pgstore.py).
# What only one dialect can say lives beside it (SQLITE_ONLY here, PG_ONLY in pgstore.py).
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS callbacks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    source_addr TEXT,
    headers TEXT NOT NULL,                -- JSON object, secrets redacted
    body BLOB NOT NULL,                   -- exactly the bytes received
    checkout_request_id TEXT,             -- when the body could be parsed that far
    outcome TEXT NOT NULL CHECK (outcome IN ({", ".join(f"'{o}'" for o in CALLBACK_OUTCOMES)})),
    note TEXT,
    processed_at TEXT
);
CREATE INDEX IF NOT EXISTS callbacks_by_checkout ON callbacks (checkout_request_id, outcome);
CREATE INDEX IF NOT EXISTS callbacks_by_outcome ON callbacks (outcome);

CREATE TABLE IF NOT EXISTS payments (
    {("," + chr(10) + "    ").join(f"{f.name} {f.metadata['sql']}" for f in FIELDS)}
);
CREATE INDEX IF NOT EXISTS payments_by_status ON payments (status, created_at);

-- The event log: appended in the same transaction as the change it records, never changed.
-- AUTOINCREMENT: ids strictly increase and are never reused, so a reader resumes "after id N".
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    checkout_request_id TEXT,
    created_at TEXT NOT NULL,
    data TEXT NOT NULL                    -- JSON: the payment after the change; for callbacks the callback too
);
CREATE INDEX IF NOT EXISTS events_by_checkout ON events (checkout_request_id, id);
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, id);

-- Outbound webhooks (server/outbox.py): the endpoints, one outbox row per (event, endpoint) written
-- with the event, and every delivery attempt.
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,                 -- JSON array of event types, or ["*"]
    description TEXT NOT NULL DEFAULT '',
    secret TEXT NOT NULL,                 -- whsec_...
    previous_secret TEXT,                 -- after a rotation, also signs until previous_secret_expires_at
    previous_secret_expires_at TEXT,
    enabled INTEGER NOT NULL DEFAULT 1,
    note TEXT,                            -- why it was disabled
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id INTEGER NOT NULL REFERENCES events (id),
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,        -- unix seconds
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_outbox_by_endpoint ON webhook_outbox (endpoint_id, status, next_attempt_at);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id INTEGER NOT NULL,
    endpoint_id TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,             -- 1 for the first
    attempted_at TEXT NOT NULL,
    status_code INTEGER,                  -- none when no HTTP answer came
    latency_ms REAL NOT NULL,
    response TEXT,                        -- the start of the answer's body, or the error
    success INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_endpoint ON webhook_attempts (endpoint_id, id);

-- Issue 11, payment history (server/history.py): keyset pages newest first on (created_at,
-- checkout_request_id), alone or after an equality filter on status or phone; receipts of any status.
CREATE INDEX IF NOT EXISTS payments_by_created ON payments (created_at, checkout_request_id);
CREATE INDEX IF NOT EXISTS payments_by_status_created ON payments (status, created_at, checkout_request_id);
CREATE INDEX IF NOT EXISTS payments_by_phone ON payments (phone_number, created_at, checkout_request_id);
CREATE INDEX IF NOT EXISTS payments_by_receipt ON payments (receipt);

-- Bulk payment requests (issue 13, server/batches.py): a batch, and one row per item with its own
-- state machine (payments/bulk.py ItemState); an item's payment is found by its checkout id.
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,                  -- bat_...
    description TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('sending', 'sent', 'cancelled')),
    item_count INTEGER NOT NULL,
    total_amount INTEGER NOT NULL,        -- whole KES asked for, all items
    skipped TEXT NOT NULL DEFAULT '[]',   -- JSON: the rows skip_invalid left out, each with its line and why
    throttled INTEGER NOT NULL DEFAULT 0, -- pushes Daraja throttled (each sent again later, once)
    note TEXT,                            -- why sending is paused, when it is
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT,                     -- every item pushed, refused or cancelled
    settled_at TEXT                       -- every item has its final answer
);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status, created_at);
CREATE TABLE IF NOT EXISTS batch_items (
    batch_id TEXT NOT NULL REFERENCES batches (id),
    position INTEGER NOT NULL,            -- 1.. in the order given
    line INTEGER NOT NULL,                -- its line in the upload (CSV line, or JSON item number)
    phone_number TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount >= 1),
    reference TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'not_sent', 'unknown', 'cancelled')),
    checkout_request_id TEXT,             -- once Daraja accepted the push
    note TEXT,                            -- why it was not sent, or is unknown
    updated_at TEXT NOT NULL,
    PRIMARY KEY (batch_id, position)
);
CREATE INDEX IF NOT EXISTS batch_items_by_state ON batch_items (state, batch_id, position);

-- Issue 13, retries (server/retries.py): at most one retry per payment, claimed here before its push is
-- sent, so two requests (or a request and the automatic retrier) can never both push; a claim whose push
-- answer was lost (a crash) becomes 'unknown' and is never sent again.
CREATE TABLE IF NOT EXISTS payment_retries (
    retry_of TEXT PRIMARY KEY REFERENCES payments (checkout_request_id),
    attempt INTEGER NOT NULL,             -- the new push's place in the chain (2 for a first retry)
    requested_by TEXT NOT NULL CHECK (requested_by IN ('person', 'auto')),
    state TEXT NOT NULL CHECK (state IN ('scheduled', 'sending', 'sent', 'unknown', 'skipped')),
    due_at TEXT NOT NULL,                 -- when it may be sent (automatic retries wait)
    tries INTEGER NOT NULL DEFAULT 0,     -- automatic sends that Daraja refused before anything went out
    checkout_request_id TEXT,             -- the new push's, once Daraja accepted it
    note TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS payment_retries_due ON payment_retries (state, due_at);
"""
SQLITE_ONLY = """
CREATE TRIGGER IF NOT EXISTS events_are_never_changed BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_are_never_deleted BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
"""


def subscribed(events_json: str, event_type: str) -> str:
    """SQL: the endpoint whose JSON array `events_json` is wants events of `event_type` (SQLite)."""
    return f"EXISTS (SELECT 1 FROM json_each({events_json}) WHERE value IN ('*', {event_type}))"


# One outbox row per enabled endpoint subscribed to the event's type (run by append_event).
def fan_out(dialect_subscribed: Callable[[str, str], str]) -> str:
    return ("INSERT INTO webhook_outbox (event_id, endpoint_id, next_attempt_at, created_at)"
            " SELECT ?, id, ?, ? FROM webhook_endpoints WHERE enabled = 1"
            f" AND {dialect_subscribed('webhook_endpoints.events', '?')}")


FAN_OUT = fan_out(subscribed)
# One M-Pesa receipt completes at most one payment (lifecycle rule 3; this index is the backstop).
RECEIPT_INDEX = ("CREATE UNIQUE INDEX IF NOT EXISTS payments_by_completed_receipt ON payments (receipt)"
                 " WHERE status = 'completed' AND receipt IS NOT NULL")
_REDACTED_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


class NewerDatabase(RuntimeError):
    """The database was written by a newer version of this program."""


def utcnow() -> str:
    """UTC ISO-8601 with milliseconds: sorts as text, so SQL can compare it."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RawCallback:
    id: int
    received_at: str
    source_addr: str | None
    headers: dict = field(repr=False)
    body: bytes = field(repr=False)
    checkout_request_id: str | None = None
    outcome: str = RECEIVED
    note: str | None = None
    processed_at: str | None = None


@dataclass(frozen=True)
class Event:
    """One entry of the event log; `data_json` is its data exactly as stored (parsed on demand)."""

    id: int
    type: str
    checkout_request_id: str | None
    created_at: str
    data_json: str = field(repr=False)

    @property
    def data(self) -> dict:
        return json.loads(self.data_json)

    def to_dict(self) -> dict:
        return {"id": self.id, "type": self.type, "checkout_request_id": self.checkout_request_id,
                "created_at": self.created_at, "data": self.data}

    def to_json(self) -> str:
        """`to_dict()` as compact JSON, without parsing and re-encoding the stored data."""
        return (f'{{"id":{self.id},"type":{json.dumps(self.type)},'
                f'"checkout_request_id":{json.dumps(self.checkout_request_id, ensure_ascii=False)},'
                f'"created_at":{json.dumps(self.created_at)},"data":{self.data_json}}}')


def _payment(row: sqlite3.Row | None) -> Payment | None:
    """A row of `SELECT {PAYMENT_COLUMNS}` (the dataclass's field order) as a Payment."""
    return Payment(*row) if row is not None else None


def _callback(row: sqlite3.Row | None) -> RawCallback | None:
    if row is None:
        return None
    values = dict(row)
    values["headers"] = json.loads(values["headers"])
    values["body"] = bytes(values["body"])
    return RawCallback(**values)


def _event(row: sqlite3.Row) -> Event:
    return Event(row[0], row[1], row[2], row[3], row[4])


def _json_default(value):
    return str(value)  # Decimal amounts from callbacks: exact text, never float


def event_json(data: dict) -> str:
    """An event's data as stored: compact JSON, money as exact text."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def redact_headers(headers: Mapping[str, str] | None) -> dict:
    """Headers as a plain dict, with credentials replaced: they are stored for review."""
    return {name: ("<redacted>" if name.lower() in _REDACTED_HEADERS else str(value))
            for name, value in (headers or {}).items()}


class Transaction:
    """Reads and writes inside one `BEGIN IMMEDIATE` transaction (see `Store.transaction`)."""

    def __init__(self, conn):
        self.conn = conn
        self.appended: list[tuple[int, str, str | None]] = []  # (id, type, checkout id) of the events appended
        self.queued = 0  # webhook deliveries queued (or made deliverable again): the dispatcher is woken

    @contextmanager
    def savepoint(self, name: str = "apply") -> Iterator[None]:
        """A part of the transaction that an exception undoes alone (its events are forgotten too)."""
        state = self._state()
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.conn.execute(f"ROLLBACK TO {name}")  # raises if SQLite rolled everything back: nothing stored
            self._restore(state)
            self.conn.execute(f"RELEASE {name}")
            raise
        self.conn.execute(f"RELEASE {name}")

    def _state(self):
        return len(self.appended)

    def _restore(self, state) -> None:
        del self.appended[state:]

    def payment(self, checkout_request_id: str) -> Payment | None:
        return _payment(self.conn.execute(
            f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE checkout_request_id = ?", (checkout_request_id,)).fetchone())

    def insert_payment(self, checkout_request_id: str, phone_number: str, amount: int,
                       description: str, merchant_request_id: str | None, batch_id: str | None = None,
                       **initial) -> Payment:
        payment = Payment.new(checkout_request_id, phone_number, amount, description, merchant_request_id, utcnow(),
                              batch_id=batch_id, **initial)
        values = payment.to_dict()
        self.conn.execute(f"INSERT INTO payments ({PAYMENT_COLUMNS}) VALUES ({', '.join('?' * len(values))})",
                          tuple(values.values()))
        return payment  # what SELECT would read back, without reading it

    def update_payment(self, checkout_request_id: str, **changes) -> Payment:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {', '.join(sorted(unknown))}")
        changes["updated_at"] = utcnow()
        assignments = ", ".join(f"{name} = ?" for name in changes)
        return _payment(self.conn.execute(f"UPDATE payments SET {assignments} WHERE checkout_request_id = ?"
                                          f" RETURNING {PAYMENT_COLUMNS}",
                                          (*changes.values(), checkout_request_id)).fetchone())

    def completed_with_receipt(self, receipt: str) -> str | None:
        """The checkout id of the payment this receipt completed, if any."""
        row = self.conn.execute("SELECT checkout_request_id FROM payments WHERE receipt = ? AND status = 'completed'",
                                (receipt,)).fetchone()
        return row[0] if row else None

    def append_event(self, type: str, checkout_request_id: str | None, data: dict) -> int:
        """Append one event to the log, and its webhook outbox rows (committed with the rest of this transaction)."""
        now = utcnow()
        event_id = self.conn.execute(
            "INSERT INTO events (type, checkout_request_id, created_at, data) VALUES (?, ?, ?, ?) RETURNING id",
            (str(type), checkout_request_id, now, event_json(data))).fetchone()[0]
        self.queued += self.conn.execute(FAN_OUT, (event_id, time.time(), now, str(type))).rowcount
        self.appended.append((event_id, str(type), checkout_request_id))
        return event_id

    def insert_callback(self, body: bytes, headers: Mapping[str, str] | None, source_addr: str | None,
                        outcome: str = RECEIVED, note: str | None = None,
                        checkout_request_id: str | None = None) -> int:
        processed_at = None if outcome == RECEIVED else utcnow()
        return self.conn.execute(
            "INSERT INTO callbacks (received_at, source_addr, headers, body, checkout_request_id, outcome,"
            " note, processed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (utcnow(), source_addr, json.dumps(redact_headers(headers)), bytes(body),
             checkout_request_id, outcome, note, processed_at)).fetchone()[0]

    def callback(self, callback_id: int) -> RawCallback | None:
        return _callback(self.conn.execute("SELECT * FROM callbacks WHERE id = ?", (callback_id,)).fetchone())

    def set_callback_outcome(self, callback_id: int, outcome: str, note: str | None = None,
                             checkout_request_id: str | None = None) -> None:
        self.conn.execute(
            "UPDATE callbacks SET outcome = ?, note = ?, processed_at = ?,"
            " checkout_request_id = COALESCE(?, checkout_request_id) WHERE id = ?",
            (outcome, note, utcnow(), checkout_request_id, callback_id))

    def parked_callbacks(self, checkout_request_id: str) -> list[RawCallback]:
        rows = self.conn.execute(
            "SELECT * FROM callbacks WHERE checkout_request_id = ? AND outcome = ? ORDER BY id",
            (checkout_request_id, PARKED)).fetchall()
        return [_callback(row) for row in rows]


class _Batch:
    """Write transactions that share one commit (one fsync)."""

    __slots__ = ("done", "error", "appended", "queued")

    def __init__(self):
        self.done, self.error = False, None
        self.appended: list[tuple[int, str, str | None]] = []  # the events its blocks appended
        self.queued = 0  # webhook deliveries its blocks queued


class _Shared:
    """One computation and its outcome, for everyone who asked while it ran."""

    __slots__ = ("done", "result", "error")

    def __init__(self):
        self.done = threading.Event()
        self.result, self.error = None, None


class SqlStore:
    """What both stores share: the reads, and waiting for new events. A subclass provides
    `transaction()`, `_connection()` (a read connection), `probe_write()` and `close()`."""

    dialect = "sqlite"

    def __init__(self):
        self._new_events = threading.Condition()  # notified when events are committed: event readers look again
        self.known_last_event_id = 0  # the newest event id known to be committed (set by commits and polls)
        # Called after a commit that queued webhook deliveries (the dispatcher), this process's or
        # (PostgreSQL) another's: not after every commit, so an idle dispatcher costs nothing per callback.
        self.outbox_listeners: list[Callable[[], None]] = []
        # Called with (type, checkout id) of each committed event, this process's or (PostgreSQL) another's.
        self.event_listeners: list[Callable[[str, str | None], None]] = []
        self.write_failure: str | None = None  # the last write the database refused, until one succeeds
        self.described = ""  # where the data is, for people: a file, or a URL without its password
        # How a long read (/health's counts, analytics) runs: here, in the caller. The gevent server
        # sets gevent's native thread pool for SQLite, so that a scan of a million rows does not
        # hold the event loop.
        self.run_apart: Callable[[Callable[[], Any]], Any] = lambda read: read()
        self._counting: _Shared | None = None  # the count under way, which later callers share
        self._counting_lock = threading.Lock()

    def reader(self):
        """A read connection from the pool, as a context manager (for modules that keep their own SQL)."""
        return self._connection()

    def note_write_failure(self, exc: BaseException) -> None:
        """Remember that the database refused a write (disk full, I/O error), until one succeeds."""
        if isinstance(exc, DATABASE_ERRORS) and not isinstance(exc, INTEGRITY_ERRORS):
            self.write_failure = f"{type(exc).__name__}: {exc}"

    @staticmethod
    def subscribed(events_json: str, event_type: str) -> str:
        """SQL: the endpoint's JSON array of event types `events_json` includes `event_type` (or "*")."""
        return subscribed(events_json, event_type)

    def leader(self, name: str) -> bool:
        """Is this process the one that runs background job `name`? One process per SQLite file: yes."""
        return True

    def _committed(self, appended: list[tuple[int, str, str | None]], queued: int = 0) -> None:
        """After a commit: wake event readers, tell the listeners (appended: (id, type, checkout id))."""
        if appended:
            self.saw_events(max(event_id for event_id, _, _ in appended))
        for _, event_type, checkout_id in appended:
            for listener in self.event_listeners:
                listener(event_type, checkout_id)
        if queued:
            for listener in self.outbox_listeners:
                listener()

    def record_callback(self, body: bytes, headers: Mapping[str, str] | None, source_addr: str | None,
                        outcome: str = RECEIVED, note: str | None = None) -> int:
        """Commit a raw callback exactly as received and return its id."""
        with self.transaction() as tx:
            return tx.insert_callback(body, headers, source_addr, outcome, note)

    def payment(self, checkout_request_id: str) -> Payment | None:
        with self._connection() as conn:
            return _payment(conn.execute(
                f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE checkout_request_id = ?", (checkout_request_id,)).fetchone())

    def callback(self, callback_id: int) -> RawCallback | None:
        with self._connection() as conn:
            return _callback(conn.execute("SELECT * FROM callbacks WHERE id = ?", (callback_id,)).fetchone())

    def callbacks(self, checkout_request_id: str | None = None, outcome: str | None = None) -> list[RawCallback]:
        """Raw callbacks in arrival order, optionally only one payment's or one outcome's."""
        sql, args = "SELECT * FROM callbacks WHERE 1 = 1", []
        if checkout_request_id is not None:
            sql, args = sql + " AND checkout_request_id = ?", [*args, checkout_request_id]
        if outcome is not None:
            sql, args = sql + " AND outcome = ?", [*args, outcome]
        with self._connection() as conn:
            return [_callback(row) for row in conn.execute(sql + " ORDER BY id", args).fetchall()]

    def parked_with_payment(self) -> list[int]:
        """Ids of parked callbacks whose payment is registered (normally none: see `recover`)."""
        with self._connection() as conn:
            return [row[0] for row in conn.execute(
                "SELECT c.id FROM callbacks c JOIN payments p USING (checkout_request_id)"
                " WHERE c.outcome = ? ORDER BY c.id", (PARKED,)).fetchall()]

    def payments_with_status(self, status: str, created_before: str | None = None) -> list[Payment]:
        sql, args = f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE status = ?", [status]
        if created_before is not None:
            sql, args = sql + " AND created_at <= ?", [*args, created_before]
        with self._connection() as conn:
            return [_payment(row) for row in conn.execute(sql + " ORDER BY created_at", args).fetchall()]

    def recent_payments(self, status: str | None = None, limit: int = 20) -> list[Payment]:
        """The newest payments (with `status`, if given), newest first."""
        sql, args = f"SELECT {PAYMENT_COLUMNS} FROM payments", []
        if status is not None:
            sql, args = sql + " WHERE status = ?", [status]
        with self._connection() as conn:
            return [_payment(row) for row in conn.execute(sql + " ORDER BY created_at DESC LIMIT ?",
                                                          [*args, limit]).fetchall()]

    def pending_older_than(self, seconds: float, now: datetime | None = None) -> list[Payment]:
        now = now or datetime.now(timezone.utc)
        cutoff = (now - timedelta(seconds=seconds)).astimezone(timezone.utc).isoformat(timespec="milliseconds")
        return self.payments_with_status("pending", created_before=cutoff)

    def events(self, after: int = 0, limit: int = 100, type: str | None = None,
               checkout_request_id: str | None = None, until: int | None = None) -> list[Event]:
        """Events with `after` < id (<= `until`), oldest first, at most `limit` (capped at MAX_EVENTS_PAGE)."""
        sql, args = "SELECT id, type, checkout_request_id, created_at, data FROM events WHERE id > ?", [after]
        if until is not None:
            sql, args = sql + " AND id <= ?", [*args, until]
        if type is not None:
            sql, args = sql + " AND type = ?", [*args, type]
        if checkout_request_id is not None:
            sql, args = sql + " AND checkout_request_id = ?", [*args, checkout_request_id]
        with self._connection() as conn:
            rows = conn.execute(sql + " ORDER BY id LIMIT ?", [*args, max(1, min(limit, MAX_EVENTS_PAGE))])
            return [_event(row) for row in rows.fetchall()]

    def last_event_id(self) -> int:
        with self._connection() as conn:
            return conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]

    def wait_for_events(self, after: int, timeout: float) -> bool:
        """Block until an event with id > `after` is committed (True) or `timeout` passes (False).

        Commits of this process wake it at once, and so do other processes' on PostgreSQL (LISTEN);
        the database itself is asked only every EVENT_POLL_SECONDS, in case a wake-up was missed."""
        deadline = time.monotonic() + timeout
        with self._new_events:
            while self.known_last_event_id <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if not self._new_events.wait(min(left, EVENT_POLL_SECONDS)):
                    self.saw_events(self.last_event_id())
        return True

    def saw_events(self, last_id: int) -> None:
        """Events up to `last_id` are committed: wake whoever waits for them."""
        with self._new_events:
            if last_id > self.known_last_event_id:
                self.known_last_event_id = last_id
                self._new_events.notify_all()

    def trim_rejected(self, keep: int) -> int:
        """Delete all but the newest `keep` rejected callbacks (samples of refused requests)."""
        with self.transaction() as tx:
            return tx.conn.execute(
                "DELETE FROM callbacks WHERE outcome = 'rejected' AND id <= (SELECT id FROM callbacks"
                " WHERE outcome = 'rejected' ORDER BY id DESC LIMIT 1 OFFSET ?)", (keep,)).rowcount

    def counts(self) -> dict:
        """Payments per status and callbacks per outcome (also proves the database answers).

        A full scan (about 60 ms at a million payments here), behind `/health`, which needs no key:
        one count runs at a time and everyone who asks meanwhile gets its answer, so a flood of
        /health costs one scan at a time, and `run_apart` keeps the scan off the event loop."""
        with self._counting_lock:
            shared, first = self._counting, self._counting is None
            if first:
                shared = self._counting = _Shared()
        if first:
            try:
                shared.result = self.run_apart(self._count)
            except BaseException as exc:
                shared.error = exc
            finally:
                with self._counting_lock:
                    self._counting = None
                shared.done.set()
        else:
            shared.done.wait()
        if shared.error is not None:
            raise shared.error
        return shared.result

    def _count(self) -> dict:
        with self._connection() as conn:
            payments = dict(conn.execute("SELECT status, COUNT(*) FROM payments GROUP BY status").fetchall())
            callbacks = dict(conn.execute("SELECT outcome, COUNT(*) FROM callbacks GROUP BY outcome").fetchall())
        return {"payments": payments, "callbacks": callbacks}


class Store(SqlStore):
    """The payments database at `path` (parent folders are created; the schema on first use)."""

    def __init__(self, path: Path | str):
        if is_postgres_url(path):  # never a SQLite file named after a URL
            raise ValueError("Store() is the SQLite store; open_store() opens a postgresql:// URL")
        super().__init__()
        self.path = Path(path)
        self.described = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = self._open()  # the only connection that writes (see the module docstring)
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._write_lock = threading.Lock()  # held while a block runs on the writer, or a batch commits
        self._writing_thread: int | None = None
        self._batch: _Batch | None = None  # the open batch: blocks done, not yet committed
        self._commits = threading.Condition()
        self._committing = False
        self._idle_readers: list[sqlite3.Connection] = []
        self._migrate()
        self.known_last_event_id = self.last_event_id()

    def description(self) -> str:
        """What and where the store is, for the start-up lines."""
        return f"SQLite {self.described} (WAL, synchronous=FULL), one server process per file"

    def _migrate(self) -> None:
        """Create the schema, or bring an older database up to SCHEMA_VERSION (additive only)."""
        version = self._writer.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise NewerDatabase(f"{self.path} has schema version {version}, newer than this program's "
                                f"{SCHEMA_VERSION}: run the newer version, or point PAYMENTS_DB elsewhere")
        if version == SCHEMA_VERSION:
            self._create_receipt_index()
            return
        present = {row[1] for row in self._writer.execute("PRAGMA table_info(payments)")}
        added = [f"ALTER TABLE payments ADD COLUMN {f.name} {f.metadata['sql']};"  # columns added since
                 for f in FIELDS if present and f.name not in present]
        self._writer.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\n{SQLITE_ONLY}\n{chr(10).join(added)}\n"
                                   f"PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
        self._create_receipt_index()

    def _create_receipt_index(self) -> None:
        """The one-receipt index; tried at every start while older duplicates stop it being made."""
        try:
            self._writer.execute(RECEIPT_INDEX)
        except sqlite3.IntegrityError:  # made before the rule: the reviewer sorts those out, the manager still checks
            log.warning("%s: some M-Pesa receipts completed more than one payment before this version; "
                        "review them (SELECT receipt FROM payments WHERE status = 'completed' GROUP BY receipt "
                        "HAVING COUNT(*) > 1)", self.path)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A read connection from the pool (list.pop/append are atomic)."""
        try:
            conn = self._idle_readers.pop()
        except IndexError:
            conn = self._open()
        try:
            yield conn
        finally:
            if conn.in_transaction or len(self._idle_readers) >= IDLE_READERS_KEPT:
                conn.close()
            else:
                self._idle_readers.append(conn)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction: committed (and on disk) when the block ends, rolled back on error."""
        if self._writing_thread == threading.get_ident():
            raise RuntimeError("Store.transaction() inside another one in the same thread")
        failure = None
        with self._write_lock:
            self._writing_thread = threading.get_ident()
            try:
                if self._batch is None:
                    self._writer.execute("BEGIN IMMEDIATE")
                    self._batch = _Batch()
                batch = self._batch
                try:
                    self._writer.execute("SAVEPOINT tx")
                    tx = Transaction(self._writer)
                    yield tx
                    self._writer.execute("RELEASE tx")
                    batch.appended += tx.appended
                    batch.queued += tx.queued
                except BaseException as exc:
                    failure = exc
                    self.note_write_failure(exc)
                    self._undo(batch, exc)
            finally:
                self._writing_thread = None
        try:
            self._commit(batch)  # after a failure too: the batch may hold others' work, and must not stay open
        except sqlite3.Error as exc:
            self.note_write_failure(exc)
            if failure is None:
                raise
        else:
            if failure is None:
                self.write_failure = None
        if failure is not None:
            raise failure


    def probe_write(self) -> bool:
        """Write one page and commit it (fsync): do writes work again?"""
        try:
            with self.transaction() as tx:
                tx.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error:
            return False
        return True

    def _undo(self, batch: "_Batch", exc: BaseException) -> None:
        """Roll back one failed block (write lock held); if that is impossible, the whole batch."""
        try:
            self._writer.execute("ROLLBACK TO tx")
            self._writer.execute("RELEASE tx")
            return
        except sqlite3.Error:  # SQLite already rolled back everything (disk full, I/O error), or worse
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
        self._batch = None
        self._finish(batch, exc)

    def _commit(self, batch: "_Batch") -> None:
        """Return once `batch` is on disk: commit it (with whatever joined it) unless another thread is."""
        with self._commits:
            while not batch.done and self._committing:
                self._commits.wait()
            leader = not batch.done
            self._committing = self._committing or leader
        if leader:
            current, error = None, None
            try:
                try:
                    time.sleep(0)  # let the others that are ready finish their blocks first: one fsync for all
                finally:  # interrupted or not, the batch is committed (it may hold others' work)
                    current, error = self._commit_open_batch()
            finally:
                with self._commits:
                    self._committing = False
                    if current is not None:
                        current.done, current.error = True, error
                    self._commits.notify_all()
                if current is not None and error is None:
                    self._committed(current.appended, current.queued)
        if batch.error is not None:
            raise sqlite3.OperationalError(f"not committed: {batch.error}") from batch.error

    def _commit_open_batch(self) -> tuple["_Batch | None", BaseException | None]:
        """COMMIT the open batch, or roll it back if that fails: (the batch, what went wrong)."""
        with self._write_lock:
            current, self._batch = self._batch, None
            if current is None:
                return None, None
            try:
                self._writer.execute("COMMIT")
            except BaseException as exc:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                return current, exc
            return current, None

    def _finish(self, batch: "_Batch", error: BaseException | None) -> None:
        with self._commits:
            batch.done, batch.error = True, error
            self._commits.notify_all()

    def close(self) -> None:
        """Commit what is pending and close every connection."""
        with self._write_lock:
            batch, self._batch = self._batch, None
            if batch is not None:
                try:
                    self._writer.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._finish(batch, exc)
                else:
                    self._finish(batch, None)
            self._writer.close()
        while self._idle_readers:
            self._idle_readers.pop().close()

    def pragmas(self) -> dict:
        with self._connection() as conn:
            return {name: conn.execute(f"PRAGMA {name}").fetchone()[0]
                    for name in ("journal_mode", "synchronous", "foreign_keys", "user_version")}


def open_store(target: "Path | str", **options) -> SqlStore:
    """The store PAYMENTS_DB names: a `postgresql://` URL, or else a SQLite file."""
    if is_postgres_url(target):
        from mpesa_agent.server.pgstore import PostgresStore
        return PostgresStore(str(target), **options)
    return Store(target)


def is_postgres_url(target: "Path | str") -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))
