"""Bulk request figures with real processes (the simulator, delay 0, and the callback server): a batch
of --items pushed at --rate, from POST /payment/bulk to every item settled, and the pushes per
second achieved against the configured rate; then a small batch at the default rate, for its pace.

    python -m bench.bulk [--items 1000] [--rate 1000] [--paced-items 20] [--paced-rate 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import requests

from bench.stack import API_KEY, ENV, TOKEN
from harness import Stack
from mpesa_agent.config import Settings

TIMEOUT = 1800.0
POLL = 0.05


def phones(count: int) -> list[str]:
    return [f"07{10_000_000 + n:08d}" for n in range(count)]


def run_batch(folder: Path, items: int, rate: float) -> dict:
    """One batch of `items` distinct phones at `rate` pushes/s: timings, and the exactly-once check."""
    with Stack(folder, token=TOKEN, api_key=API_KEY, BULK_PUSHES_PER_SECOND=str(rate), **ENV) as stack:
        session = requests.Session()
        rows = "".join(f"{phone},{10 + n % 90}\n" for n, phone in enumerate(phones(items)))
        started = time.monotonic()
        answer = stack.api("POST", "/payment/bulk", session, data=rows.encode(), params={"description": "bench"},
                           headers={"Content-Type": "text/csv"}, timeout=60)
        accepted = time.monotonic() - started
        answer.raise_for_status()
        batch_id = answer.json()["batch"]["id"]
        while True:
            report = stack.api("GET", f"/payment/bulk/{batch_id}", session).json()
            if report["settled"]:
                break
            if time.monotonic() - started > TIMEOUT:
                raise RuntimeError(f"not settled after {TIMEOUT} s: {report['summary']}")
            time.sleep(POLL)
        settled = time.monotonic() - started
        pushes = Counter(t["phone_number"] for t in stack.control("GET", "/transactions")["transactions"])
    sending = (datetime.fromisoformat(report["finished_at"]) - datetime.fromisoformat(report["created_at"])).total_seconds()
    return {"items": items, "rate": rate, "accepted_s": accepted, "settled_s": settled, "sending_s": sending,
            "achieved": items / sending if sending else float("inf"), "summary": report["summary"],
            "exactly_once": len(pushes) == items and set(pushes.values()) == {1}}


def line(result: dict) -> str:
    return (f"{result['items']:,} items at BULK_PUSHES_PER_SECOND={result['rate']:g}: accepted (validated, stored) in "
            f"{result['accepted_s'] * 1000:,.0f} ms; all pushed in {result['sending_s']:.1f} s = "
            f"{result['achieved']:,.1f} pushes/s ({result['achieved'] / result['rate']:.0%} of the rate); "
            f"settled {result['settled_s']:.1f} s after the POST; {result['summary']}; "
            f"each phone pushed exactly once: {'yes' if result['exactly_once'] else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    default_rate = Settings().bulk_pushes_per_second
    parser = argparse.ArgumentParser(prog="python -m bench.bulk", description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1000, help="items in the big batch (1000)")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="BULK_PUSHES_PER_SECOND for the big batch (1000: as fast as one sender goes)")
    parser.add_argument("--paced-items", type=int, default=20, help="items in the batch at --paced-rate (20)")
    parser.add_argument("--paced-rate", type=float, default=default_rate,
                        help=f"BULK_PUSHES_PER_SECOND for the paced batch (the default, {default_rate:g})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mpesa-bench-bulk-") as tmp:
        for n, (items, rate) in enumerate(((args.items, args.rate), (args.paced_items, args.paced_rate))):
            if items > 0:
                print(line(run_batch(Path(tmp) / str(n), items, rate)), flush=True)
    print(f"At the default {default_rate:g} pushes/s, {args.items:,} items take about "
          f"{args.items / default_rate / 60:.1f} minutes to send.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
