"""Backup and restore throughput against the plain tools, on one real PostgreSQL and MinIO.

    python bench/backup.py                 # a database of about 1 GB
    python bench/backup.py --size-mb 200   # quicker

Floors, measured in the same run on the same servers:
  dump:    pg_dump -Fc piped straight into the S3 client's upload (no hashing, no records)
  restore: pg_restore of the same dump from a local file, as the Project's role, in one transaction
Ours: the operator's own code paths (`controller.jobs.backups.stream_dump`, which also hashes and checks
pg_dump's exit; `controller.jobs.restores.stream_restore`, which streams from the store and holds the last
piece back until the checksum matched). Prints MB/s (of the database's size) and ours / floor (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from controller.clients.s3 import S3Server
from controller.drivers.postgres import PASSWORD_KEY, PostgresDriver
from controller.jobs.backups import PART_BYTES, BackupStore, DatabaseAccess, stream_dump
from controller.jobs.restores import stream_restore
from controller.loop.planner import Component, desired_state
from controller.loop.secrets import MemorySecrets
from controller.specs.backups import dump_command, restore_command
from tests.drivers_common import context
from tests.servers import start_minio, start_postgres

BUCKET = "codeb-bench"
TIMEOUT = 3600.0


def fill(access: DatabaseAccess, size_mb: int) -> int:
    """About ``size_mb`` of rows that compress like real text does (not like zeros); the database's size."""
    server = access.server
    with psycopg.connect(host=server.host, port=server.port, user=access.user, password=access.password,
                         dbname=access.database, autocommit=True) as conn:  # fmt: skip
        conn.execute("CREATE TABLE events (id bigint, kind text, payload text)")
        batch = 200_000
        for start in range(0, size_mb * 1024 * 1024 // 330 + 1, batch):
            conn.execute(
                "INSERT INTO events SELECT i, (ARRAY['view','click','buy','leave'])[1 + i %% 4], "
                "md5(random()::text) || ' ' || md5(random()::text) || ' ' || repeat(md5((i %% 1000)::text), 6) "
                "FROM generate_series(%s::bigint, %s::bigint) i",
                (start, start + batch - 1),
            )
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


def timed(step: object, *args: object) -> float:
    started = time.monotonic()
    step(*args)  # type: ignore[operator]
    return time.monotonic() - started


def floor_dump(access: DatabaseAccess, store: BackupStore, key: str) -> None:
    command = dump_command(access.server.host, access.server.port, access.user, access.database)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=access.environment())
    assert proc.stdout is not None
    store.server.s3.put_object(store.bucket, key, proc.stdout, length=-1, part_size=PART_BYTES)  # type: ignore[arg-type]
    assert proc.wait() == 0


def floor_restore(access: DatabaseAccess, path: Path) -> None:
    command = restore_command(access.server.host, access.server.port, access.user, access.database)
    with path.open("rb") as dump:
        done = subprocess.run(command, stdin=dump, env=access.environment(), capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr.decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the database (default: 1024)")
    args = parser.parse_args()
    pg, s3 = start_postgres(), start_minio()
    try:
        secrets = MemorySecrets()
        ctx, spec = context("bench", features={"database": {"version": "15"}})
        driver = PostgresDriver(pg.host, pg.port, pg.admin_user, pg.admin_password, secrets)
        asyncio.run(driver.apply(ctx, desired_state(spec, ctx.allocations)[Component.database]))
        password = (secrets.stored("team", str(ctx.allocations.connection_secret)) or {})[PASSWORD_KEY]
        access = DatabaseAccess(driver.server, str(ctx.allocations.database_role), password,
                                str(ctx.allocations.database))  # fmt: skip
        started = time.monotonic()
        size = fill(access, args.size_mb)
        mb = size / 1e6
        print(f"database: {mb:.0f} MB, filled in {time.monotonic() - started:.0f} s")
        store = BackupStore(S3Server(s3.endpoint, s3.root_user, s3.root_password, timeout=120), BUCKET)
        store.server.s3.make_bucket(BUCKET)

        floor = timed(floor_dump, access, store, "floor.dump")
        ours_took = time.monotonic()
        stored = stream_dump(access, store, "ours.dump", {}, TIMEOUT, threading.Event())
        ours = time.monotonic() - ours_took
        print(f"dump size {stored.size / 1e6:.0f} MB")
        print(f"dump    floor (pg_dump | upload): {mb / floor:7.1f} MB/s   ours: {mb / ours:7.1f} MB/s   "
              f"ours/floor: {floor / ours:.2f}")  # fmt: skip

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "floor.dump"
            store.server.s3.fget_object(BUCKET, "ours.dump", str(local))
            floor = timed(floor_restore, access, local)
        ours = timed(stream_restore, access, store, "ours.dump", stored.sha256, TIMEOUT, threading.Event(),
                     lambda done: None)  # fmt: skip
        print(f"restore floor (pg_restore file):  {mb / floor:7.1f} MB/s   ours: {mb / ours:7.1f} MB/s   "
              f"ours/floor: {floor / ours:.2f}")  # fmt: skip
        print("RPO with WAL archiving: not measured (WAL archiving is not built yet)")
    finally:
        s3.stop()
        pg.stop()


if __name__ == "__main__":
    main()
