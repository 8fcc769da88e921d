"""The Platform's WAL archive as backups see it: is PostgreSQL archiving, and how far back can it go.

Both are Platform-wide, so one watch per Platform serves every Project's pass: PostgreSQL's
``pg_stat_archiver`` is read at most every 30 s, the archive's contents (`pgbackrest info`,
a process and a few S3 reads) at most every 5 minutes. Only the first read is waited for;
later ones refresh in the background while passes use the last answer, so a store that
hangs (pgBackRest waits up to its I/O timeout) never holds up a pass. What each says is
decided in `controller.loop.backups.archiving_trouble`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from controller.clients import pgbackrest
from controller.clients.postgres import PostgresServer
from controller.errors import CodebError
from controller.loop.backups import ArchiverState
from schemas.status import WalArchiveStatus

ARCHIVER_EVERY_SECONDS = 30.0
INFO_EVERY_SECONDS = 300.0

_ARCHIVER = """SELECT pg_catalog.current_setting('archive_mode'), archived_count, last_archived_wal,
  last_archived_time, failed_count, last_failed_wal, last_failed_time FROM pg_catalog.pg_stat_archiver"""


class WalArchiveWatch:
    """Cached reads of one Platform's archiver and archive."""

    def __init__(self, postgres: PostgresServer | None, repo: pgbackrest.Repository,
                 archiver_every: float = ARCHIVER_EVERY_SECONDS,
                 info_every: float = INFO_EVERY_SECONDS) -> None:  # fmt: skip
        self._postgres, self._repo = postgres, repo
        self._every = {"archiver": archiver_every, "info": info_every}
        self._seen: dict[str, tuple[float, Any]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()

    async def state(self) -> ArchiverState:
        async with self._lock:
            archiver = dict(await self._cached("archiver", self._archiver))
            info, info_error = await self._cached("info", self._info)
        if info is not None and "status" in archiver:
            archiver["status"] = archiver["status"].model_copy(
                update={"base_backups": info.base_backups, "oldest_base_backup_at": info.oldest_backup_at}
            )
        return ArchiverState(**archiver, info_error=info_error)

    async def _cached(self, what: str, read: Any) -> Any:
        seen = self._seen.get(what)
        if seen is None:
            seen = self._seen[what] = (time.monotonic(), await read())
        elif time.monotonic() - seen[0] > self._every_after(what, seen[1]) and what not in self._refreshing:
            self._refreshing[what] = asyncio.create_task(self._refresh(what, read))
        return seen[1]

    async def _refresh(self, what: str, read: Any) -> None:
        try:
            self._seen[what] = (time.monotonic(), await read())
        finally:
            self._refreshing.pop(what, None)

    def _every_after(self, what: str, value: Any) -> float:
        """An archive with no base backup yet (or unreadable) is read again as often as the archiver: the first
        base backup is awaited, not found five minutes late."""
        if what == "info" and (value[0] is None or value[0].base_backups == 0):
            return self._every["archiver"]
        return self._every[what]

    async def _archiver(self) -> dict[str, Any]:
        if self._postgres is None:
            return {"reachable": False, "error": "the Platform declares no PostgreSQL"}
        try:
            async with self._postgres.admin() as conn:
                row = await (await conn.execute(_ARCHIVER)).fetchone()
        except CodebError as exc:
            return {"reachable": False, "error": exc.message}
        mode, archived, wal, at, failed, failed_wal, failed_at = row if row else ("off", 0, None, None, 0, None, None)
        status = WalArchiveStatus(last_archived_wal=wal, last_archived_at=at, last_failed_wal=failed_wal,
                                  last_failed_at=failed_at)  # fmt: skip
        return {"reachable": True, "mode": str(mode), "archived": int(archived or 0), "failed": int(failed or 0),
                "status": status}  # fmt: skip

    async def _info(self) -> tuple[pgbackrest.ArchiveInfo | None, str | None]:
        try:
            return await asyncio.to_thread(pgbackrest.info, self._repo), None
        except CodebError as exc:
            return None, exc.message
        except OSError as exc:  # the process could not be started (its scratch directory, say)
            return None, f"pgBackRest could not run ({type(exc).__name__})"
