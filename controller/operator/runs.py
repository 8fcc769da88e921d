"""Backup and Restore objects as news for their Project, and the backup stores' housekeeping.

A Backup or Restore made by hand (`codeb backup`, `codeb restore`) starts, and a finished run
reaches the Project's status, without waiting for the drift timer; a Backup that failed is told to
the Project's receivers. Heartbeats are not news:
they are filtered out before kopf calls (or logs) anything. Deleted Projects' backups are
swept once their retention has passed, from the drift timer (paused on a standby replica).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import kopf
import structlog

from controller.clients.kube import KubeClient
from controller.errors import CodebError
from controller.loop.naming import ProjectKey
from controller.operator.notify import News
from schemas.sections.monitoring import NotifyEvent

# A finished run younger than this wakes its Project (older ones are what a restart lists again).
NEWS_SECONDS = 120.0


def run_news(body: kopf.Body, event: str | None) -> bool:
    """A run just made (Pending) or just finished."""
    status = body.get("status") or {}
    phase, finished = status.get("phase"), status.get("finishedAt")
    fresh = finished is not None and _age_seconds(str(finished)) < NEWS_SECONDS
    return event != "DELETED" and (phase in (None, "Pending") or fresh)


async def wake_its_project(
    kube: KubeClient, body: kopf.Body, wake: Callable[[ProjectKey], None]
) -> tuple[ProjectKey, dict[str, Any]] | None:
    """Wake the Project the run names (in the run's namespace), if it exists; it and its spec."""
    namespace, project = body.metadata.namespace or "", str((body.get("spec") or {}).get("project") or "")
    try:
        raw = await kube.read_project(namespace, project) if project else None
    except CodebError:
        return None  # the drift timer will get to it
    uid = (raw or {}).get("metadata", {}).get("uid")
    if not uid:
        return None
    key = ProjectKey(namespace, project, uid)
    wake(key)
    return key, dict((raw or {}).get("spec") or {})


class FailedBackups:
    """Which fresh failed Backups were told of, so each is told once per operator (a restart or another
    replica may tell one again: notifications are best effort). Bounded: the oldest are forgotten."""

    REMEMBERED = 1000

    def __init__(self) -> None:
        self._told: dict[str, None] = {}

    def news(self, body: kopf.Body) -> News | None:
        status = body.get("status") or {}
        uid = body.metadata.uid or ""
        if body.get("kind") != "Backup" or status.get("phase") != "Failed" or uid in self._told:
            return None
        self._told[uid] = None
        while len(self._told) > self.REMEMBERED:
            del self._told[next(iter(self._told))]
        # The run's own message is the operator's words (why the dump or upload failed), clipped.
        why = str(status.get("message") or "")[:300]
        return News(NotifyEvent.backup_failed, None, f"{body.metadata.name}: {why}" if why else body.metadata.name)


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
