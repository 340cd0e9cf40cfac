"""`python -m reliability`: every scenario of reliability/report.py and reliability/postgres.py in
turn, a table of what was lost or applied twice, exit status 1 if anything was."""
from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from reliability import postgres
from reliability.report import (DEFAULT, FULL, Row, Sizes, after_timeout, before_registration, contradicting, crash,
                                duplicates, fuzz, new_stack, server_down_at_send, server_restart_mid_wait, slow_ack,
                                spike_arrest, subscriber_locked, table, token_expiry, unknown_payments,
                                webhooks_through_crash)
from reliability.report import __doc__ as REPORT_DOC


def scenarios(folder: Path, sizes: Sizes, seed: int | None) -> list[tuple[str, object]]:
    """(name, function of the shared stacks) in the order they run."""
    return [
        ("crash", lambda s: crash(folder, sizes.crash_callbacks, sizes.crash_kills, sizes.senders, seed)),
        ("duplicates", lambda s: duplicates(s["server"], sizes.per_case)),
        ("before registration", lambda s: before_registration(s["server"], sizes.per_case)),
        ("after timeout", lambda s: after_timeout(s["server"], sizes.per_case)),
        ("contradicting", lambda s: contradicting(s["server"], sizes.per_case)),
        ("unknown payments", lambda s: unknown_payments(s["server"], sizes.per_case)),
        ("fuzz", lambda s: fuzz(s["server"], sizes.fuzz_inputs, seed)),
        ("server down at send", lambda s: server_down_at_send(s["full"])),
        ("server restart mid-wait", lambda s: server_restart_mid_wait(s["full"])),
        ("spike arrest", lambda s: spike_arrest(s["full"])),
        ("subscriber locked", lambda s: subscriber_locked(s["full"])),
        ("token expiry", lambda s: token_expiry(s["full"])),
        ("slow ack", lambda s: slow_ack(s["full"])),
        ("webhooks through kill -9", lambda s: webhooks_through_crash(folder / "webhooks", sizes.webhook_events)),
        ("PostgreSQL: kill -9 of one of two servers",
         lambda s: postgres.kill_one_of_two(folder / "pg-kill", sizes.crash_callbacks, sizes.senders, seed)),
        ("PostgreSQL: restart mid-burst",
         lambda s: postgres.restart_mid_burst(folder / "pg-restart", sizes.crash_callbacks, sizes.senders, seed)),
    ]


def run(sizes: Sizes = DEFAULT, folder: Path | None = None, seed: int | None = None,
        out=print) -> list[Row]:
    """Run every scenario, printing a line as each starts and ends; returns the rows."""
    folder = folder or Path(tempfile.mkdtemp(prefix="mpesa-reliability-"))
    todo = scenarios(folder, sizes, seed)
    rows = []
    with new_stack(folder / "server") as server, new_stack(folder / "full", simulator=True) as full:
        stacks = {"server": server, "full": full}
        for number, (name, function) in enumerate(todo, start=1):
            out(f"[{number}/{len(todo)}] {name} ...")
            started = time.monotonic()
            try:
                row = function(stacks)
            except Exception as exc:  # a scenario that cannot finish is a failure, not a crash of the report
                row = Row(name, "-", problems=[f"{type(exc).__name__}: {exc}"])
            row.seconds = time.monotonic() - started
            rows.append(row)
            out(f"[{number}/{len(todo)}] {name}: {'ok' if row.ok else 'FAIL'} in {row.seconds:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=REPORT_DOC.split("\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="the issue's sizes: 2,000 callbacks x 5 kill points, 100 payments per case, "
                             "5,000 fuzz inputs (a few minutes)")
    parser.add_argument("--seed", type=int, help="seed for kill points and fuzz inputs (default: random)")
    parser.add_argument("--fuzz", type=int, metavar="N",
                        help="fuzz inputs to send (default 600; --full 5,000; 100,000 takes about 3 minutes)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (databases, logs)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    folder = Path(tempfile.mkdtemp(prefix="mpesa-reliability-"))
    logging.basicConfig(filename=folder / "reliability.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sizes = FULL if args.full else DEFAULT
    if args.fuzz is not None:
        sizes = replace(sizes, fuzz_inputs=args.fuzz)
    print(f"Reliability run ({'full' if args.full else 'default'} sizes, seed {seed}); processes and "
          f"databases in {folder}", flush=True)
    started = time.monotonic()
    rows = run(sizes, folder, seed, out=lambda line: print(line, flush=True))
    print()
    print(table(rows))
    failed = [r for r in rows if not r.ok]
    for row in failed:
        print(f"\n{row.scenario}: lost {row.lost}, double-applied {row.double}")
        for problem in row.problems[:10]:
            print(f"  - {problem}")
    print(f"\n{len(rows) - len(failed)}/{len(rows)} scenarios ok in {time.monotonic() - started:.0f} s"
          f" (seed {seed}).")
    if failed or args.keep:
        print(f"Logs and databases kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
