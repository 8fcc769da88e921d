"""Redis backups: the keys under the Project's prefix, dumped with their TTLs, and restored.

Redis's own DUMP / RESTORE carry a key's value exactly, whatever its type. A run SCANs
the Project's prefix (the operator's allocation: it holds no glob character), DUMPs each
key with its remaining TTL, and stores them as JSON lines. A restore puts back exactly
those keys (REPLACE, the TTL they had left) and deletes the prefix's other keys; a key
not under the prefix is never touched, whatever a backup file says. The operator's admin
connection does this (a tenant's ACL has no RESTORE), always bounded to the prefix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import redis

from controller.jobs.backups import (
    RUN_TIMEOUT_SECONDS,
    BackupStore,
    Metadata,
    RunCut,
    Stored,
    owner_metadata,
    stored_run,
)
from controller.loop.naming import ProjectKey
from schemas.backups import BackupRunStatus

SCAN_COUNT = 500
# A cache with more keys than this is refused rather than half copied.
MAX_KEYS = 1_000_000
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class CacheAccess:
    """The Platform's Redis as the operator's admin, and the Project's key prefix."""

    host: str
    port: int
    password: str | None
    prefix: str

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password, socket_timeout=TIMEOUT_SECONDS,
                           socket_connect_timeout=TIMEOUT_SECONDS, decode_responses=False)  # fmt: skip


def _keys(client: redis.Redis, prefix: str, cancelled: threading.Event, deadline: float) -> Iterator[bytes]:
    for count, key in enumerate(client.scan_iter(match=f"{prefix}*", count=SCAN_COUNT)):
        if cancelled.is_set() or time.monotonic() > deadline:
            raise RunCut("cancelled" if cancelled.is_set() else "ran past its timeout")
        if count >= MAX_KEYS:
            raise RunCut(f"the cache holds more than {MAX_KEYS} keys under its prefix; cache backups stop there")
        yield key


def copy_cache(source: CacheAccess, store: BackupStore, object_key: str, metadata: Metadata, timeout: float,
               cancelled: threading.Event) -> Stored:  # fmt: skip
    """Blocking: the prefix's keys into the store; (keys, bytes, sha256), or RunCut (and no object)."""
    deadline = time.monotonic() + timeout
    client = source.client()
    digest, keys = hashlib.sha256(), 0
    with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as lines:
        try:
            for key in _keys(client, source.prefix, cancelled, deadline):
                payload, ttl = client.dump(key), client.pttl(key)
                if payload is None or ttl == -2:
                    continue  # expired or deleted since the scan saw it
                entry = {"k": base64.b64encode(key).decode(), "ttl": max(int(ttl), 0),
                         "v": base64.b64encode(payload).decode()}  # fmt: skip
                line = json.dumps(entry).encode() + b"\n"
                lines.write(line)
                digest.update(line)
                keys += 1
        finally:
            client.close()
        size = lines.tell()
        lines.seek(0)
        store.server.s3.put_object(store.bucket, object_key, lines, length=size, metadata=dict(metadata),  # type: ignore[arg-type]
                                   content_type="application/x-ndjson")  # fmt: skip
    return Stored(size, digest.hexdigest(), f"{keys} keys")


def restore_cache(target: CacheAccess, store: BackupStore, object_key: str, sha256: str, timeout: float,
                  cancelled: threading.Event) -> tuple[int, int]:  # fmt: skip
    """Blocking: the prefix's keys made what the backup holds; (keys restored, keys deleted)."""
    deadline = time.monotonic() + timeout
    response = store.server.s3.get_object(store.bucket, object_key)
    try:
        body = response.read()
    finally:
        response.close()
        response.release_conn()
    if hashlib.sha256(body).hexdigest() != sha256:
        raise RunCut("the stored backup does not match the checksum recorded when it was taken; nothing was restored")
    entries = [json.loads(line) for line in body.splitlines() if line]
    wanted = {base64.b64decode(e["k"]) for e in entries}
    if any(not key.startswith(target.prefix.encode()) for key in wanted):
        raise RunCut("the backup holds keys outside the Project's prefix; nothing was restored")
    client = target.client()
    try:
        extra = [key for key in _keys(client, target.prefix, cancelled, deadline) if key not in wanted]
        for entry in entries:
            if cancelled.is_set() or time.monotonic() > deadline:
                raise RunCut("cut short; restoring again finishes it")
            client.restore(base64.b64decode(entry["k"]), int(entry["ttl"]), base64.b64decode(entry["v"]),
                           replace=True)  # fmt: skip
        for key in extra:
            client.delete(key)
    finally:
        client.close()
    return len(entries), len(extra)


@dataclass(frozen=True)
class CacheCopy:
    """A Redis backup: the prefix's keys, with their TTLs, as one object."""

    key: ProjectKey
    name: str
    source: CacheAccess
    store: BackupStore
    object_key: str
    timeout: float = RUN_TIMEOUT_SECONDS

    async def __call__(self, started: datetime, cancelled: threading.Event) -> BackupRunStatus:
        metadata = owner_metadata(self.key, self.name)

        def copy() -> Stored:
            return copy_cache(self.source, self.store, self.object_key, metadata, self.timeout, cancelled)

        return await stored_run(started, cancelled, self.store, self.object_key, copy)
