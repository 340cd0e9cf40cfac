"""One function per figure; each drives the real processes over HTTP and returns its numbers."""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
import statistics
import time

import requests

from mpesa_agent.daraja import DarajaClient
from mpesa_agent.tools import Payments, make_tools

from bench.client import Connection
from bench.stack import AUTH, HOST, callback_path, cpu_seconds, rss_bytes, thread_count
from harness import Stack

ACCEPTED = {"ResultCode": 0, "ResultDesc": "Accepted"}
WAIT_TIMEOUT = 60


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p100 is the max)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))]


def summary_ms(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"p50": statistics.median(ms), "p99": percentile(ms, 99), "max": max(ms), "n": len(ms)}


def callback_body(checkout_request_id: str, amount: int = 500, phone: str = "254712345678") -> bytes:
    """A success callback as Daraja sends it, with a receipt of its own (one receipt completes one payment)."""
    receipt = "B" + hashlib.sha1(checkout_request_id.encode()).hexdigest()[:9].upper()
    return json.dumps({"Body": {"stkCallback": {
        "MerchantRequestID": "29115-34620561-1", "CheckoutRequestID": checkout_request_id, "ResultCode": 0,
        "ResultDesc": "The service request is processed successfully.",
        "CallbackMetadata": {"Item": [
            {"Name": "Amount", "Value": float(amount)}, {"Name": "MpesaReceiptNumber", "Value": receipt},
            {"Name": "TransactionDate", "Value": 20261126102115}, {"Name": "PhoneNumber", "Value": int(phone)}]},
    }}}).encode()


def registration(checkout_request_id: str, amount: int = 500) -> dict:
    return {"checkout_request_id": checkout_request_id, "phone_number": "0712345678", "amount": amount,
            "description": "bench"}


async def _api(stack: Stack) -> Connection:
    return await Connection(HOST, stack.port, AUTH).open()


async def _fan_out(stack: Stack, workers: int, items, call) -> list:
    """Run `call(conn, item)` over `items` from `workers` keep-alive connections; results in order."""
    indexed = list(enumerate(items))
    results = [None] * len(indexed)
    feed = iter(indexed)

    async def worker():
        conn = await _api(stack)
        try:
            for index, item in feed:
                results[index] = await call(conn, item)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return results


async def _register_all(stack: Stack, ids: list[str], workers: int = 32) -> None:
    async def register(conn, checkout_id):
        status, body = await conn.json("POST", "/payment/register", registration(checkout_id))
        if status != 201:
            raise RuntimeError(f"register {checkout_id}: HTTP {status} {body}")
    await _fan_out(stack, workers, ids, register)


async def _until_waiting(conn: Connection, count: int, timeout: float = 60) -> None:
    """Poll /health until the server holds `count` waiters (so a callback finds them parked)."""
    deadline = time.monotonic() + timeout
    while True:
        status, health = await conn.json("GET", "/health")
        if status == 200 and health.get("waiting", 0) >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {health.get('waiting')} of {count} waiters parked after {timeout}s")
        await asyncio.sleep(0.002 if count == 1 else 0.05)


async def _waiter(stack: Stack, checkout_id: str, answers: dict, conn: Connection | None = None) -> None:
    """Long-poll one payment; record (answer time, HTTP status, notification status)."""
    conn = conn or await _api(stack)
    status, body = await conn.request("GET", f"/payment/wait/{checkout_id}?timeout={WAIT_TIMEOUT}")
    answers[checkout_id] = (time.perf_counter(), status, json.loads(body).get("status") if body else None)


async def notification_latency_one(stack: Stack, run: int, samples: int, callback_port: int | None = None) -> dict:
    """One waiter at a time: callback POST sent -> that waiter's /payment/wait answer received.
    With `callback_port`, the callback goes to another server process (over one PostgreSQL)."""
    api, waiter = await _api(stack), await _api(stack)
    sender = await Connection(HOST, callback_port, AUTH).open() if callback_port else await _api(stack)
    latencies, errors = [], 0
    for n in range(samples):
        checkout_id = f"ws_CO_one_{run}_{n}"
        status, _ = await api.json("POST", "/payment/register", registration(checkout_id))
        answers: dict = {}
        task = asyncio.create_task(_waiter(stack, checkout_id, answers, waiter))
        await _until_waiting(api, 1)
        sent = time.perf_counter()
        code, _ = await sender.request("POST", callback_path(stack), callback_body(checkout_id))
        await task
        answered, http_status, outcome = answers[checkout_id]
        errors += status != 201 or code != 200 or http_status != 200 or outcome != "success"
        latencies.append(answered - sent)
    for conn in (api, sender, waiter):
        await conn.close()
    return {**summary_ms(latencies), "errors": errors}


async def concurrent_waiters(stack: Stack, run: int, waiters: int) -> dict:
    """Hold `waiters` long-polls at once, then wake them one callback at a time (latency each)."""
    ids = [f"ws_CO_many_{run}_{n}" for n in range(waiters)]
    await _register_all(stack, ids)
    api = await _api(stack)
    await _until_waiting(api, 0)
    pid = stack.server_pid
    rss_idle = rss_bytes(pid)
    conns = []
    for start in range(0, waiters, 100):  # open in batches: no SYN flood on the listen backlog
        conns += await asyncio.gather(*(_api(stack) for _ in ids[start:start + 100]))
    answers: dict = {}
    tasks = [asyncio.create_task(_waiter(stack, checkout_id, answers, conn)) for checkout_id, conn in zip(ids, conns)]
    await _until_waiting(api, waiters)
    rss_held, threads = rss_bytes(pid), thread_count(pid)
    sender, sent, errors = await _api(stack), {}, 0
    started = time.perf_counter()
    for checkout_id in ids:
        sent[checkout_id] = time.perf_counter()
        code, ack = await sender.request("POST", callback_path(stack), callback_body(checkout_id))
        errors += code != 200
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_TIMEOUT)
    elapsed = time.perf_counter() - started
    latencies = [answers[c][0] - sent[c] for c in ids if c in answers]
    errors += sum(1 for c in ids if c not in answers or answers[c][1:] != (200, "success"))
    for conn in (api, sender, *conns):
        await conn.close()
    return {**summary_ms(latencies), "held": waiters, "answered": len(answers), "errors": errors,
            "rss_idle_mib": rss_idle / 2**20, "rss_held_mib": rss_held / 2**20,
            "kib_per_waiter": (rss_held - rss_idle) / waiters / 1024, "threads": threads,
            "wake_all_s": elapsed}


async def callback_ingestion(stack: Stack, run: int, callbacks: int, senders: int = 32) -> dict:
    """`senders` concurrent Daraja stand-ins POST callbacks for registered payments."""
    ids = [f"ws_CO_ingest_{run}_{n}" for n in range(callbacks)]
    await _register_all(stack, ids)
    api = await _api(stack)
    _, before = await api.json("GET", "/health")

    async def post(conn, checkout_id):
        sent = time.perf_counter()
        code, body = await conn.request("POST", callback_path(stack), callback_body(checkout_id))
        return time.perf_counter() - sent, code == 200 and json.loads(body) == ACCEPTED

    cpu, started = cpu_seconds(stack.server_pid), time.perf_counter()
    results = await _fan_out(stack, senders, ids, post)
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(stack.server_pid) - cpu
    await api.close()  # idle all along: past the header timeout the server has cut it off
    api = await _api(stack)
    _, after = await api.json("GET", "/health")
    await api.close()
    stored = after["callbacks"].get("applied", 0) - before["callbacks"].get("applied", 0)
    return {**summary_ms([r[0] for r in results]), "per_s": callbacks / elapsed,
            "server_cpu_ms": cpu / callbacks * 1000,
            "errors": sum(not r[1] for r in results) + (stored != callbacks), "stored": stored}


async def registrations(stack: Stack, run: int, count: int, clients: int = 32) -> dict:
    """`clients` concurrent agents register new payments."""
    async def register(conn, checkout_id):
        sent = time.perf_counter()
        status, _ = await conn.request("POST", "/payment/register",
                                       json.dumps(registration(checkout_id)).encode())
        return time.perf_counter() - sent, status == 201

    ids = [f"ws_CO_reg_{run}_{n}" for n in range(count)]
    cpu, started = cpu_seconds(stack.server_pid), time.perf_counter()
    results = await _fan_out(stack, clients, ids, register)
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(stack.server_pid) - cpu
    return {**summary_ms([r[0] for r in results]), "per_s": count / elapsed,
            "server_cpu_ms": cpu / count * 1000, "errors": sum(not r[1] for r in results)}


async def cpu_per_request(stack: Stack, run: int, count: int) -> dict:
    """Server CPU per request, one at a time: a 404 (HTTP server + Flask only) and a callback."""
    ids = [f"ws_CO_cpu_{run}_{n}" for n in range(count)]
    await _register_all(stack, ids)
    conn, pid = await _api(stack), stack.server_pid
    cpu = cpu_seconds(pid)
    for _ in ids:
        await conn.request("GET", "/no-such-path")
    floor, cpu = cpu_seconds(pid) - cpu, cpu_seconds(pid)
    for checkout_id in ids:
        await conn.request("POST", callback_path(stack), callback_body(checkout_id))
    callback = cpu_seconds(pid) - cpu
    await conn.close()
    return {"floor_ms": floor / count * 1000, "callback_ms": callback / count * 1000}


_phones = itertools.count(1)


async def tool_overhead(stack: Stack, run: int, calls: int) -> dict:
    """Wall time of the agent's send tool, simulator calling back at once (rule delay=0)."""
    requests.post(f"{stack.settings.base_url}/simulator/rules", json={"scope": "all", "delay": 0},
                  timeout=5).raise_for_status()
    send_instant_payment_with_tracking, _ = make_tools(Payments(stack.settings))
    times, errors = [], 0
    for n in range(calls + 1):  # the first call also fetches the OAuth token: not counted
        phone = f"0711{next(_phones) % 1_000_000:06d}"
        started = time.perf_counter()
        result = await send_instant_payment_with_tracking(phone, 100 + n, "bench")
        if n:
            times.append(time.perf_counter() - started)
            errors += result.get("status") != "success"
    requests.delete(f"{stack.settings.base_url}/simulator/rules", timeout=5).raise_for_status()
    return {**summary_ms(times), "errors": errors}


async def status_at_scale(port: int, ids: list[str], samples: int) -> dict:
    """/payment/status of random stored payments, one keep-alive client, one request at a time."""
    conn = await Connection(HOST, port, AUTH).open()
    latencies, errors = [], 0
    for checkout_id in random.choices(ids, k=samples):
        sent = time.perf_counter()
        status, _ = await conn.request("GET", f"/payment/status/{checkout_id}")
        latencies.append(time.perf_counter() - sent)
        errors += status != 200
    await conn.close()
    return {**summary_ms(latencies), "errors": errors}


async def time_to_know(stack: Stack, run: int, samples: int, queries: int) -> dict:
    """Customer acts (simulator control API) -> our waiter knows; plus measured STK Query latency."""
    base = stack.settings.base_url
    daraja = DarajaClient.from_settings(stack.settings)
    api, waiter = await _api(stack), await _api(stack)
    known, pushes, query_calls, errors = [], 0, 0, 0
    for n in range(samples):
        phone = f"0722{next(_phones) % 1_000_000:06d}"
        requests.post(f"{base}/simulator/rules", json={"phone": phone, "delay": 3600}, timeout=5).raise_for_status()
        ack = await asyncio.to_thread(daraja.stk_push, phone, 100, "bench", "bench", stack.settings.callback_url)
        pushes += 1
        checkout_id = ack.checkout_request_id
        await api.json("POST", "/payment/register", {**registration(checkout_id, 100), "phone_number": phone})
        answers: dict = {}
        task = asyncio.create_task(_waiter(stack, checkout_id, answers, waiter))
        await _until_waiting(api, 1)
        acted = time.perf_counter()
        await asyncio.to_thread(requests.post, f"{base}/simulator/transactions/{checkout_id}/act", json={},
                                timeout=5)
        await task
        known.append(answers[checkout_id][0] - acted)
        errors += answers[checkout_id][1:] != (200, "success")
        query_calls += requests.get(f"{base}/simulator/transactions/{checkout_id}", timeout=5).json()["queries"]
    query_latency = []
    for _ in range(queries):  # on the last, final transaction: the answer a poller would get
        started = time.perf_counter()
        result = await asyncio.to_thread(daraja.stk_query, checkout_id)
        query_latency.append(time.perf_counter() - started)
        errors += result.state != "completed"
    requests.delete(f"{base}/simulator/rules", timeout=5)
    for conn in (api, waiter):
        await conn.close()
    return {**summary_ms(known), "errors": errors, "pushes_per_payment": pushes / samples,
            "queries_per_payment": query_calls / samples, "query_latency": query_latency}
