"""The `Backup` resource (namespaced): one backup run of one target of one Project.

The operator creates one per scheduled run (its name carries the slot, so a slot is
run at most once), `codeb backup` creates one to back up now, and each is the record
of its run: created ``Pending`` before anything starts, ``Running`` while the operator
that claimed it keeps its heartbeat fresh, then ``Succeeded`` or ``Failed``. Only a
run whose upload completed is ever ``Succeeded``. ``kubectl get backups`` lists them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from schemas.base import DNS_LABEL, CodebModel, Rule
from schemas.common import BackupTarget

BACKUP_KIND = "Backup"
BACKUP_PLURAL = "backups"
# Labels every Backup carries: which Project and target it belongs to (what the operator lists by).
PROJECT_LABEL = "codeb.dev/project"
TARGET_LABEL = "codeb.dev/target"


class BackupPhase(StrEnum):
    Pending = "Pending"
    Running = "Running"
    Succeeded = "Succeeded"
    Failed = "Failed"


class BackupTrigger(StrEnum):
    Initial = "Initial"  # the Project's first backup, taken once its data exists
    Scheduled = "Scheduled"
    Manual = "Manual"  # codeb backup, or a Backup made by hand
    Safety = "Safety"  # taken by a restore of the data it is about to overwrite; run by that restore alone
    PointInTime = "PointInTime"  # the database as it was at a time, dumped by a restore from a side instance


# Runs a restore makes and runs itself: never started by a pass.
RESTORE_TRIGGERS = frozenset({BackupTrigger.Safety, BackupTrigger.PointInTime})


class BackupRunSpec(CodebModel):
    project: str = Field(description="The Project (in this namespace) whose data is backed up.", pattern=DNS_LABEL,
                         max_length=63)  # fmt: skip
    target: BackupTarget = Field(BackupTarget.database, description="What is backed up.")
    trigger: BackupTrigger = Field(BackupTrigger.Manual, description="Why the run exists.")
    scheduled_at: datetime | None = Field(None, description="The schedule's slot this run is for (Scheduled runs).")


class BackupRunStatus(CodebModel):
    phase: BackupPhase = Field(BackupPhase.Pending, description="Pending, Running, Succeeded or Failed.")
    started_at: datetime | None = Field(None, description="When the run started.")
    finished_at: datetime | None = Field(None, description="When the run ended, either way.")
    heartbeat_at: datetime | None = Field(
        None, description="The running operator's last sign of life; a stale one means the run was cut short."
    )
    duration_seconds: float | None = Field(None, description="How long the run took.")
    size_bytes: int | None = Field(None, description="Bytes stored.")
    sha256: str | None = Field(None, description="SHA-256 of what was stored.", max_length=64)
    server_version: str | None = Field(None, description="Version of the server the data came from.",
                                       max_length=64)  # fmt: skip
    location: str | None = Field(None, description="Where the backup is kept: s3://bucket/key.", max_length=1024)
    message: str | None = Field(None, description="What happened, in words (why it failed).", max_length=4096)


RESTORE_KIND = "Restore"
RESTORE_PLURAL = "restores"


class RestoreSpec(CodebModel):
    rules = (
        Rule(
            cel="has(self.backup) != has(self.targetTime)",
            message="set exactly one of backup (a Backup to restore) or targetTime (a moment to go back to)",
            field_path="",
            check=lambda r: (r.backup is None) != (r.target_time is None),
        ),
    )

    project: str = Field(description="The Project (in this namespace) whose database is overwritten.",
                         pattern=DNS_LABEL, max_length=63)  # fmt: skip
    backup: str | None = Field(None, description="The Backup (in this namespace, of this Project) to restore.",
                               pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)  # fmt: skip
    target_time: datetime | None = Field(
        None,
        description=(
            "Restore the database as it was at this moment, from the Platform's WAL archive (the Project has"
            " backup.walArchiving); unset: backup."
        ),
    )
    safety_backup: bool = Field(
        True, description="Back up the data as it is first (a Backup of its own), so the restore can be undone."
    )
    from_project: str | None = Field(
        None,
        description=(
            "Restore a backup of another Project of this namespace (production's into a staging copy, say); "
            "unset: the Project's own."
        ),
        pattern=DNS_LABEL,
        max_length=63,
    )


class RestoreStatus(CodebModel):
    phase: BackupPhase = Field(BackupPhase.Pending, description="Pending, Running, Succeeded or Failed.")
    started_at: datetime | None = Field(None, description="When the restore started.")
    finished_at: datetime | None = Field(None, description="When it ended, either way.")
    heartbeat_at: datetime | None = Field(None, description="The running operator's last sign of life.")
    duration_seconds: float | None = Field(None, description="How long it took.")
    bytes_restored: int | None = Field(None, description="Bytes of the backup read so far.")
    total_bytes: int | None = Field(None, description="Bytes of the backup in all.")
    safety_backup: str | None = Field(None, description="The Backup taken of the data just before.", max_length=253)
    point_in_time_backup: str | None = Field(
        None,
        description="With targetTime: the Backup of the database as it was then, which was restored.",
        max_length=253,
    )
    message: str | None = Field(None, description="What happened, in words (why it failed).", max_length=4096)
