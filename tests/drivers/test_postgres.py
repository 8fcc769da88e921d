"""The PostgreSQL driver against a real PostgreSQL server on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from controller.drivers.postgres import PASSWORD_KEY, PostgresDriver, _new_marker, scram_verifier
from controller.errors import PermanentError, RetryableError
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, desired_state, plan, plan_deletion
from controller.loop.secrets import MemorySecrets
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
    secret = secrets.stored("team", "menu-staging-connection")
    assert secret is not None and secret["DATABASE_URL"].endswith("/menu_staging_db")
    with connect(server, "menu_staging_user", secret[PASSWORD_KEY], "menu_staging_db") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("menu_staging_user",)
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname='pg_trgm'").fetchone()
    with admin(server) as conn:
        assert conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname='menu_staging_user'").fetchone() == (7,)


async def test_apply_is_idempotent(driver: PostgresDriver, secrets: MemorySecrets) -> None:
    ctx, spec = project("twice")
    await converge(driver, ctx, spec)
    first = secrets.stored("team", "twice-staging-connection")
    await converge(driver, ctx, spec)
    assert secrets.stored("team", "twice-staging-connection") == first  # same password kept


async def test_projects_are_isolated(driver: PostgresDriver, secrets: MemorySecrets, server: PostgresServer) -> None:
    a, a_spec = project("alpha")
    b, b_spec = project("bravo")
    await converge(driver, a, a_spec)
    await converge(driver, b, b_spec)
    a_password = (secrets.stored("team", "alpha-staging-connection") or {})[PASSWORD_KEY]
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
    # The world a crash can leave: our marked role, a password nobody recorded, no Secret, no database.
    with admin(server) as conn:
        conn.execute("CREATE ROLE crashy_staging_user LOGIN PASSWORD 'lost-forever'")
        conn.execute(f"COMMENT ON ROLE crashy_staging_user IS '{json.dumps(_new_marker(ctx))}'")
    seen = await driver.observe(ctx)
    assert seen.state is None  # no database yet: the whole component is (re)applied
    await converge(driver, ctx, spec)
    password = (secrets.stored("team", "crashy-staging-connection") or {})[PASSWORD_KEY]
    with connect(server, "crashy_staging_user", password, "crashy_staging_db"):
        pass
    with admin(server) as conn:
        roles = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'crashy%'").fetchone()
    assert roles == (1,)


async def test_crash_between_create_database_and_marker_converges(
    driver: PostgresDriver, server: PostgresServer
) -> None:
    ctx, spec = project("unmarked")
    await converge(driver, ctx, spec)
    with admin(server) as conn:  # the world a crash right after CREATE DATABASE leaves
        conn.execute("COMMENT ON DATABASE unmarked_staging_db IS NULL")
    seen = await driver.observe(ctx)  # owned by our marked role: ours, not NotOwned
    assert seen.state is not None and seen.state["loginWorks"] is False  # so it is re-applied (re-marked)
    await converge(driver, ctx, spec)


async def test_foreign_role_is_never_taken_over(driver: PostgresDriver, server: PostgresServer) -> None:
    ctx, spec = project("dba")
    with admin(server) as conn:
        conn.execute("CREATE ROLE dba_staging_user LOGIN PASSWORD 'the-dba-knows'")
    with pytest.raises(PermanentError, match="role dba_staging_user exists but it was not created") as exc:
        await driver.apply(ctx, want(ctx, spec))
    assert exc.value.reason == "NotOwned"
    with connect(server, "dba_staging_user", "the-dba-knows", "postgres"):
        pass  # its password was not changed
    await driver.delete(ctx, retain=False)
    with connect(server, "dba_staging_user", "the-dba-knows", "postgres"):
        pass  # nor was it dropped


async def test_retained_data_is_readopted_by_the_same_name_only(
    driver: PostgresDriver, secrets: MemorySecrets, server: PostgresServer
) -> None:
    ctx, spec = project("kept")
    await converge(driver, ctx, spec)
    password = (secrets.stored("team", "kept-staging-connection") or {})[PASSWORD_KEY]
    with connect(server, "kept_staging_user", password, "kept_staging_db") as conn:
        conn.execute("CREATE TABLE orders (id int)")
        conn.commit()
    await driver.delete(ctx, retain=True)
    # Same namespace and name, new uid: the GitOps delete-and-apply.
    again = DriverContext(ProjectKey("team", "kept", "a-new-uid"), ctx.allocations)
    await converge(driver, again, spec)
    with connect(server, "kept_staging_user", password, "kept_staging_db") as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)  # the same data
    # Another Project deriving the same names is refused, naming the holder.
    stranger = DriverContext(ProjectKey("other", "kept", "uid-x"), ctx.allocations)
    with pytest.raises(PermanentError, match="holds data of Project team/kept"):
        await driver.observe(stranger)


async def test_a_crash_during_deletion_leaves_no_working_login(server: PostgresServer, secrets: MemorySecrets) -> None:
    """Crash after the lock-out, before the drop (the dump sink fails), then finish."""

    async def crashing_sink(name: str, path: Path) -> str:
        raise RetryableError("the process died here")

    driver = PostgresDriver(server.host, server.port, server.admin_user, server.admin_password, secrets,
                            crashing_sink)  # fmt: skip
    ctx, spec = project("dying")
    await converge(driver, ctx, spec)
    password = (secrets.stored("team", "dying-staging-connection") or {})[PASSWORD_KEY]
    dumping = DriverContext(ctx.key, ctx.allocations, final_dump=True)
    with pytest.raises(RetryableError):
        await driver.delete(dumping, retain=False)
    with pytest.raises(psycopg.OperationalError):
        connect(server, "dying_staging_user", password, "dying_staging_db")  # locked out already
    await driver.delete(ctx, retain=False)  # the next pass (here without a dump) finishes
    with admin(server) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname='dying_staging_user'").fetchone() is None
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname='dying_staging_db'").fetchone() is None


# What tenant A tries against tenant B and the server, logged in with A's own credentials.
ATTACKS = [
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_ls_dir('.')",
    "COPY (SELECT 1) TO PROGRAM 'true'",
    "SELECT * FROM pg_authid",
    "SET ROLE bob_staging_user",
    "GRANT bob_staging_user TO alice_staging_user",
    "CREATE ROLE intruder",
    "CREATE DATABASE intruder",
    "ALTER ROLE bob_staging_user PASSWORD 'mine'",
    "DROP DATABASE bob_staging_db",
    "CREATE EXTENSION dblink",
]


async def test_isolation_holds_against_every_attack(
    driver: PostgresDriver, secrets: MemorySecrets, server: PostgresServer
) -> None:
    a, a_spec = project("alice")
    b, b_spec = project("bob")
    await converge(driver, a, a_spec)
    await converge(driver, b, b_spec)
    a_password = (secrets.stored("team", "alice-staging-connection") or {})[PASSWORD_KEY]
    b_password = (secrets.stored("team", "bob-staging-connection") or {})[PASSWORD_KEY]
    with connect(server, "bob_staging_user", b_password, "bob_staging_db") as conn:
        conn.execute("CREATE TABLE secrets (v text)")
        conn.execute("INSERT INTO secrets VALUES ('bob-only')")
        conn.commit()
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        connect(server, "alice_staging_user", a_password, "bob_staging_db")  # \c to B's database
    bob = connect(server, "bob_staging_user", b_password, "bob_staging_db")  # a live session to attack
    bob_pid = bob.info.backend_pid
    succeeded = []
    for attack in [*ATTACKS, f"SELECT pg_terminate_backend({bob_pid})", f"SELECT pg_cancel_backend({bob_pid})"]:
        with connect(server, "alice_staging_user", a_password, "alice_staging_db") as conn:
            try:
                conn.execute(attack)
            except psycopg.errors.InsufficientPrivilege:
                continue
            except psycopg.Error:
                continue  # refused for another reason (e.g. the extension is not installed): still refused
            succeeded.append(attack)
    assert succeeded == [], f"{len(succeeded)} attacks got through: {succeeded}"
    with bob:
        assert bob.execute("SELECT v FROM secrets").fetchone() == ("bob-only",)  # still alive, data intact


async def test_passwords_never_reach_the_server_log(
    driver: PostgresDriver, secrets: MemorySecrets, server: PostgresServer
) -> None:
    ctx, spec = project("logged")
    await converge(driver, ctx, spec)
    with admin(server) as conn:
        conn.execute("ALTER ROLE logged_staging_user PASSWORD 'drifted'")
    await converge(driver, ctx, spec)  # repaired: the password is set a second time
    password = (secrets.stored("team", "logged-staging-connection") or {})[PASSWORD_KEY]
    log = server.log()
    assert "ALTER ROLE" in log and "SCRAM-SHA-256$" in log  # statements are logged, as verifiers
    assert password not in log


def test_scram_verifier_matches_postgres(server: PostgresServer) -> None:
    verifier = scram_verifier("correct horse", salt=b"0123456789abcdef")
    with admin(server) as conn:
        conn.execute(f"CREATE ROLE scram_probe LOGIN PASSWORD '{verifier}'")
    try:
        with connect(server, "scram_probe", "correct horse", "postgres"):
            pass
        with pytest.raises(psycopg.OperationalError):
            connect(server, "scram_probe", "wrong horse", "postgres")
    finally:
        with admin(server) as conn:
            conn.execute("DROP ROLE scram_probe")


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
    password = (secrets.stored("team", "dumped-staging-connection") or {})[PASSWORD_KEY]
    with connect(server, "dumped_staging_user", password, "dumped_staging_db") as conn:
        conn.execute("CREATE TABLE menu (dish text)")
        conn.execute("INSERT INTO menu VALUES ('bibimbap')")
        conn.commit()
    await driver.delete(DriverContext(ctx.key, ctx.allocations, final_dump=True), retain=False)
    [(name, dump)] = kept.items()
    assert name.startswith(f"projects/team/dumped/{ctx.key.uid}/final/dumped_staging_db-")
    listing = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True, check=True).stdout
    assert "TABLE public menu" in listing
    with admin(server) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname='dumped_staging_db'").fetchone() is None


async def test_no_place_for_final_dump_blocks_the_drop(driver: PostgresDriver, server: PostgresServer) -> None:
    ctx, spec = project("nodump")
    await converge(driver, ctx, spec)
    with pytest.raises(PermanentError, match=r"spec\.backup\.enabled: false"):
        await driver.delete(DriverContext(ctx.key, ctx.allocations, final_dump=True), retain=False)
    with admin(server) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname='nodump_staging_db'").fetchone()


def _plant_escalation(server: PostgresServer, role: str, password: str, dbname: str) -> None:
    """The live attack: the tenant's database resolves catalog names to its own schema first."""
    with connect(server, role, password, dbname) as conn:
        conn.execute("CREATE SCHEMA evil")
        conn.execute(
            "CREATE FUNCTION evil.escalate() RETURNS text LANGUAGE plpgsql AS "
            f"$$BEGIN EXECUTE 'ALTER ROLE {role} SUPERUSER'; RETURN 'x'; END$$"
        )
        for shadow in ("pg_extension", "pg_roles", "pg_database"):
            conn.execute(f"CREATE VIEW evil.{shadow} AS SELECT evil.escalate() AS extname, 1 AS rolconnlimit")
        conn.execute("CREATE FUNCTION evil.shobj_description(oid, name) RETURNS text LANGUAGE sql AS "
                     "'SELECT evil.escalate()'")  # fmt: skip
        conn.execute(f"ALTER DATABASE {dbname} SET search_path = evil, pg_catalog")
        conn.execute(f"ALTER ROLE {role} SET search_path = evil, pg_catalog")
        conn.commit()
    # Armed: a new session runs it (refused to the tenant, which is no superuser).
    with connect(server, role, password, dbname) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT extname FROM pg_extension")


async def test_a_tenants_search_path_never_runs_its_code_as_superuser(
    driver: PostgresDriver, secrets: MemorySecrets, server: PostgresServer
) -> None:
    ctx, spec = project("mallory", extensions=["pg_trgm"])
    await converge(driver, ctx, spec)
    password = (secrets.stored("team", "mallory-staging-connection") or {})[PASSWORD_KEY]
    _plant_escalation(server, "mallory_staging_user", password, "mallory_staging_db")
    _, spec = project("mallory", extensions=["pg_trgm", "citext"])
    for _ in range(2):  # observe, apply (extensions, markers, grants), observe again
        await driver.apply(ctx, want(ctx, spec))
        await driver.observe(ctx)
    with admin(server) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory_staging_user'").fetchone()
        assert row == (False,)
    with connect(server, "mallory_staging_user", password, "mallory_staging_db") as conn:  # made by the tenant
        made = conn.execute("SELECT extname, pg_catalog.pg_get_userbyid(extowner) FROM pg_catalog.pg_extension "
                            "WHERE extname IN ('pg_trgm', 'citext') ORDER BY 1").fetchall()  # fmt: skip
        assert made == [("citext", "mallory_staging_user"), ("pg_trgm", "mallory_staging_user")]


async def test_extensions_outside_the_platforms_list_or_untrusted_are_refused(
    server: PostgresServer, secrets: MemorySecrets
) -> None:
    listed = PostgresDriver(server.host, server.port, server.admin_user, server.admin_password, secrets,
                            allowed_extensions=frozenset({"pg_trgm", "plpython3u", "dblink"}))  # fmt: skip
    ctx, spec = project("picky", extensions=["citext"])
    with pytest.raises(PermanentError, match=r"spec\.features\.database\.extensions: citext not allowed") as exc:
        await listed.apply(ctx, want(ctx, spec))
    assert exc.value.reason == "ExtensionNotAllowed"
    ctx, spec = project("untrusted", extensions=["dblink"])  # listed, installed, but not trusted
    with pytest.raises(PermanentError, match="not a trusted extension") as exc:
        await listed.apply(ctx, want(ctx, spec))
    assert exc.value.reason == "ExtensionNotAllowed"


async def test_a_kill_between_dropping_the_database_and_the_role_is_finished(
    driver: PostgresDriver, server: PostgresServer
) -> None:
    """The world a kill -9 leaves after DROP DATABASE: the next pass must still see work and drop the role."""
    ctx, spec = project("halfgone")
    await converge(driver, ctx, spec)
    with admin(server) as conn:
        conn.execute("DROP DATABASE halfgone_staging_db")
    seen = await driver.observe(ctx)
    assert seen.state is None and seen.leftovers == ("role halfgone_staging_user",)
    assert [a.verb.value for a in plan_deletion({Component.database: seen}, retain_data=False).actions] == ["delete"]
    await driver.delete(ctx, retain=False)
    with admin(server) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname='halfgone_staging_user'").fetchone() is None
    assert (await driver.observe(ctx)).leftovers == ()
