"""Serving v2's figures (issue 10): everything held at once, and several processes on PostgreSQL.

    python -m bench.scaling                      # about 2-3 minutes on 2 cores
    python -m bench.scaling --waiters 1000 --sse 100 --idle 200 --callbacks 500   # quicker

Rows:
- held at once: WAITERS long-polls + SSE subscribers + IDLE slow clients (each trickles a header
  line every 2 s and reconnects when the server cuts it off), then CALLBACKS callbacks from 32
  senders for as many of the waiters: the ack p99, and each woken waiter's answer p99 after its
  callback was sent. Memory per held connection from the server's RSS.
- memory per held waiter: WAITERS long-polls alone (at most 5,000), the server's RSS before the
  connections open, once they are open and idle, and once each waits: what a waiter costs, and
  how much of it is its open connection.
- callback ingestion, 32 senders: SQLite one process; PostgreSQL one process; PostgreSQL
  `--workers 2` (the ratio to one process is the figure).
- cross-process notification: a waiter on server A, its callback posted to server B (one
  PostgreSQL): callback sent -> A's answer, one at a time.
- /health flood: callbacks at 50/s while 8 anonymous clients ask /health (no key needed; it
  counts every payment) back to back, over FLOOD_PAYMENTS stored payments: the callbacks' ack p99.

PostgreSQL: MPESA_TEST_POSTGRES_URL or the local server (postgresql://postgres@127.0.0.1:5432/test);
a database of its own is created and dropped. The table prints each figure beside its target.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from bench.scenarios import (ACCEPTED, _api, _register_all, _until_waiting, _waiter, callback_body,
                             callback_ingestion, notification_latency_one, summary_ms)
from bench.client import Connection
from bench.history import fill
from bench.stack import API_KEY, ENV, HOST, TOKEN, callback_path, rss_bytes, thread_count
from harness import Stack, callback_server
from harness.postgres import Database, admin_url
from mpesa_agent.server.wsgi import HEADER_SECONDS

SENDERS = 32


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiters", type=int, default=10_000, help="long-poll waiters held at once (10000)")
    parser.add_argument("--sse", type=int, default=1_000, help="event-stream subscribers held at once (1000)")
    parser.add_argument("--idle", type=int, default=2_000, help="slow / idle connections held at once (2000)")
    parser.add_argument("--callbacks", type=int, default=2_000, help="callbacks sent while all is held (2000)")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="callbacks per second while all is held (100: a very busy till, 6,000 a minute)")
    parser.add_argument("--ingest", type=int, default=3_000, help="callbacks per ingestion figure (3000)")
    parser.add_argument("--notify-samples", type=int, default=200, help="cross-process notifications timed (200)")
    parser.add_argument("--flood-payments", type=int, default=1_000_000,
                        help="stored payments under the /health flood row (1000000)")
    parser.add_argument("--postgres", default=admin_url(),
                        help="a PostgreSQL URL the benchmark may CREATE DATABASE from")
    return parser.parse_args(argv)


async def _sse(port: int, after: int, counts: list, stop: asyncio.Event) -> None:
    """One event-stream subscriber: count the events it reads until `stop` (read in chunks: a line
    at a time would make this process, not the server, the bottleneck)."""
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    writer.write(f"GET /events/stream?after={after} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\r\n"
                 .encode())
    try:
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), 1.0)
            except asyncio.TimeoutError:
                continue  # quiet for a second: look at `stop`, keep reading
            if not chunk:
                counts[1] += 1  # the server ended the stream: counted as an error
                return
            counts[0] += chunk.count(b"\ndata:")
    except ConnectionError:
        counts[1] += 1
    finally:
        writer.close()


async def _trickle(port: int, stop: asyncio.Event, stats: dict, delay: float = 0.0) -> None:
    """One slowloris client: a request line, then a header line every 2 s; reconnect when cut off."""
    await asyncio.sleep(delay)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            stats["opened"] += 1
            writer.write(b"GET /health HTTP/1.1\r\n")
            while not stop.is_set():
                await asyncio.sleep(2)
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                if reader.at_eof():
                    break
            writer.close()
        except (ConnectionError, OSError):
            stats["refused"] += 1
            await asyncio.sleep(1)


async def held_at_once(stack: Stack, args) -> dict:
    """Waiters + SSE + slow clients held together, then callbacks: ack and wake-up latency."""
    ids = [f"ws_CO_held_{n}" for n in range(args.waiters)]
    await _register_all(stack, ids)
    api = await _api(stack)
    _, health = await api.json("GET", "/health")
    pid = stack.server_pid
    rss_idle = rss_bytes(pid)
    _, last = await api.json("GET", "/events?limit=1&after=999999999")
    # The streams and slow clients run in a process of their own, so that reading them does not
    # slow down this one's clock: the callbacks' and waiters' timings are this process's.
    crowd = subprocess.Popen([sys.executable, "-m", "bench.scaling", "--crowd", str(stack.port),
                              str(last.get("last_id", 0)), str(args.sse), str(args.idle)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    await asyncio.get_running_loop().run_in_executor(None, crowd.stdout.readline)  # "ready": all connected
    await api.close()  # idle while the crowd gathered: past the header deadline, the server cut it off
    api = await _api(stack)
    conns = []
    for start in range(0, args.waiters, 200):
        conns += await asyncio.gather(*(_api(stack) for _ in ids[start:start + 200]))
    answers: dict = {}
    tasks = [asyncio.create_task(_waiter(stack, c, answers, conn)) for c, conn in zip(ids, conns)]
    await _until_waiting(api, args.waiters, timeout=120)
    await asyncio.sleep(1)
    rss_held, threads = rss_bytes(pid), thread_count(pid)
    held = args.waiters + args.sse + args.idle
    woken = ids[:args.callbacks]
    sent: dict = {}
    feed = iter(enumerate(woken))
    begun = time.perf_counter()

    async def sender():
        conn = await _api(stack)
        acks = []
        for n, checkout_id in feed:
            due = begun + n / args.rate  # paced: the n-th callback leaves at n / rate seconds
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
            sent[checkout_id] = time.perf_counter()
            code, body = await conn.request("POST", callback_path(stack), callback_body(checkout_id))
            acks.append((time.perf_counter() - sent[checkout_id], code == 200 and json.loads(body) == ACCEPTED))
        await conn.close()
        return acks

    acks = [a for batch in await asyncio.gather(*(sender() for _ in range(SENDERS))) for a in batch]
    deadline = time.monotonic() + 30
    while sum(1 for c in woken if c in answers) < len(woken) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    wake = [answers[c][0] - sent[c] for c in woken if c in answers]
    crowd_stats = json.loads(crowd.communicate("", timeout=60)[0].strip() or "{}")
    for task in tasks:
        task.cancel()
    for conn in (api, *conns):
        await conn.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    errors = sum(not ok for _, ok in acks) + sum(1 for c in woken if c not in answers or answers[c][1:] != (200, "success"))
    return {"ack": summary_ms([a for a, _ in acks]), "wake": summary_ms(wake), "errors": errors,
            "held": held, "waiters": args.waiters, "sse": args.sse, "idle": args.idle,
            "sse_events": crowd_stats.get("events", 0), "sse_errors": crowd_stats.get("ended", -1),
            "idle_opened": crowd_stats.get("opened", 0),
            "rss_idle_mib": rss_idle / 2**20, "rss_held_mib": rss_held / 2**20,
            "kib_per_held": (rss_held - rss_idle) / held / 1024, "threads": threads}


async def health_flood(stack: Stack, callbacks: int, rate: float = 50.0, clients: int = 8) -> dict:
    """Callbacks at `rate` while `clients` anonymous clients ask /health back to back (it needs no
    key, and counts every payment): the callbacks' ack latency, and the /health answers a second."""
    ids = [f"ws_CO_flood_{n}" for n in range(callbacks)]
    await _register_all(stack, ids)
    stop, asked = asyncio.Event(), [0]

    async def flood():
        conn = await Connection(HOST, stack.port, {}).open()
        while not stop.is_set():
            await conn.request("GET", "/health")
            asked[0] += 1
        await conn.close()

    floods = [asyncio.create_task(flood()) for _ in range(clients)]
    await asyncio.sleep(1)
    conn, acks, begun = await _api(stack), [], time.perf_counter()
    for n, checkout_id in enumerate(ids):
        due = begun + n / rate
        if due > time.perf_counter():
            await asyncio.sleep(due - time.perf_counter())
        sent = time.perf_counter()
        code, body = await conn.request("POST", callback_path(stack), callback_body(checkout_id))
        acks.append((time.perf_counter() - sent, code == 200 and json.loads(body) == ACCEPTED))
    elapsed = time.perf_counter() - begun
    stop.set()
    await asyncio.gather(*floods, return_exceptions=True)
    await conn.close()
    return {"ack": summary_ms([a for a, _ in acks]), "errors": sum(not ok for _, ok in acks),
            "health_per_s": asked[0] / (elapsed + 1)}


async def waiter_memory(stack: Stack, count: int) -> dict:
    """RSS per waiter: (its open connection, the wait itself), with `count` waiters and nothing else."""
    ids = [f"ws_CO_mem_{n}" for n in range(count)]
    await _register_all(stack, ids)
    api = await _api(stack)
    await asyncio.sleep(1)
    before = rss_bytes(stack.server_pid)
    conns = []
    for start in range(0, count, 200):
        conns += await asyncio.gather(*(_api(stack) for _ in ids[start:start + 200]))
    await asyncio.sleep(1)
    opened = rss_bytes(stack.server_pid)
    answers: dict = {}
    tasks = [asyncio.create_task(_waiter(stack, c, answers, conn)) for c, conn in zip(ids, conns)]
    await _until_waiting(api, count, timeout=120)
    await asyncio.sleep(1)
    waiting = rss_bytes(stack.server_pid)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for conn in (api, *conns):
        await conn.close()
    return {"connection_kib": (opened - before) / count / 1024, "wait_kib": (waiting - opened) / count / 1024,
            "kib": (waiting - before) / count / 1024}


def stack(folder: Path, db, *server_args: str) -> Stack:
    folder.mkdir(parents=True, exist_ok=True)
    return Stack(folder, token=TOKEN, api_key=API_KEY, simulator=False, db=db if isinstance(db, Path) else None,
                 wait=120, server_args=server_args, **({} if isinstance(db, Path) else {"PAYMENTS_DB": db}), **ENV)


def run(args, tmp: Path) -> list[tuple[str, str, str, str]]:
    rows = []

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print("held at once (SQLite, one process) ...", file=sys.stderr, flush=True)
    with stack(tmp / "held", tmp / "held" / "payments.db", "--connections", str(
            args.waiters + args.sse + args.idle + 2000)) as s:
        held = asyncio.run(held_at_once(s, args))
    rows.append((f"held at once: {held['waiters']:,} waiters + {held['sse']:,} SSE + {held['idle']:,} slow clients; "
                 f"{args.callbacks:,} callbacks at {args.rate:g}/s",
                 f"callbacks acked p99 {held['ack']['p99']:.1f} ms; waiters answered p50 {held['wake']['p50']:.1f} / "
                 f"p99 {held['wake']['p99']:.1f} ms after their callback; {held['errors']} errors; SSE read "
                 f"{held['sse_events']:,} events, {held['sse_errors']} streams ended",
                 "ack p99 <= 25 ms; answer p99 <= 20 ms",
                 verdict(held["ack"]["p99"] <= 25 and held["wake"]["p99"] <= 20 and not held["errors"])))
    rows.append(("memory while held", f"RSS {held['rss_idle_mib']:.0f} -> {held['rss_held_mib']:.0f} MiB: "
                 f"{held['kib_per_held']:.1f} KiB per held connection; {held['threads']} threads",
                 "report", "ok"))
    alone = min(args.waiters, 5_000)
    print(f"memory per waiter ({alone:,} waiters alone) ...", file=sys.stderr, flush=True)
    with stack(tmp / "memory", tmp / "memory" / "payments.db", "--connections", str(alone + 1000)) as s:
        memory = asyncio.run(waiter_memory(s, alone))
    rows.append((f"memory per held waiter ({alone:,} waiters alone)",
                 f"{memory['kib']:.1f} KiB: {memory['connection_kib']:.1f} its open connection + "
                 f"{memory['wait_kib']:.1f} the wait", "<= 16 KiB per waiter", verdict(memory["kib"] <= 16)))
    print(f"/health flood over {args.flood_payments:,} payments (writing them) ...", file=sys.stderr, flush=True)
    flood_db = tmp / "flood" / "payments.db"
    flood_db.parent.mkdir(parents=True, exist_ok=True)
    fill(flood_db, args.flood_payments)
    with stack(tmp / "flood", flood_db) as s:
        flooded = asyncio.run(health_flood(s, min(args.callbacks, 500)))
    flood_db.unlink()
    rows.append((f"callbacks at 50/s during an anonymous /health flood (8 clients), {args.flood_payments:,} payments",
                 f"ack p50 {flooded['ack']['p50']:.1f} / p99 {flooded['ack']['p99']:.1f} ms; "
                 f"{flooded['health_per_s']:,.0f} /health answered a second; {flooded['errors']} errors",
                 "ack p99 <= 25 ms", verdict(flooded["ack"]["p99"] <= 25 and not flooded["errors"])))
    print("ingestion, SQLite, one process ...", file=sys.stderr, flush=True)
    with stack(tmp / "sqlite", tmp / "sqlite" / "payments.db") as s:
        one_sqlite = asyncio.run(callback_ingestion(s, 0, args.ingest, SENDERS))
    rows.append(("callback ingestion, SQLite, 1 process", f"{one_sqlite['per_s']:,.0f}/s; ack p99 "
                 f"{one_sqlite['p99']:.1f} ms; {one_sqlite['server_cpu_ms']:.2f} ms CPU each", ">= 1,000/s",
                 verdict(one_sqlite["per_s"] >= 1000 and not one_sqlite["errors"])))
    try:
        database = Database(args.postgres, "mpesa_bench")
    except psycopg.Error as exc:
        rows.append(("PostgreSQL rows", f"not run: no PostgreSQL at {args.postgres} ({str(exc).splitlines()[0]})",
                     "-", "SKIPPED"))
        return rows
    try:
        print("ingestion, PostgreSQL, one process ...", file=sys.stderr, flush=True)
        with stack(tmp / "pg1", database.schema_url()) as s:
            one_pg = asyncio.run(callback_ingestion(s, 0, args.ingest, SENDERS))
        rows.append(("callback ingestion, PostgreSQL, 1 process", f"{one_pg['per_s']:,.0f}/s; ack p99 "
                     f"{one_pg['p99']:.1f} ms; {one_pg['server_cpu_ms']:.2f} ms CPU each", "report",
                     verdict(not one_pg["errors"])))
        print("ingestion, PostgreSQL, --workers 2 ...", file=sys.stderr, flush=True)
        with stack(tmp / "pg2", database.schema_url(), "--workers", "2") as s:
            time.sleep(2)  # both workers up
            two_pg = asyncio.run(callback_ingestion(s, 0, args.ingest, SENDERS))
        ratio = two_pg["per_s"] / one_pg["per_s"]
        rows.append(("callback ingestion, PostgreSQL, 2 processes", f"{two_pg['per_s']:,.0f}/s ({ratio:.2f}x one); "
                     f"ack p99 {two_pg['p99']:.1f} ms", ">= 1.7x one process",
                     verdict(ratio >= 1.7 and not two_pg["errors"])))
        print("cross-process notification ...", file=sys.stderr, flush=True)
        url = database.schema_url()
        with stack(tmp / "xa", url) as a:
            b = callback_server(tmp / "xa", api_key=API_KEY, token=TOKEN, PAYMENTS_DB=url).start(60)
            try:
                cross = asyncio.run(notification_latency_one(a, 0, args.notify_samples,
                                                             callback_port=int(b.url.rsplit(":", 1)[1])))
            finally:
                b.stop()
        rows.append(("cross-process notification (waiter on A, callback to B)",
                     f"p50 {cross['p50']:.1f} / p99 {cross['p99']:.1f} ms; {cross['errors']} errors",
                     "p99 <= 20 ms", verdict(cross["p99"] <= 20 and not cross["errors"])))
    finally:
        database.drop()
    return rows


async def crowd(port: int, after: int, sse: int, idle: int) -> dict:
    """SSE subscribers and slow clients until standard input closes; then their counts."""
    stop, loop = asyncio.Event(), asyncio.get_running_loop()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
    stats, counts = {"opened": 0, "refused": 0}, [0, 0]
    # Started over one header deadline, as a steady crowd arrives: the server cuts each off after
    # HEADER_SECONDS and it reconnects, so about idle / HEADER_SECONDS cut-offs a second. (Started
    # all at once, 2,000 are cut off in the same instant every 10 s: that burst is the held row's
    # tail, about 100-200 ms of the server's time; see docs/benchmark.md.)
    spread = HEADER_SECONDS if idle > 1 else 0.0
    tasks = [asyncio.create_task(_trickle(port, stop, stats, spread * n / max(idle, 1))) for n in range(idle)]
    for start in range(0, sse, 100):
        tasks += [asyncio.create_task(_sse(port, after, counts, stop)) for _ in range(min(100, sse - start))]
        await asyncio.sleep(0.05)
    await asyncio.sleep(1 + spread)
    print("ready", flush=True)
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {**stats, "events": counts[0], "ended": counts[1]}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--crowd"]:
        from bench.__main__ import raise_fd_limit
        raise_fd_limit()
        print(json.dumps(asyncio.run(crowd(*map(int, argv[1:5])))))
        return 0
    args = parse_args(argv)
    from bench.__main__ import raise_fd_limit
    fds = raise_fd_limit()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mpesa-scaling-") as tmp:
        rows = run(args, Path(tmp))
    print(f"\nServing v2 benchmark: {time.perf_counter() - started:.0f} s; {os.cpu_count()} cores shared with the load "
          f"generator; load average {load:.1f} before; open-file limit {fds}")
    widths = [max(len(r[i]) for r in rows + [("figure", "measured", "target", "")]) for i in range(4)]
    for row in [("figure", "measured", "target", ""), tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
