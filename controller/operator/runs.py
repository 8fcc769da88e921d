"""Backup and Restore objects as news for their Project, and the backup stores' housekeeping.

A Backup or Restore made by hand (`codeb backup`, `codeb restore`) starts, and a finished run
reaches the Project's status, without waiting for the drift timer. Heartbeats are not news:
they are filtered out before kopf calls (or logs) anything. Deleted Projects' backups are
swept once their retention has passed, from the drift timer (paused on a standby replica).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import kopf
import structlog

from controller.clients.kube import KubeClient
from controller.errors import CodebError
from controller.loop.naming import ProjectKey

# A finished run younger than this wakes its Project (older ones are what a restart lists again).
NEWS_SECONDS = 120.0


def run_news(body: kopf.Body, event: str | None) -> bool:
    """A run just made (Pending) or just finished."""
    status = body.get("status") or {}
    phase, finished = status.get("phase"), status.get("finishedAt")
    fresh = finished is not None and _age_seconds(str(finished)) < NEWS_SECONDS
    return event != "DELETED" and (phase in (None, "Pending") or fresh)


async def wake_its_project(kube: KubeClient, body: kopf.Body, wake: Callable[[ProjectKey], None]) -> None:
    """Wake the Project the run names (in the run's namespace), if it exists."""
    namespace, project = body.metadata.namespace or "", str((body.get("spec") or {}).get("project") or "")
    try:
        raw = await kube.read_project(namespace, project) if project else None
    except CodebError:
        return  # the drift timer will get to it
    uid = (raw or {}).get("metadata", {}).get("uid")
    if uid:
        wake(ProjectKey(namespace, project, uid))


def _age_seconds(stamp: str) -> float:
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return float("inf")


# How often the backup stores are swept for deleted Projects' backups past their retention.
SWEEP_SECONDS = 3600.0
log = structlog.get_logger("codeb.operator")


class Housekeeping:
    """Runs ``sweep`` at most every `SWEEP_SECONDS`, one at a time, in the background."""

    def __init__(self, sweep: Callable[[], Awaitable[int]] | None) -> None:
        self._sweep = sweep
        self._last = float("-inf")
        self._task: asyncio.Task[None] | None = None

    def tick(self, now: float) -> None:
        if self._sweep is None or now - self._last < SWEEP_SECONDS or (self._task and not self._task.done()):
            return
        self._last = now
        self._task = asyncio.create_task(self._run(self._sweep))

    @staticmethod
    async def _run(sweep: Callable[[], Awaitable[int]]) -> None:
        try:
            removed = await sweep()
        except CodebError as exc:
            log.warning("backup store sweep failed", retry_in=SWEEP_SECONDS, error=exc.message)
            return
        if removed:
            log.info("removed backups of deleted Projects past their retention", objects=removed)
