"""A run's heartbeat: a beat in flight lands before the run's last status, never after it."""

from __future__ import annotations

import asyncio
import threading

from controller.errors import RetryableError
from controller.jobs.backups import Heartbeat


async def test_stopping_waits_for_a_beat_in_flight() -> None:
    writes: list[str] = []
    started = asyncio.Event()

    async def slow_beat() -> bool:
        started.set()
        await asyncio.sleep(0.2)  # a status PATCH that takes a while
        writes.append("beat")
        return True

    heart = Heartbeat(0.01, slow_beat, threading.Event())
    await started.wait()
    await heart.stop()
    writes.append("final status")
    assert writes == ["beat", "final status"]


async def test_a_record_gone_cancels_the_run_and_an_api_away_does_not() -> None:
    cancelled, answers = threading.Event(), iter([RetryableError("away", reason="APIUnavailable"), False])

    async def beat() -> bool:
        answer = next(answers, True)
        if isinstance(answer, Exception):
            raise answer
        return answer

    heart = Heartbeat(0.01, beat, cancelled)
    for _ in range(200):
        if cancelled.is_set():
            break
        await asyncio.sleep(0.01)
    await heart.stop()
    assert cancelled.is_set()  # the second beat found the record deleted
