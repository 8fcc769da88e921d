"""The PostgreSQL driver against a real PostgreSQL server on loopback."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from controller.drivers import DriverContext
from controller.drivers.postgres import PASSWORD_KEY, PostgresDriver
from controller.errors import PermanentError, RetryableError
from controller.planner import Component, desired_state, plan
from controller.secrets import MemorySecrets
from schemas.project import ProjectSpec
from tests.drivers_common import context
from tests.servers import PostgresServer, start_postgres


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    pg = start_postgres()
    yield pg
    pg.stop()


@pytest.fixture()
def driver(server: PostgresServer, secrets: MemorySecrets) -> PostgresDriver:
    return PostgresDriver(server.host, server.port, server.admin_user, server.admin_password, secrets)


def want(ctx: DriverContext, spec: ProjectSpec) -> Any:
    return desired_state(spec, ctx.allocations)[Component.database]


def project(slug: str, **db: Any) -> tuple[DriverContext, ProjectSpec]:
    return context(slug, features={"database": {"version": "15", **db}})


def connect(server: PostgresServer, user: str, password: str, dbname: str) -> psycopg.Connection[Any]:
    return psycopg.connect(host=server.host, port=server.port, user=user, password=password, dbname=dbname,
                           connect_timeout=5)  # fmt: skip


def admin(server: PostgresServer) -> psycopg.Connection[Any]:
    conn = connect(server, server.admin_user, server.admin_password, "postgres")
    conn.autocommit = True
    return conn


async def converge(driver: PostgresDriver, ctx: DriverContext, spec: ProjectSpec) -> None:
    await driver.apply(ctx, want(ctx, spec))
    assert (await driver.observe(ctx)).state == want(ctx, spec)


async def test_creates_database_role_and_extensions(driver: PostgresDriver, secrets: MemorySecrets,
                                                    server: PostgresServer) -> None:  # fmt: skip
    ctx, spec = project("menu", extensions=["pg_trgm"], connectionLimit=7)
    assert (await driver.observe(ctx)).state is None
    await converge(driver, ctx, spec)
    secret = await secrets.read("team", "menu-staging-connection")
    assert secret is not None and secret["DATABASE_URL"].endswith("/menu_staging_db")
    with connect(server, "menu_staging_user", secret[PASSWORD_KEY], "menu_staging_db") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("menu_staging_user",)
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname='pg_trgm'").fetchone()
    with admin(server) as conn:
        assert conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname='menu_staging_user'").fetchone() == (7,)


async def test_apply_is_idempotent(driver: PostgresDriver, secrets: MemorySecrets) -> None:
    ctx, spec = project("twice")
    await converge(driver, ctx, spec)
    first = await secrets.read("team", "twice-staging-connection")
    await converge(driver, ctx, spec)
    assert await secrets.read("team", "twice-staging-connection") == first  # same password kept


async def test_projects_are_isolated(driver: PostgresDriver, secrets: MemorySecrets, server: PostgresServer) -> None:
    a, a_spec = project("alpha")
    b, b_spec = project("bravo")
    await converge(driver, a, a_spec)
    await converge(driver, b, b_spec)
    a_password = (await secrets.read("team", "alpha-staging-connection") or {})[PASSWORD_KEY]
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        connect(server, "alpha_staging_user", a_password, "bravo_staging_db")


async def test_dropped_role_is_drift_and_repaired(driver: PostgresDriver, server: PostgresServer) -> None:
    ctx, spec = project("dropped")
    await converge(driver, ctx, spec)
    with admin(server) as conn:
        conn.execute("REASSIGN OWNED BY dropped_staging_user TO codeb_admin")
        conn.execute("DROP OWNED BY dropped_staging_user")
        conn.execute("DROP ROLE dropped_staging_user")
    seen = await driver.observe(ctx)
    [action] = plan({Component.database: want(ctx, spec)}, {Component.database: seen}).actions
    assert "role" in action.reason and "loginWorks" in action.reason
    await converge(driver, ctx, spec)


async def test_widened_connect_grant_is_repaired(driver: PostgresDriver, server: PostgresServer) -> None:
    ctx, spec = project("wide")
    await converge(driver, ctx, spec)
    with admin(server) as conn:
        conn.execute("GRANT CONNECT ON DATABASE wide_staging_db TO PUBLIC")
    assert (await driver.observe(ctx)).state["publicConnectRevoked"] is False  # type: ignore[index]
    await converge(driver, ctx, spec)


async def test_crash_between_role_and_secret_converges(driver: PostgresDriver, secrets: MemorySecrets,
                                                       server: PostgresServer) -> None:  # fmt: skip
    ctx, spec = project("crashy")
    # The world a crash can leave: a role whose password nobody recorded, no Secret.
    with admin(server) as conn:
        conn.execute("CREATE ROLE crashy_staging_user LOGIN PASSWORD 'lost-forever'")
    seen = await driver.observe(ctx)
    assert seen.state is None  # no database yet: the whole component is (re)applied
    await converge(driver, ctx, spec)
    password = (await secrets.read("team", "crashy-staging-connection") or {})[PASSWORD_KEY]
    with connect(server, "crashy_staging_user", password, "crashy_staging_db"):
        pass
    with admin(server) as conn:
        roles = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'crashy%'").fetchone()
    assert roles == (1,)


async def test_changed_password_in_server_is_repaired(driver: PostgresDriver, server: PostgresServer) -> None:
    ctx, spec = project("rotated")
    await converge(driver, ctx, spec)
    with admin(server) as conn:
        conn.execute("ALTER ROLE rotated_staging_user PASSWORD 'someone-else'")
    assert (await driver.observe(ctx)).state["loginWorks"] is False  # type: ignore[index]
    await converge(driver, ctx, spec)


async def test_foreign_database_is_never_touched(driver: PostgresDriver, server: PostgresServer) -> None:
    ctx, spec = project("legacy")
    with admin(server) as conn:
        conn.execute("CREATE DATABASE legacy_staging_db")
    with pytest.raises(PermanentError, match="not created by the operator") as exc:
        await driver.observe(ctx)
    assert exc.value.reason == "NotOwned"
    with pytest.raises(PermanentError):
        await driver.apply(ctx, want(ctx, spec))
    await driver.delete(ctx, retain=False)
    with admin(server) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname='legacy_staging_db'").fetchone()


async def test_version_mismatch_names_the_field(driver: PostgresDriver) -> None:
    ctx, spec = context("old", features={"database": {"version": "17"}})
    with pytest.raises(PermanentError, match=r"spec\.features.database.version"):
        await driver.apply(ctx, want(ctx, spec))


@pytest.mark.parametrize("retain", [True, False])
async def test_delete_follows_policy(driver: PostgresDriver, server: PostgresServer, retain: bool) -> None:
    ctx, spec = project(f"gone{int(retain)}")
    await converge(driver, ctx, spec)
    await driver.delete(ctx, retain=retain)
    with admin(server) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (ctx.allocations.database,)).fetchone()
    assert bool(exists) is retain


async def test_outage_is_retryable_and_recovers(driver: PostgresDriver, server: PostgresServer) -> None:
    ctx, spec = project("outage")
    server.stop()
    try:
        with pytest.raises(RetryableError) as exc:
            await driver.observe(ctx)
        assert exc.value.reason == "DatabaseUnavailable"
        assert server.admin_password not in exc.value.message
    finally:
        server.start()
    await converge(driver, ctx, spec)


async def test_final_dump_is_taken_before_drop(server: PostgresServer, secrets: MemorySecrets, tmp_path: Path) -> None:
    kept: dict[str, Path] = {}

    async def sink(name: str, path: Path) -> str:
        kept[name] = tmp_path / path.name
        shutil.copy(path, kept[name])
        return f"file://{kept[name]}"

    driver = PostgresDriver(server.host, server.port, server.admin_user, server.admin_password, secrets, sink)
    ctx, spec = project("dumped")
    await converge(driver, ctx, spec)
    password = (await secrets.read("team", "dumped-staging-connection") or {})[PASSWORD_KEY]
    with connect(server, "dumped_staging_user", password, "dumped_staging_db") as conn:
        conn.execute("CREATE TABLE menu (dish text)")
        conn.execute("INSERT INTO menu VALUES ('bibimbap')")
        conn.commit()
    await driver.delete(DriverContext(ctx.key, ctx.instance, ctx.allocations, final_dump=True), retain=False)
    [(name, dump)] = kept.items()
    assert name.startswith("team/dumped/dumped_staging_db-")
    listing = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True, check=True).stdout
    assert "TABLE public menu" in listing
    with admin(server) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname='dumped_staging_db'").fetchone() is None


async def test_no_place_for_final_dump_blocks_the_drop(driver: PostgresDriver, server: PostgresServer) -> None:
    ctx, spec = project("nodump")
    await converge(driver, ctx, spec)
    with pytest.raises(PermanentError, match=r"spec\.backup\.enabled: false"):
        await driver.delete(DriverContext(ctx.key, ctx.instance, ctx.allocations, final_dump=True), retain=False)
    with admin(server) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname='nodump_staging_db'").fetchone()
