"""Section ``backup``: what is backed up, when, and for how long."""

from __future__ import annotations

from pydantic import Field

from schemas.base import (
    CRON,
    CodebModel,
    Rule,
)
from schemas.common import BackupTarget


class TargetSchedules(CodebModel):
    """A schedule per target, where it differs from ``schedule`` (the seeds: database daily, files weekly)."""

    database: str | None = Field(None, description="When to dump the database; unset: schedule.", pattern=CRON,
                                 max_length=128)  # fmt: skip
    storage: str | None = Field(None, description="When to copy the bucket; unset: schedule.", pattern=CRON,
                                max_length=128)  # fmt: skip
    redis: str | None = Field(None, description="When to dump the Redis keys; unset: schedule.", pattern=CRON,
                              max_length=128)  # fmt: skip


class Backup(CodebModel):
    rules = (
        Rule(
            cel="!self.walArchiving || 'database' in self.include",
            message="walArchiving needs 'database' in include",
            field_path=".walArchiving",
            check=lambda b: not b.wal_archiving or BackupTarget.database in b.include,
        ),
    )

    enabled: bool = Field(True, description="Take scheduled backups.")
    schedule: str = Field(
        "0 3 * * *",
        description="When to back up: a 5-field cron expression (minute hour day month weekday) or @daily-style macro.",
        pattern=CRON,
        max_length=128,
    )
    schedules: TargetSchedules = Field(
        default_factory=TargetSchedules, description="A schedule per target, where it differs from schedule."
    )
    retention_days: int = Field(
        7, description="Days backups are kept; older ones are deleted from the backup store.", ge=1, le=3650
    )
    keep_last: int = Field(
        1, description="Successful backups always kept, however old (the newest is never deleted).", ge=1, le=1000
    )
    include: list[BackupTarget] = Field(
        default_factory=lambda: [BackupTarget.database], description="What to back up.", max_length=3
    )
    wal_archiving: bool = Field(False, description="Archive PostgreSQL WAL for point-in-time recovery.")

    def schedule_of(self, target: BackupTarget) -> str:
        """The cron expression ``target`` is backed up on."""
        return getattr(self.schedules, target.value) or self.schedule
