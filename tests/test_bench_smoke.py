"""`python -m bench` at tiny sizes: it runs against real processes and prints every row (no timing checks)."""
import os
import subprocess
import sys

from harness import ROOT

TINY = ["--runs", "1", "--latency-samples", "3", "--waiters", "10", "--callbacks", "40", "--registrations", "40",
        "--tool-calls", "2", "--status-sizes", "100,1000", "--status-samples", "20", "--ttk-samples", "2",
        "--queries", "3", "--cpu-requests", "5"]


def test_the_benchmark_runs_and_prints_every_row():
    done = subprocess.run([sys.executable, "-m", "bench", *TINY], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "median of 1 run(s)" in out and f"Machine: {os.cpu_count()} cores, shared by the load generator" in out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    for label in ("notification latency, 1 waiter", "notification latency, 10 waiters", "concurrent waiters",
                  "callback ingestion, 32 senders", "registration, 32 clients", "tool overhead",
                  "status, 100 payments", "status, 1,000 payments", "time-to-know: callback",
                  "time-to-know: poll 20 s then every 15 s", "time-to-know: poll every 5 s"):
        row = next((line for line in lines if line.startswith(f"| {label}")), None)
        assert row is not None, f"no row {label!r} in:\n{out}"
        assert "FAILED" not in row, f"{row}\n{done.stderr[-3000:]}"
    assert "10 held, 10 answered" in out and "Server CPU per request, one at a time:" in out


def test_the_serving_benchmark_runs_and_prints_every_row(postgres_database):
    """`python -m bench.scaling` at tiny sizes, on this run's PostgreSQL: every row printed, none FAILED."""
    done = subprocess.run([sys.executable, "-m", "bench.scaling", "--waiters", "20", "--sse", "5", "--idle", "5",
                           "--callbacks", "10", "--ingest", "60", "--notify-samples", "5", "--flood-payments", "1000",
                           "--postgres", postgres_database.url],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    for label in ("held at once: 20 waiters + 5 SSE + 5 slow clients; 10 callbacks at 100/s", "memory while held",
                  "memory per held waiter (20 waiters alone)", "callback ingestion, SQLite, 1 process",
                  "callback ingestion, PostgreSQL, 1 process",
                  "callback ingestion, PostgreSQL, 2 processes", "cross-process notification",
                  "callbacks at 50/s during an anonymous /health flood (8 clients), 1,000 payments"):
        row = next((line for line in lines if line.startswith(f"| {label}")), None)
        assert row is not None, f"no row {label!r} in:\n{done.stdout}"
        assert "FAILED" not in row and "SKIPPED" not in row, row
        assert "errors" not in row or " 0 errors" in row, row


def test_the_history_benchmark_runs_and_prints_every_row():
    done = subprocess.run([sys.executable, "-m", "bench.history", "--payments", "3000", "--samples", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for label in ("history page (50), newest", "history page (50), phone", "history page (50), unpaid, deep page",
                  "history page, every filter", "analytics, one month (~250 payments)"):
        assert f"| {label} |" in done.stdout, done.stdout
    assert "Targets: page p99 <= 50 ms, a month's analytics <= 500 ms: " in done.stdout


def test_the_bulk_benchmark_runs_and_prints_its_figures():
    done = subprocess.run([sys.executable, "-m", "bench.bulk", "--items", "30", "--rate", "200", "--paced-items", "3",
                           "--paced-rate", "20"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("30 items at BULK_PUSHES_PER_SECOND=200: accepted") and "30 of 30 paid" in lines[0]
    assert lines[1].startswith("3 items at BULK_PUSHES_PER_SECOND=20:") and "3 of 3 paid" in lines[1]
    assert all("each phone pushed exactly once: yes" in line for line in lines[:2])
    assert lines[2].startswith("At the default 2 pushes/s, 30 items take about")
