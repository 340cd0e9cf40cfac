"""The reliability report's PostgreSQL rows (issue 10): two callback servers over one PostgreSQL of
their own (harness/pgserver.py), long-poll waiters on server A, a burst of callbacks spread over A
and B as a load balancer would, and a fault mid-burst:

- kill -9 of server B: callbacks it did not answer go to A; every waiter on A is still answered;
- a PostgreSQL crash and restart: both servers answer 503 while it is down (never a 200 for a
  callback not stored) and carry on when it is back; the waiters on A are answered.

Then the database itself is audited: 0 acknowledged callbacks lost, 0 applied twice.
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from harness import pgserver
from reliability.report import (DEFAULT, Expected, Row, Waiters, audit, new_stack, parallel, payments_for, register,
                                send_through_fault)

WAIT_SECONDS = 60  # the waiters' timeout: every one must be answered long before


def kill_one_of_two(folder: Path, callbacks: int = DEFAULT.crash_callbacks, senders: int = DEFAULT.senders,
                    seed: int | None = None) -> Row:
    row = Row("PostgreSQL: kill -9 of one of two servers mid-burst", f"{callbacks} callbacks over 2 servers, "
              f"{senders} senders, {callbacks} waiters on A")
    return _burst(row, folder, callbacks, senders, seed, "kill -9 of server B",
                  lambda pg, a, b: b.server.kill())


def restart_mid_burst(folder: Path, callbacks: int = DEFAULT.crash_callbacks, senders: int = DEFAULT.senders,
                      seed: int | None = None) -> Row:
    row = Row("PostgreSQL: restart mid-burst", f"{callbacks} callbacks over 2 servers, {senders} senders, "
              f"{callbacks} waiters on A")
    return _burst(row, folder, callbacks, senders, seed, "PostgreSQL crashed (immediate stop) and restarted",
                  lambda pg, a, b: pg.restart())


def _burst(row: Row, folder: Path, callbacks: int, senders: int, seed: int | None, fault_words: str, fault) -> Row:
    reason = pgserver.missing()
    if reason:
        row.problems.append(f"not run: {reason}")
        return row
    rng = random.Random(seed)
    expected: list[Expected] = payments_for(f"pg{rng.randrange(10_000)}_", callbacks)
    rng.shuffle(expected)
    fault_at = rng.randint(max(1, callbacks // 10), max(1, callbacks * 9 // 10))
    with pgserver.PrivatePostgres() as pg, \
            new_stack(folder / "a", PAYMENTS_DB=pg.url) as a, new_stack(folder / "b", PAYMENTS_DB=pg.url) as b:
        answers = parallel(lambda e: register(a, e).status_code, expected, senders)
        row.check(set(answers) == {201}, f"registrations answered {Counter(answers)}")
        with Waiters(a, [e.checkout_id for e in expected], per_payment=1, timeout=WAIT_SECONDS) as waiters:
            acked, resent = send_through_fault([a, b], expected, senders, fault_at, lambda: fault(pg, a, b))
        waiters.audit(row, expected)
        row.acked = len(acked)
        audit(row, pg.url, expected, acked)
    row.faults = f"{fault_words} at {100 * fault_at // callbacks}% of acks; {resent} callbacks sent again"
    return row
