"""Backoff arithmetic and the one-pending-retry rule, on plain data and a real event loop."""

from __future__ import annotations

import asyncio
import random

from controller.operator.retries import Backoff, Retries


def test_backoff_doubles_from_the_floor_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(7)
    backoff = Backoff(cap=300)
    for attempt, raw in enumerate([5, 10, 20, 40, 80, 160, 300, 300]):
        delays = [backoff.delay(attempt, 5, rng) for _ in range(200)]
        assert all(raw / 2 <= d <= raw for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > raw / 4  # spread, so a thousand Projects do not retry in lockstep


async def test_one_pending_retry_per_project_and_reset_cancels_it() -> None:
    ran: list[str] = []

    async def run() -> None:
        ran.append("retry")

    retries = Retries(Backoff(cap=0.05), random.Random(1))
    for _ in range(5):
        retries.schedule("uid", 0.05, run)  # a burst of failures: still one timer
    await asyncio.sleep(0.1)
    assert ran == ["retry"]
    retries.schedule("uid", 0.05, run)
    retries.reset("uid")  # converged meanwhile: the retry is dropped
    await asyncio.sleep(0.1)
    assert ran == ["retry"] and not retries.pending("uid")


async def test_a_retry_may_reschedule_itself() -> None:
    ran: list[int] = []
    retries = Retries(Backoff(cap=0.01), random.Random(1))

    async def run() -> None:
        ran.append(len(ran))
        if len(ran) < 3:
            retries.schedule("uid", 0.01, run)

    retries.schedule("uid", 0.01, run)
    await asyncio.sleep(0.2)
    assert ran == [0, 1, 2]
