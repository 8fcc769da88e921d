"""The MinIO driver against a real MinIO server (built from the Go module proxy) on loopback."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from minio import Minio
from minio.credentials import StaticProvider
from minio.error import S3Error
from minio.minioadmin import MinioAdmin

from controller.drivers.minio import SECRET_KEY, MinioDriver, access_key
from controller.errors import PermanentError, RetryableError
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, desired_state, plan_deletion
from controller.loop.secrets import MemorySecrets
from schemas.project import ProjectSpec
from tests.drivers_common import context
from tests.servers import MinioServer, start_minio


@pytest.fixture(scope="module")
def server() -> Iterator[MinioServer]:
    srv = start_minio()
    yield srv
    srv.stop()


@pytest.fixture()
def driver(server: MinioServer, secrets: MemorySecrets) -> MinioDriver:
    return MinioDriver(server.endpoint, server.root_user, server.root_password, secrets)


def want(ctx: DriverContext, spec: ProjectSpec) -> Any:
    return desired_state(spec, ctx.allocations)[Component.storage]


def project(slug: str, **storage: Any) -> tuple[DriverContext, ProjectSpec]:
    return context(slug, features={"storage": storage})


async def converge(driver: MinioDriver, ctx: DriverContext, spec: ProjectSpec) -> None:
    await driver.apply(ctx, want(ctx, spec))
    assert (await driver.observe(ctx)).state == want(ctx, spec)


async def user_client(secrets: MemorySecrets, ctx: DriverContext, server: MinioServer) -> Minio:
    secret = secrets.stored("team", ctx.allocations.connection_secret or "") or {}
    return Minio(server.endpoint, access_key=secret["S3_ACCESS_KEY"], secret_key=secret[SECRET_KEY], secure=False)


def root(server: MinioServer) -> Minio:
    return Minio(server.endpoint, access_key=server.root_user, secret_key=server.root_password, secure=False)


async def test_bucket_user_and_isolation(driver: MinioDriver, secrets: MemorySecrets, server: MinioServer) -> None:
    a, a_spec = project("photos", versioning=True, expireAfterDays=30)
    b, b_spec = project("docs")
    await converge(driver, a, a_spec)
    await converge(driver, b, b_spec)
    photos = await user_client(secrets, a, server)
    photos.put_object("photos-staging-uploads", "cat.jpg", io.BytesIO(b"meow"), 4)
    assert photos.get_object("photos-staging-uploads", "cat.jpg").read() == b"meow"
    with pytest.raises(S3Error, match="AccessDenied"):
        photos.put_object("docs-staging-uploads", "x", io.BytesIO(b"x"), 1)  # B's bucket refused
    with pytest.raises(S3Error, match="AccessDenied"):
        list(photos.list_objects("docs-staging-uploads"))
    secret = secrets.stored("team", "photos-staging-connection") or {}
    assert secret["S3_BUCKET"] == "photos-staging-uploads" and secret["S3_ENDPOINT"] == f"http://{server.endpoint}"


async def test_isolation_holds_against_every_attack(
    driver: MinioDriver, secrets: MemorySecrets, server: MinioServer
) -> None:
    a, a_spec = project("thief")
    b, b_spec = project("vault")
    await converge(driver, a, a_spec)
    await converge(driver, b, b_spec)
    (await user_client(secrets, b, server)).put_object("vault-staging-uploads", "gold", io.BytesIO(b"au"), 2)
    thief = await user_client(secrets, a, server)
    attacks = {
        "list B's objects": lambda: list(thief.list_objects("vault-staging-uploads")),
        "get B's object": lambda: thief.get_object("vault-staging-uploads", "gold").read(),
        "stat B's object": lambda: thief.stat_object("vault-staging-uploads", "gold"),
        "put into B's bucket": lambda: thief.put_object("vault-staging-uploads", "x", io.BytesIO(b"x"), 1),
        "delete B's object": lambda: thief.remove_object("vault-staging-uploads", "gold"),
        "read B's bucket policy": lambda: thief.get_bucket_policy("vault-staging-uploads"),
        "open B's bucket to all": lambda: thief.set_bucket_policy("vault-staging-uploads", json.dumps({})),
        "delete B's bucket": lambda: thief.remove_bucket("vault-staging-uploads"),
        "make a bucket": lambda: thief.make_bucket("thief-extra"),
        "tag its bucket as B's": lambda: thief.delete_bucket_tags("thief-staging-uploads"),
    }
    succeeded = []
    for name, attack in attacks.items():
        try:
            attack()
        except S3Error as exc:
            assert exc.code in ("AccessDenied", "NoSuchBucketPolicy"), (name, exc.code)
            continue
        succeeded.append(name)
    assert succeeded == [], f"{len(succeeded)} of {len(attacks)} attacks got through: {succeeded}"
    assert root(server).get_object("vault-staging-uploads", "gold").read() == b"au"
    # Listing buckets answers, but names only what the user may open: no other tenant's name.
    assert [b.name for b in thief.list_buckets()] == ["thief-staging-uploads"]


async def test_crash_between_create_and_tag_converges(driver: MinioDriver, server: MinioServer) -> None:
    ctx, spec = project("untagged")
    await converge(driver, ctx, spec)
    root(server).delete_bucket_tags("untagged-staging-uploads")  # the world a crash before tagging leaves
    seen = await driver.observe(ctx)  # our user opens it: ours, and re-applied rather than refused
    assert seen.state is not None and seen.state["policyMatches"] is False
    await converge(driver, ctx, spec)
    assert root(server).get_bucket_tags("untagged-staging-uploads") == {"codeb.dev/project": "team/untagged"}


async def test_retained_bucket_is_readopted_by_the_same_name_only(
    driver: MinioDriver, secrets: MemorySecrets, server: MinioServer
) -> None:
    ctx, spec = project("kept")
    await converge(driver, ctx, spec)
    (await user_client(secrets, ctx, server)).put_object("kept-staging-uploads", "f", io.BytesIO(b"1"), 1)
    await driver.delete(ctx, retain=True)
    again = DriverContext(ProjectKey("team", "kept", "a-new-uid"), ctx.allocations)
    await converge(driver, again, spec)
    assert (await user_client(secrets, again, server)).get_object("kept-staging-uploads", "f").read() == b"1"
    stranger = DriverContext(ProjectKey("other", "kept", "uid-x"), ctx.allocations)
    with pytest.raises(PermanentError, match="holds data of Project team/kept"):
        await driver.observe(stranger)


async def test_widened_policy_is_drift_and_repaired(driver: MinioDriver, server: MinioServer) -> None:
    ctx, spec = project("wide")
    await converge(driver, ctx, spec)
    admin = MinioAdmin(endpoint=server.endpoint, credentials=StaticProvider(server.root_user, server.root_password),
                       secure=False)  # fmt: skip
    everything = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]}],
    }
    admin.policy_add(access_key("wide-staging-uploads"), policy=everything)
    assert (await driver.observe(ctx)).state["policyMatches"] is False  # type: ignore[index]
    await converge(driver, ctx, spec)
    info = json.loads(admin.policy_info(access_key("wide-staging-uploads")))
    assert "arn:aws:s3:::*" not in json.dumps(info)


async def test_foreign_bucket_is_never_touched(driver: MinioDriver, server: MinioServer) -> None:
    ctx, spec = project("legacy")
    root(server).make_bucket("legacy-staging-uploads")
    root(server).put_object("legacy-staging-uploads", "keep", io.BytesIO(b"1"), 1)
    with pytest.raises(PermanentError, match=r"spec\.features.storage.bucket"):
        await driver.observe(ctx)
    with pytest.raises(PermanentError):
        await driver.apply(ctx, want(ctx, spec))
    await driver.delete(ctx, retain=False)
    assert root(server).bucket_exists("legacy-staging-uploads")


@pytest.mark.parametrize("retain", [True, False])
async def test_delete_follows_policy(
    driver: MinioDriver, secrets: MemorySecrets, server: MinioServer, retain: bool
) -> None:
    ctx, spec = project(f"bye{int(retain)}", versioning=True)
    await converge(driver, ctx, spec)
    (await user_client(secrets, ctx, server)).put_object(ctx.allocations.bucket or "", "f", io.BytesIO(b"x"), 1)
    await driver.delete(ctx, retain=retain)
    assert root(server).bucket_exists(ctx.allocations.bucket or "") is retain


async def test_outage_is_retryable(server: MinioServer, secrets: MemorySecrets) -> None:
    ctx, _ = project("down")
    dead = MinioDriver("127.0.0.1:1", server.root_user, server.root_password, secrets)
    with pytest.raises(RetryableError) as exc:
        await dead.observe(ctx)
    assert exc.value.reason == "StorageUnavailable" and server.root_password not in exc.value.message


async def test_final_dumps_go_to_the_backups_bucket(driver: MinioDriver, server: MinioServer, tmp_path: Any) -> None:
    dump = tmp_path / "shop_db.dump"
    dump.write_bytes(b"PGDMP...")
    where = await driver.store_final_dump("team/shop/shop_db-20261122.dump", dump)
    assert where == "s3://codeb-final-dumps/team/shop/shop_db-20261122.dump"
    assert root(server).get_object("codeb-final-dumps", "team/shop/shop_db-20261122.dump").read() == b"PGDMP..."


def test_no_project_may_name_an_operator_bucket() -> None:
    with pytest.raises(ValueError, match=r"bucket names starting with 'codeb-' are the operator's own"):
        context("squat", features={"storage": {"bucket": "codeb-final-dumps"}})


async def test_a_squatted_final_dumps_bucket_is_refused(secrets: MemorySecrets, tmp_path: Any) -> None:
    """The live attack: a Project holds ``codeb-final-dumps`` (made before the rule); no dump may land in it."""
    server = start_minio()
    try:
        driver = MinioDriver(server.endpoint, server.root_user, server.root_password, secrets)
        squatter, spec = project("squat")
        squatter = DriverContext(squatter.key, squatter.allocations.model_copy(update={"bucket": "codeb-final-dumps"}))
        await driver.apply(squatter, want(squatter, spec) | {"bucket": "codeb-final-dumps"})
        dump = tmp_path / "victim_db.dump"
        dump.write_bytes(b"PGDMP victim")
        with pytest.raises(PermanentError) as exc:
            await driver.store_final_dump("team/victim/victim_db-20261203.dump", dump)
        assert exc.value.reason == "OperatorBucketNotOwned"
        assert list(root(server).list_objects("codeb-final-dumps", recursive=True)) == []
        # Untagged but openable by a Project's user (a squat cut short before its tag): refused too.
        root(server).delete_bucket_tags("codeb-final-dumps")
        with pytest.raises(PermanentError):
            await driver.store_final_dump("team/victim/victim_db-20261203.dump", dump)
    finally:
        server.stop()


async def test_the_final_dumps_bucket_is_the_operators_and_no_tenants(
    driver: MinioDriver, secrets: MemorySecrets, server: MinioServer, tmp_path: Any
) -> None:
    dump = tmp_path / "kept_db.dump"
    dump.write_bytes(b"PGDMP kept")
    await driver.store_final_dump("team/kept/kept_db-20261203.dump", dump)
    assert root(server).get_bucket_tags("codeb-final-dumps") == {"codeb.dev/operator": "final-dumps"}
    ctx, spec = project("nosy")
    await converge(driver, ctx, spec)
    tenant = await user_client(secrets, ctx, server)
    for attempt in (lambda: tenant.get_object("codeb-final-dumps", "team/kept/kept_db-20261203.dump"),
                    lambda: list(tenant.list_objects("codeb-final-dumps")),
                    lambda: tenant.remove_object("codeb-final-dumps", "team/kept/kept_db-20261203.dump")):  # fmt: skip
        with pytest.raises(S3Error, match="AccessDenied"):
            attempt()


async def test_a_kill_between_removing_the_bucket_and_its_user_is_finished(
    driver: MinioDriver, server: MinioServer
) -> None:
    """The world a kill -9 leaves after the bucket went: its user and policy remain; the next pass finishes."""
    ctx, spec = project("halfgone")
    await converge(driver, ctx, spec)
    root(server).remove_bucket("halfgone-staging-uploads")
    seen = await driver.observe(ctx)
    assert seen.state is None and seen.leftovers == ("user codeb-halfgone-staging-uploads",)
    assert [a.verb.value for a in plan_deletion({Component.storage: seen}, retain_data=False).actions] == ["delete"]
    await driver.delete(ctx, retain=False)
    assert (await driver.observe(ctx)).leftovers == ()
