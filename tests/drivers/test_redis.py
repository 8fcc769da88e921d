"""The Redis driver against a real redis-server on loopback."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from controller.drivers.redis import LEGACY_OWNER_KEY, OWNER_KEY, PASSWORD_KEY, RedisDriver
from controller.errors import PermanentError, RetryableError
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, desired_state, plan_deletion
from controller.loop.secrets import MemorySecrets
from schemas.project import ProjectSpec
from tests.drivers_common import context
from tests.servers import RedisServer, start_redis


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = start_redis()
    yield srv
    srv.stop()


@pytest.fixture()
def driver(server: RedisServer, secrets: MemorySecrets) -> RedisDriver:
    return RedisDriver(server.host, server.port, server.password, secrets)


def want(ctx: DriverContext, spec: ProjectSpec) -> Any:
    return desired_state(spec, ctx.allocations)[Component.cache]


async def converge(driver: RedisDriver, ctx: DriverContext, spec: ProjectSpec) -> None:
    await driver.apply(ctx, want(ctx, spec))
    assert (await driver.observe(ctx)).state == want(ctx, spec)


async def client_for(secrets: MemorySecrets, ctx: DriverContext, server: RedisServer) -> redis.Redis:
    secret = secrets.stored("team", ctx.allocations.connection_secret or "") or {}
    return redis.Redis(host=server.host, port=server.port, username=ctx.allocations.redis_user,
                       password=secret[PASSWORD_KEY])  # fmt: skip


async def test_user_is_confined_to_its_prefix(driver: RedisDriver, secrets: MemorySecrets, server: RedisServer) -> None:
    a, a_spec = context("cart", features={"redis": {}})
    b, b_spec = context("auth", features={"redis": {}})
    await converge(driver, a, a_spec)
    await converge(driver, b, b_spec)
    cart = await client_for(secrets, a, server)
    cart.set("cart-staging:basket:1", "3")
    assert cart.get("cart-staging:basket:1") == b"3"
    with pytest.raises(NoPermissionError):
        cart.get("auth-staging:session:1")  # B's keys are refused
    with pytest.raises(NoPermissionError):
        cart.flushall()  # and so are dangerous commands
    with pytest.raises(NoPermissionError):
        cart.keys("*")
    secret = secrets.stored("team", "cart-staging-connection") or {}
    assert secret["REDIS_PREFIX"] == "cart-staging:" and secret["REDIS_URL"].startswith("redis://cart-staging:")


async def test_widened_acl_is_drift_and_repaired(driver: RedisDriver, server: RedisServer) -> None:
    ctx, spec = context("wide", features={"redis": {}})
    await converge(driver, ctx, spec)
    admin = redis.Redis(host=server.host, port=server.port, password=server.password)
    admin.execute_command("ACL", "SETUSER", "wide-staging", "allkeys", "+@all")
    assert (await driver.observe(ctx)).state["aclMatches"] is False  # type: ignore[index]
    await converge(driver, ctx, spec)


async def test_lost_user_after_restart_is_recreated_with_the_same_password(
    driver: RedisDriver, secrets: MemorySecrets, server: RedisServer
) -> None:
    ctx, spec = context("lost", features={"redis": {}})
    await converge(driver, ctx, spec)
    before = secrets.stored("team", "lost-staging-connection")
    redis.Redis(host=server.host, port=server.port, password=server.password).execute_command(
        "ACL", "DELUSER", "lost-staging"
    )
    assert (await driver.observe(ctx)).state is None
    await converge(driver, ctx, spec)
    assert secrets.stored("team", "lost-staging-connection") == before


# What tenant A tries against tenant B ("auth-staging:") and the server, with A's own credentials.
ATTACKS: list[tuple[str, ...]] = [
    ("GET", "auth-staging:session:1"),
    ("SET", "auth-staging:session:1", "stolen"),
    ("DEL", "auth-staging:session:1"),
    ("EXISTS", "auth-staging:session:1"),
    ("OBJECT", "ENCODING", "auth-staging:session:1"),
    ("WATCH", "auth-staging:session:1"),
    ("RENAME", "cart-staging:basket:1", "auth-staging:session:1"),
    ("COPY", "cart-staging:basket:1", "auth-staging:copy"),
    ("COPY", "cart-staging:basket:1", "cart-staging:copy", "DB", "1"),
    ("MOVE", "cart-staging:basket:1", "1"),
    ("SORT", "cart-staging:list", "BY", "auth-staging:*"),
    ("SELECT", "1"),
    ("SWAPDB", "0", "1"),
    ("SCAN", "0"),
    ("SCAN", "0", "MATCH", "auth-staging:*"),
    ("KEYS", "*"),
    ("RANDOMKEY",),
    ("DBSIZE",),
    ("SUBSCRIBE", "auth-staging:events"),
    ("PSUBSCRIBE", "*"),
    ("PUBLISH", "auth-staging:events", "x"),
    ("PUBSUB", "CHANNELS"),
    ("FLUSHDB",),
    ("FLUSHALL",),
    ("FUNCTION", "FLUSH"),
    ("FUNCTION", "DELETE", "lib"),
    ("EVAL", "return redis.call('GET', 'auth-staging:session:1')", "0"),
    ("CONFIG", "GET", "requirepass"),
    ("ACL", "LIST"),
    ("INFO", "keyspace"),
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "USER", "auth-staging"),
    ("CLIENT", "TRACKING", "ON", "BCAST"),
    ("MIGRATE", "127.0.0.1", "1", "auth-staging:session:1", "0", "100"),
]


async def test_isolation_holds_against_every_attack(
    driver: RedisDriver, secrets: MemorySecrets, server: RedisServer
) -> None:
    a, a_spec = context("cart", features={"redis": {}})
    b, b_spec = context("auth", features={"redis": {}})
    await converge(driver, a, a_spec)
    await converge(driver, b, b_spec)
    victim = await client_for(secrets, b, server)
    victim.set("auth-staging:session:1", "secret-value")
    attacker = await client_for(secrets, a, server)
    attacker.set("cart-staging:basket:1", "3")  # its own keys work (the control)
    attacker.rpush("cart-staging:list", "1")
    attacker.publish("cart-staging:events", "ok")
    succeeded = []
    for attack in ATTACKS:
        fresh = await client_for(secrets, a, server)  # a refused SUBSCRIBE must not taint the next try
        try:
            fresh.execute_command(*attack)
        except NoPermissionError:
            continue  # refused by the ACL
        except ResponseError:
            pass  # the ACL let it run; the command itself then failed
        finally:
            fresh.close()
        succeeded.append(" ".join(attack))
    assert succeeded == [], f"{len(succeeded)} of {len(ATTACKS)} attacks got through: {succeeded}"
    assert victim.get("auth-staging:session:1") == b"secret-value"
    assert attacker.get("cart-staging:basket:1") == b"3"  # nothing moved or copied away


async def test_secret_url_needs_no_database_switch(
    driver: RedisDriver, secrets: MemorySecrets, server: RedisServer
) -> None:
    ctx, spec = context("url", features={"redis": {}})
    await converge(driver, ctx, spec)
    secret = secrets.stored("team", "url-staging-connection") or {}
    client = redis.Redis.from_url(secret["REDIS_URL"])
    client.set("url-staging:k", "v")  # the URL as an application uses it: no SELECT needed
    assert client.get("url-staging:k") == b"v"


async def test_delete_resumes_after_a_crash_mid_scan(
    driver: RedisDriver, secrets: MemorySecrets, server: RedisServer
) -> None:
    """The world a crash leaves mid-delete: the user locked out, some of its keys still there."""
    ctx, spec = context("half", features={"redis": {}})
    await converge(driver, ctx, spec)
    (await client_for(secrets, ctx, server)).mset({f"half-staging:{i}": i for i in range(1200)})
    admin = redis.Redis(host=server.host, port=server.port, password=server.password)
    admin.execute_command("ACL", "SETUSER", "half-staging", "off")
    admin.delete(*[f"half-staging:{i}" for i in range(600)])
    with pytest.raises(AuthenticationError):
        (await client_for(secrets, ctx, server)).ping()  # locked out while its keys go
    await driver.delete(ctx, retain=False)
    assert admin.keys("half-staging:*") == [] and admin.execute_command("ACL", "GETUSER", "half-staging") is None
    # A crash after the user went but before its marker did: keys left then are still found.
    admin.set(OWNER_KEY.format(user="half-staging"), str(ctx.key))
    admin.set("half-staging:orphan", "1")
    await driver.delete(ctx, retain=False)
    assert admin.get("half-staging:orphan") is None and admin.get(OWNER_KEY.format(user="half-staging")) is None
    # Without a marker nothing is ours to delete: keys of that name are left alone.
    admin.set("half-staging:someone-elses", "1")
    await driver.delete(ctx, retain=False)
    assert admin.get("half-staging:someone-elses") == b"1"


async def test_refusal_text_never_reaches_our_errors(
    driver: RedisDriver, secrets: MemorySecrets, server: RedisServer
) -> None:
    """Redis echoes a bad ACL modifier, password and all; our error must not."""
    ctx, spec = context("echo", features={"redis": {}})
    await converge(driver, ctx, spec)
    password = (secrets.stored("team", "echo-staging-connection") or {})[PASSWORD_KEY]
    with pytest.raises(PermanentError) as exc:
        await driver._call("ACL", "SETUSER", "echo-staging", f"?{password}")  # an invalid modifier
    assert password not in str(exc.value)
    assert password not in "".join(traceback.format_exception(exc.value))  # what a log line would print


async def test_delete_removes_user_and_keys_unless_retained(
    driver: RedisDriver, secrets: MemorySecrets, server: RedisServer
) -> None:
    ctx, spec = context("bye", features={"redis": {}})
    await converge(driver, ctx, spec)
    (await client_for(secrets, ctx, server)).set("bye-staging:k", "v")
    admin = redis.Redis(host=server.host, port=server.port, password=server.password)
    await driver.delete(ctx, retain=True)
    assert admin.get("bye-staging:k") == b"v"  # released: data and user stay
    assert (await client_for(secrets, ctx, server)).ping()
    await driver.delete(ctx, retain=False)
    assert admin.get("bye-staging:k") is None
    with pytest.raises(AuthenticationError):
        (await client_for(secrets, ctx, server)).ping()


async def test_outage_is_retryable(server: RedisServer, secrets: MemorySecrets) -> None:
    ctx, _ = context("down", features={"redis": {}})
    dead = RedisDriver(server.host, 1, server.password, secrets)
    with pytest.raises(RetryableError) as exc:
        await dead.observe(ctx)
    assert exc.value.reason == "CacheUnavailable" and server.password not in exc.value.message


async def test_concurrent_projects_each_converge(driver: RedisDriver) -> None:
    import asyncio

    projects = [context(f"many{i}", features={"redis": {}}) for i in range(8)]
    await asyncio.gather(*[driver.apply(ctx, want(ctx, spec)) for ctx, spec in projects])
    seen = await asyncio.gather(*[driver.observe(ctx) for ctx, _ in projects])
    assert [s.state for s in seen] == [want(ctx, spec) for ctx, spec in projects]


async def test_retained_user_is_readopted_by_the_same_name_only(
    driver: RedisDriver, secrets: MemorySecrets, server: RedisServer
) -> None:
    ctx, spec = context("kept", features={"redis": {}})
    await converge(driver, ctx, spec)
    (await client_for(secrets, ctx, server)).set("kept-staging:cart", "3")
    await driver.delete(ctx, retain=True)
    again = DriverContext(ProjectKey("team", "kept", "a-new-uid"), ctx.allocations)
    await converge(driver, again, spec)
    assert (await client_for(secrets, again, server)).get("kept-staging:cart") == b"3"
    stranger = DriverContext(ProjectKey("other", "kept", "uid-x"), ctx.allocations)
    with pytest.raises(PermanentError, match="holds data of Project team/kept"):
        await driver.apply(stranger, want(stranger, spec))
    await driver.delete(stranger, retain=False)  # and cannot delete it either
    assert (await client_for(secrets, again, server)).get("kept-staging:cart") == b"3"


async def test_foreign_user_is_never_taken_over(driver: RedisDriver, server: RedisServer) -> None:
    ctx, spec = context("ops", features={"redis": {}})
    admin = redis.Redis(host=server.host, port=server.port, password=server.password)
    admin.execute_command("ACL", "SETUSER", "ops-staging", "on", ">the-ops-team", "~*", "+@all")
    with pytest.raises(PermanentError, match="was not created by the operator") as exc:
        await driver.apply(ctx, want(ctx, spec))
    assert exc.value.reason == "NotOwned"
    assert redis.Redis(host=server.host, port=server.port, username="ops-staging", password="the-ops-team").ping()


async def test_a_restarted_redis_is_not_drift_forever(secrets: MemorySecrets) -> None:
    """Redis lists a user's rules in hash order, which a restart reshuffles: still the same rules."""
    own = start_redis()
    try:
        driver = RedisDriver(own.host, own.port, own.password, secrets)
        ctx, spec = context("restart", features={"redis": {}})
        await converge(driver, ctx, spec)  # learns how this Redis renders the rules
        own.stop()
        own.start()  # no persistence: the user is gone and must be made again
        assert (await driver.observe(ctx)).state is None
        await converge(driver, ctx, spec)  # and then it matches, not "differs in aclMatches"
    finally:
        own.stop()


async def test_a_project_named_default_never_touches_the_admin_user(driver: RedisDriver, server: RedisServer) -> None:
    """The live attack: slug ``default``, ``deletionPolicy: Delete``, then delete the Project."""
    ctx, spec = context("default", env="production", features={"redis": {}})
    assert ctx.allocations.redis_user == "default"
    with pytest.raises(PermanentError, match="was not created by the operator") as exc:
        await driver.apply(ctx, want(ctx, spec))
    assert exc.value.reason == "NotOwned"
    for _ in range(2):  # a delete, and its retry after a restart, return at once
        await driver.delete(ctx, retain=False)
    admin = redis.Redis(host=server.host, port=server.port, password=server.password)
    assert admin.ping() and "on" in admin.acl_getuser("default")["flags"]


async def test_slug_codeb_cannot_reach_or_forge_owner_markers(
    driver: RedisDriver, secrets: MemorySecrets, server: RedisServer
) -> None:
    victim, victim_spec = context("bob", env="production", features={"redis": {}})
    await converge(driver, victim, victim_spec)
    attacker, attacker_spec = context("codeb", env="production", features={"redis": {}})
    await converge(driver, attacker, attacker_spec)
    assert attacker.allocations.redis_prefix == "codeb:"
    tenant = await client_for(secrets, attacker, server)
    for command in (["GET", OWNER_KEY.format(user="bob")], ["SET", OWNER_KEY.format(user="bob"), "evil/x"],
                    ["DEL", OWNER_KEY.format(user="bob")]):  # fmt: skip
        with pytest.raises(NoPermissionError):
            tenant.execute_command(*command)
    tenant.set(LEGACY_OWNER_KEY.format(user="bob"), str(attacker.key))  # inside its own prefix: allowed, ignored
    thief = DriverContext(attacker.key, victim.allocations)
    with pytest.raises(PermanentError, match="holds data of Project team/bob"):
        await driver.apply(thief, want(thief, victim_spec))
    await driver.delete(thief, retain=False)
    assert (await client_for(secrets, victim, server)).ping()


async def test_a_legacy_marker_is_moved_out_of_tenant_reach(
    driver: RedisDriver, secrets: MemorySecrets, server: RedisServer
) -> None:
    ctx, spec = context("old", features={"redis": {}})
    await converge(driver, ctx, spec)
    admin = redis.Redis(host=server.host, port=server.port, password=server.password)
    admin.rename(OWNER_KEY.format(user="old-staging"), LEGACY_OWNER_KEY.format(user="old-staging"))
    await converge(driver, ctx, spec)  # an operator upgraded over a user it made before
    assert admin.get(OWNER_KEY.format(user="old-staging")) == str(ctx.key).encode()
    assert admin.get(LEGACY_OWNER_KEY.format(user="old-staging")) is None


async def test_a_kill_between_deleting_the_user_and_its_marker_is_finished(
    driver: RedisDriver, secrets: MemorySecrets, server: RedisServer
) -> None:
    """The world a kill -9 leaves after ACL DELUSER: the marker (and a key) remain; the next pass finishes."""
    ctx, spec = context("halfgone", features={"redis": {}})
    await converge(driver, ctx, spec)
    admin = redis.Redis(host=server.host, port=server.port, password=server.password)
    admin.set("halfgone-staging:left", "1")
    admin.execute_command("ACL", "DELUSER", "halfgone-staging")
    seen = await driver.observe(ctx)
    assert seen.state is None and seen.leftovers == ("owner marker of halfgone-staging",)
    assert [a.verb.value for a in plan_deletion({Component.cache: seen}, retain_data=False).actions] == ["delete"]
    await driver.delete(ctx, retain=False)
    assert admin.get(OWNER_KEY.format(user="halfgone-staging")) is None and admin.get("halfgone-staging:left") is None
    assert (await driver.observe(ctx)).leftovers == ()
