"""The processes under test (simulator, callback server) on 127.0.0.1, and bulk-loaded databases."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlsplit

from mpesa_agent.server.store import Store
from harness import Stack

HOST = "127.0.0.1"
TOKEN = "be4c4b2e0c5d4f0f9e1ab3c7d2e8f6a1"
API_KEY = "benchmark-api-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


# No rate limit nor callback delay to get in the way of the figures.
ENV = dict(MPESA_CONSUMER_KEY="bench-key", MPESA_CONSUMER_SECRET="bench-secret", SIMULATOR_CALLBACK_DELAY="0",
           PAYMENT_WAIT_SECONDS="30", PAYMENT_RATE_LIMIT_COUNT="1000000", PAYMENT_MAX_AMOUNT="250000")


def new_stack(folder: Path, db: Path, simulator: bool = True) -> Stack:
    """The simulator and the callback server on `db`, with their logs in `folder`."""
    # A bulk-loaded database of a million payments takes a while to open.
    return Stack(folder, token=TOKEN, api_key=API_KEY, simulator=simulator, db=db,
                 wait=120, **ENV)


def callback_path(stack: Stack) -> str:
    """Where Daraja posts callbacks, as a path on the server's port."""
    return urlsplit(stack.callback_url).path


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def fsync_ms(folder: Path, count: int = 200) -> dict:
    """p50/p99 of one 4 KiB write + fsync in `folder`: the floor of every durable commit."""
    path = folder / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    took = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, b"x" * 4096)  # appended, like WAL frames
            os.fsync(fd)
            took.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    took.sort()
    return {"p50": took[len(took) // 2], "p99": took[int(len(took) * 0.99)]}


def bulk_load(db: Path, count: int, prefix: str = "ws_CO_bulk_") -> float:
    """Write `count` settled/pending payments straight into a new SQLite file; seconds taken."""
    started = time.perf_counter()
    Store(db).close()  # the schema, exactly as the server makes it
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    now = "2026-11-26T10:00:00.000+00:00"
    statuses = ("completed", "completed", "completed", "failed")  # settled history: nothing for the reconciler
    conn.executemany(
        "INSERT INTO payments (checkout_request_id, phone_number, amount, description, status, created_at,"
        " updated_at) VALUES (?, ?, ?, 'bulk', ?, ?, ?)",
        ((f"{prefix}{n:09d}", f"2547{n % 100_000_000:08d}", 1 + n % 5000, statuses[n % 4], now, now)
         for n in range(count)))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started
