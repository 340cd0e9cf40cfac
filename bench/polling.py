"""Time-to-know of STK-Query polling, simulated on measured query latencies instead of waited out.

A poller queries at `first`, `first + every`, ... seconds after the push. The customer acts at a
random moment `acted` after the push; the first query sent at or after it gets the final answer,
which arrives one (measured) query latency later. Time-to-know is that arrival minus `acted`;
Daraja calls per payment are the push plus every query sent until then.
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

# When the customer answers the STK prompt, seconds after the push: uniform over this range
# (the prompt itself times out after about a minute).
CUSTOMER_ACTS = (5.0, 60.0)
TRIALS = 20_000


@dataclass(frozen=True)
class Schedule:
    name: str
    first: float
    every: float


PEER_SCHEDULE = Schedule("poll 20 s then every 15 s", 20.0, 15.0)
FAST_SCHEDULE = Schedule("poll every 5 s", 5.0, 5.0)


def simulate(schedule: Schedule, query_latency: list[float], trials: int = TRIALS, seed: int = 1) -> dict:
    """p50/p99/max time-to-know in seconds and mean Daraja calls per payment for `schedule`."""
    rng = random.Random(seed)
    known, calls = [], []
    for _ in range(trials):
        acted = rng.uniform(*CUSTOMER_ACTS)
        queries = 1 if acted <= schedule.first else 2 + int((acted - schedule.first) // schedule.every)
        if acted > schedule.first and (acted - schedule.first) % schedule.every == 0:
            queries -= 1
        sent = schedule.first + (queries - 1) * schedule.every
        known.append(sent - acted + rng.choice(query_latency))
        calls.append(1 + queries)
    known.sort()
    return {"p50": statistics.median(known), "p99": known[int(0.99 * len(known))], "max": known[-1],
            "calls": statistics.fmean(calls)}
