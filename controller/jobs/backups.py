"""Backup runs: long work outside the reconcile pass, recorded before it starts, never run twice at once.

A run is a Backup object first (`controller.clients.backup_records`). `BackupRunner.start`
claims it (Pending → Running at the resourceVersion it read, so a second claimer loses),
then streams ``pg_dump`` into the store in a worker thread while a heartbeat keeps the
record fresh. Nothing lands on local disk, and only a completed upload counts: a dump
that exits non-zero, runs past its deadline or is cut short raises inside the upload,
which aborts it, so no object exists for a run that did not finish. A run whose
operator died (kill -9) stops heart-beating; the next pass finds it stale and records
it Failed (`fail_stale`), and MinIO discards the abandoned multipart upload itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import IO, Any, BinaryIO, Protocol, cast

import urllib3
from minio.error import S3Error
from redis.exceptions import RedisError

from controller.clients.backup_records import BackupRecords
from controller.clients.postgres import CONNECT_TIMEOUT_SECONDS, PostgresServer
from controller.clients.s3 import S3Server
from controller.errors import CodebError, PermanentError
from controller.loop.backups import HEARTBEAT_SECONDS, RunRecord
from controller.loop.naming import ProjectKey
from controller.specs.backups import dump_command
from schemas.backups import BackupPhase, BackupRunStatus
from schemas.platform import PointInTimeArchive

RUN_TIMEOUT_SECONDS = 6 * 3600.0
CONCURRENCY = 2
# Parts of a streamed upload: memory per run is about one part.
PART_BYTES = 16 * 1024 * 1024
# How long pg_dump waits for a lock a tenant's session holds before it gives up.
LOCK_WAIT = "60s"
_STDERR_SHOWN = 800


@dataclass(frozen=True)
class BackupStore:
    """The operator's own bucket for backups, and the root credentials that alone reach it."""

    server: S3Server
    bucket: str
    # Where the Platform's PostgreSQL archives WAL with pgBackRest, in this store; None: no point-in-time recovery.
    archive: PointInTimeArchive | None = None

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


@dataclass(frozen=True)
class DatabaseAccess:
    """One Project's database, reached as the Project's own role (never as the Platform's superuser)."""

    server: PostgresServer
    user: str
    password: str
    database: str

    def environment(self) -> dict[str, str]:
        """What pg_dump and pg_restore run with: the password here, never in argv (seen in ps), and not the
        operator's own environment (its credentials, a PGSERVICEFILE)."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PGPASSWORD": self.password,
            "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_SECONDS), "PGOPTIONS": f"-c lock_timeout={LOCK_WAIT}",
        }  # fmt: skip


# User metadata on the stored object (x-amz-meta-*), as the S3 client takes it.
Metadata = dict[str, str | list[str] | tuple[str]]


@dataclass(frozen=True)
class Stored:
    """What a run put in the store: its size and checksum, and a few words on it."""

    size: int
    sha256: str
    message: str | None = None
    server_version: str | None = None


class RunCut(Exception):
    """The dump did not finish: it failed, ran out of time or was cancelled. Raised inside the upload."""


class _DumpStream(io.RawIOBase):
    """pg_dump's output as the upload reads it, hashed and counted; its end is checked, not assumed."""

    def __init__(self, proc: subprocess.Popen[bytes], cancelled: threading.Event) -> None:
        self._proc, self._cancelled = proc, cancelled
        self.size, self._hash = 0, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        assert self._proc.stdout is not None
        chunk = self._proc.stdout.read(size if size > 0 else PART_BYTES)
        if self._cancelled.is_set():
            raise RunCut("cancelled")
        if chunk:
            self.size += len(chunk)
            self._hash.update(chunk)
            return chunk
        code = self._proc.wait()
        if code != 0:
            raise RunCut(f"pg_dump exited {code}")
        return b""

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def stream_dump(source: DatabaseAccess, store: BackupStore, key: str, metadata: Metadata, timeout: float,
                cancelled: threading.Event) -> Stored:  # fmt: skip
    """Blocking: pg_dump straight into the store; what it wrote, or RunCut (and no object)."""
    command = dump_command(source.server.host, source.server.port, source.user, source.database)
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=source.environment())
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        ended = threading.Event()
        threading.Thread(target=_kill_when, args=(cancelled, ended, proc), daemon=True).start()
        stream = _DumpStream(proc, cancelled)
        try:
            # put_object aborts its multipart upload when a read raises: a cut run leaves no object.
            store.server.s3.put_object(store.bucket, key, cast(BinaryIO, stream), length=-1, part_size=PART_BYTES,
                                       metadata=dict(metadata))  # fmt: skip
        except RunCut as exc:
            raise RunCut(f"{exc}{tail(errors)}") from None
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            ended.set()
        return Stored(stream.size, stream.sha256)


def _kill_when(cancelled: threading.Event, ended: threading.Event, proc: subprocess.Popen[bytes]) -> None:
    """Kill the dump once the run is cancelled: a pg_dump waiting for a lock reads nothing, so no read sees it."""
    while not ended.wait(0.2):
        if cancelled.is_set():
            proc.kill()
            return


def tail(errors: IO[bytes]) -> str:
    errors.seek(0)
    text = errors.read()[-_STDERR_SHOWN:].decode(errors="replace").strip()
    return f": {text}" if text else ""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Heartbeat:
    """A run's sign of life on its record, every ``every`` seconds, until stopped.

    Stopping waits for a beat in flight: a beat cancelled mid-request could still land after the run's last
    status and make a finished run look Running (then stale, then Failed). A record gone (deleted while it
    ran) cancels the run; an API server away skips a beat and the run goes on.
    """

    def __init__(self, every: float, beat: Callable[[], Awaitable[bool]], cancelled: threading.Event) -> None:
        self._every, self._beat, self._cancelled = every, beat, cancelled
        self._stopped = asyncio.Event()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self._every)
                return
            try:
                if not await self._beat():
                    self._cancelled.set()
            except CodebError:
                continue

    async def stop(self) -> None:
        self._stopped.set()
        await self._task


# Called with the Project's key once a run has finished (the operator wakes the Project to report it).
Finished = Callable[[ProjectKey], None]


class BackupRunner:
    """Runs claimed records, at most ``concurrency`` at once; one task per record, never two."""

    def __init__(self, records: BackupRecords, concurrency: int = CONCURRENCY,
                 heartbeat: float = HEARTBEAT_SECONDS) -> None:  # fmt: skip
        self._records = records
        self._heartbeat_seconds = heartbeat
        self._concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None
        self._tasks: dict[str, asyncio.Task[BackupRunStatus]] = {}
        self.finished: Finished = lambda key: None

    def running(self, key: ProjectKey, name: str) -> bool:
        return f"{key.namespace}/{name}" in self._tasks

    async def start(self, key: ProjectKey, record: RunRecord, version: str, job: Job) -> bool:
        """Claim a Pending record and run ``job`` outside the pass; False when it is not ours to run."""
        started = await self._claim(key, record.name, record.phase, version)
        if started is None:
            return False
        self._track(key, record.name, asyncio.create_task(self._run(key, record.name, started, job)))
        return True

    async def run_now(self, key: ProjectKey, name: str, version: str, job: Job) -> BackupRunStatus | None:
        """Claim a Pending record and run ``job`` to its end (a restore's safety backup); None when not ours."""
        started = await self._claim(key, name, BackupPhase.Pending, version)
        if started is None:
            return None
        task = asyncio.create_task(self._run(key, name, started, job))
        self._track(key, name, task)
        return await task

    async def _claim(self, key: ProjectKey, name: str, phase: BackupPhase, version: str) -> datetime | None:
        if self.running(key, name) or phase is not BackupPhase.Pending:
            return None
        now = utcnow()
        claim = BackupRunStatus(phase=BackupPhase.Running, started_at=now, heartbeat_at=now)
        if not await self._records.set_status(key.namespace, name, claim, version):
            return None  # another claimer (or a change) came first
        return now

    def _track(self, key: ProjectKey, name: str, task: asyncio.Task[BackupRunStatus]) -> None:
        ident = f"{key.namespace}/{name}"
        self._tasks[ident] = task
        task.add_done_callback(lambda _: self._tasks.pop(ident, None))

    async def fail_stale(self, key: ProjectKey, record: RunRecord, version: str) -> bool:
        """Record a run whose operator stopped heart-beating as Failed (never as anything else)."""
        seen = record.heartbeat_at or record.started_at
        message = (f"cut short: the operator running it stopped (last heartbeat {seen:%Y-%m-%dT%H:%M:%SZ}); "
                   "nothing it wrote was kept") if seen else "cut short before it started"  # fmt: skip
        failed = BackupRunStatus(phase=BackupPhase.Failed, started_at=record.started_at, finished_at=utcnow(),
                                 heartbeat_at=record.heartbeat_at, message=message)  # fmt: skip
        return await self._records.set_status(key.namespace, record.name, failed, version)

    async def _run(self, key: ProjectKey, name: str, started: datetime, job: Job) -> BackupRunStatus:
        cancelled = threading.Event()

        async def beat() -> bool:
            alive = BackupRunStatus(phase=BackupPhase.Running, started_at=started, heartbeat_at=utcnow())
            return await self._records.set_status(key.namespace, name, alive)

        heart = Heartbeat(self._heartbeat_seconds, beat, cancelled)
        try:
            async with self._slot():
                result = await job(started, cancelled)
        finally:
            cancelled.set()
            await heart.stop()
        with contextlib.suppress(CodebError):
            await self._records.set_status(key.namespace, name, result)
        self.finished(key)
        return result

    def _slot(self) -> asyncio.Semaphore:
        if self._slots is None:  # made inside the running loop
            self._slots = asyncio.Semaphore(self._concurrency)
        return self._slots

    async def stop(self) -> None:
        """Cancel every run (tests, shutdown): each is cut, so none is recorded as a success."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Job(Protocol):
    """One backup run's work, as the status that records its end (Succeeded only when all of it was stored)."""

    async def __call__(self, started: datetime, cancelled: threading.Event) -> BackupRunStatus: ...


# What ends a run as Failed (anything else is a bug, and the run goes stale, then Failed).
RUN_ERRORS = (RunCut, CodebError, OSError, S3Error, urllib3.exceptions.HTTPError, RedisError)


def failed(started: datetime, began: float, exc: BaseException) -> BackupRunStatus:
    """The Failed status of a run, saying why in words that quote nothing a server sent back."""
    if isinstance(exc, S3Error):
        why = f"the backup store refused a request ({exc.code})"
    elif isinstance(exc, urllib3.exceptions.HTTPError):
        why = "the backup store or the bucket's server is unreachable"
    elif isinstance(exc, RedisError):
        why = "Redis refused or dropped a command"  # its replies can echo what was sent
    else:
        why = exc.message if isinstance(exc, CodebError) else str(exc) or type(exc).__name__
    return BackupRunStatus(phase=BackupPhase.Failed, started_at=started, finished_at=utcnow(),
                           duration_seconds=round(time.monotonic() - began, 3), message=why[:1024])  # fmt: skip


@dataclass(frozen=True)
class DatabaseDump:
    """A database backup: pg_dump into the store."""

    key: ProjectKey
    name: str
    source: DatabaseAccess
    store: BackupStore
    object_key: str
    timeout: float = RUN_TIMEOUT_SECONDS

    async def __call__(self, started: datetime, cancelled: threading.Event) -> BackupRunStatus:
        try:
            version = await _server_version(self.source)
        except RUN_ERRORS as exc:
            return failed(started, time.monotonic(), exc)
        metadata = owner_metadata(self.key, self.name)

        def dump() -> Stored:
            stored = stream_dump(self.source, self.store, self.object_key, metadata, self.timeout, cancelled)
            return replace(stored, server_version=version)

        return await stored_run(started, cancelled, self.store, self.object_key, dump)


def owner_metadata(key: ProjectKey, name: str) -> Metadata:
    """What every stored backup says of itself: whose it is (checked again before any restore)."""
    return {"codeb-project": str(key), "codeb-project-uid": key.uid, "codeb-backup": name}


async def stored_run(started: datetime, cancelled: threading.Event, store: BackupStore, object_key: str,
                     work: Callable[[], Stored]) -> BackupRunStatus:  # fmt: skip
    """Run a target's blocking ``work`` in a thread, as the status that records its end."""
    began = time.monotonic()
    try:
        stored = await asyncio.to_thread(work)
    except RUN_ERRORS as exc:
        return failed(started, began, exc)
    except asyncio.CancelledError:
        cancelled.set()  # the thread's work stops at its next check (pg_dump is killed), so nothing is kept
        raise
    return BackupRunStatus(
        phase=BackupPhase.Succeeded, started_at=started, finished_at=utcnow(), heartbeat_at=utcnow(),
        duration_seconds=round(time.monotonic() - began, 3), size_bytes=stored.size, sha256=stored.sha256,
        server_version=stored.server_version, location=store.location(object_key), message=stored.message,
    )  # fmt: skip


async def _server_version(source: DatabaseAccess) -> str:
    async with source.server.as_user(source.database, source.user, source.password) as conn:
        if conn is None:
            raise PermanentError(f"the Project's role cannot log in to {source.database}; the dump needs its login",
                                 reason="BackupLoginFailed")  # fmt: skip
        row: Any = await (await conn.execute("SELECT pg_catalog.current_setting('server_version')")).fetchone()
        return str(row[0]) if row else ""
