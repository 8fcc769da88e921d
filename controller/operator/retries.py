"""Retries the operator schedules itself: exponential backoff with jitter, and no write per retry.

kopf's own retry (raising ``TemporaryError``) records progress in the object and then
"touches" it to wake itself: two writes per retry. During an outage of a shared service
that is a write storm (1,000 Projects at a fixed 5 s: ~400 writes a second). Here a
failed pass writes status once, when what it reports changed, and the retry is a timer
in this process: it reads the Project again, reconciles, and writes only if the status
differs. Attempts are counted in memory on purpose: a restarted operator resumes every
Project anyway, from the start of the schedule.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``floor × 2^attempt``, capped, with equal jitter (half fixed, half random)."""

    cap: float = 300.0
    factor: float = 2.0

    def delay(self, attempt: int, floor: float, rng: random.Random) -> float:
        raw = min(self.cap, floor * self.factor ** min(attempt, 32))
        return raw / 2 + rng.uniform(0, raw / 2)


class Retries:
    """At most one pending retry per Project."""

    def __init__(self, backoff: Backoff, rng: random.Random | None = None) -> None:
        self.backoff = backoff
        self._rng = rng or random.Random()
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._attempts: dict[str, int] = {}

    def schedule(self, uid: str, floor: float, run: Callable[[], Awaitable[None]]) -> float:
        """Run ``run`` after the next backoff delay (replacing any pending retry); the delay."""
        attempt = self._attempts.get(uid, 0)
        self._attempts[uid] = attempt + 1
        delay = self.backoff.delay(attempt, floor, self._rng)
        self._cancel(uid)
        self._pending[uid] = asyncio.create_task(self._later(uid, delay, run))
        return delay

    def wake(self, uid: str, delay: float, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run`` after exactly ``delay`` (a step that is due then, not a failure): no backoff."""
        self._attempts.pop(uid, None)
        self._cancel(uid)
        self._pending[uid] = asyncio.create_task(self._later(uid, delay, run))

    def reset(self, uid: str) -> None:
        """The Project converged, failed for good, or went away: no retry, and start over next time."""
        self._attempts.pop(uid, None)
        self._cancel(uid)

    def pending(self, uid: str) -> bool:
        task = self._pending.get(uid)
        return task is not None and not task.done()

    def _cancel(self, uid: str) -> None:
        task = self._pending.pop(uid, None)
        # A retry that reschedules or resets from inside itself must not cancel itself.
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _later(self, uid: str, delay: float, run: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(delay)
        await run()
