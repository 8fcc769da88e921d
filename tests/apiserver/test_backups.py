"""Backups on real parts: Backup records on the API server, pg_dump from a real PostgreSQL streamed into MinIO.

The world a crash leaves is built for real: a dump process killed with SIGKILL in the
middle of its upload, and a record still Running with its operator gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from minio import Minio
from minio.error import S3Error

from controller.clients.kube import KubeClient
from controller.clients.s3 import S3Server
from controller.drivers.backups import BackupDriver, Runs
from controller.drivers.minio import SECRET_KEY, MinioDriver, access_key
from controller.drivers.postgres import PASSWORD_KEY, PostgresDriver
from controller.jobs.backups import BackupRunner, BackupStore, DatabaseDump
from controller.jobs.bucket_copies import read_manifest
from controller.loop.backups import RunRecord
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import BACKUP_CONVERGED, Component, desired_state
from controller.loop.secrets import MemorySecrets
from controller.specs import backups as specs
from controller.specs.backups import blobs_prefix, object_key, project_prefix, record_body, restore_command
from schemas.backups import BackupPhase, BackupRunStatus, BackupTrigger, RestoreStatus
from schemas.project import BackupTarget
from tests.drivers_common import context
from tests.factories import project
from tests.servers import MinioServer, PostgresServer, RedisServer, start_minio, start_postgres, start_redis

DB = BackupTarget.database


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[PostgresServer, MinioServer, RedisServer]]:
    pg, s3, rd = start_postgres(), start_minio(), start_redis()
    yield pg, s3, rd
    rd.stop()
    s3.stop()
    pg.stop()


def root(s3: MinioServer) -> Minio:
    return Minio(s3.endpoint, access_key=s3.root_user, secret_key=s3.root_password, secure=False)


class World:
    """One Project with a real database, and the backup driver of its Platform."""

    def __init__(self, kube: KubeClient, namespace: str, pg: PostgresServer, s3: MinioServer, rd: RedisServer,
                 slug: str, uid: str | None = None) -> None:  # fmt: skip
        self.pg, self.s3, self.rd = pg, s3, rd
        self.secrets = MemorySecrets()
        base, self.spec = context(slug, features={"database": {"version": "15"}, "storage": {}, "redis": {}})
        self.key = ProjectKey(namespace, slug, uid or base.key.uid)
        self.ctx = replace(base, key=self.key, backup=self.spec.backup)
        self.where = (namespace, str(self.ctx.allocations.connection_secret))
        self.database = PostgresDriver(pg.host, pg.port, pg.admin_user, pg.admin_password, self.secrets)
        self.runs = Runs.on(kube)
        self.records, self.runner = self.runs.backups, self.runs.backup_runner
        # A store of its own per test: the MinIO is shared by the module.
        self.bucket = f"codeb-{slug}"
        self.store = BackupStore(S3Server(s3.endpoint, s3.root_user, s3.root_password), self.bucket)
        self.minio = MinioDriver(s3.endpoint, s3.root_user, s3.root_password, self.secrets)
        self.driver = BackupDriver("shared", self.store, self.runs, self.database.server, self.secrets,
                                   self.minio.server, (rd.host, rd.port, rd.password))  # fmt: skip

    async def create_database(self, rows: int = 2) -> None:
        await self.database.apply(self.ctx, desired_state(self.spec, self.ctx.allocations)[Component.database])
        with self.tenant() as conn:
            conn.execute("CREATE TABLE orders (id int primary key, note text)")
            conn.execute("INSERT INTO orders SELECT i, md5(i::text) FROM generate_series(1, %s) i", (rows,))

    def password(self) -> str:
        return self.secrets.data[self.where][PASSWORD_KEY]

    def set_password(self, password: str) -> None:
        self.secrets.data[self.where][PASSWORD_KEY] = password

    def tenant(self) -> psycopg.Connection[Any]:
        password = self.password()
        conn = psycopg.connect(host=self.pg.host, port=self.pg.port, user=self.ctx.allocations.database_role,
                               password=password, dbname=self.ctx.allocations.database, connect_timeout=5)  # fmt: skip
        conn.autocommit = True
        return conn

    def rows(self) -> int:
        with self.tenant() as conn:
            row = conn.execute("SELECT count(*) FROM orders").fetchone()
            return int(row[0]) if row else -1

    async def records_now(self) -> dict[str, RunRecord]:
        return {name: record for name, (record, _) in (await self.records.list(self.key)).items()}

    async def settled(self, ctx: DriverContext | None = None, within: float = 60) -> dict[str, RunRecord]:
        """The records once no run is Pending or Running: the runner works outside the pass, one run at a time
        per Project, and (as the operator does when a run finishes) a pass starts the next one."""
        deadline = time.monotonic() + within
        while True:
            records = await self.records_now()
            if all(r.finished for r in records.values()):
                return records
            if not any(r.phase is BackupPhase.Running for r in records.values()):
                await self.driver.apply(ctx or self.ctx, BACKUP_CONVERGED)
            assert time.monotonic() < deadline, f"runs not finished after {within} s: {records}"
            await asyncio.sleep(0.2)

    def stored(self, record: str) -> bytes:
        return self.stored_as(DB, record)

    def stored_as(self, target: BackupTarget, record: str) -> bytes:
        response = root(self.s3).get_object(self.bucket, object_key(self.key, target, record))
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()


# A slug of its own per test: roles and databases stay on the module's PostgreSQL, and a role
# already held by another Project is refused (as it must be).
SLUGS = itertools.count()


@pytest.fixture()
async def world(kube: KubeClient, namespace: str,
                services: tuple[PostgresServer, MinioServer, RedisServer]) -> AsyncIterator[World]:  # fmt: skip
    pg, s3, rd = services
    made = World(kube, namespace, pg, s3, rd, f"bk{next(SLUGS)}")
    yield made
    await made.runs.stop()


def absent(world: World, key: str) -> bool:
    try:
        root(world.s3).stat_object(world.bucket, key)
    except S3Error as exc:
        return exc.code == "NoSuchKey"
    return False


async def test_first_backup_is_streamed_recorded_and_restores(world: World) -> None:
    await world.create_database(rows=2)
    seen = await world.driver.observe(world.ctx)
    assert seen.state is not None and seen.state["due"] == ["database"] and seen.state["store"] is False
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    (record,) = (await world.settled()).values()
    assert record.phase is BackupPhase.Succeeded and record.trigger is BackupTrigger.Initial, record.message
    status = await world.records.read_status(world.key.namespace, record.name)
    assert status is not None and status.server_version and status.duration_seconds is not None
    body = world.stored(record.name)
    assert body.startswith(b"PGDMP") and status.size_bytes == len(body)
    assert status.sha256 == hashlib.sha256(body).hexdigest()
    assert (
        status.location
        == f"s3://{world.bucket}/projects/{world.key.namespace}/{world.key.name}/{world.key.uid}/database/{record.name}.dump"
    )

    after = await world.driver.observe(world.ctx)
    assert after.state == BACKUP_CONVERGED and after.healthy
    assert after.outputs["summary"]["lastSuccessful"] == record.name and after.outputs["wakeAfter"] > 0

    # The dump is a backup only if it restores: drop the rows, restore as the Project's own role.
    with world.tenant() as conn:
        conn.execute("DROP TABLE orders")
    a = world.ctx.allocations
    assert a.database is not None and a.database_role is not None
    restore = restore_command(world.pg.host, world.pg.port, a.database_role, a.database)
    password = world.password()
    done = subprocess.run(restore, input=body, capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PGPASSWORD": password})  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert world.rows() == 2


async def test_a_failed_dump_is_failed_with_no_backup_and_the_next_one_succeeds(world: World) -> None:
    await world.create_database()
    good = world.password()
    world.set_password("not-the-password")
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    (failed,) = (await world.settled()).values()
    assert failed.phase is BackupPhase.Failed and failed.message
    assert "not-the-password" not in failed.message
    assert absent(world, object_key(world.key, DB, failed.name))
    seen = await world.driver.observe(world.ctx)
    assert not seen.healthy and seen.reason == "LastBackupFailed" and failed.name in (seen.detail or "")

    world.set_password(good)
    await world.records.create(record_body(world.key, "manual-1", DB, BackupTrigger.Manual, None))
    assert (await world.driver.observe(world.ctx)).state["pending"] == ["manual-1"]  # type: ignore[index]
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    records = await world.settled()
    assert records["manual-1"].phase is BackupPhase.Succeeded
    assert (await world.driver.observe(world.ctx)).healthy  # a success after the failure clears it


KILLED_MID_UPLOAD = textwrap.dedent(
    """
    import sys, threading, time
    from controller.clients.postgres import PostgresServer
    from controller.clients.s3 import S3Server
    from controller.jobs import backups

    host, port, user, password, database, endpoint, s3_user, s3_password, bucket, key = sys.argv[1:]
    backups.PART_BYTES = 5 * 1024 * 1024  # S3's smallest part: the first is uploaded before the pause
    read = backups._DumpStream.read

    def slow(self, size=-1):
        chunk = read(self, size)
        if self.size > backups.PART_BYTES + 1024 * 1024:
            print("first part uploaded", flush=True)
            time.sleep(600)  # killed here, mid-upload
        return chunk

    backups._DumpStream.read = slow
    source = backups.DatabaseAccess(PostgresServer(host, int(port), user, password), user, password, database)
    store = backups.BackupStore(S3Server(endpoint, s3_user, s3_password), bucket)
    backups.stream_dump(source, store, key, {}, 600, threading.Event())
    """
)


async def test_a_run_killed_mid_upload_leaves_no_backup_and_is_recorded_failed(world: World, tmp_path: Path) -> None:
    await world.create_database(rows=60_000)
    with world.tenant() as conn:  # about 16 MB of dump that does not compress away
        conn.execute("ALTER TABLE orders ADD COLUMN filler text")
        conn.execute("UPDATE orders SET filler = md5(random()::text) || md5(random()::text) || md5(random()::text)"
                     " || md5(random()::text) || md5(random()::text) || md5(random()::text)")  # fmt: skip
    root(world.s3).make_bucket(world.bucket)
    now = datetime.now(UTC)
    await world.records.create(record_body(world.key, "cut", DB, BackupTrigger.Manual, None))
    (_, version) = (await world.records.list(world.key))["cut"]
    running = BackupRunStatus(phase=BackupPhase.Running, started_at=now, heartbeat_at=now)
    assert await world.records.set_status(world.key.namespace, "cut", running, version)
    a, key = world.ctx.allocations, object_key(world.key, DB, "cut")
    script = tmp_path / "killed.py"
    script.write_text(KILLED_MID_UPLOAD)
    args = [world.pg.host, str(world.pg.port), str(a.database_role), world.password(), str(a.database),
            world.s3.endpoint, world.s3.root_user, world.s3.root_password, world.bucket, key]  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.strip() == b"first part uploaded"
        proc.kill()  # kill -9, mid-upload
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert absent(world, key), "a cut upload must leave no object"

    # The record still says Running, and nobody beats its heart: once stale, it is recorded Failed.
    later = now + timedelta(minutes=5)
    world.driver._clock = lambda: later  # type: ignore[method-assign]
    seen = await world.driver.observe(world.ctx)
    assert seen.state is not None and seen.state["stale"] == ["cut"]
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    records = await world.records_now()
    assert records["cut"].phase is BackupPhase.Failed and "cut short" in (records["cut"].message or "")
    assert not any(r.phase is BackupPhase.Succeeded for r in records.values() if r.name == "cut")


KILLED_MID_RESTORE = textwrap.dedent(
    """
    import sys, threading, time
    from controller.clients.postgres import PostgresServer
    from controller.clients.s3 import S3Server
    from controller.jobs import backups, restores

    host, port, user, password, database, endpoint, s3_user, s3_password, bucket, key, sha256 = sys.argv[1:]
    feed = restores._feed

    def slow(proc, chunks, digest, cancelled, progress):
        def paused():
            total = 0
            for chunk in chunks:
                total += len(chunk)
                yield chunk
                if total > 6 * 1024 * 1024:
                    print("half restored", flush=True)
                    time.sleep(600)  # killed here, with pg_restore half fed
        return feed(proc, paused(), digest, cancelled, progress)

    restores._feed = slow
    access = backups.DatabaseAccess(PostgresServer(host, int(port), user, password), user, password, database)
    store = backups.BackupStore(S3Server(endpoint, s3_user, s3_password), bucket)
    restores.stream_restore(access, store, key, sha256, 600, threading.Event(), lambda done: None)
    """
)


async def test_a_restore_killed_midway_changes_nothing_and_is_recorded_failed(world: World, tmp_path: Path) -> None:
    await world.create_database(rows=60_000)
    with world.tenant() as conn:
        conn.execute("ALTER TABLE orders ADD COLUMN filler text")
        conn.execute("UPDATE orders SET filler = md5(random()::text) || md5(random()::text) || md5(random()::text)"
                     " || md5(random()::text) || md5(random()::text) || md5(random()::text)")  # fmt: skip
    backup = await backed_up(world)
    with world.tenant() as conn:
        conn.execute("INSERT INTO orders (id, note) VALUES (-1, 'after the backup')")
    status = await world.records.read_status(world.key.namespace, backup)
    assert status is not None and status.sha256
    now = datetime.now(UTC)
    await world.runs.restores.create(restore_body(world, "cut-restore", backup, safety=False))
    (_, version) = (await world.runs.restores.list(world.key))["cut-restore"]
    running = RestoreStatus(phase=BackupPhase.Running, started_at=now, heartbeat_at=now)
    assert await world.runs.restores.set_status(world.key.namespace, "cut-restore", running, version)
    a = world.ctx.allocations
    script = tmp_path / "killed_restore.py"
    script.write_text(KILLED_MID_RESTORE)
    args = [world.pg.host, str(world.pg.port), str(a.database_role), world.password(), str(a.database),
            world.s3.endpoint, world.s3.root_user, world.s3.root_password, world.bucket,
            object_key(world.key, DB, backup), status.sha256]  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.strip() == b"half restored"
        proc.kill()  # kill -9 of the restoring process: pg_restore reads an end of input mid-archive
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restoring() -> bool:
        with admin_connection(world.pg) as conn:
            row = conn.execute("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = %s AND "
                               "application_name = 'pg_restore'", (a.database,)).fetchone()  # fmt: skip
            return bool(row and row[0])

    deadline = time.monotonic() + 30
    while restoring():
        assert time.monotonic() < deadline, "pg_restore still connected 30 s after its feeder was killed"
        await asyncio.sleep(0.2)
    with world.tenant() as conn:  # one transaction, never committed: the rows are as they were
        assert conn.execute("SELECT note FROM orders WHERE id = -1").fetchone() == ("after the backup",)
    assert world.rows() == 60_001

    later = now + timedelta(minutes=5)
    world.driver._clock = lambda: later  # type: ignore[method-assign]
    assert (await world.driver.observe(world.ctx)).state["restores"] == ["cut-restore"]  # type: ignore[index]
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    cut = RestoreStatus.model_validate((await world.runs.restores.read(world.key.namespace, "cut-restore") or {})
                                       .get("status") or {})  # fmt: skip
    assert cut.phase is BackupPhase.Failed and "as it was" in (cut.message or "")


def admin_connection(pg: PostgresServer) -> psycopg.Connection[Any]:
    return psycopg.connect(host=pg.host, port=pg.port, user=pg.admin_user, password=pg.admin_password,
                           dbname="postgres", autocommit=True, connect_timeout=5)  # fmt: skip


async def test_two_claimers_one_run(world: World) -> None:
    await world.create_database()
    await world.records.create(record_body(world.key, "once", DB, BackupTrigger.Manual, None))
    (record, version) = (await world.records.list(world.key))["once"]
    source = (await world.driver._sources(world.ctx)).database
    assert source is not None
    other = BackupRunner(world.records)  # a second operator's
    try:
        job = DatabaseDump(world.key, "once", source, world.store, object_key(world.key, DB, "once"))
        claims = await asyncio.gather(world.runner.start(world.key, record, version, job),
                                      other.start(world.key, record, version, job))  # fmt: skip
        assert sorted(claims) == [False, True]
        assert not await world.runner.start(world.key, record, version, job)
    finally:
        await other.stop()


async def test_retention_prunes_on_minio_and_keeps_the_newest(world: World) -> None:
    await world.create_database()
    s3 = root(world.s3)
    s3.make_bucket(world.bucket)
    now = datetime.now(UTC)
    names = [f"old-{i}" for i in range(6)]
    for age, name in enumerate(names):
        await world.records.create(record_body(world.key, name, DB, BackupTrigger.Manual, None))
        (_, version) = (await world.records.list(world.key))[name]
        taken = now - timedelta(days=10 + age)
        done = BackupRunStatus(phase=BackupPhase.Succeeded, started_at=taken, finished_at=taken)
        assert await world.records.set_status(world.key.namespace, name, done, version)
        s3.put_object(world.bucket, object_key(world.key, DB, name), io.BytesIO(b"PGDMP"), 5)
    spec = world.spec.backup.model_copy(update={"retention_days": 7, "keep_last": 2})
    ctx = replace(world.ctx, backup=spec)
    assert (await world.driver.observe(ctx)).state["expired"] == names[2:]  # type: ignore[index]
    await world.driver.apply(ctx, BACKUP_CONVERGED)
    kept = await world.records_now()
    assert {"old-0", "old-1"} <= set(kept) and not set(names[2:]) & set(kept)
    assert all(absent(world, object_key(world.key, DB, n)) for n in names[2:])
    assert not any(absent(world, object_key(world.key, DB, n)) for n in names[:2])


async def test_no_tenant_credential_reaches_the_backup_store(world: World) -> None:
    await world.create_database()
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    (record,) = (await world.settled()).values()
    # A tenant with a bucket of its own, on the same MinIO.
    storage_ctx, storage_spec = context("tenantb", features={"storage": {}})
    secrets = MemorySecrets()
    minio = MinioDriver(world.s3.endpoint, world.s3.root_user, world.s3.root_password, secrets)
    await minio.apply(storage_ctx, desired_state(storage_spec, storage_ctx.allocations)[Component.storage])
    bucket = str(storage_ctx.allocations.bucket)
    key = secrets.data[("team", str(storage_ctx.allocations.connection_secret))][SECRET_KEY]
    tenant = Minio(world.s3.endpoint, access_key=access_key(bucket), secret_key=key, secure=False)
    for attempt in (lambda: tenant.get_object(world.bucket, object_key(world.key, DB, record.name)),
                    lambda: list(tenant.list_objects(world.bucket, recursive=True)),
                    lambda: tenant.remove_object(world.bucket, object_key(world.key, DB, record.name))):  # fmt: skip
        with pytest.raises(S3Error, match="AccessDenied"):
            attempt()


def restore_body(world: World, name: str, backup: str, safety: bool = True,
                 from_project: str | None = None) -> dict[str, Any]:  # fmt: skip
    return specs.restore_body(world.key, name, backup, safety, from_project)


async def restored(world: World, name: str, within: float = 60) -> RestoreStatus:
    """The Restore's status once it has finished."""
    deadline = time.monotonic() + within
    while True:
        found = await world.runs.restores.read(world.key.namespace, name)
        status = RestoreStatus.model_validate((found or {}).get("status") or {})
        if status.phase in (BackupPhase.Succeeded, BackupPhase.Failed):
            return status
        assert time.monotonic() < deadline, f"restore {name} not finished after {within} s: {status}"
        await asyncio.sleep(0.2)


async def backed_up(world: World) -> str:
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    (record,) = (await world.settled()).values()
    assert record.phase is BackupPhase.Succeeded, record.message
    return record.name


async def test_restore_brings_back_the_backup_after_a_safety_backup(world: World) -> None:
    await world.create_database(rows=2)
    backup = await backed_up(world)
    with world.tenant() as conn:
        conn.execute("INSERT INTO orders VALUES (3, 'after the backup')")
    await world.runs.restores.create(restore_body(world, "back", backup))
    assert (await world.driver.observe(world.ctx)).state["restores"] == ["back"]  # type: ignore[index]
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    status = await restored(world, "back")
    assert status.phase is BackupPhase.Succeeded, status.message
    assert world.rows() == 2
    assert status.bytes_restored == status.total_bytes == len(world.stored(backup))
    # The data as it was before the restore is a Backup of its own: restoring it undoes the restore.
    assert status.safety_backup is not None
    records = await world.records_now()
    assert records[status.safety_backup].phase is BackupPhase.Succeeded
    await world.runs.restores.create(restore_body(world, "undo", status.safety_backup, safety=False))
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    assert (await restored(world, "undo")).phase is BackupPhase.Succeeded
    assert world.rows() == 3
    assert (await world.driver.observe(world.ctx)).state == BACKUP_CONVERGED


async def test_a_backup_that_does_not_verify_restores_nothing(world: World) -> None:
    await world.create_database(rows=2)
    backup = await backed_up(world)
    body = bytearray(world.stored(backup))
    body[-10] ^= 0xFF  # one flipped byte near the end, after most of the data has gone to pg_restore
    key = object_key(world.key, DB, backup)
    owner: dict[str, str | list[str] | tuple[str]] = {
        "codeb-project": str(world.key),
        "codeb-project-uid": world.key.uid,
    }
    root(world.s3).put_object(world.bucket, key, io.BytesIO(bytes(body)), len(body), metadata=owner)
    with world.tenant() as conn:
        conn.execute("INSERT INTO orders VALUES (3, 'kept')")
    await world.runs.restores.create(restore_body(world, "bad", backup, safety=False))
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    status = await restored(world, "bad")
    assert status.phase is BackupPhase.Failed and "checksum" in (status.message or "")
    assert world.rows() == 3  # one transaction that never committed


async def test_a_forged_backup_record_restores_nothing(world: World) -> None:
    """A tenant writes its own 'successful' Backup record; the restore reads only what the operator stored."""
    await world.create_database(rows=2)
    await world.records.create(record_body(world.key, "forged", DB, BackupTrigger.Manual, None))
    (_, version) = (await world.records.list(world.key))["forged"]
    lie = BackupRunStatus(phase=BackupPhase.Succeeded, sha256="0" * 64, location="s3://another/tenant.dump")
    assert await world.records.set_status(world.key.namespace, "forged", lie, version)
    root(world.s3).make_bucket(world.bucket)
    await world.runs.restores.create(restore_body(world, "forged-restore", "forged", safety=False))
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    status = await restored(world, "forged-restore")
    assert status.phase is BackupPhase.Failed and status.message
    assert world.rows() == 2


async def test_bucket_backups_are_incremental_and_restore_objects_as_they_were(world: World) -> None:
    await world.create_database()
    await world.minio.apply(world.ctx, desired_state(world.spec, world.ctx.allocations)[Component.storage])
    bucket, s3 = str(world.ctx.allocations.bucket), root(world.s3)

    def put(name: str, body: bytes) -> None:
        s3.put_object(bucket, name, io.BytesIO(body), len(body))

    def contents() -> dict[str, bytes]:
        return {str(o.object_name): s3.get_object(bucket, str(o.object_name)).read()
                for o in s3.list_objects(bucket, recursive=True)}  # fmt: skip

    for name, body in {"a.txt": b"a, first", "b.txt": b"b", "docs/d.txt": b"d, never changes"}.items():
        put(name, body)
    ctx = replace(world.ctx, backup=world.spec.backup.model_copy(update={"include": [DB, BackupTarget.storage]}))
    await world.driver.apply(ctx, BACKUP_CONVERGED)
    first = next(r for r in (await world.settled(ctx)).values() if r.target is BackupTarget.storage)
    assert first.phase is BackupPhase.Succeeded and first.message == (
        "3 objects; 3 copied, the rest unchanged since an earlier backup"), first.message  # fmt: skip

    put("a.txt", b"a, second")
    s3.remove_object(bucket, "b.txt")
    put("c.txt", b"c, new")
    await world.records.create(record_body(world.key, "files-2", BackupTarget.storage, BackupTrigger.Manual, None))
    await world.driver.apply(ctx, BACKUP_CONVERGED)
    second = (await world.settled(ctx))["files-2"]
    assert second.message == "3 objects; 2 copied, the rest unchanged since an earlier backup"  # d was not copied

    await world.runs.restores.create(restore_body(world, "files-back", first.name))
    await world.driver.apply(ctx, BACKUP_CONVERGED)
    status = await restored(world, "files-back")
    assert status.phase is BackupPhase.Succeeded, status.message
    assert contents() == {"a.txt": b"a, first", "b.txt": b"b", "docs/d.txt": b"d, never changes"}
    assert status.message == f"restored backup {first.name}: 2 objects copied back, 1 deleted"

    # Thirty days on: the slot due by then is backed up; then retention keeps only that newest bucket backup,
    # and the blobs no kept manifest names are collected (the second state's "a" and "c").
    later = datetime.now(UTC) + timedelta(days=30)
    world.driver._clock = lambda: later  # type: ignore[method-assign]
    await world.driver.apply(ctx, BACKUP_CONVERGED)
    await world.settled(ctx)
    await world.driver.apply(ctx, BACKUP_CONVERGED)
    (kept,) = [r for r in (await world.records_now()).values() if r.target is BackupTarget.storage]
    assert kept.trigger is BackupTrigger.Scheduled and kept.phase is BackupPhase.Succeeded
    blobs = {str(o.object_name) for o in s3.list_objects(world.bucket, prefix=blobs_prefix(world.key), recursive=True)}
    manifest = read_manifest(world.store, object_key(world.key, BackupTarget.storage, kept.name))
    assert set(manifest) == {"a.txt", "b.txt", "docs/d.txt"}
    assert blobs == {entry["blob"] for entry in manifest.values()}


async def test_cache_backups_keep_the_prefix_keys_with_their_ttls(world: World) -> None:
    await world.create_database()
    prefix = str(world.ctx.allocations.redis_prefix)
    cache = redis.Redis(host=world.rd.host, port=world.rd.port, password=world.rd.password, decode_responses=True)
    cache.set(prefix + "session", "alice", ex=300)
    cache.hset(prefix + "cart", mapping={"apples": "3", "pears": "1"})
    cache.rpush(prefix + "log", "a", "b")
    cache.set("another-tenant:secret", "theirs")
    ctx = replace(world.ctx, backup=world.spec.backup.model_copy(update={"include": [BackupTarget.redis]}))
    await world.driver.apply(ctx, BACKUP_CONVERGED)
    (taken,) = (await world.settled(ctx)).values()
    assert taken.target is BackupTarget.redis and taken.phase is BackupPhase.Succeeded and taken.message == "3 keys"
    body = world.stored_as(BackupTarget.redis, taken.name)
    assert b"another-tenant" not in body and b"theirs" not in body  # only the Project's prefix

    cache.delete(prefix + "session")
    cache.hset(prefix + "cart", "apples", "0")
    cache.set(prefix + "new", "x")
    await world.runs.restores.create(restore_body(world, "keys-back", taken.name))
    await world.driver.apply(ctx, BACKUP_CONVERGED)
    status = await restored(world, "keys-back")
    assert status.phase is BackupPhase.Succeeded, status.message
    assert status.message == f"restored backup {taken.name}: 3 keys restored, 1 deleted"
    assert cache.get(prefix + "session") == "alice" and 0 < cache.ttl(prefix + "session") <= 300
    assert cache.hgetall(prefix + "cart") == {"apples": "3", "pears": "1"}
    assert cache.lrange(prefix + "log", 0, -1) == ["a", "b"] and cache.get(prefix + "new") is None
    assert cache.get("another-tenant:secret") == "theirs"


async def test_a_deleted_projects_backups_go_after_its_retention_unless_retained(world: World) -> None:
    await world.create_database()
    await backed_up(world)
    s3, now = root(world.s3), datetime.now(UTC)

    def under(key: ProjectKey) -> list[str]:
        return [str(o.object_name) for o in s3.list_objects(world.bucket, prefix=project_prefix(key), recursive=True)]

    # The Project is deleted (deletionPolicy Delete); one of the same name is made again, with backups of its own.
    await world.driver.delete(world.ctx, retain=False)
    reborn = ProjectKey(world.key.namespace, world.key.name, "another-uid")
    s3.put_object(world.bucket, object_key(reborn, DB, "kept"), io.BytesIO(b"PGDMP"), 5)
    assert await world.driver.sweep() == 0  # within its retention (7 days)
    world.driver._clock = lambda: now + timedelta(days=8)  # type: ignore[method-assign]
    assert await world.driver.sweep() == 2  # its backup and its tombstone
    assert under(world.key) == [] and under(reborn) == [object_key(reborn, DB, "kept")]

    # deletionPolicy Retain keeps everything, however long ago.
    await world.driver.delete(replace(world.ctx, key=reborn), retain=True)
    world.driver._clock = lambda: now + timedelta(days=1000)  # type: ignore[method-assign]
    assert await world.driver.sweep() == 0 and len(under(reborn)) == 2


async def test_a_backup_restores_into_another_project_of_the_namespace(
    kube: KubeClient, namespace: str, services: tuple[PostgresServer, MinioServer, RedisServer]
) -> None:
    pg, s3, rd = services
    # Production as a real Project object: whose backup it is is looked up by its uid, never taken from a record.
    made = await kube.request("POST", f"/apis/codeb.dev/v1alpha1/namespaces/{namespace}/projects",
                              project("prodcopy", namespace))  # fmt: skip
    assert made is not None
    production = World(kube, namespace, pg, s3, rd, "prodcopy", uid=made["metadata"]["uid"])
    staging = World(kube, namespace, pg, s3, rd, "stagecopy")
    staging.bucket, staging.store = production.bucket, production.store  # one Platform, one store
    staging.driver = BackupDriver("shared", production.store, staging.runs, staging.database.server,
                                  staging.secrets)  # fmt: skip
    try:
        await production.create_database(rows=2)
        backup = await backed_up(production)
        await staging.create_database(rows=5)

        # Without fromProject, production's backup is not staging's: refused.
        await staging.runs.restores.create(restore_body(staging, "not-yours", backup, safety=False))
        await staging.driver.apply(staging.ctx, BACKUP_CONVERGED)
        refused = await restored(staging, "not-yours")
        assert refused.phase is BackupPhase.Failed and "not a successful Backup" in (refused.message or "")

        await staging.runs.restores.create(restore_body(staging, "copy", backup, from_project="prodcopy"))
        await staging.driver.apply(staging.ctx, BACKUP_CONVERGED)
        copied = await restored(staging, "copy")
        assert copied.phase is BackupPhase.Succeeded, copied.message
        assert copied.message == f"restored backup {backup} of Project prodcopy"
        assert staging.rows() == 2 and production.rows() == 2
    finally:
        await staging.runs.stop()
        await production.runs.stop()


async def test_a_run_cancelled_while_pg_dump_waits_for_a_lock_kills_it_and_keeps_nothing(world: World) -> None:
    """Operator shutdown cancels its runs: a pg_dump blocked on a tenant's lock reads nothing, and is killed."""
    await world.create_database()
    holder = world.tenant()
    holder.autocommit = False
    try:
        holder.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        await world.driver.apply(world.ctx, BACKUP_CONVERGED)
        (record,) = (await world.records_now()).values()
        assert record.phase is BackupPhase.Running

        def dumping() -> bool:
            """A pg_dump process of this database is alive (its server session outlives it while it waits)."""
            wanted = f"--dbname={world.ctx.allocations.database}".encode()
            for entry in Path("/proc").iterdir():
                try:
                    argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] if argv else ""
                except OSError:
                    continue
                if wanted in argv and any(a.endswith(b"pg_dump") for a in argv[:3]) and state != "Z":
                    return True
            return False

        deadline = time.monotonic() + 30
        while not dumping():
            assert time.monotonic() < deadline, "pg_dump never connected"
            await asyncio.sleep(0.1)
        await world.runs.stop()
        deadline = time.monotonic() + 10
        while dumping():
            assert time.monotonic() < deadline, "pg_dump still waiting 10 s after its run was cancelled"
            await asyncio.sleep(0.1)
    finally:
        holder.rollback()
        holder.close()
    assert absent(world, object_key(world.key, DB, record.name))
    assert (await world.records_now())[record.name].phase is not BackupPhase.Succeeded
