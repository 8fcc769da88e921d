"""Point-in-time restores: the Platform's cluster recovered in a side instance, one database dumped from it.

One database of a shared server cannot go back in time alone: PostgreSQL's recovery
replays a whole cluster. So the cluster is restored with pgBackRest from the backup store
into a throwaway instance on the operator's machine, which recovers to the moment asked
and promotes. The Project's database is dumped from it as the Project's own role, into the
store as a Backup of its own (trigger PointInTime); the restore then restores that Backup
like any other, checksum first.

The side instance listens on no address, only on a socket in a directory nobody else can
enter, so the trust it allows there reaches nothing else; it archives nothing. PostgreSQL
refuses to run as root, so an operator running as root runs it as the ``postgres`` user.
Its directory is named by the operator's process id: one left by an operator killed
mid-restore (kill -9) is found by the next restore, its server killed, its files removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType

from controller.clients import pgbackrest
from controller.clients.postgres import PostgresServer
from controller.errors import PermanentError
from controller.jobs.backups import (
    RUN_ERRORS,
    RUN_TIMEOUT_SECONDS,
    BackupStore,
    DatabaseAccess,
    RunCut,
    Stored,
    failed,
    owner_metadata,
    stored_run,
    stream_dump,
)
from controller.loop.naming import ProjectKey
from schemas.backups import BackupRunStatus

SIDE_ROOT = Path(tempfile.gettempdir()) / "codeb-side-instances"  # CODEB_SIDE_INSTANCES overrides it
# Names the socket file only: a side instance has no TCP listener.
PORT = 5432
_STOP_SECONDS = 10.0
# How long the WAL written just now may take to reach the archive (archive_timeout is 60 s in docs/backups.md).
ARCHIVE_WAIT_SECONDS = 300.0


def _run_user() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


class SideInstance:
    """A PostgreSQL restored from the archive to ``moment``, promoted, reachable at ``socket_dir``."""

    def __init__(self, repo: pgbackrest.Repository, moment: datetime, cancelled: threading.Event,
                 timeout: float = RUN_TIMEOUT_SECONDS, root: Path = SIDE_ROOT) -> None:  # fmt: skip
        self._repo, self._moment, self._cancelled, self._timeout = repo, moment, cancelled, timeout
        self._root, self._user = root, _run_user()
        self.socket_dir = root / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._data = self.socket_dir / "data"
        self._proc: subprocess.Popen[bytes] | None = None
        self.version = ""

    def __enter__(self) -> SideInstance:
        try:
            env = self._make()
            pgbackrest.run(pgbackrest.restore_arguments(self._moment, self._data), env, self._timeout,
                           user=self._user)  # fmt: skip
            self._own_rules()
            self._start(env)
            self._wait_promoted()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _make(self) -> dict[str, str]:
        self._root.mkdir(mode=0o711, parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700)
        env = self._repo.environment(self.socket_dir)
        self._chown(self.socket_dir, *self.socket_dir.iterdir())
        return env

    def _chown(self, *paths: Path) -> None:
        if self._user is None:
            return
        for path in paths:
            shutil.chown(path, self._user)

    def _own_rules(self) -> None:
        """Trust on the private socket only; the cluster's own configuration (Debian keeps it in /etc) is not
        here, and what it loads or listens on is not wanted."""
        (self._data / "pg_hba.conf").write_text("local all all trust\n")
        for name in ("postgresql.conf", "pg_ident.conf"):
            (self._data / name).touch()
        self._chown(*(self._data / n for n in ("pg_hba.conf", "postgresql.conf", "pg_ident.conf")))
        self.version = (self._data / "PG_VERSION").read_text().strip()
        if not self.version.isdigit():  # it names the programs to run: a number, or nothing is run
            raise PermanentError(f"the restored cluster's PG_VERSION is not a major version ({self.version[:16]!r})",
                                 reason="PointInTimeUnreachable")  # fmt: skip

    def _binary(self, name: str) -> str:
        path = Path(f"/usr/lib/postgresql/{self.version}/bin/{name}")
        if not path.exists():
            raise PermanentError(f"PostgreSQL {self.version}'s server programs are not installed where the operator "
                                 f"runs (apt-get install postgresql-{self.version}); a point-in-time restore "
                                 "recovers the cluster there", reason="PostgresMissing")  # fmt: skip
        return str(path)

    def _start(self, env: dict[str, str]) -> None:
        # hot_standby off: no connection is wanted before promotion, and a standby that takes connections must
        # have max_connections (and a few more) at least the primary's, which this machine may not afford.
        settings = {"listen_addresses": "", "unix_socket_permissions": "0700", "archive_mode": "off", "ssl": "off",
                    "shared_preload_libraries": "", "logging_collector": "off", "hot_standby": "off"}  # fmt: skip
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        log = self.socket_dir / "log"
        with log.open("ab") as out:
            self._chown(log)
            self._proc = subprocess.Popen([self._binary("postgres"), "-D", str(self._data), "-p", str(PORT), "-k",
                                           str(self.socket_dir), *options], stdout=out, stderr=subprocess.STDOUT,
                                          env=env, user=self._user, start_new_session=True)  # fmt: skip

    def _wait_promoted(self) -> None:
        """Until recovery reached the moment, the instance promoted (its control file says so) and it accepts
        connections (pg_isready: the end-of-recovery checkpoint comes between)."""
        assert self._proc is not None
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._cancelled.is_set():
                raise RunCut("cancelled")
            if self._proc.poll() is not None:
                raise PermanentError(f"the WAL archive could not bring the cluster to {self._moment:%Y-%m-%dT%H:%M:%SZ}"
                                     f": {self._fatal()}", reason="PointInTimeUnreachable")  # fmt: skip
            state = subprocess.run([self._binary("pg_controldata"), str(self._data)], capture_output=True, text=True,
                                   timeout=30, env={"LANG": "C", "PATH": "/usr/bin:/bin"})  # fmt: skip
            if any(line.startswith("Database cluster state:") and line.endswith("in production")
                   for line in state.stdout.splitlines()) and self._accepting():  # fmt: skip
                return
            time.sleep(0.5)
        raise RunCut(f"recovery did not finish within {self._timeout:.0f}s")

    def _accepting(self) -> bool:
        ready = [self._binary("pg_isready"), "-q", "-h", str(self.socket_dir), "-p", str(PORT), "-t", "5"]
        return subprocess.run(ready, capture_output=True, timeout=30).returncode == 0

    def _fatal(self) -> str:
        """The side instance's own last FATAL line: why recovery stopped (no data of the tenant's in it)."""
        lines = (self.socket_dir / "log").read_text(errors="replace").splitlines()
        fatal = [line.split("FATAL:", 1)[1].strip() for line in lines if "FATAL:" in line]
        return (fatal[-1] if fatal else "recovery stopped")[:300]

    def close(self) -> None:
        """Stop the server (immediate: nothing in it is kept) and remove every file of it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGQUIT)
            try:
                self._proc.wait(_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def sweep(root: Path = SIDE_ROOT) -> int:
    """Remove side instances whose operator process is gone (killed mid-restore); how many went."""
    removed = 0
    for found in root.iterdir() if root.is_dir() else ():
        owner = found.name.split("-", 1)[0]
        if owner.isdigit() and _alive(int(owner)):
            continue
        _kill_postmaster(found)
        shutil.rmtree(found, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_postmaster(found: Path) -> None:
    """Its server, named by its pid file, and only when that process is the server of this very directory."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((found / "data" / "postmaster.pid").read_text().splitlines()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if str(found / "data").encode() in cmdline:
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                if not _alive(pid) or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                    return
                time.sleep(0.1)


async def archived_through_now(server: PostgresServer, cancelled: threading.Event,
                               within: float = ARCHIVE_WAIT_SECONDS) -> None:  # fmt: skip
    """A commit made now, and the WAL holding it archived. Recovery to a time stops at the first commit after
    it: on a cluster where nothing was committed since, it would never get there (and fail). And recovery can
    only reach what the archive holds, so the moment must be in it before the side instance starts."""
    async with server.admin() as conn:
        await conn.execute("SELECT pg_catalog.txid_current()")  # an xid, so its commit is a WAL record
        row = await (await conn.execute("SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())")).fetchone()
    wal = str(row[0]) if row else ""
    deadline = time.monotonic() + within
    while True:
        async with server.admin() as conn:
            row = await (await conn.execute("SELECT last_archived_wal FROM pg_catalog.pg_stat_archiver")).fetchone()
        if row is not None and row[0] is not None and str(row[0])[:24] >= wal:
            return
        if cancelled.is_set():
            raise RunCut("cancelled")
        if time.monotonic() > deadline:
            raise PermanentError(f"WAL {wal} did not reach the archive within {within:.0f}s: archiving is stalled "
                                 "(see BackupReady)", reason="ArchivingStalled")  # fmt: skip
        await asyncio.sleep(1.0)


@dataclass(frozen=True)
class PointInTimeDump:
    """A Backup of the Project's database as it was at ``moment``: dumped from a side instance."""

    key: ProjectKey
    name: str
    live: DatabaseAccess  # names the database and role; the side instance has them as they were then
    store: BackupStore
    object_key: str
    moment: datetime
    timeout: float = RUN_TIMEOUT_SECONDS
    root: Path = SIDE_ROOT

    async def __call__(self, started: datetime, cancelled: threading.Event) -> BackupRunStatus:
        assert self.store.archive is not None
        repo = pgbackrest.Repository(self.store.server, self.store.bucket, self.store.archive)
        metadata = owner_metadata(self.key, self.name)

        try:
            await archived_through_now(self.live.server, cancelled)
        except RUN_ERRORS as exc:
            return failed(started, time.monotonic(), exc)

        def work() -> Stored:
            sweep(self.root)
            with SideInstance(repo, self.moment, cancelled, self.timeout, self.root) as side:
                server = PostgresServer(str(side.socket_dir), PORT, "", "")
                source = DatabaseAccess(server, self.live.user, "", self.live.database)
                stored = stream_dump(source, self.store, self.object_key, metadata, self.timeout, cancelled)
            return replace(stored, server_version=side.version,
                           message=f"the database as it was at {self.moment:%Y-%m-%dT%H:%M:%S.%fZ}")  # fmt: skip

        return await stored_run(started, cancelled, self.store, self.object_key, work)
