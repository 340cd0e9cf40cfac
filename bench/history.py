"""History and analytics at scale: a filtered `/payment/history` page and a month's `/payment/analytics`,
over HTTP from a real callback server process, with 1,000,000 stored payments.

    python -m bench.history [--payments 1000000] [--samples 300] [--keep DB]

The payments are written straight into the SQLite file (one transaction, synchronous=OFF: a fill,
not a measured path), spread evenly over 2026, with the schema and indexes the server makes.
Targets (issue 11): a filtered page p99 <= 50 ms; a month's analytics <= 500 ms. A benchmark: it
prints figures and the targets missed, and never fails on timing.
"""
from __future__ import annotations

import argparse
import base64
import json
import random
import sqlite3
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

from bench.stack import new_stack
from mpesa_agent.server.store import Store

YEAR_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
YEAR = timedelta(days=365)
CUSTOMERS = 50_000
DESCRIPTIONS = ("lunch", "rent", "stock", "school fees", "chama", "sukari na unga")
# (status, reason, result_code), by share of payments
OUTCOMES = ([("completed", None, "0")] * 7 + [("failed", "Request cancelled by user", "1032")] * 2
            + [("failed", "Insufficient M-Pesa balance", "1")])
PAGE_TARGET_MS, ANALYTICS_TARGET_MS = 50.0, 500.0


def fill(db: Path, count: int) -> float:
    """`count` settled payments spread over 2026, straight into a new SQLite file; seconds taken."""
    started = time.perf_counter()
    Store(db).close()  # the schema and indexes, exactly as the server makes them
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    step = YEAR / count

    def rows():
        for n in range(count):
            created = YEAR_START + step * n
            settled = created + timedelta(seconds=2 + n % 40)
            status, reason, code = OUTCOMES[n % len(OUTCOMES)]
            created_at, settled_at = (t.isoformat(timespec="milliseconds") for t in (created, settled))
            yield (f"ws_CO_h{n:09d}", f"25471{n % CUSTOMERS:07d}", 10 + (n * 7919) % 5000,
                   DESCRIPTIONS[n % len(DESCRIPTIONS)], status, code, reason,
                   f"U{n:09X}" if status == "completed" else None, "callback", created_at, settled_at, settled_at)

    conn.executemany(
        "INSERT INTO payments (checkout_request_id, phone_number, amount, description, status, result_code, reason,"
        " receipt, settled_by, created_at, updated_at, settled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows())
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def page_queries(count: int, rng: random.Random) -> list[tuple[str, dict]]:
    """(kind, query) for a mix of filtered pages, as a dashboard and the chat ask for them."""
    def month() -> tuple[str, str]:
        start = datetime(2026, rng.randint(1, 12), 1)
        return start.date().isoformat(), (start.replace(day=28) + timedelta(days=4)).replace(day=1).date().isoformat()

    def deep_cursor() -> str:
        n = rng.randrange(count)
        created = (YEAR_START + YEAR / count * n).isoformat(timespec="milliseconds")
        return base64.urlsafe_b64encode(json.dumps([created, f"ws_CO_h{n:09d}"]).encode()).decode().rstrip("=")

    kinds = {
        "newest": lambda: {},
        "status=failed": lambda: {"status": "failed"},
        "phone": lambda: {"phone": f"071{rng.randrange(CUSTOMERS):07d}"},
        "status+month": lambda: dict(zip(("since", "until"), month()), status="completed"),
        "amount range": lambda: {"min_amount": 1000, "max_amount": 2000},
        "description": lambda: {"q": "school"},
        "receipt": lambda: {"receipt": f"U{rng.randrange(0, count, 10):09X}"},
        "unpaid, deep page": lambda: {"status": "unpaid", "cursor": deep_cursor()},
    }
    return [(kind, make()) for kind, make in kinds.items()]


def measure(url: str, headers: dict, samples: int, count: int) -> tuple[dict, list[float], list[float]]:
    rng = random.Random(11)
    session = requests.Session()
    per_kind: dict[str, list[float]] = {}
    for _ in range(samples):
        for kind, query in page_queries(count, rng):
            started = time.perf_counter()
            response = session.get(f"{url}/payment/history", params={**query, "limit": 50}, headers=headers, timeout=60)
            took = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            per_kind.setdefault(kind, []).append(took)
    months = []
    for month in range(1, 13):
        since = datetime(2026, month, 1).date().isoformat()
        until = (datetime(2026, month, 28) + timedelta(days=4)).replace(day=1).date().isoformat()
        started = time.perf_counter()
        body = session.get(f"{url}/payment/analytics", params={"since": since, "until": until}, headers=headers,
                           timeout=120)
        months.append((time.perf_counter() - started) * 1000)
        body.raise_for_status()
    everything = sorted(t for times in per_kind.values() for t in times)
    return per_kind, everything, months


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=1_000_000, help="stored payments (1000000)")
    parser.add_argument("--samples", type=int, default=300, help="pages per filter kind (300)")
    parser.add_argument("--keep", type=Path, help="reuse (or keep) this database file instead of a temporary one")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        db = options.keep or Path(folder) / "payments.db"
        if not db.exists():
            print(f"Filling {options.payments:,} payments into {db} ...", flush=True)
            print(f"  written in {fill(db, options.payments):.1f} s", flush=True)
        with new_stack(Path(folder), db, simulator=False) as stack:
            headers = {"Authorization": f"Bearer {stack.api_key}"}
            print(f"Measuring {options.samples} pages per filter and 12 months of analytics over HTTP ...", flush=True)
            per_kind, everything, months = measure(stack.url, headers, options.samples, options.payments)
    print(f"\nHistory and analytics, {options.payments:,} stored payments (HTTP to a real server process; "
          "the machine is shared: noisy)\n")
    print("| figure | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|")
    for kind, times in per_kind.items():
        print(f"| history page (50), {kind} | {p(times, .5):.1f} | {p(times, .99):.1f} | {max(times):.1f} |")
    page99 = p(everything, .99)
    print(f"| history page, every filter | {p(everything, .5):.1f} | {page99:.1f} | {max(everything):.1f} |")
    print(f"| analytics, one month (~{options.payments // 12:,} payments) | {p(months, .5):.1f} | "
          f"{p(months, .99):.1f} | {max(months):.1f} |")
    misses = [f"history page p99 {page99:.1f} ms > {PAGE_TARGET_MS:.0f} ms"] if page99 > PAGE_TARGET_MS else []
    if max(months) > ANALYTICS_TARGET_MS:
        misses.append(f"a month's analytics took {max(months):.1f} ms > {ANALYTICS_TARGET_MS:.0f} ms")
    print(f"\nTargets: page p99 <= {PAGE_TARGET_MS:.0f} ms, a month's analytics <= {ANALYTICS_TARGET_MS:.0f} ms: "
          + ("; ".join(misses) if misses else "met"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
