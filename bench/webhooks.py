"""Webhook figures with real processes: deliveries per second to a local receiver, and the time
from a callback's 200 to its `payment.completed` webhook arriving.

    python -m bench.webhooks [--events 2000] [--callbacks 300]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import requests

from bench.scenarios import callback_body, registration, summary_ms
from harness import Stack
from harness.webhooks import Receiver

TIMEOUT = 120.0


def deliveries_per_second(stack: Stack, receiver: Receiver, events: int) -> float:
    """`events` registrations, then one replay of them all: how fast the outbox drains to the receiver."""
    session = requests.Session()
    for n in range(events):
        stack.api("POST", "/payment/register", session, json=registration(f"ws_CO_rate_{n}")).raise_for_status()
    endpoint = stack.api("POST", "/webhooks", json={"url": receiver.url, "events": ["payment.registered"]}).json()
    receiver.secret = endpoint["secret"]
    started = time.monotonic()
    stack.api("POST", f"/webhooks/{endpoint['id']}/replay", json={"since": "2000-01-01T00:00:00Z"}).raise_for_status()
    assert receiver.wait_for(lambda got: len(got) >= events, TIMEOUT), f"{len(receiver.received)} of {events}"
    rate = events / (receiver.received[-1].at - started)
    stack.api("DELETE", f"/webhooks/{endpoint['id']}")
    return rate


def callback_to_webhook(stack: Stack, receiver: Receiver, callbacks: int, every: float = 0.01) -> dict:
    """Callbacks one at a time, `every` s apart: from each callback's 200 to its webhook's arrival."""
    endpoint = stack.api("POST", "/webhooks", json={"url": receiver.url, "events": ["payment.completed"]}).json()
    receiver.secret = endpoint["secret"]
    session, seen, acked = requests.Session(), len(receiver.received), []
    for n in range(callbacks):
        stack.api("POST", "/payment/register", session, json=registration(f"ws_CO_lat_{n}")).raise_for_status()
    for n in range(callbacks):
        assert stack.post_callback(callback_body(f"ws_CO_lat_{n}"), session).status_code == 200
        acked.append(time.monotonic())
        time.sleep(every)
    assert receiver.wait_for(lambda got: len(got) >= seen + callbacks, TIMEOUT)
    arrived = {r.message["data"]["checkout_request_id"]: r.at for r in receiver.received[seen:]}
    return summary_ms([arrived[f"ws_CO_lat_{n}"] - acked[n] for n in range(callbacks)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events replayed for the rate (default 2000)")
    parser.add_argument("--callbacks", type=int, default=300, help="callbacks timed one by one (default 300)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mpesa-bench-webhooks-") as tmp, Receiver() as receiver, \
            Stack(Path(tmp), simulator=False, WEBHOOKS_ALLOW_PRIVATE_URLS="true") as stack:
        rate = deliveries_per_second(stack, receiver, args.events)
        print(f"webhook deliveries to a local receiver: {rate:,.0f}/s ({args.events} events, each verified)")
        latency = callback_to_webhook(stack, receiver, args.callbacks)
        print(f"callback 200 -> webhook arrival: p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, "
              f"max {latency['max']:.1f} ms ({latency['n']} callbacks)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
