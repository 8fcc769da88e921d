"""Backup and Restore objects on the API server: the records of runs (`schemas.backups`).

The API server is where a run is recorded before it starts, and where the claim on it
is made: a status patch carrying the ``resourceVersion`` the claimer read, so of two
operators (or one, twice) only one moves a record to Running. Records are read from the
Project's namespace by its label, and one that does not parse (made by hand, badly) or
names another Project is not listed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from controller.clients.kube import Conflict, KubeClient, NotFound
from controller.loop.backups import RestoreRecord, RunRecord
from controller.loop.naming import ProjectKey
from controller.specs.backups import collection_path
from schemas.backups import (
    BACKUP_PLURAL,
    PROJECT_LABEL,
    RESTORE_PLURAL,
    BackupRunSpec,
    BackupRunStatus,
    RestoreSpec,
    RestoreStatus,
)

R = TypeVar("R")


def _created(raw: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str((raw.get("metadata") or {}).get("creationTimestamp")).replace("Z", "+00:00"))


def backup_record(raw: dict[str, Any]) -> RunRecord:
    spec = BackupRunSpec.model_validate(raw.get("spec") or {})
    status = BackupRunStatus.model_validate(raw.get("status") or {})
    return RunRecord(
        name=str(raw["metadata"]["name"]), target=spec.target, trigger=spec.trigger, phase=status.phase,
        created_at=_created(raw), scheduled_at=spec.scheduled_at, started_at=status.started_at,
        finished_at=status.finished_at, heartbeat_at=status.heartbeat_at, message=status.message,
        size_bytes=status.size_bytes,
    )  # fmt: skip


def restore_record(raw: dict[str, Any]) -> RestoreRecord:
    spec = RestoreSpec.model_validate(raw.get("spec") or {})
    status = RestoreStatus.model_validate(raw.get("status") or {})
    return RestoreRecord(name=str(raw["metadata"]["name"]), backup=spec.backup, safety_backup=spec.safety_backup,
                         phase=status.phase, created_at=_created(raw), started_at=status.started_at,
                         heartbeat_at=status.heartbeat_at, from_project=spec.from_project,
                         target_time=spec.target_time)  # fmt: skip


class Records(Generic[R]):
    """One kind of run record, in the Project's namespace."""

    def __init__(self, kube: KubeClient, plural: str, parse: Callable[[dict[str, Any]], R]) -> None:
        self._kube, self._plural, self._parse = kube, plural, parse

    async def list(self, key: ProjectKey) -> dict[str, tuple[R, str]]:
        """The Project's records by name, each with the resourceVersion it was read at."""
        found = await self._kube.request("GET", collection_path(key.namespace, self._plural),
                                         labelSelector=f"{PROJECT_LABEL}={key.name}")  # fmt: skip
        records: dict[str, tuple[R, str]] = {}
        for raw in (found or {}).get("items") or []:
            if (raw.get("spec") or {}).get("project") != key.name:
                continue
            try:
                record = self._parse(raw)
            except (ValidationError, ValueError, KeyError):
                continue
            records[raw["metadata"]["name"]] = (record, str(raw["metadata"].get("resourceVersion")))
        return records

    async def create(self, body: dict[str, Any]) -> bool:
        """Record a run; False when a record of that name exists already (the slot was recorded)."""
        try:
            await self._kube.request("POST", collection_path(body["metadata"]["namespace"], self._plural), body)
        except Conflict:
            return False
        return True

    async def set_status(self, namespace: str, name: str, status: BaseModel,
                         resource_version: str | None = None) -> bool:  # fmt: skip
        """Write a record's status; with ``resource_version``, only if nobody wrote it since (False if they did,
        or the record is gone)."""
        body: dict[str, Any] = {"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            found = await self._kube.request("PATCH", f"{collection_path(namespace, self._plural)}/{name}/status",
                                             body, content_type="application/merge-patch+json")  # fmt: skip
        except (Conflict, NotFound):
            return False
        return found is not None

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._kube.request("GET", f"{collection_path(namespace, self._plural)}/{name}")

    async def delete(self, namespace: str, name: str) -> None:
        with contextlib.suppress(Conflict):
            await self._kube.request("DELETE", f"{collection_path(namespace, self._plural)}/{name}")


class BackupRecords(Records[RunRecord]):
    def __init__(self, kube: KubeClient) -> None:
        super().__init__(kube, BACKUP_PLURAL, backup_record)

    async def read_status(self, namespace: str, name: str) -> BackupRunStatus | None:
        found = await self.read(namespace, name)
        with contextlib.suppress(ValidationError):
            return BackupRunStatus.model_validate((found or {}).get("status") or {}) if found else None
        return None


class RestoreRecords(Records[RestoreRecord]):
    def __init__(self, kube: KubeClient) -> None:
        super().__init__(kube, RESTORE_PLURAL, restore_record)
