"""The Redis driver against a real redis-server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError

from controller.drivers import DriverContext
from controller.drivers.redis import PASSWORD_KEY, RedisDriver
from controller.errors import RetryableError
from controller.planner import Component, desired_state
from controller.secrets import MemorySecrets
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
    secret = await secrets.read("team", ctx.allocations.connection_secret or "") or {}
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
    secret = await secrets.read("team", "cart-staging-connection") or {}
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
    before = await secrets.read("team", "lost-staging-connection")
    redis.Redis(host=server.host, port=server.port, password=server.password).execute_command(
        "ACL", "DELUSER", "lost-staging"
    )
    assert (await driver.observe(ctx)).state is None
    await converge(driver, ctx, spec)
    assert await secrets.read("team", "lost-staging-connection") == before


async def test_db_index_mode(driver: RedisDriver, secrets: MemorySecrets, server: RedisServer) -> None:
    spec = ProjectSpec.model_validate(
        {**context("legacy", features={"redis": {"isolation": "dbIndex"}})[1].model_dump(by_alias=True)}
    )
    ctx, _ = context("legacy", features={"redis": {"isolation": "dbIndex"}})
    ctx = DriverContext(ctx.key, ctx.instance, ctx.allocations.model_copy(update={"redis_db_index": 3}))
    await converge(driver, ctx, spec)
    secret = await secrets.read("team", "legacy-staging-connection") or {}
    assert secret["REDIS_URL"].endswith("/3")


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
