"""Restores: a Backup streamed back into the Project's database, after a safety backup of what is there.

A restore is a Restore object first, claimed like a backup run (Pending → Running at the
resourceVersion read). The backup must be a successful database Backup of this very
Project, and its stored object must say so too (its metadata names the Project); its key
is derived, never read from a record a tenant can write. With ``safetyBackup`` on, the
data as it is goes to the store first, as a Backup of its own; if that fails nothing is
overwritten. ``pg_restore`` runs as the Project's own role in one transaction, and the
last piece of the backup is held back until the whole stream matched the checksum the
backup recorded: a corrupt or cut stream never commits, so the database is either as it
was or as the backup was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from minio.datatypes import Object

from controller.clients.backup_records import BackupRecords, RestoreRecords
from controller.errors import CodebError, PermanentError
from controller.jobs.backups import (
    RUN_ERRORS,
    RUN_TIMEOUT_SECONDS,
    BackupRunner,
    BackupStore,
    DatabaseAccess,
    DatabaseDump,
    Heartbeat,
    Job,
    RunCut,
    failed,
    tail,
    utcnow,
)
from controller.jobs.bucket_copies import BucketAccess, BucketCopy, restore_bucket
from controller.jobs.cache_copies import CacheAccess, CacheCopy, restore_cache
from controller.jobs.point_in_time import SIDE_ROOT, PointInTimeDump
from controller.loop.backups import RestoreRecord
from controller.loop.naming import ProjectKey
from controller.specs.backups import object_key, record_body, restore_command
from schemas.backups import BackupPhase, BackupRunStatus, BackupTrigger, RestoreStatus
from schemas.project import BackupTarget

CHUNK_BYTES = 1024 * 1024
# A restore's heartbeat carries its progress (`codeb restore` shows it): more often than a backup's.
PROGRESS_SECONDS = 2.0


def stream_restore(target: DatabaseAccess, store: BackupStore, key: str, sha256: str, timeout: float,
                   cancelled: threading.Event, progress: Callable[[int], None]) -> int:  # fmt: skip
    """Blocking: the stored backup into pg_restore; bytes restored, or RunCut (and nothing committed)."""
    command = restore_command(target.server.host, target.server.port, target.user, target.database)
    response = store.server.s3.get_object(store.bucket, key)
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                                env=target.environment())  # fmt: skip
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            return _feed(proc, response.stream(CHUNK_BYTES), sha256, cancelled, progress)
        except (BrokenPipeError, RunCut) as exc:
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
            why = str(exc) if isinstance(exc, RunCut) else f"pg_restore exited {code}"
            raise RunCut(f"{why}{tail(errors)}") from None
        finally:
            watchdog.cancel()
            response.close()
            response.release_conn()
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _feed(proc: subprocess.Popen[bytes], chunks: Iterator[bytes], sha256: str, cancelled: threading.Event,
          progress: Callable[[int], None]) -> int:  # fmt: skip
    assert proc.stdin is not None
    digest, held, total = hashlib.sha256(), b"", 0
    for chunk in chunks:
        if cancelled.is_set():
            raise RunCut("cancelled; nothing was restored")
        digest.update(chunk)
        total += len(chunk)
        if held:
            proc.stdin.write(held)
        held = chunk
        progress(total)
    if digest.hexdigest() != sha256:
        raise RunCut("the stored backup does not match the checksum recorded when it was taken; nothing was restored")
    proc.stdin.write(held)  # the last piece: only now can pg_restore reach its COMMIT
    proc.stdin.close()
    code = proc.wait()
    if code != 0:
        raise RunCut(f"pg_restore exited {code}; nothing was restored")
    return total


@dataclass(frozen=True)
class Sources:
    """Where a Project's data lives, as the operator reaches it: its database (as its own role), its bucket."""

    database: DatabaseAccess | None = None
    bucket: BucketAccess | None = None
    cache: CacheAccess | None = None


# Reads a Project object (namespace, name), None when it does not exist.
ReadProject = Callable[[str, str], Awaitable[dict[str, Any] | None]]


def _check_has(key: ProjectKey, target: BackupTarget, sources: Sources) -> None:
    has = {BackupTarget.database: sources.database, BackupTarget.storage: sources.bucket,
           BackupTarget.redis: sources.cache}  # fmt: skip
    if has[target] is None:
        raise PermanentError(f"Project {key.name} has no {target.value} to restore the backup into",
                             reason="NothingToRestoreInto")  # fmt: skip


def _check_to_time(key: ProjectKey, record: RestoreRecord, moment: datetime, sources: Sources,
                   store: BackupStore) -> None:  # fmt: skip
    """A restore to a time needs the Project's own database and the Platform's WAL archive, and a past moment."""
    if record.from_project not in (None, key.name):
        raise PermanentError(
            "targetTime takes a Project's own database back in time; to copy another Project's, "
            "restore one of its Backups (spec.backup) with fromProject",
            reason="InvalidRestore",
        )
    if store.archive is None:
        raise PermanentError(
            "the Platform archives no WAL (its spec.backup.pointInTime is unset), so there is no "
            "point in time to go back to; restore a Backup instead",
            reason="NoWalArchive",
        )
    _check_has(key, BackupTarget.database, sources)
    if moment > utcnow():
        raise PermanentError(f"targetTime {moment:%Y-%m-%dT%H:%M:%SZ} is in the future", reason="InvalidRestore")


class RestoreRunner:
    """Runs claimed Restore records, one task per record."""

    def __init__(self, restores: RestoreRecords, backups: BackupRecords, backup_runner: BackupRunner,
                 read_project: ReadProject, timeout: float = RUN_TIMEOUT_SECONDS,
                 side_instances: Path = SIDE_ROOT) -> None:  # fmt: skip
        self._restores, self._backups, self._backup_runner = restores, backups, backup_runner
        self._read_project, self._side_instances = read_project, side_instances
        self._timeout = timeout
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def running(self, key: ProjectKey, name: str) -> bool:
        return f"{key.namespace}/{name}" in self._tasks

    async def start(self, key: ProjectKey, record: RestoreRecord, version: str, sources: Sources,
                    store: BackupStore) -> bool:  # fmt: skip
        """Claim a Pending restore and run it outside the pass; False when it is not ours to run."""
        ident = f"{key.namespace}/{record.name}"
        if ident in self._tasks or record.phase is not BackupPhase.Pending:
            return False
        now = utcnow()
        claim = RestoreStatus(phase=BackupPhase.Running, started_at=now, heartbeat_at=now)
        if not await self._restores.set_status(key.namespace, record.name, claim, version):
            return False
        task = asyncio.create_task(self._run(key, record, now, sources, store))
        self._tasks[ident] = task
        task.add_done_callback(lambda _: self._tasks.pop(ident, None))
        return True

    async def fail_stale(self, key: ProjectKey, record: RestoreRecord, version: str) -> bool:
        seen = record.heartbeat_at or record.started_at
        when = f" (last heartbeat {seen:%Y-%m-%dT%H:%M:%SZ})" if seen else ""
        message = (f"cut short: the operator running it stopped{when}; a database restore is one transaction, so "
                   "the database is as it was; a bucket restore is finished by restoring again")  # fmt: skip
        cut = RestoreStatus(phase=BackupPhase.Failed, started_at=record.started_at, finished_at=utcnow(),
                            heartbeat_at=record.heartbeat_at, message=message)  # fmt: skip
        return await self._restores.set_status(key.namespace, record.name, cut, version)

    async def _run(self, key: ProjectKey, record: RestoreRecord, started: datetime, sources: Sources,
                   store: BackupStore) -> None:  # fmt: skip
        cancelled = threading.Event()
        state = RestoreStatus(phase=BackupPhase.Running, started_at=started, heartbeat_at=started)

        async def beat() -> bool:  # with the progress so far
            state.heartbeat_at = utcnow()
            return await self._restores.set_status(key.namespace, record.name, state)

        heart = Heartbeat(PROGRESS_SECONDS, beat, cancelled)
        began = time.monotonic()
        try:
            done = await self._restore(key, record, sources, store, state, cancelled)
            of = f" of Project {record.from_project}" if record.from_project not in (None, key.name) else ""
            what = f"backup {record.backup}{of}" if record.backup else "the database"
            state.phase, state.message = BackupPhase.Succeeded, f"restored {what}{done}"
        except RUN_ERRORS as exc:
            state.phase, state.message = BackupPhase.Failed, failed(started, began, exc).message
        finally:
            cancelled.set()
            await heart.stop()
        state.finished_at, state.duration_seconds = utcnow(), round(time.monotonic() - began, 3)
        with contextlib.suppress(CodebError):
            await self._restores.set_status(key.namespace, record.name, state)

    async def _restore(self, key: ProjectKey, record: RestoreRecord, sources: Sources, store: BackupStore,
                       state: RestoreStatus, cancelled: threading.Event) -> str:  # fmt: skip
        """Check, take the safety backup, restore; a few words on what was done."""
        if record.target_time is not None:
            return await self._restore_to_time(key, record, record.target_time, sources, store, state, cancelled)
        assert record.backup is not None  # one of backup and targetTime (the CRD's rule, and the model's)
        source = await self._source_key(key, record.from_project)
        target, sha256, stored_key = await self._checked_backup(source, record.backup, store)
        _check_has(key, target, sources)
        stat: Object = await store.server.call(store.server.s3.stat_object, store.bucket, stored_key)
        if record.safety_backup:
            state.safety_backup = await self._safety_backup(key, target, sources, store)
        if target is BackupTarget.storage:
            assert sources.bucket is not None
            back, deleted = await asyncio.to_thread(restore_bucket, sources.bucket, store, stored_key, sha256,
                                                    self._timeout, cancelled)  # fmt: skip
            return f": {back} objects copied back, {deleted} deleted"
        if target is BackupTarget.redis:
            assert sources.cache is not None
            back, deleted = await asyncio.to_thread(restore_cache, sources.cache, store, stored_key, sha256,
                                                    self._timeout, cancelled)  # fmt: skip
            return f": {back} keys restored, {deleted} deleted"
        assert sources.database is not None
        await self._stream_back(sources.database, store, stored_key, sha256, stat.size or 0, state, cancelled)
        return ""

    async def _stream_back(self, target: DatabaseAccess, store: BackupStore, stored_key: str, sha256: str,
                           size: int, state: RestoreStatus, cancelled: threading.Event) -> None:  # fmt: skip
        state.total_bytes, state.bytes_restored = size, 0

        def progress(done: int) -> None:
            state.bytes_restored = done

        await asyncio.to_thread(stream_restore, target, store, stored_key, sha256, self._timeout, cancelled,
                                progress)  # fmt: skip

    async def _restore_to_time(self, key: ProjectKey, record: RestoreRecord, moment: datetime, sources: Sources,
                               store: BackupStore, state: RestoreStatus,
                               cancelled: threading.Event) -> str:  # fmt: skip
        """The database as it was at ``moment``: a safety backup, then a Backup dumped from the cluster recovered
        to that moment in a side instance, then that Backup restored like any."""
        _check_to_time(key, record, moment, sources, store)
        assert sources.database is not None
        if record.safety_backup:
            state.safety_backup = await self._safety_backup(key, BackupTarget.database, sources, store)
        name = f"{key.name}-database-pitr-{utcnow():%Y%m%d-%H%M%S}"
        stored_key = object_key(key, BackupTarget.database, name)
        job = PointInTimeDump(key, name, sources.database, store, stored_key, moment, self._timeout,
                              self._side_instances)  # fmt: skip
        result = await self._run_own(key, name, BackupTarget.database, BackupTrigger.PointInTime, job)
        state.point_in_time_backup = name
        if result.phase is not BackupPhase.Succeeded or not result.sha256 or result.size_bytes is None:
            raise PermanentError(f"the database as it was at {moment:%Y-%m-%dT%H:%M:%SZ} could not be recovered: "
                                 f"{result.message}; nothing was overwritten", reason="PointInTimeFailed")  # fmt: skip
        await self._stream_back(sources.database, store, stored_key, result.sha256, result.size_bytes, state,
                                cancelled)  # fmt: skip
        return f" as it was at {moment:%Y-%m-%dT%H:%M:%S.%fZ} (through backup {name})"

    async def _run_own(self, key: ProjectKey, name: str, target: BackupTarget, trigger: BackupTrigger,
                       job: Job) -> BackupRunStatus:  # fmt: skip
        """A Backup this restore records and runs itself (heart-beating like any); its final status."""
        await self._backups.create(record_body(key, name, target, trigger, None))
        (_, version) = (await self._backups.list(key))[name]
        result = await self._backup_runner.run_now(key, name, version, job)
        if result is None:
            raise PermanentError(f"backup {name} was taken over by another run; nothing was overwritten",
                                 reason="SafetyBackupFailed")  # fmt: skip
        return result

    async def _source_key(self, key: ProjectKey, from_project: str | None) -> ProjectKey:
        """Whose backup it is: the Project's own, or another Project of the same namespace (as it is now)."""
        if from_project is None or from_project == key.name:
            return key
        found = await self._read_project(key.namespace, from_project)
        uid = ((found or {}).get("metadata") or {}).get("uid")
        if not uid:
            raise PermanentError(f"Project {from_project} (spec.fromProject) does not exist in {key.namespace}",
                                 reason="BackupNotFound")  # fmt: skip
        return ProjectKey(key.namespace, from_project, str(uid))

    async def _checked_backup(self, key: ProjectKey, name: str, store: BackupStore) -> tuple[BackupTarget, str, str]:
        """The backup's target, checksum and key, once it is known to be a successful Backup of this Project."""
        listed = await self._backups.list(key)
        found = listed.get(name)
        status = await self._backups.read_status(key.namespace, name) if found else None
        if found is None or status is None or found[0].phase is not BackupPhase.Succeeded or not status.sha256:
            raise PermanentError(f"backup {name} is not a successful Backup of Project {key.name}; "
                                 "`codeb backups` lists those", reason="BackupNotFound")  # fmt: skip
        target = found[0].target
        stored_key = object_key(key, target, name)
        stat: Object = await store.server.call(store.server.s3.stat_object, store.bucket, stored_key)
        meta = stat.metadata or {}
        if meta.get("x-amz-meta-codeb-project") != str(key) or meta.get("x-amz-meta-codeb-project-uid") != key.uid:
            raise PermanentError(f"the stored backup {name} does not belong to {key}; nothing was restored",
                                 reason="BackupNotOwned")  # fmt: skip
        return target, status.sha256, stored_key

    async def _safety_backup(self, key: ProjectKey, target: BackupTarget, sources: Sources,
                             store: BackupStore) -> str:  # fmt: skip
        """The data as it is, into a Backup of its own (heart-beating like any), before anything is overwritten."""
        name = f"{key.name}-{target.value}-safety-{utcnow():%Y%m%d-%H%M%S}"
        stored_key = object_key(key, target, name)
        job: Job
        if target is BackupTarget.storage:
            assert sources.bucket is not None
            job = BucketCopy(key, name, sources.bucket, store, stored_key, self._timeout)
        elif target is BackupTarget.redis:
            assert sources.cache is not None
            job = CacheCopy(key, name, sources.cache, store, stored_key, self._timeout)
        else:
            assert sources.database is not None
            job = DatabaseDump(key, name, sources.database, store, stored_key, self._timeout)
        result = await self._run_own(key, name, target, BackupTrigger.Safety, job)
        if result.phase is not BackupPhase.Succeeded:
            raise PermanentError(f"safety backup {name} failed ({result.message}); nothing was overwritten",
                                 reason="SafetyBackupFailed")  # fmt: skip
        return name

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
