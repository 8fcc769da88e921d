"""Bucket backups: the Project's bucket copied into the store incrementally, and copied back on a restore.

Each object is kept once per content, as a blob named by its key's hash and its ETag
(`controller.specs.backups.blob_key`); a run copies only the objects whose blob is not in
the store yet, and writes a manifest (key → ETag, size, blob) as the run's own object.
The manifest is written last: a run cut short has no manifest, so it never counts, and
the blobs it copied are the next run's head start (or retention's to collect). A restore
makes the bucket match a manifest: what differs is copied back, what the manifest lacks
is deleted. It cannot be one transaction, so it is reversible instead (a safety backup
first); each step is idempotent, so a restore cut short is finished by running it again.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.clients.s3 import S3Server
from controller.jobs.backups import (
    PART_BYTES,
    RUN_TIMEOUT_SECONDS,
    BackupStore,
    Metadata,
    RunCut,
    Stored,
    owner_metadata,
    stored_run,
)
from controller.loop.naming import ProjectKey
from controller.specs.backups import blob_key, blobs_prefix
from schemas.backups import BackupRunStatus

# A bucket with more objects than this is refused, not copied: a manifest is held in memory whole.
MAX_OBJECTS = 200_000
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class BucketAccess:
    """The Project's bucket on the Platform's object storage, reached with the operator's root credentials."""

    server: S3Server
    bucket: str


def _check(cancelled: threading.Event, deadline: float) -> None:
    if cancelled.is_set():
        raise RunCut("cancelled")
    if time.monotonic() > deadline:
        raise RunCut("ran past its timeout")


def copy_bucket(source: BucketAccess, store: BackupStore, key: ProjectKey, manifest_key: str, metadata: Metadata,
                timeout: float, cancelled: threading.Event) -> Stored:  # fmt: skip
    """Blocking: every object not yet in the store copied, then the manifest; what it holds, or RunCut."""
    deadline = time.monotonic() + timeout
    have = {o.object_name for o in store.server.s3.list_objects(store.bucket, prefix=blobs_prefix(key),
                                                                 recursive=True)}  # fmt: skip
    entries: dict[str, dict[str, Any]] = {}
    copied = 0
    for obj in source.server.s3.list_objects(source.bucket, recursive=True):
        _check(cancelled, deadline)
        if len(entries) >= MAX_OBJECTS:
            raise RunCut(f"the bucket holds more than {MAX_OBJECTS} objects; bucket backups stop there")
        name, etag, size = str(obj.object_name), str(obj.etag or "").strip('"'), int(obj.size or 0)
        blob = blob_key(key, name, etag)
        if blob not in have:
            _copy(source.server, source.bucket, name, store.server, store.bucket, blob, size)
            have.add(blob)
            copied += 1
        entries[name] = {"etag": etag, "size": size, "blob": blob}
    body = json.dumps({"version": MANIFEST_VERSION, "objects": entries}, sort_keys=True).encode()
    store.server.s3.put_object(store.bucket, manifest_key, io.BytesIO(body), len(body), metadata=dict(metadata),
                               content_type="application/json")  # fmt: skip
    said = f"{len(entries)} objects; {copied} copied, the rest unchanged since an earlier backup"
    return Stored(sum(e["size"] for e in entries.values()), hashlib.sha256(body).hexdigest(), said)


def _copy(source: S3Server, bucket: str, name: str, target: S3Server, target_bucket: str, target_key: str,
          size: int) -> None:  # fmt: skip
    """One object, streamed (the store may be another server): never whole in memory."""
    response = source.s3.get_object(bucket, name)
    try:
        target.s3.put_object(target_bucket, target_key, response, length=size, part_size=PART_BYTES)  # type: ignore[arg-type]
    finally:
        response.close()
        response.release_conn()


def read_manifest(store: BackupStore, manifest_key: str, sha256: str | None = None) -> dict[str, dict[str, Any]]:
    """A run's manifest; with ``sha256``, only if it is the one the run recorded."""
    response = store.server.s3.get_object(store.bucket, manifest_key)
    try:
        body = response.read()
    finally:
        response.close()
        response.release_conn()
    if sha256 is not None and hashlib.sha256(body).hexdigest() != sha256:
        raise RunCut("the stored manifest does not match the checksum recorded when it was taken; nothing was restored")
    return dict(json.loads(body)["objects"])


def restore_bucket(target: BucketAccess, store: BackupStore, manifest_key: str, sha256: str, timeout: float,
                   cancelled: threading.Event) -> tuple[int, int]:  # fmt: skip
    """Blocking: make the bucket what the manifest says; (objects copied back, objects deleted)."""
    deadline = time.monotonic() + timeout
    wanted = read_manifest(store, manifest_key, sha256)
    current = {str(o.object_name): str(o.etag or "").strip('"') for o in target.server.s3.list_objects(
        target.bucket, recursive=True)}  # fmt: skip
    back = 0
    for name, entry in sorted(wanted.items()):
        _check(cancelled, deadline)
        if current.get(name) != entry["etag"]:
            _copy(store.server, store.bucket, entry["blob"], target.server, target.bucket, name, int(entry["size"]))
            back += 1
    extra = sorted(set(current) - set(wanted))
    for name in extra:
        _check(cancelled, deadline)
        target.server.s3.remove_object(target.bucket, name)
    return back, len(extra)


def referenced_blobs(store: BackupStore, manifest_keys: list[str]) -> set[str]:
    """Every blob the kept manifests name: retention deletes the others."""
    found: set[str] = set()
    for manifest_key in manifest_keys:
        found |= {entry["blob"] for entry in read_manifest(store, manifest_key).values()}
    return found


@dataclass(frozen=True)
class BucketCopy:
    """A bucket backup: the objects not yet in the store, then the manifest."""

    key: ProjectKey
    name: str
    source: BucketAccess
    store: BackupStore
    manifest_key: str
    timeout: float = RUN_TIMEOUT_SECONDS

    async def __call__(self, started: datetime, cancelled: threading.Event) -> BackupRunStatus:
        metadata = owner_metadata(self.key, self.name)

        def copy() -> Stored:
            return copy_bucket(self.source, self.store, self.key, self.manifest_key, metadata, self.timeout, cancelled)

        return await stored_run(started, cancelled, self.store, self.manifest_key, copy)
