"""The recovery point objective with WAL archiving on: how long a commit waits until the archive holds it.

    python bench/rpo.py                          # archive_timeout 60 s (docs/backups.md), 150 s of commits
    python bench/rpo.py --archive-timeout 10 --seconds 40

A real PostgreSQL archives with pgBackRest into a real MinIO over TLS, as docs/backups.md sets
one up. One commit a second; for each, the time from its commit until pg_stat_archiver reports
the WAL file holding it archived. A point-in-time restore can reach a commit only once that has
happened, so the worst of these is the data a lost server takes with it: the RPO. Goal: <= 300 s.
Prints the worst, the median, and the bound archive_timeout sets (one period plus the push).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from controller.clients.s3 import S3Server
from controller.drivers.minio import ensure_operator_bucket
from tests.servers import start_archiving_postgres, start_minio

BUCKET = "codeb-backups"
GOAL_SECONDS = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive-timeout", type=int, default=60)
    parser.add_argument("--seconds", type=int, default=150, help="how long to keep committing")
    args = parser.parse_args()
    store = start_minio(tls=True)
    pg = None
    try:
        assert store.ca_file is not None
        server = S3Server(store.endpoint, store.root_user, store.root_password, True, ca_pem=store.ca_file.read_text())
        asyncio.run(ensure_operator_bucket(server, BUCKET, "backups"))
        pg = start_archiving_postgres(store, BUCKET, archive_timeout=args.archive_timeout)
        pg.base_backup()  # as docs/backups.md sets a server up (archive_timeout switches nothing before a checkpoint)
        waits = measure(pg.server.host, pg.server.port, pg.server.admin_user, pg.server.admin_password, args)
    finally:
        if pg is not None:
            pg.server.stop()
        store.stop()
    print(f"commits: {len(waits)} over {args.seconds} s, archive_timeout {args.archive_timeout} s")
    print(f"time until archived: median {statistics.median(waits):.1f} s, worst {max(waits):.1f} s")
    verdict = "met" if max(waits) <= GOAL_SECONDS else "MISSED"
    print(f"RPO (worst): {max(waits):.1f} s; goal <= {GOAL_SECONDS:.0f} s: {verdict}")


def measure(host: str, port: int, user: str, password: str, args: argparse.Namespace) -> list[float]:
    """One commit a second for ``args.seconds``; each commit's wait until its WAL file was archived."""
    with psycopg.connect(host=host, port=port, user=user, password=password, dbname="postgres",
                         autocommit=True) as conn:  # fmt: skip
        conn.execute("CREATE TABLE ticks (at timestamptz)")
        commits: list[tuple[float, str]] = []
        archived_at: dict[str, float] = {}
        started = time.monotonic()
        deadline = started + args.seconds + 3 * args.archive_timeout + 60  # never waits without bound
        next_commit = started
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_commit and now - started < args.seconds:
                row = conn.execute("INSERT INTO ticks VALUES (now()) RETURNING pg_walfile_name(pg_current_wal_lsn())"
                                   ).fetchone()  # fmt: skip
                commits.append((time.monotonic(), str(row[0]) if row else ""))
                next_commit += 1.0
            last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            if last and last[0]:
                archived_at.setdefault(str(last[0])[:24], time.monotonic())
            done = sorted(archived_at)
            if now - started >= args.seconds and commits and done and done[-1] >= commits[-1][1]:
                break
            time.sleep(0.2)
    done = sorted(archived_at)
    waits = []
    for committed, wal in commits:
        first = min((archived_at[name] for name in done if name >= wal), default=None)
        if first is None:
            raise SystemExit(f"WAL {wal} was never archived (archived: {done}): archiving is stalled")
        waits.append(max(0.0, first - committed))
    return waits


if __name__ == "__main__":
    main()
