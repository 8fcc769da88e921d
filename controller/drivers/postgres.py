"""PostgreSQL: one database and one owner role per Project, isolated from the others.

Ownership is explicit: every database the operator creates carries a comment
``{"managedBy": "codeb", "uid": ..., "extensions": [...]}``. A database of the same
name without that marker (or with another Project's uid) is never touched; the
driver reports it as a permanent ``NotOwned`` error instead. The marker also
records which extensions the operator created, so extensions a DBA added by hand
are neither reported as drift nor dropped.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from controller.drivers import DriverContext, DumpSink
from controller.errors import PermanentError, RetryableError
from controller.planner import Component, Observation, State
from controller.secrets import SecretStore, ensure_password

PASSWORD_KEY = "DATABASE_PASSWORD"


class PostgresDriver:
    component = Component.database

    def __init__(
        self,
        host: str,
        port: int,
        admin_user: str,
        admin_password: str,
        secrets: SecretStore,
        dump_sink: DumpSink | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._admin = (admin_user, admin_password)
        self._secrets = secrets
        self._dump_sink = dump_sink

    # ------------------------------------------------------------------ edges

    @asynccontextmanager
    async def _connect(self, dbname: str = "postgres", user: str | None = None, password: str | None = None
                       ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:  # fmt: skip
        user, password = (user, password) if user else self._admin
        try:
            conn = await psycopg.AsyncConnection.connect(
                host=self._host, port=self._port, dbname=dbname, user=user, password=password,
                autocommit=True, connect_timeout=5,
            )  # fmt: skip
        except psycopg.OperationalError:
            # Not chained: the driver's message may echo connection parameters.
            raise RetryableError(
                f"PostgreSQL at {self._host}:{self._port} is unreachable or refused the login",
                reason="DatabaseUnavailable",
            ) from None
        try:
            yield conn
        finally:
            await conn.close()

    async def _password(self, ctx: DriverContext) -> str | None:
        secret = await self._secrets.read(ctx.key.namespace, ctx.allocations.connection_secret or "")
        return (secret or {}).get(PASSWORD_KEY)

    async def _login_works(self, ctx: DriverContext, role: str, dbname: str) -> bool:
        password = await self._password(ctx)
        if not password:
            return False
        try:
            async with self._connect(dbname, role, password):
                return True
        except RetryableError:
            return False

    # ------------------------------------------------------------------ observe

    async def observe(self, ctx: DriverContext) -> Observation:
        name, role = ctx.allocations.database, ctx.allocations.database_role
        if name is None or role is None:
            return Observation()
        async with self._connect() as conn:
            version = (await (await conn.execute("SHOW server_version_num")).fetchone() or ("0",))[0]
            row = await (await conn.execute(
                "SELECT pg_get_userbyid(d.datdba), shobj_description(d.oid, 'pg_database'), d.datacl::text[] "
                "FROM pg_database d WHERE d.datname = %s", (name,),
            )).fetchone()  # fmt: skip
            if row is None:
                return Observation()
            owner, comment, acl = row
            marker = _marker(comment)
            if marker.get("uid") != ctx.key.uid:
                raise _not_owned(name)
            role_row = await (await conn.execute(
                "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (role,)
            )).fetchone()  # fmt: skip
        async with self._connect(name) as conn:
            installed = {r[0] for r in await (await conn.execute("SELECT extname FROM pg_extension")).fetchall()}
        login = role_row is not None and await self._login_works(ctx, role, name)
        return Observation(
            state={
                "name": name,
                "role": role if role_row is not None and owner == role else None,
                "version": str(int(version) // 10000),
                "extensions": sorted(set(marker.get("extensions", [])) & installed),
                "connectionLimit": role_row[0] if role_row else None,
                "publicConnectRevoked": not _public_can_connect(acl),
                "loginWorks": login,
            }
        )

    # ------------------------------------------------------------------ apply

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        name, role = str(desired["name"]), str(desired["role"])
        # The Secret first: a crash after this line leaves a password the role will get.
        password = await ensure_password(
            self._secrets, ctx.key.namespace, ctx.allocations.connection_secret or "", PASSWORD_KEY
        )
        async with self._connect() as conn:
            major = int((await (await conn.execute("SHOW server_version_num")).fetchone() or ("0",))[0]) // 10000
            if str(major) != desired["version"]:
                raise PermanentError(
                    f"the shared PostgreSQL runs version {major}; set spec.features.database.version to {major}",
                    reason="VersionMismatch",
                )
            await self._ensure_role(conn, role, password, int(desired["connectionLimit"]))
            await self._ensure_database(conn, ctx, name, role, list(desired["extensions"]))
        async with self._connect(name) as conn:
            await self._ensure_extensions(conn, ctx, name, list(desired["extensions"]))
        await self._secrets.merge(ctx.key.namespace, ctx.allocations.connection_secret or "", {
            "DATABASE_URL": f"postgresql://{role}:{password}@{self._host}:{self._port}/{name}",
            "DATABASE_NAME": name, "DATABASE_USER": role,
        })  # fmt: skip

    async def _ensure_role(self, conn: psycopg.AsyncConnection[Any], role: str, password: str, limit: int) -> None:
        exists = await (await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))).fetchone()
        verb = "ALTER" if exists else "CREATE"
        # Passwords cannot be bound parameters in utility statements; sql.Literal quotes safely.
        await conn.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {} CONNECTION LIMIT {}").format(
            sql.SQL(verb), sql.Identifier(role), sql.Literal(password), sql.Literal(limit)))  # fmt: skip

    async def _ensure_database(
        self, conn: psycopg.AsyncConnection[Any], ctx: DriverContext, name: str, role: str, extensions: list[str]
    ) -> None:
        row = await (await conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)
        )).fetchone()  # fmt: skip
        if row is None:
            await conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role))
            )
            await self._mark(conn, ctx, name, [])
        elif _marker(row[0]).get("uid") != ctx.key.uid:
            raise _not_owned(name)
        ident = sql.Identifier(name)
        await conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident, sql.Identifier(role)))
        await conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(ident))
        await conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(ident, sql.Identifier(role)))

    async def _ensure_extensions(
        self, conn: psycopg.AsyncConnection[Any], ctx: DriverContext, name: str, wanted: list[str]
    ) -> None:
        for extension in wanted:
            try:
                await conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension)))
            except psycopg.errors.FeatureNotSupported:
                raise PermanentError(
                    f"extension {extension} is not available on the shared PostgreSQL; "
                    "remove it from spec.features.database.extensions",
                    reason="ExtensionUnavailable",
                ) from None
            except psycopg.errors.UndefinedFile:
                raise PermanentError(
                    f"extension {extension} is not installed on the shared PostgreSQL; "
                    "remove it from spec.features.database.extensions",
                    reason="ExtensionUnavailable",
                ) from None
        async with self._connect() as admin:
            await self._mark(admin, ctx, name, wanted)

    async def _mark(
        self, conn: psycopg.AsyncConnection[Any], ctx: DriverContext, name: str, extensions: list[str]
    ) -> None:
        marker = json.dumps({"managedBy": "codeb", "uid": ctx.key.uid, "extensions": sorted(extensions)})
        await conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(marker)))

    # ------------------------------------------------------------------ delete

    async def _final_dump(self, ctx: DriverContext, name: str) -> None:
        if self._dump_sink is None:
            raise PermanentError(
                f"backups are on, so {name} is dumped before it is dropped, but the Platform has no "
                "objectStorage to keep the dump; add spec.objectStorage to the Platform, or set "
                "spec.backup.enabled: false in the Project to drop without a final dump",
                reason="NoPlaceForFinalDump",
            )
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / f"{name}.dump"
            await _run_pg_dump(self._host, self._port, *self._admin, name, target)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            await self._dump_sink(f"{ctx.key.namespace}/{ctx.key.name}/{name}-{stamp}.dump", target)

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        name, role = ctx.allocations.database, ctx.allocations.database_role
        if retain or name is None or role is None:
            return
        async with self._connect() as conn:
            row = await (await conn.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)
            )).fetchone()  # fmt: skip
            if row is not None:
                if _marker(row[0]).get("uid") != ctx.key.uid:
                    return  # not ours: never dropped
                if ctx.final_dump:
                    await self._final_dump(ctx, name)
                await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            await conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


async def _run_pg_dump(host: str, port: int, user: str, password: str, dbname: str, target: Path) -> None:
    # The password goes through the environment, never the command line (visible in ps).
    proc = await asyncio.create_subprocess_exec(
        "pg_dump", "--format=custom", f"--file={target}", f"--host={host}", f"--port={port}",
        f"--username={user}", "--no-password", dbname,
        env={**os.environ, "PGPASSWORD": password}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await proc.communicate()
    if proc.returncode != 0:
        raise RetryableError(f"pg_dump of {dbname} failed (exit {proc.returncode})", reason="FinalDumpFailed")


def _not_owned(name: str) -> PermanentError:
    return PermanentError(
        f"database {name} exists but was not created by the operator for this Project; "
        "rename the project (spec.project.slug) or drop that database by hand",
        reason="NotOwned",
    )


def _public_can_connect(acl: list[str] | None) -> bool:
    # An aclitem "=c/owner" grants CONNECT to PUBLIC; a NULL acl means the defaults, which do.
    return any(entry.startswith("=") and "c" in entry.split("/")[0] for entry in (acl or ["=c/default"]))


def _marker(comment: str | None) -> dict[str, Any]:
    try:
        value = json.loads(comment or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) and value.get("managedBy") == "codeb" else {}
