"""What a backup run is made of, pure: its Backup and Restore objects, where it is kept, its commands.

The object key is derived from the Project's namespace, name and uid and the record's
name, never read back from a record: a Backup object lives in the tenant's namespace,
where its author could write any ``status.location``.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from controller.loop.naming import ProjectKey
from schemas.backups import (
    BACKUP_KIND,
    BACKUP_PLURAL,
    PROJECT_LABEL,
    RESTORE_KIND,
    TARGET_LABEL,
    BackupRunSpec,
    BackupTrigger,
    RestoreSpec,
)
from schemas.project import API_GROUP, API_VERSION, KIND, BackupTarget

# What a run's own object is: a database's dump, a bucket's manifest.
EXTENSIONS = {BackupTarget.database: "dump", BackupTarget.storage: "json", BackupTarget.redis: "jsonl"}


def object_key(key: ProjectKey, target: BackupTarget, record: str) -> str:
    """Where a run's backup is kept in the store: one prefix per Project object, never another's."""
    return f"{project_prefix(key)}{target.value}/{record}.{EXTENSIONS.get(target, 'tar')}"


# Every Project's backups are under here, one prefix per Project object (its uid): a Project re-created
# under the same name has backups of its own, and the old one's go by the old one's retention.
PROJECTS_PREFIX = "projects/"


def project_prefix(key: ProjectKey) -> str:
    return f"{PROJECTS_PREFIX}{key.namespace}/{key.name}/{key.uid}/"


def tombstone_key(key: ProjectKey) -> str:
    """Written when the Project is deleted: when, and whether its backups are kept or go by its retention."""
    return f"{project_prefix(key)}deleted.json"


def blobs_prefix(key: ProjectKey) -> str:
    return f"{project_prefix(key)}storage/blobs/"


def blob_key(key: ProjectKey, name: str, etag: str) -> str:
    """Where one version of one bucket object is kept: by its key's hash (a tenant's key is any text) and ETag."""
    return f"{blobs_prefix(key)}{hashlib.sha256(name.encode()).hexdigest()}-{re.sub(r'[^A-Za-z0-9-]', '', etag)}"


def final_dump_key(key: ProjectKey, database: str, stamp: str) -> str:
    return f"{project_prefix(key)}final/{database}-{stamp}.dump"


def record_body(key: ProjectKey, name: str, target: BackupTarget, trigger: BackupTrigger,
                slot: datetime | None) -> dict[str, Any]:  # fmt: skip
    """The Backup object of one run, owned by its Project (it goes when the Project does)."""
    spec = BackupRunSpec(project=key.name, target=target, trigger=trigger, scheduled_at=slot)
    return _run_object(BACKUP_KIND, key, name, {TARGET_LABEL: target.value}, spec)


def restore_body(key: ProjectKey, name: str, backup: str | None, safety_backup: bool = True,
                 from_project: str | None = None, target_time: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    """The Restore object of one restore into ``key``'s Project (of a Backup, or to a time), owned by it."""
    spec = RestoreSpec(project=key.name, backup=backup, safety_backup=safety_backup, from_project=from_project,
                       target_time=target_time)  # fmt: skip
    return _run_object(RESTORE_KIND, key, name, {}, spec)


def _run_object(kind: str, key: ProjectKey, name: str, labels: dict[str, str], spec: BaseModel) -> dict[str, Any]:
    """A run's record in the Project's namespace: labelled with the Project, owned by it."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": key.namespace,
            "labels": {PROJECT_LABEL: key.name, **labels},
            "ownerReferences": [_owner(key)],
        },
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def _owner(key: ProjectKey) -> dict[str, Any]:
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": key.name, "uid": key.uid,
            "blockOwnerDeletion": False}  # fmt: skip


def collection_path(namespace: str, plural: str = BACKUP_PLURAL) -> str:
    return f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{plural}"


def dump_command(host: str, port: int, user: str, database: str) -> list[str]:
    """pg_dump in custom format to stdout; the password goes through the environment (never argv, seen in ps)."""
    return ["pg_dump", "--format=custom", "--no-password", f"--host={host}", f"--port={port}",
            f"--username={user}", f"--dbname={database}"]  # fmt: skip


def restore_command(host: str, port: int, user: str, database: str) -> list[str]:
    """pg_restore from stdin into the Project's database as its own role: nothing runs with more rights
    than the tenant has; objects are replaced, and owned by that role."""
    return ["pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges", "--exit-on-error",
            "--single-transaction", "--no-password", f"--host={host}", f"--port={port}", f"--username={user}",
            f"--dbname={database}"]  # fmt: skip
