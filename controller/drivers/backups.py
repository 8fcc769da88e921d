"""Backups of a Project's data: records made on schedule, runs started outside the pass, retention applied.

``observe`` only reads (``codeb diff`` observes too): the store, the Project's Backup
records, and what is due (`controller.loop.backups`). ``apply`` makes it so: the store
bucket, records for due slots, claims and starts of unclaimed records
(`controller.jobs.backups`), cut-short runs recorded Failed, and records past retention
deleted with their backups, the backup first (a crash in between leaves a record whose
backup is gone, deleted again next pass; never a backup nobody lists). Database dumps
are taken as the Project's own role, from its connection Secret.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from minio.error import S3Error

from controller.clients.backup_records import BackupRecords, RestoreRecords
from controller.clients.kube import KubeClient
from controller.clients.pgbackrest import Repository
from controller.clients.postgres import PostgresServer
from controller.clients.s3 import S3Server
from controller.drivers.minio import ensure_operator_bucket
from controller.drivers.postgres import PASSWORD_KEY
from controller.drivers.wal_archive import WalArchiveWatch
from controller.errors import RetryableError
from controller.jobs.backups import BackupRunner, BackupStore, DatabaseAccess, DatabaseDump, Job
from controller.jobs.bucket_copies import BucketAccess, BucketCopy, referenced_blobs
from controller.jobs.cache_copies import CacheAccess, CacheCopy
from controller.jobs.point_in_time import SIDE_ROOT
from controller.jobs.restores import RestoreRunner, Sources
from controller.loop import backups as decide
from controller.loop.backups import Cron, RestoreRecord, RunRecord
from controller.loop.interface import DriverContext
from controller.loop.planner import Component, Observation, State
from controller.loop.secrets import SecretStore
from controller.specs.backups import PROJECTS_PREFIX, blobs_prefix, object_key, record_body, tombstone_key
from schemas.backups import BackupPhase, BackupRunStatus
from schemas.project import Backup, BackupTarget
from schemas.status import WalArchiveStatus

STORE_PURPOSE = "backups"
# The Platform's Redis as its admin: host, port, password.
RedisLogin = tuple[str, int, str | None]
# What has a runner today; the rest is said, not pretended.
RUNNABLE = frozenset({BackupTarget.database, BackupTarget.storage, BackupTarget.redis})


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Runs:
    """The records of runs and their runners: one per operator, shared by every Platform's driver."""

    backups: BackupRecords
    restores: RestoreRecords
    backup_runner: BackupRunner
    restore_runner: RestoreRunner

    # A running record older than this without a heartbeat was cut short.
    stale_after: float = decide.STALE_SECONDS

    @classmethod
    def on(cls, kube: KubeClient, heartbeat: float = decide.HEARTBEAT_SECONDS, concurrency: int = 2,
           side_instances: Path = SIDE_ROOT) -> Runs:  # fmt: skip
        backups, restores = BackupRecords(kube), RestoreRecords(kube)
        backup_runner = BackupRunner(backups, concurrency, heartbeat)
        restore_runner = RestoreRunner(restores, backups, backup_runner, kube.read_project,
                                       side_instances=side_instances)  # fmt: skip
        return cls(backups, restores, backup_runner, restore_runner,
                   heartbeat * decide.STALE_BEATS)  # fmt: skip

    async def stop(self) -> None:
        await self.restore_runner.stop()
        await self.backup_runner.stop()


class BackupDriver:
    component = Component.backup

    def __init__(self, platform: str, store: BackupStore | None, runs: Runs, postgres: PostgresServer | None,
                 secrets: SecretStore, objects: S3Server | None = None, cache: RedisLogin | None = None,
                 clock: Callable[[], datetime] = _now) -> None:  # fmt: skip
        self._platform, self._store = platform, store
        self._objects, self._cache = objects, cache
        self._records, self._runner = runs.backups, runs.backup_runner
        self._restores, self._restore_runner = runs.restores, runs.restore_runner
        self._stale_after = runs.stale_after
        self._postgres, self._secrets = postgres, secrets
        self._clock = clock
        self._archive = (WalArchiveWatch(postgres, Repository(store.server, store.bucket, store.archive))
                         if store is not None and store.archive is not None else None)  # fmt: skip

    async def observe(self, ctx: DriverContext) -> Observation:
        backup = ctx.backup
        if backup is None or not backup.enabled:
            return Observation()
        if self._store is None:
            return Observation(
                error=f"Platform {self._platform} has no backup store: its admin adds spec.backup to the Platform "
                "(or set spec.backup.enabled: false in the Project); the application is served meanwhile",
                error_reason="NoBackupStore",
            )
        store_ready = await self._store_ready()
        records = await self._records.list(ctx.key)
        now = self._clock()
        listed = [record for record, _ in records.values()]
        state = {
            "store": store_ready,
            "due": [d.target.value for d in self._due(ctx, backup, listed, now)],
            "pending": self._startable(ctx, listed),
            "stale": sorted(r.name for r in listed if self._cut_short(ctx, r, now)),
            "expired": [r.name for r in decide.expired(listed, now, backup.retention_days, backup.keep_last)],
            "restores": await self._restores_to_act_on(ctx, now),
        }
        archive, archive_trouble = await self._archiving(backup)
        reason, detail = self._trouble(ctx, backup, listed, archive_trouble)
        outputs = self._outputs(ctx, backup, listed, now, archive)
        return Observation(state=state, outputs=outputs, healthy=reason is None, reason=reason,
                           detail=detail)  # fmt: skip

    async def _archiving(self, backup: Backup) -> tuple[WalArchiveStatus | None, tuple[str, str] | None]:
        """With walArchiving: where the Platform's archive stands, and what keeps it from serving, if anything."""
        if not backup.wal_archiving:
            return None, None
        if self._archive is None:
            return None, ("NoWalArchive", f"Platform {self._platform} archives no WAL: its admin sets "
                          "spec.backup.pointInTime and archiving on its PostgreSQL (docs/backups.md); scheduled "
                          "dumps are still taken")  # fmt: skip
        state = await self._archive.state()
        return state.status, decide.archiving_trouble(state)

    async def _restores_to_act_on(self, ctx: DriverContext, now: datetime) -> list[str]:
        """The restore to start (one at a time), and restores whose operator is gone."""
        restores = {r.name: r for r, _ in (await self._restores.list(ctx.key)).values()}
        waiting = decide.next_restore(restores.values())
        stale = [n for n, r in restores.items() if self._cut_short(ctx, r, now)]
        return sorted({*stale, *([waiting.name] if waiting is not None else [])})

    def _cut_short(self, ctx: DriverContext, record: RunRecord | RestoreRecord, now: datetime) -> bool:
        """Running, with no heartbeat for a while, and not running here: its operator is gone."""
        runner = self._runner if isinstance(record, RunRecord) else self._restore_runner
        return record.stale(now, self._stale_after) and not runner.running(ctx.key, record.name)

    def _startable(self, ctx: DriverContext, listed: list[RunRecord]) -> list[str]:
        """The run to start now, if any (one at a time per Project; the rest wait their turn)."""
        record = decide.next_run(listed)
        return [record.name] if record is not None and not self._runner.running(ctx.key, record.name) else []

    def _due(self, ctx: DriverContext, backup: Backup, listed: list[RunRecord], now: datetime) -> list[decide.Due]:
        due = []
        for target in decide.targets(backup, ctx.allocations):
            if target in RUNNABLE:
                run = decide.due_run(Cron.parse(backup.schedule_of(target)), ctx.key.uid, target, listed, now)
                due += [run] if run is not None else []
        return due

    def _outputs(self, ctx: DriverContext, backup: Backup, listed: list[RunRecord], now: datetime,
                 archive: WalArchiveStatus | None) -> State:  # fmt: skip
        starts = [decide.next_start(Cron.parse(backup.schedule_of(t)), ctx.key.uid, now)
                  for t in decide.targets(backup, ctx.allocations) if t in RUNNABLE]  # fmt: skip
        upcoming = min((s for s in starts if s is not None), default=None)
        summary = decide.summary(listed, upcoming, archive)
        wake = max(1.0, (upcoming - now).total_seconds()) if upcoming is not None else None
        return {"summary": summary.model_dump(mode="json", by_alias=True, exclude_none=True), "wakeAfter": wake}

    @staticmethod
    def _trouble(ctx: DriverContext, backup: Backup, listed: list[RunRecord],
                 archive_trouble: tuple[str, str] | None) -> tuple[str | None, str | None]:  # fmt: skip
        """Why backups are not healthy, as (reason, detail); (None, None) when they are."""
        missing = [t.value for t in decide.targets(backup, ctx.allocations) if t not in RUNNABLE]
        if missing:
            return "NotImplemented", f"backups of {', '.join(missing)} are not built yet; the rest are taken"
        if archive_trouble is not None:
            return archive_trouble
        failure = decide.last_failure(listed)
        if failure is not None:
            return "LastBackupFailed", f"backup {failure.name} failed: {failure.message or 'no reason recorded'}"
        return None, None

    async def _store_ready(self) -> bool:
        assert self._store is not None
        server = self._store.server
        return await server.call(server.s3.bucket_exists, self._store.bucket)

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        backup = ctx.backup
        if backup is None or self._store is None:
            return
        await ensure_operator_bucket(self._store.server, self._store.bucket, STORE_PURPOSE)
        now = self._clock()
        records = await self._records.list(ctx.key)
        listed = [record for record, _ in records.values()]
        for record, version in records.values():
            if self._cut_short(ctx, record, now):
                await self._runner.fail_stale(ctx.key, record, version)
        for due in self._due(ctx, backup, listed, now):
            name = decide.record_name(ctx.key.name, due.target, due.slot, due.trigger, now)
            await self._records.create(record_body(ctx.key, name, due.target, due.trigger, due.slot))
        await self._prune(ctx, listed, decide.expired(listed, now, backup.retention_days, backup.keep_last))
        await self._start_pending(ctx)
        await self._start_restore(ctx, now)

    async def _start_restore(self, ctx: DriverContext, now: datetime) -> None:
        assert self._store is not None
        restores = await self._restores.list(ctx.key)
        for record, version in restores.values():
            if self._cut_short(ctx, record, now):
                await self._restore_runner.fail_stale(ctx.key, record, version)
        waiting = decide.next_restore(r for r, _ in restores.values())
        if waiting is not None:
            sources = await self._sources(ctx)
            await self._restore_runner.start(ctx.key, waiting, restores[waiting.name][1], sources, self._store)

    async def _start_pending(self, ctx: DriverContext) -> None:
        records = await self._records.list(ctx.key)
        record = decide.next_run(r for r, _ in records.values())
        if record is None or self._runner.running(ctx.key, record.name):
            return
        job = self._job(ctx, record, await self._sources(ctx))
        version = records[record.name][1]
        if job is not None:
            await self._runner.start(ctx.key, record, version, job)
            return
        # A Backup of something this Project does not have (made by hand): failed, so it blocks no queue.
        why = f"Project {ctx.key.name} has no {record.target.value} to back up"
        nothing = BackupRunStatus(phase=BackupPhase.Failed, finished_at=self._clock(), message=why)
        await self._records.set_status(ctx.key.namespace, record.name, nothing, version)

    def _job(self, ctx: DriverContext, record: RunRecord, sources: Sources) -> Job | None:
        assert self._store is not None
        key = object_key(ctx.key, record.target, record.name)
        if record.target is BackupTarget.database and sources.database is not None:
            return DatabaseDump(ctx.key, record.name, sources.database, self._store, key)
        if record.target is BackupTarget.storage and sources.bucket is not None:
            return BucketCopy(ctx.key, record.name, sources.bucket, self._store, key)
        if record.target is BackupTarget.redis and sources.cache is not None:
            return CacheCopy(ctx.key, record.name, sources.cache, self._store, key)
        return None

    async def _sources(self, ctx: DriverContext) -> Sources:
        """The Project's data as runs reach it: its database as its own role, its bucket."""
        database, role, bucket = ctx.allocations.database, ctx.allocations.database_role, ctx.allocations.bucket
        access = None
        if self._postgres is not None and database is not None and role is not None:
            password = (await self._secrets.read(ctx) or {}).get(PASSWORD_KEY)
            if not password:
                raise RetryableError("the Project's connection Secret has no database password yet; the dump waits",
                                     reason="BackupLoginMissing")  # fmt: skip
            access = DatabaseAccess(self._postgres, role, password, database)
        objects = BucketAccess(self._objects, bucket) if self._objects is not None and bucket else None
        prefix = ctx.allocations.redis_prefix
        cache = CacheAccess(*self._cache, prefix) if self._cache is not None and prefix else None
        return Sources(access, objects, cache)

    async def _prune(self, ctx: DriverContext, listed: list[RunRecord], expired: list[RunRecord]) -> None:
        assert self._store is not None
        server = self._store.server
        for record in expired:
            await server.call(server.s3.remove_object, self._store.bucket, object_key(ctx.key, record.target,
                                                                                       record.name))  # fmt: skip
            await self._records.delete(ctx.key.namespace, record.name)
        if any(r.target is BackupTarget.storage for r in expired):
            await self._collect_blobs(ctx, [r for r in listed if r not in expired])

    async def _collect_blobs(self, ctx: DriverContext, kept: list[RunRecord]) -> None:
        """Blobs no kept manifest names go, once no bucket backup is under way (its manifest is not written yet)."""
        storage = [r for r in kept if r.target is BackupTarget.storage]
        if any(not r.finished for r in storage):
            return  # the next prune collects them
        assert self._store is not None
        store, server = self._store, self._store.server
        manifests = [object_key(ctx.key, BackupTarget.storage, r.name) for r in storage
                     if r.phase is BackupPhase.Succeeded]  # fmt: skip
        wanted = await asyncio.to_thread(referenced_blobs, store, manifests)
        blobs = await server.call(lambda: [o.object_name for o in server.s3.list_objects(
            store.bucket, prefix=blobs_prefix(ctx.key), recursive=True)])  # fmt: skip
        for blob in blobs:
            if blob not in wanted:
                await server.call(server.s3.remove_object, store.bucket, blob)

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        """Backups outlive the Project (its records go with it): a tombstone says when it went and how long its
        backups stay; `sweep` removes them after its retention (never with Retain, or when retention is unknown).
        Written before the database's final dump, which lands beside it."""
        if self._store is None:
            return
        days = ctx.backup.retention_days if ctx.backup is not None else None
        keep = retain or days is None
        body = json.dumps({"deletedAt": self._clock().isoformat(), "retain": keep, "retentionDays": days}).encode()
        server = self._store.server
        await ensure_operator_bucket(server, self._store.bucket, STORE_PURPOSE)
        await server.call(server.s3.put_object, self._store.bucket, tombstone_key(ctx.key), io.BytesIO(body),
                          len(body), content_type="application/json")  # fmt: skip

    async def sweep(self) -> int:
        """Remove the backups of deleted Projects whose retention has passed; how many objects went."""
        if self._store is None:
            return 0
        store, server, now = self._store, self._store.server, self._clock()
        removed = 0
        for instance in await server.call(_instances, store):
            tombstone = await server.call(_read_tombstone, store, instance + "deleted.json")
            if tombstone is None or tombstone.get("retain") or tombstone.get("retentionDays") is None:
                continue
            gone_at = datetime.fromisoformat(str(tombstone["deletedAt"]))
            if now < gone_at + timedelta(days=int(tombstone["retentionDays"])):
                continue
            names = await server.call(lambda p=instance: [str(o.object_name) for o in server.s3.list_objects(
                store.bucket, prefix=p, recursive=True)])  # fmt: skip
            # The tombstone last: a sweep cut short finds the rest again next time.
            for name in sorted(names, key=lambda n: n.endswith("deleted.json")):
                await server.call(server.s3.remove_object, store.bucket, name)
                removed += 1
        return removed


def _instances(store: BackupStore) -> list[str]:
    """Every Project object's prefix in the store (projects/<namespace>/<name>/<uid>/), listed level by level:
    one request per namespace and name, not one per backup."""
    level = [PROJECTS_PREFIX]
    for _ in range(3):
        listed = [store.server.s3.list_objects(store.bucket, prefix) for prefix in level]
        level = [str(o.object_name) for objects in listed for o in objects if o.is_dir]
    return level


def _read_tombstone(store: BackupStore, key: str) -> dict[str, Any] | None:
    try:
        response = store.server.s3.get_object(store.bucket, key)
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            return None
        raise
    try:
        found = json.loads(response.read())
    except ValueError:
        return None  # not ours to read: kept
    finally:
        response.close()
        response.release_conn()
    return found if isinstance(found, dict) else None
