"""pgBackRest: the one way the operator reads a Platform's WAL archive and restores a cluster from it.

pgBackRest is a program, not a library (the Platform's PostgreSQL runs it to archive), so
this is its transport: the repository's settings go in through the environment (the
store's secret never in argv, where ps shows it, nor in a file), /etc/pgbackrest.conf is
never read (``--config=/dev/null``), every call is bounded in time and in the output
read, and a failure becomes a PermanentError or RetryableError quoting only the tail of
pgBackRest's own error line (it redacts keys itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.clients.s3 import S3Server
from controller.errors import PermanentError, RetryableError
from schemas.platform import PointInTimeArchive

INFO_TIMEOUT_SECONDS = 60.0
# `info` of a stanza is a few KiB per base backup; more than this is not an answer we read.
INFO_LIMIT_BYTES = 4 * 1024 * 1024
_ERROR_SHOWN = 300


@dataclass(frozen=True)
class Repository:
    """A stanza's repository in the backup store, as pgBackRest's environment names it."""

    server: S3Server
    bucket: str
    archive: PointInTimeArchive

    def check(self) -> None:
        """pgBackRest speaks to S3 over HTTPS only: say so, rather than time out."""
        if not self.server.secure:
            raise PermanentError(
                "pgBackRest reaches its S3 repository over HTTPS only: the backup store needs secure: true (and"
                " caSecretRef when its certificate is signed by a CA of your own)",
                reason="ArchiveStoreNotTls",
            )

    def environment(self, scratch: Path) -> dict[str, str]:
        """What pgBackRest runs with; ``scratch`` (private to the run) holds the CA file, locks and spool."""
        self.check()
        host, _, port = self.server.endpoint.rpartition(":")
        access, secret = self.server.credentials
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8",
            "PGBACKREST_STANZA": self.archive.stanza, "PGBACKREST_REPO1_TYPE": "s3",
            "PGBACKREST_REPO1_PATH": self.archive.repo_path, "PGBACKREST_REPO1_S3_BUCKET": self.bucket,
            # pgBackRest matches the host against the certificate's DNS names only (an IP needs DNS:<ip> too).
            "PGBACKREST_REPO1_S3_ENDPOINT": host, "PGBACKREST_REPO1_STORAGE_PORT": port,
            "PGBACKREST_REPO1_S3_REGION": self.archive.region, "PGBACKREST_REPO1_S3_URI_STYLE": "path",
            "PGBACKREST_REPO1_S3_KEY": access, "PGBACKREST_REPO1_S3_KEY_SECRET": secret,
            "PGBACKREST_LOG_LEVEL_CONSOLE": "error", "PGBACKREST_LOG_LEVEL_STDERR": "error",
            "PGBACKREST_LOG_LEVEL_FILE": "off", "PGBACKREST_LOCK_PATH": str(scratch),
            "PGBACKREST_SPOOL_PATH": str(scratch), "PGBACKREST_IO_TIMEOUT": "30",
        }  # fmt: skip
        if self.server.ca_pem:
            ca = scratch / "store-ca.crt"
            ca.write_text(self.server.ca_pem)
            env["PGBACKREST_REPO1_STORAGE_CA_FILE"] = str(ca)
        return env


def run(command: list[str], env: dict[str, str], timeout: float, limit: int = INFO_LIMIT_BYTES,
        user: str | None = None) -> bytes:  # fmt: skip
    """Run one pgBackRest command (as ``user`` when given); its stdout up to ``limit``, or our error."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            done = subprocess.run(["pgbackrest", "--config=/dev/null", *command], stdout=out, stderr=err, env=env,
                                  timeout=timeout, user=user)  # fmt: skip
        except FileNotFoundError:
            raise PermanentError("pgBackRest is not installed where the operator runs (the operator image has it;"
                                 " apt-get install pgbackrest)", reason="PgBackRestMissing") from None  # fmt: skip
        except subprocess.TimeoutExpired:
            raise RetryableError(f"pgBackRest {command[0]} took longer than {timeout:.0f}s",
                                 reason="ArchiveUnavailable") from None  # fmt: skip
        if done.returncode != 0:
            raise RetryableError(f"pgBackRest {command[0]} failed: {_error_line(err)}", reason="ArchiveUnavailable")
        out.seek(0)
        return out.read(limit + 1)


def _error_line(err: Any) -> str:
    err.seek(0)
    lines = [line for line in err.read(64 * 1024).decode(errors="replace").splitlines() if "ERROR" in line]
    return (lines[-1] if lines else "no error line")[-_ERROR_SHOWN:].strip()


@dataclass(frozen=True)
class ArchiveInfo:
    """What the repository holds: its base backups' span, and the newest WAL archived."""

    oldest_backup_at: datetime | None
    newest_backup_at: datetime | None
    base_backups: int
    newest_wal: str | None


def info(repo: Repository, timeout: float = INFO_TIMEOUT_SECONDS) -> ArchiveInfo:
    """Blocking: the stanza's base backups and archive, read from the store."""
    with tempfile.TemporaryDirectory(prefix="codeb-pgbackrest-") as scratch:
        raw = run(["info", "--output=json"], repo.environment(Path(scratch)), timeout)
    if len(raw) > INFO_LIMIT_BYTES:
        raise RetryableError("pgBackRest info answered more than 4 MiB; not read", reason="ArchiveUnavailable")
    return parse_info(raw, repo.archive.stanza)


def parse_info(raw: bytes, stanza: str) -> ArchiveInfo:
    """The stanza's entry of `pgbackrest info --output=json`; an empty ArchiveInfo when it has none."""
    try:
        stanzas = json.loads(raw)
    except ValueError:
        raise RetryableError("pgBackRest info did not answer JSON", reason="ArchiveUnavailable") from None
    entry = next((s for s in stanzas if isinstance(s, dict) and s.get("name") == stanza), None) if isinstance(
        stanzas, list) else None  # fmt: skip
    if entry is None:
        return ArchiveInfo(None, None, 0, None)
    stops = sorted(
        datetime.fromtimestamp(int(b["timestamp"]["stop"]), UTC)
        for b in entry.get("backup") or []
        if isinstance(b, dict) and not b.get("error") and isinstance((b.get("timestamp") or {}).get("stop"), int)
    )
    wals = [str(a["max"]) for a in entry.get("archive") or [] if isinstance(a, dict) and a.get("max")]
    return ArchiveInfo(stops[0] if stops else None, stops[-1] if stops else None, len(stops),
                       max(wals) if wals else None)  # fmt: skip


def restore_arguments(moment: datetime, data: Path) -> list[str]:
    """Restore the cluster as it was at ``moment`` into ``data``; it promotes there and archives nothing
    (a side instance never writes into the archive it came from)."""
    target = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    return ["restore", f"--pg1-path={data}", "--type=time", f"--target={target}", "--target-action=promote",
            "--archive-mode=off"]  # fmt: skip
