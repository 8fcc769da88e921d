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
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from minio.datatypes import Object

from controller.clients.backup_records import BackupRecords, RestoreRecords
from controller.errors import CodebError, PermanentError
from controller.jobs.backups import (
    RUN_TIMEOUT_SECONDS,
    BackupRunner,
    BackupStore,
    DatabaseAccess,
    RunCut,
    tail,
)
from controller.loop.backups import RestoreRecord
from controller.loop.naming import ProjectKey
from controller.specs.backups import object_key, record_body, restore_command
from schemas.backups import BackupPhase, BackupTrigger, RestoreStatus
from schemas.project import BackupTarget

CHUNK_BYTES = 1024 * 1024
# A restore's heartbeat carries its progress (`codeb restore` shows it): more often than a backup's.
PROGRESS_SECONDS = 2.0


def _now() -> datetime:
    return datetime.now(UTC)


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


class RestoreRunner:
    """Runs claimed Restore records, one task per record."""

    def __init__(self, restores: RestoreRecords, backups: BackupRecords, backup_runner: BackupRunner,
                 timeout: float = RUN_TIMEOUT_SECONDS) -> None:  # fmt: skip
        self._restores, self._backups, self._backup_runner = restores, backups, backup_runner
        self._timeout = timeout
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def running(self, key: ProjectKey, name: str) -> bool:
        return f"{key.namespace}/{name}" in self._tasks

    async def start(self, key: ProjectKey, record: RestoreRecord, version: str, access: DatabaseAccess,
                    store: BackupStore) -> bool:  # fmt: skip
        """Claim a Pending restore and run it outside the pass; False when it is not ours to run."""
        ident = f"{key.namespace}/{record.name}"
        if ident in self._tasks or record.phase is not BackupPhase.Pending:
            return False
        now = _now()
        claim = RestoreStatus(phase=BackupPhase.Running, started_at=now, heartbeat_at=now)
        if not await self._restores.set_status(key.namespace, record.name, claim, version):
            return False
        task = asyncio.create_task(self._run(key, record, now, access, store))
        self._tasks[ident] = task
        task.add_done_callback(lambda _: self._tasks.pop(ident, None))
        return True

    async def fail_stale(self, key: ProjectKey, record: RestoreRecord, version: str) -> bool:
        seen = record.heartbeat_at or record.started_at
        when = f" (last heartbeat {seen:%Y-%m-%dT%H:%M:%SZ})" if seen else ""
        message = (f"cut short: the operator running it stopped{when}; pg_restore runs in one transaction, so "
                   "the database is as it was before")  # fmt: skip
        failed = RestoreStatus(phase=BackupPhase.Failed, started_at=record.started_at, finished_at=_now(),
                               heartbeat_at=record.heartbeat_at, message=message)  # fmt: skip
        return await self._restores.set_status(key.namespace, record.name, failed, version)

    async def _run(self, key: ProjectKey, record: RestoreRecord, started: datetime, access: DatabaseAccess,
                   store: BackupStore) -> None:  # fmt: skip
        cancelled = threading.Event()
        state = RestoreStatus(phase=BackupPhase.Running, started_at=started, heartbeat_at=started)
        beating = asyncio.create_task(self._heartbeat(key, record.name, state, cancelled))
        began = time.monotonic()
        try:
            await self._restore(key, record, access, store, state, cancelled)
            state.phase, state.message = BackupPhase.Succeeded, f"restored backup {record.backup}"
        except (RunCut, CodebError, OSError) as exc:
            state.phase = BackupPhase.Failed
            state.message = (exc.message if isinstance(exc, CodebError) else str(exc) or type(exc).__name__)[:1024]
        finally:
            cancelled.set()
            beating.cancel()
        state.finished_at, state.duration_seconds = _now(), round(time.monotonic() - began, 3)
        with contextlib.suppress(CodebError):
            await self._restores.set_status(key.namespace, record.name, state)

    async def _restore(self, key: ProjectKey, record: RestoreRecord, access: DatabaseAccess, store: BackupStore,
                       state: RestoreStatus, cancelled: threading.Event) -> None:  # fmt: skip
        sha256, stored_key = await self._checked_backup(key, record.backup, store)
        stat: Object = await store.server.call(store.server.s3.stat_object, store.bucket, stored_key)
        state.total_bytes, state.bytes_restored = stat.size, 0
        if record.safety_backup:
            state.safety_backup = await self._safety_backup(key, access, store)

        def progress(done: int) -> None:
            state.bytes_restored = done

        await asyncio.to_thread(stream_restore, access, store, stored_key, sha256, self._timeout, cancelled,
                                progress)  # fmt: skip

    async def _checked_backup(self, key: ProjectKey, name: str, store: BackupStore) -> tuple[str, str]:
        """The backup's checksum and key, once it is known to be a successful database backup of this Project."""
        listed = await self._backups.list(key)
        found = listed.get(name)
        status = await self._backups.read_status(key.namespace, name) if found else None
        if found is None or status is None or found[0].phase is not BackupPhase.Succeeded or not status.sha256 \
                or found[0].target is not BackupTarget.database:  # fmt: skip
            raise PermanentError(f"backup {name} is not a successful database Backup of Project {key.name}; "
                                 "`codeb backups` lists those", reason="BackupNotFound")  # fmt: skip
        stored_key = object_key(key, BackupTarget.database, name)
        stat: Object = await store.server.call(store.server.s3.stat_object, store.bucket, stored_key)
        owner = (stat.metadata or {}).get("x-amz-meta-codeb-project")
        if owner != str(key):
            raise PermanentError(f"the stored backup {name} does not belong to {key}; nothing was restored",
                                 reason="BackupNotOwned")  # fmt: skip
        return status.sha256, stored_key

    async def _safety_backup(self, key: ProjectKey, access: DatabaseAccess, store: BackupStore) -> str:
        """The data as it is, into a Backup of its own (heart-beating like any), before anything is overwritten."""
        name = f"{key.name}-database-safety-{_now():%Y%m%d-%H%M%S}"
        await self._backups.create(record_body(key, name, BackupTarget.database, BackupTrigger.Manual, None))
        (_, version) = (await self._backups.list(key))[name]
        stored_key = object_key(key, BackupTarget.database, name)
        result = await self._backup_runner.run_now(key, name, version, access, store, stored_key)
        if result is None or result.phase is not BackupPhase.Succeeded:
            why = result.message if result is not None else "another run took it over"
            raise PermanentError(f"safety backup {name} failed ({why}); nothing was overwritten",
                                 reason="SafetyBackupFailed")  # fmt: skip
        return name

    async def _heartbeat(self, key: ProjectKey, name: str, state: RestoreStatus, cancelled: threading.Event) -> None:
        """Keep the record fresh and its progress current; a record deleted meanwhile cancels the restore."""
        while not cancelled.is_set():
            await asyncio.sleep(PROGRESS_SECONDS)
            state.heartbeat_at = _now()
            try:
                if not await self._restores.set_status(key.namespace, name, state):
                    cancelled.set()
            except CodebError:
                continue

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
