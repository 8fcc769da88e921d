"""Sessions with one PostgreSQL server: bounded in number and time, and one translation of its errors.

The operator's superuser sessions pin ``search_path=pg_catalog`` in the startup packet,
which outranks every ``ALTER DATABASE``/``ALTER ROLE ... SET`` a tenant can make; a
tenant's own session (`as_user`) is what the operator uses inside a tenant's database.
Every session has a statement timeout, and at most ``concurrency`` are open at once
(resuming 1,000 Projects must not open 3,000). No psycopg text reaches our errors: a
server message can quote the statement that failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg

from controller.errors import PermanentError, RetryableError

CONNECT_TIMEOUT_SECONDS = 5
STATEMENT_TIMEOUT_SECONDS = 30.0
CONCURRENCY = 8

Connection = psycopg.AsyncConnection[Any]


class PostgresServer:
    """One server, as the operator's superuser and as the tenants' roles."""

    def __init__(
        self,
        host: str,
        port: int,
        admin_user: str,
        admin_password: str,
        statement_timeout: float = STATEMENT_TIMEOUT_SECONDS,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.host, self.port = host, port
        self.admin_login = (admin_user, admin_password)
        self._statement_timeout_ms = int(statement_timeout * 1000)
        self._slots = asyncio.Semaphore(concurrency)

    @asynccontextmanager
    async def admin(self) -> AsyncIterator[Connection]:
        """A superuser session in the ``postgres`` database, its ``search_path`` pinned."""
        async with self._slots:
            conn = await self._open("postgres", *self.admin_login, " -c search_path=pg_catalog")
            try:
                with self._translated():
                    yield conn
            finally:
                await conn.close()

    @asynccontextmanager
    async def as_user(self, dbname: str, user: str, password: str | None) -> AsyncIterator[Connection | None]:
        """A session as ``user`` in ``dbname``, or None when there is no password or the login fails."""
        async with self._slots:
            try:
                conn = await self._open(dbname, user, password) if password else None
            except RetryableError:
                conn = None
            if conn is None:
                yield None
                return
            try:
                with self._translated():
                    yield conn
            finally:
                await conn.close()

    async def _open(self, dbname: str, user: str, password: str, options: str = "") -> Connection:
        try:
            return await psycopg.AsyncConnection.connect(
                host=self.host, port=self.port, dbname=dbname, user=user, password=password, autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_SECONDS, options=f"-c statement_timeout={self._statement_timeout_ms}"
                + options,
            )  # fmt: skip
        except psycopg.Error:
            raise RetryableError(
                f"PostgreSQL at {self.host}:{self.port} is unreachable or refused the login",
                reason="DatabaseUnavailable",
            ) from None

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """The one translation of this transport's errors into ours."""
        try:
            yield
        except (psycopg.OperationalError, psycopg.errors.QueryCanceled):
            raise RetryableError(
                f"PostgreSQL at {self.host}:{self.port} dropped the session or timed out",
                reason="DatabaseUnavailable",
            ) from None
        except psycopg.Error as exc:
            raise PermanentError(
                f"PostgreSQL refused a statement (SQLSTATE {exc.sqlstate or 'unknown'})", reason="DatabaseRefused"
            ) from None
