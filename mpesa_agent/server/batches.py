"""Bulk payment requests, the durable job: batches and their items in the store, and the sender
thread that pushes them at BULK_PUSHES_PER_SECOND through the callback server's Daraja client.

Exactly once per item. An item leaves `queued` for `sending` in a committed transaction before
its push goes out; the push's payment is registered and the item marked `sent` (with its checkout
id) in one transaction after Daraja accepts it. A server that dies in between leaves the item
`sending`; at the next start it becomes `unknown` with a note and is never pushed again (its
answer was lost: the customer may have a prompt). Only `queued` items are pushed, so after a
kill -9 the batch resumes where it was. On PostgreSQL one process sends (the store's leader lock),
and the one that takes over after it died turns its `sending` items `unknown` the same way.
Daraja's throttling (spike arrest, quota, HTTP 429) means the push was not processed: the item
goes back to `queued` and every push pauses, doubling the pause while it lasts. The payments themselves are ordinary ones carrying `batch_id`: callbacks and
the reconciler settle them as any other. SQL is portable (`?` placeholders, standard SQL).
"""
from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from mpesa_agent.config import Settings
from mpesa_agent.daraja import DarajaClient
from mpesa_agent.daraja.errors import (AuthenticationError, DarajaError, OutcomeUnknownError, SubscriberLockedError,
                                     ThrottledError, TransportError)
from mpesa_agent.daraja.push import push_and_register
from mpesa_agent.payments.bulk import (UNKNOWN_AFTER_CRASH, BatchStatus, ItemState, ItemView, Problem, Row,
                                       payment_description, settled, summary, tally)
from mpesa_agent.payments.phones import masked_phone
from mpesa_agent.payments.states import COMPLETED, EventType
from mpesa_agent.server.jobs import BackgroundJob
from mpesa_agent.server.manager import CallbackManager
from mpesa_agent.server.store import Store, Transaction, utcnow

log = logging.getLogger("callback_server.bulk")

TICK = 1.0  # how often the sender looks for work (a new batch wakes it at once)
MAX_PAUSE = 300.0  # the longest pause after Daraja throttles
CLAIM_PAGE = 50  # queued items read at once
INSERT_PAGE = 500  # items per INSERT (8 values each: under SQLite's 32,766 variables)
LEADER = "bulk sender"  # on PostgreSQL one process sends (store.leader); SQLite has one process anyway
REPEAT_WINDOW = 120  # Daraja's rule 17: the same amount to the same phone within 2 minutes is declined
NOT_PAID = ("failed", "not_sent", "unknown", "cancelled", "pending", "queued", "sending")
ITEM_COLUMNS = ("i.position, i.line, i.phone_number, i.amount, i.reference, i.state, i.note, i.checkout_request_id,"
                " p.status, p.reason, p.receipt")
BATCH_COLUMNS = ("id, description, status, item_count, total_amount, skipped, throttled, note, created_at, updated_at,"
                 " finished_at, settled_at")


@dataclass(frozen=True)
class Queued:
    """One item the sender may push."""

    batch_id: str
    position: int
    phone_number: str
    amount: int
    description: str  # what its payment is for (its reference, else the batch's description)


def new_batch_id() -> str:
    return "bat_" + secrets.token_hex(8)


class Batches:
    """The `batches` and `batch_items` tables (store.py SCHEMA) and what is read from them."""

    def __init__(self, store: Store):
        self.store = store

    def create(self, description: str, rows: list[Row], skipped: list[Problem]) -> str:
        """Store a batch and its items as `queued`, with its `batch.started` event; its id."""
        batch_id, now = new_batch_id(), utcnow()
        with self.store.transaction() as tx:
            tx.conn.execute(
                f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0, NULL, ?, ?, NULL, NULL)",
                (batch_id, description, str(BatchStatus.SENDING), len(rows), sum(row.amount for row in rows),
                 json.dumps([problem.to_dict() for problem in skipped]), now, now))
            values = [(batch_id, position, row.line, row.phone_number, row.amount, row.reference,
                       str(ItemState.QUEUED), now) for position, row in enumerate(rows, start=1)]
            for start in range(0, len(values), INSERT_PAGE):  # multi-row INSERTs: both stores, few round trips
                page = values[start:start + INSERT_PAGE]
                tx.conn.execute("INSERT INTO batch_items (batch_id, position, line, phone_number, amount, reference,"
                                " state, updated_at) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(page)),
                                tuple(value for row in page for value in row))
            self._event(tx, EventType.BATCH_STARTED, batch_id)
        log.info("batch %s: %d items, %d KES, %d rows skipped", batch_id, len(rows), sum(r.amount for r in rows),
                 len(skipped))
        return batch_id

    def recent_requests(self, now: datetime | None = None) -> dict[str, int]:
        """MSISDN -> amount of every payment registered in the last 2 minutes."""
        since = ((now or datetime.now(timezone.utc)) - timedelta(seconds=REPEAT_WINDOW)).isoformat(
            timespec="milliseconds")
        with self.store.reader() as conn:
            return dict(conn.execute("SELECT phone_number, amount FROM payments WHERE created_at >= ?",
                                     (since,)).fetchall())

    def report(self, batch_id: str, with_items: bool = False) -> dict | None:
        """Progress and outcome: counts and KES by outcome, who has not paid, who failed and why."""
        with self.store.reader() as conn:
            batch = self._batch(conn, batch_id)
            if batch is None:
                return None
            items = self._items(conn, batch_id)
        body = self._brief(batch, items)
        body["not_paid"] = [item.to_dict() for item in items if item.outcome in NOT_PAID]
        body["failed"] = [item.to_dict() for item in items if item.outcome in ("failed", "not_sent", "unknown")]
        body["skipped"] = json.loads(batch["skipped"])
        if with_items:
            body["items"] = [item.to_dict() for item in items]
        return body

    def items(self, batch_id: str) -> list[ItemView]:
        with self.store.reader() as conn:
            return self._items(conn, batch_id)

    def recent(self, limit: int = 20) -> list[dict]:
        """The newest batches, newest first, each in brief."""
        with self.store.reader() as conn:
            batches = conn.execute(f"SELECT {BATCH_COLUMNS} FROM batches ORDER BY created_at DESC, id LIMIT ?",
                                   (limit,)).fetchall()
            return [self._brief(batch, self._items(conn, batch["id"])) for batch in batches]

    def cancel(self, batch_id: str) -> tuple[dict | None, int]:
        """Cancel the items not sent yet: (the report, how many were cancelled); a batch already
        fully sent cancels nothing. An item being sent right now still goes out."""
        now = utcnow()
        with self.store.transaction() as tx:
            batch = self._batch(tx.conn, batch_id)
            if batch is None:
                return None, 0
            cancelled = tx.conn.execute(
                "UPDATE batch_items SET state = ?, note = ?, updated_at = ? WHERE batch_id = ? AND state = ?",
                (str(ItemState.CANCELLED), "not sent: the batch was cancelled", now, batch_id,
                 str(ItemState.QUEUED))).rowcount
            if batch["status"] == BatchStatus.SENDING:
                tx.conn.execute("UPDATE batches SET status = ?, updated_at = ?, finished_at = ?, note = NULL"
                                " WHERE id = ?", (str(BatchStatus.CANCELLED), now, now, batch_id))
                self._event(tx, EventType.BATCH_FINISHED, batch_id)
        log.info("batch %s cancelled: %d items not sent", batch_id, cancelled)
        return self.report(batch_id), cancelled

    def recover(self) -> int:
        """After a crash: items left `sending` become `unknown` (never re-sent), and batches whose
        last item that was are finished."""
        now = utcnow()
        with self.store.transaction() as tx:
            stuck = [row[0] for row in tx.conn.execute(
                "SELECT DISTINCT batch_id FROM batch_items WHERE state = ?", (str(ItemState.SENDING),)).fetchall()]
            count = tx.conn.execute("UPDATE batch_items SET state = ?, note = ?, updated_at = ? WHERE state = ?",
                                    (str(ItemState.UNKNOWN), UNKNOWN_AFTER_CRASH, now,
                                     str(ItemState.SENDING))).rowcount
            for batch_id in stuck:
                self._after_item(tx, batch_id)
        if count:
            log.warning("bulk: %d item(s) were being sent when the server stopped; they are unknown, not re-sent",
                        count)
        return count

    def queued(self, limit: int = CLAIM_PAGE) -> list[Queued]:
        """The next items to push: oldest batch first, in their order."""
        with self.store.reader() as conn:
            rows = conn.execute(
                "SELECT i.batch_id, i.position, i.phone_number, i.amount, i.reference, b.description"
                " FROM batch_items i JOIN batches b ON b.id = i.batch_id"
                " WHERE i.state = ? AND b.status = ? ORDER BY b.created_at, i.batch_id, i.position LIMIT ?",
                (str(ItemState.QUEUED), str(BatchStatus.SENDING), limit)).fetchall()
        return [Queued(row[0], row[1], row[2], row[3], payment_description(row[5], row[4])) for row in rows]

    def claim(self, item: Queued) -> bool:
        """`queued` -> `sending`, committed before the push; False if it was cancelled meanwhile."""
        with self.store.transaction() as tx:
            return tx.conn.execute(
                "UPDATE batch_items SET state = ?, updated_at = ? WHERE batch_id = ? AND position = ? AND state = ?",
                (str(ItemState.SENDING), utcnow(), item.batch_id, item.position, str(ItemState.QUEUED))).rowcount == 1

    def mark_sent(self, tx: Transaction, item: Queued, checkout_request_id: str) -> None:
        """Inside the payment's registration: the item is `sent`, with its checkout id."""
        self._set(tx, item, ItemState.SENT, None, checkout_request_id)
        tx.conn.execute("UPDATE batches SET note = NULL WHERE id = ? AND note IS NOT NULL", (item.batch_id,))

    def finish(self, item: Queued, state: ItemState, note: str, checkout_request_id: str | None = None) -> None:
        """A push that ended without a registered payment: not sent, or unknown."""
        with self.store.transaction() as tx:
            self._set(tx, item, state, note[:500], checkout_request_id)

    def requeue(self, item: Queued, note: str, throttled: bool) -> None:
        """Daraja did not process the push (throttled, or unreachable): `queued` again, with why it waits."""
        with self.store.transaction() as tx:
            tx.conn.execute("UPDATE batch_items SET state = ?, updated_at = ? WHERE batch_id = ? AND position = ?"
                            " AND state = ?", (str(ItemState.QUEUED), utcnow(), item.batch_id, item.position,
                                               str(ItemState.SENDING)))
            tx.conn.execute("UPDATE batches SET throttled = throttled + ?, note = ?, updated_at = ? WHERE id = ?",
                            (1 if throttled else 0, note[:300], utcnow(), item.batch_id))

    def settle_finished(self) -> list[str]:
        """Batches fully sent whose every item now has its final answer: `batch.settled`, once."""
        done = []
        with self.store.reader() as conn:
            waiting = [row[0] for row in conn.execute(
                "SELECT id FROM batches WHERE status <> ? AND settled_at IS NULL", (str(BatchStatus.SENDING),))]
        for batch_id in waiting:
            if not settled(self.items(batch_id)):
                continue
            with self.store.transaction() as tx:
                if tx.conn.execute("UPDATE batches SET settled_at = ?, updated_at = ? WHERE id = ? AND settled_at IS NULL",
                                   (utcnow(), utcnow(), batch_id)).rowcount:
                    self._event(tx, EventType.BATCH_SETTLED, batch_id)
                    done.append(batch_id)
        return done

    def _set(self, tx: Transaction, item: Queued, state: ItemState, note: str | None,
             checkout_request_id: str | None) -> None:
        tx.conn.execute("UPDATE batch_items SET state = ?, note = ?, checkout_request_id = ?, updated_at = ?"
                        " WHERE batch_id = ? AND position = ?",
                        (str(state), note, checkout_request_id, utcnow(), item.batch_id, item.position))
        self._after_item(tx, item.batch_id)

    def _after_item(self, tx: Transaction, batch_id: str) -> None:
        """A progress event about every tenth of the items; `batch.finished` after the last."""
        batch = self._batch(tx.conn, batch_id)
        left = tx.conn.execute("SELECT COUNT(*) FROM batch_items WHERE state IN (?, ?) AND batch_id = ?",
                               (str(ItemState.QUEUED), str(ItemState.SENDING), batch_id)).fetchone()[0]
        if left == 0 and batch["status"] == BatchStatus.SENDING:
            now = utcnow()
            tx.conn.execute("UPDATE batches SET status = ?, finished_at = ?, updated_at = ?, note = NULL WHERE id = ?",
                            (str(BatchStatus.SENT), now, now, batch_id))
            self._event(tx, EventType.BATCH_FINISHED, batch_id)
        elif left and (batch["item_count"] - left) % max(1, batch["item_count"] // 10) == 0:
            self._event(tx, EventType.BATCH_PROGRESS, batch_id)

    def _event(self, tx: Transaction, type: EventType, batch_id: str) -> None:
        batch = self._batch(tx.conn, batch_id)
        tx.append_event(type, None, {"payment": None, "batch": self._brief(batch, self._items(tx.conn, batch_id))})

    @staticmethod
    def _batch(conn, batch_id: str):
        return conn.execute(f"SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)).fetchone()

    @staticmethod
    def _items(conn, batch_id: str) -> list[ItemView]:
        rows = conn.execute(f"SELECT {ITEM_COLUMNS} FROM batch_items i LEFT JOIN payments p"
                            " ON p.checkout_request_id = i.checkout_request_id WHERE i.batch_id = ?"
                            " ORDER BY i.position", (batch_id,)).fetchall()
        return [ItemView(*row) for row in rows]

    @staticmethod
    def _brief(batch, items: list[ItemView]) -> dict:
        counts = tally(items)
        return {"id": batch["id"], "description": batch["description"], "status": batch["status"],
                "settled": settled(items), "summary": summary(items), "item_count": batch["item_count"],
                "total_amount": batch["total_amount"], "paid_amount": counts[COMPLETED]["amount"],
                "by_outcome": counts, "throttled": batch["throttled"], "note": batch["note"],
                "created_at": batch["created_at"], "updated_at": batch["updated_at"],
                "finished_at": batch["finished_at"], "settled_at": batch["settled_at"]}


class BulkSender(BackgroundJob):
    """The thread that pushes queued items, one at a time, at `bulk_pushes_per_second`."""

    thread_name = "bulk-sender"

    def __init__(self, batches: Batches, manager: CallbackManager, daraja: DarajaClient, settings: Settings, *,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.batches, self.manager, self.daraja, self.settings = batches, manager, daraja, settings
        self.clock = clock
        self.interval = 1.0 / settings.bulk_pushes_per_second
        self._next_push = 0.0
        self._paused_until = 0.0
        self._pause = 0.0
        self._led = False  # was this process the sender at the last look

    def start(self) -> "BulkSender":
        super().start()
        log.info("bulk sender: at most %g pushes per second", self.settings.bulk_pushes_per_second)
        return self

    def _leading(self) -> bool:
        """This process sends (PostgreSQL: the one holding the leader lock). On becoming the sender, items
        left `sending` by the one before (dead: its lock is gone) become `unknown`, before any new push."""
        leading = self.batches.store.leader(LEADER)
        if leading and not self._led:
            self.batches.recover()
        self._led = leading
        return leading

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                if self._leading():
                    self.run_once()
                    self.batches.settle_finished()
            except Exception:  # a broken pass must not end the sender for good
                log.exception("bulk sender: pass failed; trying again")
                self._stopped.wait(TICK)
            self._poked.wait(TICK)
            self._poked.clear()

    def run_once(self) -> int:
        """Push queued items until none is left (or stopped); how many pushes were tried."""
        tried = 0
        while not self._stopped.is_set() and self._leading():
            page = self.batches.queued()
            if not page:
                return tried
            for item in page:
                if not self._wait_turn():
                    return tried
                tried += 1
                self.send(item)
                if self.clock() < self._paused_until:
                    break  # throttled: read the queue again after the pause
        return tried

    def _wait_turn(self) -> bool:
        """Sleep until this push's turn (the pace, and any pause); False once stopped."""
        now = self.clock()
        turn = max(self._next_push, self._paused_until, now)
        if turn > now and self._stopped.wait(turn - now):
            return False
        self._next_push = max(self.clock(), turn) + self.interval
        return not self._stopped.is_set()

    def send(self, item: Queued) -> None:
        """Push one item, exactly once (see the module docstring)."""
        if not self.batches.claim(item):
            return  # cancelled since it was read

        def register(ack) -> None:
            self.manager.register(ack.checkout_request_id, item.phone_number, item.amount, item.description,
                                  ack.merchant_request_id, batch_id=item.batch_id,
                                  within=lambda tx, payment: self.batches.mark_sent(tx, item, ack.checkout_request_id))

        try:
            pushed = push_and_register(self.daraja, register, item.phone_number, item.amount, item.description,
                                       self.settings.callback_url)
        except ThrottledError as exc:
            self._back_off(item, f"M-Pesa is throttling requests ({exc.error_code or exc.http_status}); paused", True)
            return
        except OutcomeUnknownError as exc:
            self.batches.finish(item, ItemState.UNKNOWN, "M-Pesa did not confirm the request "
                                f"({exc.error_message or 'no answer'}); it may have reached the phone, so it is "
                                "not re-sent (ask the customer before requesting again)")
            return
        except (TransportError, AuthenticationError) as exc:  # nothing was processed: send it later
            self._back_off(item, f"paused: {exc}", False)
            return
        except SubscriberLockedError:
            self.batches.finish(item, ItemState.NOT_SENT, "not sent: another M-Pesa transaction was in progress on "
                                                         "this phone; ask again in a few minutes")
            return
        except DarajaError as exc:
            self.batches.finish(item, ItemState.NOT_SENT, f"not sent: M-Pesa refused the request: {exc}")
            return
        self._pause = 0.0
        if not pushed.registered:
            log.error("bulk %s item %d: push %s accepted but not recorded (%s)", item.batch_id, item.position,
                      pushed.ack.checkout_request_id, pushed.problem)
            self.batches.finish(item, ItemState.UNKNOWN, "sent, but the server could not record it "
                                f"({type(pushed.problem).__name__}); check {pushed.ack.checkout_request_id} "
                                "before asking again", pushed.ack.checkout_request_id)

    def _back_off(self, item: Queued, note: str, throttled: bool) -> None:
        self._pause = min(MAX_PAUSE, self._pause * 2 or self.settings.bulk_throttle_pause)
        self._paused_until = self.clock() + self._pause
        log.warning("bulk %s item %d (%s): %s for %.1f s", item.batch_id, item.position,
                    masked_phone(item.phone_number), note, self._pause)
        self.batches.requeue(item, f"{note} for {self._pause:g} s", throttled)
