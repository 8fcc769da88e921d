"""Point-in-time recovery on real parts: PostgreSQL archiving WAL with pgBackRest into a TLS MinIO, Restore
records on the API server, the cluster recovered in a side instance, one database dumped from it and restored.

The recovery test is CloudNativePG's: two rows, note the time, a third row, wait until its WAL
is archived, restore to the time, and exactly two rows are left. The world a kill -9 leaves
is built for real: a side instance whose operator process was killed while it ran.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

from controller.clients.kube import KubeClient
from controller.clients.s3 import S3Server
from controller.drivers.backups import BackupDriver
from controller.drivers.minio import ensure_operator_bucket
from controller.jobs import point_in_time
from controller.jobs.backups import BackupStore
from controller.loop.planner import BACKUP_CONVERGED, Component, desired_state
from controller.specs import backups as specs
from schemas.backups import BackupPhase, BackupTrigger
from schemas.platform import PointInTimeArchive
from schemas.project import Backup
from tests.apiserver.test_backups import World, restored
from tests.servers import (
    ArchivingPostgres,
    MinioServer,
    RedisServer,
    start_archiving_postgres,
    start_minio,
    start_redis,
)

STORE_BUCKET = "codeb-backups"


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[ArchivingPostgres, MinioServer, MinioServer, RedisServer]]:
    """The archiving PostgreSQL, the Projects' MinIO, the backup store (TLS) and Redis."""
    store, objects, rd = start_minio(tls=True), start_minio(), start_redis()
    try:
        server = S3Server(store.endpoint, store.root_user, store.root_password, True, ca_pem=_ca(store))
        asyncio.run(ensure_operator_bucket(server, STORE_BUCKET, "backups"))
        pg = start_archiving_postgres(store, STORE_BUCKET)
    except BaseException:
        for stopped in (rd, objects, store):
            stopped.stop()
        raise
    yield pg, objects, store, rd
    pg.server.stop()
    for stopped in (rd, objects, store):
        stopped.stop()


def _ca(store: MinioServer) -> str:
    assert store.ca_file is not None
    return store.ca_file.read_text()


class PitrWorld(World):
    """A Project with walArchiving on a Platform whose PostgreSQL archives into the backup store."""

    def __init__(self, kube: KubeClient, namespace: str, services: tuple[ArchivingPostgres, MinioServer, MinioServer,
                 RedisServer], slug: str) -> None:  # fmt: skip
        pg, objects, store_server, rd = services
        super().__init__(kube, namespace, pg.server, objects, rd, slug)
        self.archiving, self.store_server = pg, store_server
        self.bucket = STORE_BUCKET
        assert self.ctx.backup is not None
        self.ctx = replace(self.ctx, backup=self.ctx.backup.model_copy(update={"wal_archiving": True}))
        s3 = S3Server(store_server.endpoint, store_server.root_user, store_server.root_password, True,
                      ca_pem=_ca(store_server))  # fmt: skip
        self.store = BackupStore(s3, STORE_BUCKET, PointInTimeArchive())
        self.fresh_driver()

    def fresh_driver(self) -> None:
        """A driver as a Platform change makes one: its reads of the archive start afresh."""
        self.driver = BackupDriver("shared", self.store, self.runs, self.database.server, self.secrets,
                                   self.minio.server, (self.rd.host, self.rd.port, self.rd.password))  # fmt: skip

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host=self.pg.host, port=self.pg.port, user=self.pg.admin_user,
                               password=self.pg.admin_password, dbname="postgres", autocommit=True)  # fmt: skip

    def wal_now(self) -> str:
        with self.admin() as conn:
            row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        assert row is not None
        return str(row[0])

    def archived(self, wal: str, within: float = 60) -> None:
        """Until PostgreSQL archived ``wal``: a commit and a switch to the next file make it complete (a file
        with nothing in it is never switched), then the archiver pushes it (it retries failures on new WAL)."""
        deadline = time.monotonic() + within
        while True:
            with self.admin() as conn:
                conn.execute("SELECT txid_current()")
                conn.execute("SELECT pg_switch_wal()")
                row = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            if row is not None and row[0] is not None and str(row[0])[:24] >= wal:
                return
            assert time.monotonic() < deadline, f"WAL {wal} not archived after {within} s (last: {row})"
            time.sleep(1.0)


# A slug of its own per test: roles and databases stay on the module's PostgreSQL, and a role
# already held by another Project is refused (as it must be).
SLUGS = itertools.count()


@pytest.fixture()
async def world(kube: KubeClient, namespace: str, services: tuple[ArchivingPostgres, MinioServer, MinioServer,
                RedisServer]) -> AsyncIterator[PitrWorld]:  # fmt: skip
    made = PitrWorld(kube, namespace, services, f"pt{next(SLUGS)}")
    yield made
    await made.runs.stop()


def restore_to(world: World, name: str, moment: datetime, safety: bool = True) -> dict[str, object]:
    return specs.restore_body(world.key, name, None, safety, target_time=moment)


def moment() -> datetime:
    """Now, with a second either side, so commits around it are clearly before or after."""
    time.sleep(1)
    now = datetime.now(UTC)
    time.sleep(1)
    return now


def side_instances() -> list[Path]:
    root = point_in_time.SIDE_ROOT
    return sorted(root.glob(f"{os.getpid()}-*")) if root.is_dir() else []


async def test_a_project_goes_back_to_a_moment_between_two_commits(world: PitrWorld) -> None:
    first = await world.driver.observe(world.ctx)
    assert first.reason == "NoBaseBackup" and not first.healthy, first
    world.archiving.base_backup()
    world.fresh_driver()

    await world.create_database(rows=2)
    then = moment()
    with world.tenant() as conn:
        conn.execute("INSERT INTO orders VALUES (3, 'after the moment')")
    world.archived(world.wal_now())

    await world.runs.restores.create(restore_to(world, "back", then))
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    status = await restored(world, "back", within=240)
    assert status.phase is BackupPhase.Succeeded, status.message
    assert world.rows() == 2
    assert status.message is not None and f"{then:%Y-%m-%dT%H:%M:%S}" in status.message
    records = await world.records_now()
    assert status.point_in_time_backup is not None and status.safety_backup is not None
    dumped = records[status.point_in_time_backup]
    assert dumped.trigger is BackupTrigger.PointInTime and dumped.phase is BackupPhase.Succeeded
    assert records[status.safety_backup].phase is BackupPhase.Succeeded
    assert side_instances() == []

    # The safety backup undoes it: the third row is back.
    await world.runs.restores.create(specs.restore_body(world.key, "undo", status.safety_backup, False))
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    assert (await restored(world, "undo")).phase is BackupPhase.Succeeded
    assert world.rows() == 3

    seen = await world.driver.observe(world.ctx)
    assert seen.healthy, (seen.reason, seen.detail)
    summary = seen.outputs["summary"]
    archive = summary["walArchive"]
    assert archive["baseBackups"] == 1 and archive["lastArchivedWal"]
    assert summary["firstRecoverabilityPoint"] == archive["oldestBaseBackupAt"]


async def test_a_moment_the_archive_cannot_reach_overwrites_nothing(world: PitrWorld) -> None:
    world.archiving.base_backup()
    await world.create_database(rows=3)
    before_any = datetime.now(UTC) - timedelta(days=3)  # long before every base backup
    await world.runs.restores.create(restore_to(world, "too-early", before_any, safety=False))
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    status = await restored(world, "too-early", within=240)
    assert status.phase is BackupPhase.Failed and "nothing was overwritten" in (status.message or ""), status
    assert world.rows() == 3
    assert side_instances() == []

    future = datetime.now(UTC) + timedelta(hours=1)
    await world.runs.restores.create(restore_to(world, "future", future, safety=False))
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    status = await restored(world, "future")
    assert status.phase is BackupPhase.Failed and "in the future" in (status.message or "")
    assert world.rows() == 3


async def test_archiving_that_fails_is_reported_stalled_until_it_catches_up(world: PitrWorld) -> None:
    world.archiving.base_backup()
    # The store's key rotated and the server's archive_command still has the old one: every push is refused.
    config = world.archiving.config.read_text()
    world.archiving.config.write_text(config.replace(world.store_server.root_password, "rotated-away"))
    try:
        with world.admin() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS churn (i int)")
            conn.execute("INSERT INTO churn SELECT generate_series(1, 1000)")
            conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 120
        seen = await world.driver.observe(world.ctx)
        while seen.reason != "ArchivingStalled":
            assert time.monotonic() < deadline, (seen.reason, seen.detail)
            await asyncio.sleep(2)
            world.fresh_driver()
            seen = await world.driver.observe(world.ctx)
        assert not seen.healthy and "failed to archive" in (seen.detail or "")
    finally:
        world.archiving.config.write_text(config)
    world.archived(world.wal_now())
    world.fresh_driver()
    seen = await world.driver.observe(world.ctx)
    assert seen.reason != "ArchivingStalled", seen.detail


# A side instance run by a process that is then killed -9 while the instance serves (an operator mid-restore).
_ORPHAN = """
import json, sys, threading, time
from datetime import datetime
from controller.clients.pgbackrest import Repository
from controller.clients.s3 import S3Server
from controller.jobs.point_in_time import SideInstance
from schemas.platform import PointInTimeArchive
given = json.loads(sys.stdin.read())
server = S3Server(given["endpoint"], given["user"], given["password"], True, ca_pem=given["ca"])
side = SideInstance(Repository(server, given["bucket"], PointInTimeArchive()), datetime.fromisoformat(given["at"]),
                    threading.Event(), 120)
side.__enter__()
print(side.socket_dir, flush=True)
time.sleep(600)
"""


async def test_a_side_instance_left_by_a_killed_operator_is_removed(world: PitrWorld, repo_root: Path) -> None:
    world.archiving.base_backup()
    await world.create_database(rows=1)
    at = moment()
    with world.tenant() as conn:  # recovery to a time stops at the first commit after it
        conn.execute("INSERT INTO orders VALUES (2, 'after the moment')")
    world.archived(world.wal_now())
    store = world.store_server
    given = {"endpoint": store.endpoint, "user": store.root_user, "password": store.root_password, "ca": _ca(store),
             "bucket": STORE_BUCKET, "at": at.isoformat()}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=repo_root, text=True)  # fmt: skip
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(given))
        proc.stdin.close()
        left = Path(proc.stdout.readline().strip())
        pid = int((left / "data" / "postmaster.pid").read_text().splitlines()[0])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert left.is_dir() and Path(f"/proc/{pid}").exists()  # the world a kill -9 leaves: a server, its files

    assert point_in_time.sweep() >= 1
    assert not left.exists()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the orphaned side instance still runs"
        time.sleep(0.1)


EXAMPLES = sorted((Path(__file__).parents[2] / "manifests" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", [p for p in EXAMPLES if yaml.safe_load(p.read_text())["spec"].get("backup", {})
                                     .get("enabled", True)], ids=lambda p: p.stem)  # fmt: skip
async def test_every_examples_backups_are_kept_on_a_platform_with_an_archive(world: PitrWorld, example: Path) -> None:
    """Each example's backup section (its targets, walArchiving) on a Platform set up as codeb up's is: its first
    backups are taken at once, and BackupReady is True."""
    section = Backup.model_validate(yaml.safe_load(example.read_text())["spec"]["backup"])
    world.ctx = replace(world.ctx, backup=section)
    world.archiving.base_backup()
    world.fresh_driver()
    await world.create_database(rows=2)
    await world.minio.apply(world.ctx, desired_state(world.spec, world.ctx.allocations)[Component.storage])
    await world.driver.apply(world.ctx, BACKUP_CONVERGED)
    records = await world.settled()
    taken = {r.target for r in records.values() if r.phase is BackupPhase.Succeeded}
    assert taken == set(section.include), records
    seen = await world.driver.observe(world.ctx)
    assert seen.healthy and seen.state == BACKUP_CONVERGED, (seen.reason, seen.detail)
    assert ("walArchive" in seen.outputs["summary"]) is section.wal_archiving
