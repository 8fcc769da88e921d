"""Section ``backup``: what is backed up, when, and for how long."""

from __future__ import annotations

from pydantic import Field

from schemas.base import (
    CRON,
    CodebModel,
    Rule,
)
from schemas.common import BackupTarget


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
    retention_days: int = Field(7, description="Days backups are kept.", ge=1, le=3650)
    include: list[BackupTarget] = Field(
        default_factory=lambda: [BackupTarget.database], description="What to back up.", max_length=3
    )
    wal_archiving: bool = Field(False, description="Archive PostgreSQL WAL for point-in-time recovery.")
