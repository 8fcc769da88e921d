"""Backup objects on the API server: the records of backup runs (`schemas.backups`).

The API server is where a run is recorded before it starts, and where the claim on it
is made: a status patch carrying the ``resourceVersion`` the claimer read, so of two
operators (or one, twice) only one moves a record to Running.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from controller.clients.kube import Conflict, KubeClient, NotFound
from controller.loop.backups import RunRecord
from controller.loop.naming import ProjectKey
from controller.specs.backups import collection_path
from schemas.backups import PROJECT_LABEL, BackupPhase, BackupRunSpec, BackupRunStatus


def _record(raw: dict[str, Any]) -> RunRecord | None:
    """A record as the decisions read it; None for one that does not parse (made by hand, badly)."""
    meta = raw.get("metadata") or {}
    try:
        spec = BackupRunSpec.model_validate(raw.get("spec") or {})
        status = BackupRunStatus.model_validate(raw.get("status") or {})
        created = datetime.fromisoformat(str(meta.get("creationTimestamp")).replace("Z", "+00:00"))
    except (ValidationError, ValueError):
        return None
    return RunRecord(
        name=str(meta.get("name")), target=spec.target, trigger=spec.trigger, phase=status.phase,
        created_at=created, scheduled_at=spec.scheduled_at, started_at=status.started_at,
        finished_at=status.finished_at, heartbeat_at=status.heartbeat_at, message=status.message,
        location=status.location, size_bytes=status.size_bytes,
    )  # fmt: skip


class BackupRecords:
    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    async def list(self, key: ProjectKey) -> dict[str, tuple[RunRecord, str]]:
        """The Project's records by name, each with the resourceVersion it was read at."""
        found = await self._kube.request("GET", collection_path(key.namespace),
                                         labelSelector=f"{PROJECT_LABEL}={key.name}")  # fmt: skip
        records: dict[str, tuple[RunRecord, str]] = {}
        for raw in (found or {}).get("items") or []:
            record = _record(raw)
            if record is not None and (raw.get("spec") or {}).get("project") == key.name:
                records[record.name] = (record, str(raw["metadata"].get("resourceVersion")))
        return records

    async def create(self, body: dict[str, Any]) -> bool:
        """Record a run; False when a record of that name exists already (the slot was recorded)."""
        try:
            await self._kube.request("POST", collection_path(body["metadata"]["namespace"]), body)
        except Conflict:
            return False
        return True

    async def set_status(self, namespace: str, name: str, status: BackupRunStatus,
                         resource_version: str | None = None) -> bool:  # fmt: skip
        """Write a record's status; with ``resource_version``, only if nobody wrote it since (False if they did)."""
        body: dict[str, Any] = {"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            found = await self._kube.request("PATCH", f"{collection_path(namespace)}/{name}/status", body,
                                             content_type="application/merge-patch+json")  # fmt: skip
        except (Conflict, NotFound):
            return False
        return found is not None

    async def delete(self, namespace: str, name: str) -> None:
        with contextlib.suppress(Conflict):
            await self._kube.request("DELETE", f"{collection_path(namespace)}/{name}")

    async def read_status(self, namespace: str, name: str) -> BackupRunStatus | None:
        found = await self._kube.request("GET", f"{collection_path(namespace)}/{name}")
        if found is None:
            return None
        with contextlib.suppress(ValidationError):
            return BackupRunStatus.model_validate(found.get("status") or {})
        return None

    @staticmethod
    def phase_of(raw: dict[str, Any]) -> BackupPhase | None:
        with contextlib.suppress(ValidationError):
            return BackupRunStatus.model_validate(raw.get("status") or {}).phase
        return None
