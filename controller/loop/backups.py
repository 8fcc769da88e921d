"""Backups, decided (pure): when a target's run is due, which records retention deletes, what status says.

Schedules are cron expressions in UTC, with the manifest's grammar (numbers, ranges,
steps, lists, @macros). A slot missed while the operator was down runs once, not once
per missed slot: only the newest slot that has come is ever due. Each Project starts
its slot's run a fixed, hash-chosen moment after the slot (at most `SPREAD_SECONDS`,
and at most a quarter of the schedule's period), so a thousand Projects on
``0 3 * * *`` do not all start at 03:00:00. The record's name carries the slot, so
one slot is one run however often a pass looks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

from schemas.backups import RESTORE_TRIGGERS, BackupPhase, BackupTrigger
from schemas.project import Allocations, Backup, BackupTarget
from schemas.status import BackupFailure, BackupSummary, WalArchiveStatus

SPREAD_SECONDS = 600
# A running record's heartbeat; one older than `STALE_BEATS` beats was cut short (its operator is gone).
HEARTBEAT_SECONDS = 20.0
STALE_BEATS = 6
STALE_SECONDS = HEARTBEAT_SECONDS * STALE_BEATS
# Failed records kept for reading, newest first (successful ones go by retention).
FAILED_HISTORY = 5
# How far back a slot is looked for: a yearly schedule on 29 February fires every four (or eight) years.
_SEARCH_DAYS = 366 * 8 + 2

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        span, _, step = item.partition("/")
        if span == "*":
            start, end = low, high
        elif "-" in span:
            first, last = span.split("-")
            start, end = int(first), int(last)
        else:
            start = int(span)
            end = high if step else start  # "5/15" is "5-59/15", as cron reads it
        values.update(range(start, end + 1, int(step) if step else 1))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    # cron's rule: with both day fields restricted, a day matches either; otherwise both.
    either_day: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        fields = MACROS.get(expression.strip(), expression).split()
        if len(fields) != 5:
            raise ValueError(f"{expression!r}: a schedule has five fields (minute hour day month weekday)")
        sets = [_field(text, low, high) for text, (low, high) in zip(fields, _BOUNDS, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])
        either = not fields[2].startswith("*") and not fields[4].startswith("*")
        return cls(sets[0], sets[1], sets[2], sets[3], weekdays, either)

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom, dow = day.day in self.days, (day.isoweekday() % 7) in self.weekdays
        return (dom or dow) if self.either_day else (dom and dow)

    def previous(self, at: datetime) -> datetime | None:
        """The newest time this schedule fires at or before ``at`` (UTC, whole minutes)."""
        at = at.astimezone(UTC)
        for back in range(_SEARCH_DAYS):
            day = at.date() - timedelta(days=back)
            if not self._day_matches(day):
                continue
            limit = (at.hour, at.minute) if back == 0 else (23, 59)
            times = [(h, m) for h in self.hours for m in self.minutes if (h, m) <= limit]
            if times:
                hour, minute = max(times)
                return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
        return None

    def next(self, at: datetime) -> datetime | None:
        """The first time this schedule fires strictly after ``at``."""
        at = at.astimezone(UTC)
        for ahead in range(_SEARCH_DAYS):
            day = at.date() + timedelta(days=ahead)
            if not self._day_matches(day):
                continue
            floor = (at.hour, at.minute) if ahead == 0 else (-1, -1)
            times = [(h, m) for h in self.hours for m in self.minutes if (h, m) > floor]
            if times:
                hour, minute = min(times)
                return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
        return None


def spread(cron: Cron, uid: str, slot: datetime) -> timedelta:
    """How long after ``slot`` this Project starts its run: fixed per Project, under a quarter of the period."""
    following = cron.next(slot)
    period = (following - slot).total_seconds() if following else SPREAD_SECONDS * 4
    window = max(1, int(min(SPREAD_SECONDS, period / 4)))
    return timedelta(seconds=int(hashlib.sha256(uid.encode()).hexdigest(), 16) % window)


@dataclass(frozen=True)
class RunRecord:
    """A Backup object as the decisions here need it."""

    name: str
    target: BackupTarget
    trigger: BackupTrigger
    phase: BackupPhase
    created_at: datetime
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    message: str | None = None
    size_bytes: int | None = None

    @property
    def finished(self) -> bool:
        return self.phase in (BackupPhase.Succeeded, BackupPhase.Failed)

    @property
    def taken_at(self) -> datetime:
        return self.started_at or self.created_at

    def stale(self, now: datetime, after: float = STALE_SECONDS) -> bool:
        if self.trigger in RESTORE_TRIGGERS and self.phase is BackupPhase.Pending:
            # Its restore claims it at once; one still unclaimed after a while lost its restore.
            return (now - self.created_at).total_seconds() > after
        return _stale(self.phase, self.heartbeat_at or self.started_at or self.created_at, now, after)


@dataclass(frozen=True)
class RestoreRecord:
    """A Restore object as the decisions here need it."""

    name: str
    backup: str | None
    safety_backup: bool
    phase: BackupPhase
    created_at: datetime
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    # Whose backup it is, when not the Project's own (another Project of the same namespace).
    from_project: str | None = None
    # With no backup: the moment to take the database back to, from the WAL archive.
    target_time: datetime | None = None

    def stale(self, now: datetime, after: float = STALE_SECONDS) -> bool:
        return _stale(self.phase, self.heartbeat_at or self.started_at or self.created_at, now, after)


def _stale(phase: BackupPhase, last_seen: datetime, now: datetime, after: float) -> bool:
    """Running, but nobody has said so for ``after`` seconds: the operator that ran it is gone."""
    return phase is BackupPhase.Running and (now - last_seen).total_seconds() > after


def next_run(records: Iterable[RunRecord]) -> RunRecord | None:
    """The backup run to start. One at a time per Project, so a namespace that makes a thousand Backups
    queues them behind each other, not beside; a restore's safety backup is its restore's to run."""
    return _oldest_pending(records, lambda r: r.trigger not in RESTORE_TRIGGERS)


def next_restore(restores: Iterable[RestoreRecord]) -> RestoreRecord | None:
    """The restore to start (one at a time per Project)."""
    return _oldest_pending(restores, lambda r: True)


R = TypeVar("R", RunRecord, RestoreRecord)


def _oldest_pending(records: Iterable[R], startable: Callable[[R], bool]) -> R | None:
    """The oldest Pending record, while none of the Project's is Running."""
    listed = list(records)
    if any(r.phase is BackupPhase.Running for r in listed):
        return None
    pending = sorted((r for r in listed if r.phase is BackupPhase.Pending and startable(r)),
                     key=lambda r: (r.created_at, r.name))  # fmt: skip
    return pending[0] if pending else None


def targets(backup: Backup, allocations: Allocations) -> list[BackupTarget]:
    """What a Project backs up: what it includes, of the data it has."""
    has = {BackupTarget.database: allocations.database is not None, BackupTarget.storage: allocations.bucket
           is not None, BackupTarget.redis: allocations.redis_prefix is not None}  # fmt: skip
    return sorted((t for t in backup.include if has[t]), key=lambda t: t.value)


def record_name(project: str, target: BackupTarget, slot: datetime | None, trigger: BackupTrigger,
                now: datetime) -> str:  # fmt: skip
    """The record's name: a slot's run has one name (so it is made once); a manual run is named by its moment."""
    if trigger is BackupTrigger.Manual or slot is None:
        return f"{project}-{target.value}-{trigger.value.lower()}-{now:%Y%m%d-%H%M%S}"
    return f"{project}-{target.value}-{slot:%Y%m%d-%H%M}"


@dataclass(frozen=True)
class Due:
    """A run to record now."""

    target: BackupTarget
    trigger: BackupTrigger
    slot: datetime | None


def due_run(cron: Cron, uid: str, target: BackupTarget, records: Sequence[RunRecord], now: datetime) -> Due | None:
    """The run of ``target`` to record now, if any.

    A target with no record yet is backed up at once (its first backup); after that, the
    newest slot whose start has come, once, if no record is for it or a later slot.
    """
    mine = [r for r in records if r.target is target]
    slot = _started_slot(cron, uid, now)
    if not mine:
        return Due(target, BackupTrigger.Initial, slot)
    last = max((r.scheduled_at for r in mine if r.scheduled_at is not None), default=None)
    if slot is None or (last is not None and slot <= last):
        return None
    return Due(target, BackupTrigger.Scheduled, slot)


def _started_slot(cron: Cron, uid: str, now: datetime) -> datetime | None:
    slot = cron.previous(now)
    if slot is not None and slot + spread(cron, uid, slot) > now:
        slot = cron.previous(slot - timedelta(minutes=1))
    return slot


def next_start(cron: Cron, uid: str, now: datetime) -> datetime | None:
    """When the next slot's run starts (after its spread)."""
    slot = cron.previous(now)
    if slot is not None and slot + spread(cron, uid, slot) > now:
        return slot + spread(cron, uid, slot)
    following = cron.next(now)
    return following + spread(cron, uid, following) if following else None


def expired(records: Iterable[RunRecord], now: datetime, retention_days: int, keep_last: int) -> list[RunRecord]:
    """Records (and their backups) retention deletes: older than the window, past the newest ``keep_last``
    successful ones, which are always kept; failed ones past the window or `FAILED_HISTORY`."""
    horizon = now - timedelta(days=retention_days)
    by_target: dict[BackupTarget, list[RunRecord]] = {}
    for record in records:
        by_target.setdefault(record.target, []).append(record)
    gone: list[RunRecord] = []
    for mine in by_target.values():
        newest_first = sorted(mine, key=lambda r: r.taken_at, reverse=True)
        succeeded = [r for r in newest_first if r.phase is BackupPhase.Succeeded]
        failed = [r for r in newest_first if r.phase is BackupPhase.Failed]
        gone += [r for r in succeeded[keep_last:] if r.taken_at < horizon]
        gone += [r for i, r in enumerate(failed) if i >= FAILED_HISTORY or r.taken_at < horizon]
    return sorted(gone, key=lambda r: r.name)


def last_failure(records: Iterable[RunRecord]) -> RunRecord | None:
    """The newest finished run of each target, when it failed (the newest such)."""
    newest: dict[BackupTarget, RunRecord] = {}
    for record in records:
        if record.finished and (record.target not in newest or record.taken_at > newest[record.target].taken_at):
            newest[record.target] = record
    failed = [r for r in newest.values() if r.phase is BackupPhase.Failed]
    return max(failed, key=lambda r: r.taken_at) if failed else None


def summary(records: Sequence[RunRecord], next_at: datetime | None,
            archive: WalArchiveStatus | None = None) -> BackupSummary:  # fmt: skip
    """The Project's backup block (`status.backup`), from its records and (with walArchiving) the WAL archive:
    a base backup older than the oldest dump moves the first point of recoverability back."""
    succeeded = sorted((r for r in records if r.phase is BackupPhase.Succeeded), key=lambda r: r.taken_at)
    running = [r for r in records if r.phase is BackupPhase.Running]
    failure = last_failure(records)
    newest = succeeded[-1] if succeeded else None
    took = (newest.finished_at - newest.taken_at).total_seconds() if newest and newest.finished_at else None
    return BackupSummary(
        last_successful=newest.name if newest else None,
        last_successful_at=newest.taken_at if newest else None,
        last_successful_size_bytes=newest.size_bytes if newest else None,
        last_successful_duration_seconds=round(took, 3) if took is not None else None,
        first_recoverability_point=min((t for t in (succeeded[0].taken_at if succeeded else None,
                                                     archive.oldest_base_backup_at if archive else None) if t),
                                       default=None),
        wal_archive=archive,
        next_scheduled_at=next_at,
        last_failure=BackupFailure(name=failure.name, at=failure.taken_at, message=failure.message or "")
        if failure else None,
        running=running[0].name if running else None,
    )  # fmt: skip


@dataclass(frozen=True)
class ArchiverState:
    """The Platform's archiving as read (`controller.drivers.wal_archive`): PostgreSQL's archiver and the archive."""

    reachable: bool
    mode: str = "off"
    archived: int = 0
    failed: int = 0
    status: WalArchiveStatus | None = None
    error: str | None = None  # why PostgreSQL could not be read
    info_error: str | None = None  # why the archive could not be read


def archiving_trouble(state: ArchiverState) -> tuple[str, str] | None:
    """Why point-in-time recovery is not there, as (reason, detail); None when archiving works and the archive
    has a base backup to start from. A failure counts until a later WAL archives (as CloudNativePG reads it)."""
    if not state.reachable:
        return "ArchivingUnknown", f"the Platform's PostgreSQL could not be read: {state.error}"
    if state.mode == "off":
        return "ArchivingOff", ("the Platform's PostgreSQL has archive_mode off, so no WAL is archived; its admin "
                                "sets archive_mode and archive_command (docs/backups.md)")  # fmt: skip
    status = state.status or WalArchiveStatus()
    failed_at, archived_at = status.last_failed_at, status.last_archived_at
    if failed_at is not None and (archived_at is None or failed_at > archived_at):
        since = f"; the last one archived was {status.last_archived_wal} at {archived_at:%Y-%m-%dT%H:%M:%SZ}" if (
            archived_at is not None) else "; none has been archived yet"  # fmt: skip
        return "ArchivingStalled", (f"WAL {status.last_failed_wal} failed to archive at "
                                    f"{failed_at:%Y-%m-%dT%H:%M:%SZ}{since}")  # fmt: skip
    if state.info_error is not None:
        return "ArchiveUnreadable", f"the WAL archive could not be read: {state.info_error}"
    if not status.base_backups:
        return "NoBaseBackup", ("the WAL archive has no base backup to recover from yet; the Platform's admin "
                                "takes one (pgbackrest backup, docs/backups.md)")  # fmt: skip
    return None
