"""`codeb up`'s backup store and WAL archive: a MinIO of its own over TLS, and PostgreSQL archiving into it.

pgBackRest speaks S3 over HTTPS only, while the Projects' MinIO serves plain HTTP on
loopback (every tenant client and the example reach it so). So backups get a MinIO of
their own, with a certificate from a CA this state directory keeps, and the local
PostgreSQL archives its WAL there with pgBackRest (archive_timeout 60 s: the RPO). Base
backups are taken here, as a PostgreSQL server's own timer takes them (docs/backups.md):
in the background once the store answers, whenever the newest is a day old, so the first
URL never waits for one.

Only a state directory made with it has it: one made before keeps its backups where they
are (the Projects' MinIO), and without pgBackRest installed the archive is left out. Either
way a Project with walArchiving then reports NoWalArchive and is still dumped on schedule.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.clients import pgbackrest
from controller.clients.s3 import S3Server
from controller.errors import CodebError
from controller.local.cluster import free_port, openssl

STANZA = "codeb"
BUCKET = "codeb-backups"
REPO_PATH = "/pgbackrest"
ARCHIVE_TIMEOUT_SECONDS = 60
BASE_BACKUP_EVERY = timedelta(days=1)
_CHECK_SECONDS = 3600.0


def store_certificates(home: Path, host: str = "127.0.0.1") -> Path:
    """A CA of its own (``home/ca.crt``) and a certificate it signed for ``host``, in ``home/certs`` (MinIO's
    --certs-dir), made once. The host is a DNS name in it too: pgBackRest matches DNS names only."""
    certs = home / "certs"
    if (certs / "public.crt").exists():
        return certs
    certs.mkdir(parents=True, exist_ok=True)
    (home / "server.ext").write_text(f"subjectAltName=IP:{host},DNS:{host},DNS:localhost\n"
                                     "extendedKeyUsage=serverAuth\n")  # fmt: skip
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=codeb-backup-store-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=home)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=codeb-backup-store", "-keyout", "certs/private.key",
            "-out", "server.csr", cwd=home)  # fmt: skip
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days",
            "3650", "-extfile", "server.ext", "-out", "certs/public.crt", cwd=home)  # fmt: skip
    (home / "ca.key").unlink()  # nothing more is ever signed with it
    return certs


def new_settings() -> dict[str, Any]:
    return {"port": free_port(), "user": "codeb-backup-root", "password": secrets.token_urlsafe(18)}


def available() -> bool:
    return shutil.which("pgbackrest") is not None


class LocalArchive:
    """The backup store (its MinIO's files, certificates) under ``home``, and the PostgreSQL side of archiving."""

    def __init__(self, home: Path, settings: dict[str, Any], postgres_home: Path) -> None:
        self.home, self.settings, self.postgres_home = home, settings, postgres_home
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.settings['port']}"

    @property
    def ca_file(self) -> Path:
        return self.home / "ca.crt"

    def certificates(self) -> Path:
        """The store's CA and certificate (made once); the certs directory MinIO reads."""
        return store_certificates(self.home)

    def server(self) -> S3Server:
        return S3Server(self.endpoint, self.settings["user"], self.settings["password"], True,
                        ca_pem=self.ca_file.read_text())  # fmt: skip

    def postgres_options(self) -> str:
        """The server's archiving settings; its pgBackRest configuration (the store's key in it) is a file
        only PostgreSQL's user reads, as on any server."""
        config, ca = self.postgres_home / "pgbackrest.conf", self.postgres_home / "backup-store-ca.crt"
        shutil.copy(self.ca_file, ca)
        config.touch(mode=0o600)
        config.write_text(
            f"[global]\nrepo1-type=s3\nrepo1-path={REPO_PATH}\nrepo1-s3-bucket={BUCKET}\n"
            f"repo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={self.settings['port']}\nrepo1-s3-region=us-east-1\n"
            f"repo1-s3-uri-style=path\nrepo1-s3-key={self.settings['user']}\n"
            f"repo1-s3-key-secret={self.settings['password']}\nrepo1-storage-ca-file={ca}\n"
            f"repo1-retention-full=2\nstart-fast=y\nlog-path={self.postgres_home}\nlock-path={self.postgres_home}\n"
            f"log-level-file=off\n[{STANZA}]\npg1-path={self.postgres_home / 'data'}\n"
            f"pg1-socket-path={self.postgres_home}\n"
        )  # fmt: skip
        if os.geteuid() == 0:
            for path in (config, ca):
                shutil.chown(path, "postgres")
        command = f"pgbackrest --config={config} --stanza={STANZA} archive-push %p"
        return (f"-c archive_mode=on -c wal_level=replica -c archive_timeout={ARCHIVE_TIMEOUT_SECONDS} "
                f"-c \"archive_command={command}\"")  # fmt: skip

    def start_base_backups(self, port: int, user: str, password: str) -> None:
        """In the background: the stanza once, then a base backup whenever the newest is a day old."""
        self._thread = threading.Thread(target=self._keep, args=(port, user, password), daemon=True,
                                        name="codeb-base-backups")  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        running = self._running
        if running is not None and running.poll() is None:
            running.terminate()  # a base backup cut here is never counted by pgBackRest
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _keep(self, port: int, user: str, password: str) -> None:
        log = self.home / "base-backups.log"
        while not self._stop.is_set():
            try:
                self._ensure_stanza(port, user, password)
                newest = pgbackrest.parse_info(self._pgbackrest(port, user, password, "info", "--output=json"),
                                               STANZA).newest_backup_at  # fmt: skip
                if newest is None or datetime.now(UTC) - newest > BASE_BACKUP_EVERY:
                    self._pgbackrest(port, user, password, "backup", "--type=full")
            except (CodebError, OSError, subprocess.SubprocessError) as exc:
                with log.open("a") as out:  # the loop goes on: the next check may find the store back
                    out.write(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {exc}\n")
            self._stop.wait(_CHECK_SECONDS)

    def _ensure_stanza(self, port: int, user: str, password: str) -> None:
        if (self.home / "stanza-created").exists():
            return
        server = self.server()
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Exception):
                if not server.s3.bucket_exists(BUCKET):
                    server.s3.make_bucket(BUCKET)  # untagged: the operator adopts and tags it
                break
            if time.monotonic() > deadline or self._stop.wait(1.0):
                raise OSError("the backup store did not answer within 60 s")
        self._pgbackrest(port, user, password, "stanza-create")
        (self.home / "stanza-created").touch()

    def _pgbackrest(self, port: int, user: str, password: str, *args: str) -> bytes:
        """pgBackRest as PostgreSQL's user, with the server's own configuration (where it archives)."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/bin"), "PGPASSWORD": password,
               "PGBACKREST_PG1_PORT": str(port), "PGBACKREST_PG1_USER": user}  # fmt: skip
        command = ["pgbackrest", f"--config={self.postgres_home / 'pgbackrest.conf'}", f"--stanza={STANZA}", *args]
        user_of = "postgres" if os.geteuid() == 0 else None
        self._running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                         user=user_of)  # fmt: skip
        try:
            out, err = self._running.communicate(timeout=6 * 3600)
        finally:
            if self._running.poll() is None:
                self._running.kill()
                self._running.wait()
        if self._running.returncode != 0:
            raise OSError(f"pgbackrest {args[0]} failed: {err.decode(errors='replace')[-300:]}")
        return out
