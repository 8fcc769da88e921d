"""PostgreSQL: one database and one owner role per Project, isolated from the others.

Ownership is explicit. The role is created together with its marker comment
``{"managedBy": "codeb", "project": "<namespace>/<name>", "uid": ...}`` in one
transaction, so no crash leaves an unmarked role behind. The database is created
owned by that role and then gets the same marker (plus the extensions the operator
made, so extensions a DBA added by hand are neither drift nor dropped); a database
that lacks its marker but is owned by our marked role is ours (a crash between
the two statements), and is marked on the next pass. A database or role of that
name with another Project's marker, or none, is never touched (``NotOwned``).

Ownership follows the Project's namespace/name, not its uid, so data retained by
``deletionPolicy: Retain`` is re-adopted by a Project re-created under the same
name (the ordinary GitOps delete-and-apply), and refused to anyone else.

Passwords reach the server only as SCRAM-SHA-256 verifiers computed here: the
statement log, ``pg_stat_activity`` and error messages never carry the plaintext.

A tenant owns its database, so it can set that database's ``search_path`` and plant
views and functions named like the catalog's. The operator's superuser therefore never
runs a statement inside a tenant's database: what it reads there (installed extensions)
and what it makes there (extensions, which PostgreSQL allows a database owner when they
are marked trusted) goes through the tenant's own role. Every superuser session pins
``search_path=pg_catalog`` in its startup packet, which outranks database and role
settings, and names catalog objects with their schema. The only superuser session in a
tenant's database is the final ``pg_dump``, which clears ``search_path`` itself.
Deletion locks the role out first, then drops the database, then the role: a crash
at any step leaves nothing that can still log in.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
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

from controller.clients.postgres import (
    CONCURRENCY,
    CONNECT_TIMEOUT_SECONDS,
    STATEMENT_TIMEOUT_SECONDS,
    Connection,
    PostgresServer,
)
from controller.errors import PermanentError, RetryableError
from controller.loop.interface import DriverContext, DumpSink
from controller.loop.planner import Component, Observation, State
from controller.loop.secrets import SecretStore, ensure_password
from controller.specs.backups import final_dump_key

PASSWORD_KEY = "DATABASE_PASSWORD"
DUMP_TIMEOUT_SECONDS = 1800.0
SCRAM_ITERATIONS = 4096


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802, RFC 7677)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


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
        statement_timeout: float = STATEMENT_TIMEOUT_SECONDS,
        concurrency: int = CONCURRENCY,
        allowed_extensions: frozenset[str] | None = None,
    ) -> None:
        self._server = PostgresServer(host, port, admin_user, admin_password, statement_timeout, concurrency)
        # Shared with the backup driver: one bound on sessions to this server.
        self.server = self._server
        # None: whatever PostgreSQL lets a database owner create (the extensions it marks trusted).
        self._allowed_extensions = allowed_extensions
        self._secrets = secrets
        self._dump_sink = dump_sink

    @asynccontextmanager
    async def _as_tenant(self, ctx: DriverContext, role: str, dbname: str) -> AsyncIterator[Connection | None]:
        """A session as the Project's own role in its database, or None when that login fails."""
        async with self._server.as_user(dbname, role, await self._password(ctx)) as conn:
            yield conn

    async def _password(self, ctx: DriverContext) -> str | None:
        secret = await self._secrets.read(ctx)
        return (secret or {}).get(PASSWORD_KEY)

    # ------------------------------------------------------------------ observe

    async def observe(self, ctx: DriverContext) -> Observation:
        name, role = ctx.allocations.database, ctx.allocations.database_role
        if name is None or role is None:
            return Observation()
        async with self._server.admin() as conn:
            version = await _server_major(conn)
            found = await _database(conn, name)
            if found is None:
                # A role without its database: made first on create, dropped last on delete.
                role_ours = _is_ours(ctx, await _role_marker(conn, role) or {})
                return Observation(leftovers=(f"role {role}",) if role_ours else ())
            owner, comment, acl, _ = found
            _check_owner(ctx, "database", name, _database_marker(found))
            marker = _marker(comment)
            role_row = await (await conn.execute(
                "SELECT rolconnlimit FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)
            )).fetchone()  # fmt: skip
        installed: set[str] = set()
        login = False
        if role_row is not None:
            async with self._as_tenant(ctx, role, name) as tenant:
                if tenant is not None:
                    login = True
                    rows = await (await tenant.execute("SELECT extname FROM pg_catalog.pg_extension")).fetchall()
                    installed = {str(r[0]) for r in rows}
        return Observation(
            state={
                "name": name,
                "role": role if role_row is not None and owner == role else None,
                "version": str(version),
                "extensions": sorted(set(marker.get("extensions", [])) & installed),
                "connectionLimit": role_row[0] if role_row else None,
                "publicConnectRevoked": not _public_can_connect(acl),
                # A marker written for an earlier Project of this name: re-adopted on apply.
                "loginWorks": login and marker.get("uid") == ctx.key.uid,
            }
        )

    # ------------------------------------------------------------------ apply

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        name, role = str(desired["name"]), str(desired["role"])
        # The Secret first: a crash after this line leaves a password the role will get.
        password = await ensure_password(self._secrets, ctx, PASSWORD_KEY)
        async with self._server.admin() as conn:
            major = await _server_major(conn)
            if str(major) != desired["version"]:
                raise PermanentError(
                    f"the shared PostgreSQL runs version {major}; set spec.features.database.version to {major}",
                    reason="VersionMismatch",
                )
            await self._ensure_role(conn, ctx, role, password, int(desired["connectionLimit"]))
            await self._ensure_database(conn, ctx, name, role)
        await self._ensure_extensions(ctx, role, name, list(desired["extensions"]))
        async with self._server.admin() as conn:
            await _comment(conn, "DATABASE", name, _new_marker(ctx, list(desired["extensions"])))
        await self._secrets.merge(ctx, {
            "DATABASE_URL": f"postgresql://{role}:{password}@{self._server.host}:{self._server.port}/{name}",
            "DATABASE_NAME": name, "DATABASE_USER": role,
        })  # fmt: skip

    async def _ensure_role(
        self, conn: psycopg.AsyncConnection[Any], ctx: DriverContext, role: str, password: str, limit: int
    ) -> None:
        marker = await _role_marker(conn, role)
        settings = sql.SQL("LOGIN PASSWORD {} CONNECTION LIMIT {}").format(
            sql.Literal(scram_verifier(password)), sql.Literal(limit)
        )
        if marker is None:
            # The marker is part of the create: both commit, or neither.
            async with conn.transaction():
                await conn.execute(sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(role), settings))
                await _comment(conn, "ROLE", role, _new_marker(ctx))
            return
        _check_owner(ctx, "role", role, marker)
        async with conn.transaction():
            await conn.execute(sql.SQL("ALTER ROLE {} {}").format(sql.Identifier(role), settings))
            await _comment(conn, "ROLE", role, _new_marker(ctx))

    async def _ensure_database(self, conn: psycopg.AsyncConnection[Any], ctx: DriverContext, name: str,
                               role: str) -> None:  # fmt: skip
        found = await _database(conn, name)
        ident = sql.Identifier(name)
        if found is None:
            # Owned by our marked role from the first moment: that is the marker until
            # the comment is written (a crash in between is recognised, not refused).
            await conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, sql.Identifier(role)))
        else:
            _check_owner(ctx, "database", name, _database_marker(found))
        await conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident, sql.Identifier(role)))
        await conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(ident))
        await conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(ident, sql.Identifier(role)))

    async def _ensure_extensions(self, ctx: DriverContext, role: str, name: str, wanted: list[str]) -> None:
        """Each extension made by the Project's own role: PostgreSQL lets an owner make the trusted ones only."""
        if not wanted:
            return
        refused = sorted(set(wanted) - self._allowed_extensions) if self._allowed_extensions is not None else []
        if refused:
            raise PermanentError(
                f"spec.features.database.extensions: {', '.join(refused)} not allowed by the Platform "
                f"(allowed: {', '.join(sorted(self._allowed_extensions or ())) or 'none'}); remove them",
                reason="ExtensionNotAllowed",
            )
        async with self._as_tenant(ctx, role, name) as tenant:
            if tenant is None:
                raise RetryableError(f"role {role} cannot log in to {name} yet", reason="DatabaseUnavailable")
            for extension in wanted:
                await _create_extension(tenant, extension)

    # ------------------------------------------------------------------ delete

    async def _final_dump(self, ctx: DriverContext, name: str) -> None:
        if self._dump_sink is None:
            raise PermanentError(
                f"backups are on, so {name} is dumped before it is dropped, but the Platform has no "
                "store to keep the dump; add spec.backup (or spec.objectStorage) to the Platform, or set "
                "spec.backup.enabled: false in the Project to drop without a final dump",
                reason="NoPlaceForFinalDump",
            )
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / f"{name}.dump"
            server = self._server
            await _run_pg_dump(server.host, server.port, *server.admin_login, name, target)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            await self._dump_sink(final_dump_key(ctx.key, name, stamp), target)

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        """Lock the role out, keep a final dump if asked, drop the database, drop the role."""
        name, role = ctx.allocations.database, ctx.allocations.database_role
        if retain or name is None or role is None:
            return  # released: data, role and markers stay for a Project of the same name
        async with self._server.admin() as conn:
            role_ours = _is_ours(ctx, await _role_marker(conn, role) or {})
            found = await _database(conn, name)
            database_ours = found is not None and _is_ours(ctx, _database_marker(found))
            if found is not None and not database_ours:
                return  # not ours: never dropped, and neither is a role of that name
            if role_ours:
                await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(sql.Identifier(role)))
            if database_ours:
                if ctx.final_dump:
                    await self._final_dump(ctx, name)
                await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if role_ours:
                await conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


async def _create_extension(tenant: psycopg.AsyncConnection[Any], extension: str) -> None:
    field = "spec.features.database.extensions"
    try:
        await tenant.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension)))
    except (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedFile, psycopg.errors.UndefinedObject):
        raise PermanentError(f"{field}: {extension} is not available on the shared PostgreSQL; remove it",
                             reason="ExtensionUnavailable") from None  # fmt: skip
    except psycopg.errors.InsufficientPrivilege:
        raise PermanentError(
            f"{field}: {extension} is not a trusted extension, so only a superuser may create it; remove it, "
            "or ask the Platform's DBA to create it in the database by hand",
            reason="ExtensionNotAllowed",
        ) from None


async def _server_major(conn: psycopg.AsyncConnection[Any]) -> int:
    row = await (await conn.execute("SELECT pg_catalog.current_setting('server_version_num')")).fetchone()
    return int((row or ("0",))[0]) // 10000


async def _database(conn: psycopg.AsyncConnection[Any], name: str) -> tuple[str, str | None, Any, str | None] | None:
    """(owner, marker comment, acl, owner role's marker comment) of a database, or None."""
    row = await (await conn.execute(
        "SELECT pg_catalog.pg_get_userbyid(d.datdba), pg_catalog.shobj_description(d.oid, 'pg_database'), "
        "d.datacl::pg_catalog.text[], pg_catalog.shobj_description(d.datdba, 'pg_authid') "
        "FROM pg_catalog.pg_database d WHERE d.datname = %s", (name,),
    )).fetchone()  # fmt: skip
    return None if row is None else (row[0], row[1], row[2], row[3])


async def _comment(conn: psycopg.AsyncConnection[Any], kind: str, name: str, marker: dict[str, Any]) -> None:
    await conn.execute(sql.SQL("COMMENT ON {} {} IS {}").format(
        sql.SQL(kind), sql.Identifier(name), sql.Literal(json.dumps(marker, sort_keys=True))))  # fmt: skip


async def _run_pg_dump(host: str, port: int, user: str, password: str, dbname: str, target: Path) -> None:
    # The password goes through the environment, never the command line (visible in ps).
    proc = await asyncio.create_subprocess_exec(
        "pg_dump", "--format=custom", f"--file={target}", f"--host={host}", f"--port={port}",
        f"--username={user}", "--no-password", dbname,
        env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_SECONDS)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.wait_for(proc.wait(), DUMP_TIMEOUT_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RetryableError(f"pg_dump of {dbname} took longer than {DUMP_TIMEOUT_SECONDS:.0f}s",
                             reason="FinalDumpFailed") from None  # fmt: skip
    if proc.returncode != 0:
        raise RetryableError(f"pg_dump of {dbname} failed (exit {proc.returncode})", reason="FinalDumpFailed")


def _new_marker(ctx: DriverContext, extensions: list[str] | None = None) -> dict[str, Any]:
    marker: dict[str, Any] = {"managedBy": "codeb", "project": str(ctx.key), "uid": ctx.key.uid}
    if extensions is not None:
        marker["extensions"] = sorted(extensions)
    return marker


async def _role_marker(conn: psycopg.AsyncConnection[Any], role: str) -> dict[str, Any] | None:
    """The role's marker ({} when unmarked), or None when there is no such role."""
    row = await (await conn.execute(
        "SELECT pg_catalog.shobj_description(oid, 'pg_authid') FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)
    )).fetchone()  # fmt: skip
    return None if row is None else _marker(row[0])


def _database_marker(found: tuple[str, str | None, Any, str | None]) -> dict[str, Any]:
    """A database's own marker, else its owner role's: unmarked but owned by our role is a crash in between."""
    _, comment, _, owner_comment = found
    return _marker(comment) or _marker(owner_comment)


def _is_ours(ctx: DriverContext, marker: dict[str, Any]) -> bool:
    return marker.get("project") == str(ctx.key)


def _check_owner(ctx: DriverContext, kind: str, name: str, marker: dict[str, Any]) -> None:
    if _is_ours(ctx, marker):
        return
    holder = marker.get("project")
    whose = f"it holds data of Project {holder}" if holder else "it was not created by the operator"
    raise PermanentError(
        f"{kind} {name} exists but {whose}; rename the project (spec.project.slug) or remove that {kind} by hand",
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
