"""End to end on real servers: the operator gives Projects their database, cache, bucket and
route through a Platform, keeps them isolated, repairs drift, rides out an outage, and never
lets a credential reach its logs, Events or status."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from minio import Minio
from minio.error import S3Error
from redis.exceptions import NoPermissionError

from controller.local.cluster import LocalCluster
from controller.loop.naming import ProjectKey
from controller.specs.backups import record_body
from schemas.backups import BackupTarget, BackupTrigger
from tests.conftest import start_cluster
from tests.factories import project
from tests.helpers import Heard, OperatorProcess, get_json, wait_for
from tests.servers import (
    CaddyServer,
    MinioServer,
    PostgresServer,
    RedisServer,
    start_caddy,
    start_minio,
    start_postgres,
    start_redis,
)

NS = "apps"


def running_world(root: Path, services_host: str = "127.0.0.1") -> Iterator[dict[str, Any]]:
    """Real PostgreSQL, Redis, MinIO (on ``services_host``) and Caddy beside a control plane, stopped afterwards."""
    pg, rd, s3 = start_postgres(services_host), start_redis(services_host), start_minio(services_host)
    caddy = start_caddy()
    cluster = start_cluster(root)
    try:
        yield {"pg": pg, "redis": rd, "s3": s3, "caddy": caddy, "cluster": cluster}
    finally:
        cluster.stop()
        for server in (caddy, s3, rd, pg):
            server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield from running_world(tmp_path_factory.mktemp("platform"))


def secret_data(cluster: LocalCluster, namespace: str, name: str) -> dict[str, str]:
    raw = get_json(cluster, "secret", name, "-n", namespace)["data"]
    return {k: base64.b64decode(v).decode() for k, v in raw.items()}


def install_platform(cluster: LocalCluster, pg: PostgresServer, rd: RedisServer, s3: MinioServer,
                     caddy: CaddyServer) -> None:  # fmt: skip
    cluster.kubectl("create", "namespace", "codeb-system")
    cluster.kubectl("create", "namespace", NS)
    for name, data in {
        "pg-admin": {"username": pg.admin_user, "password": pg.admin_password},
        "redis-admin": {"password": rd.password},
        "s3-admin": {"accessKey": s3.root_user, "secretKey": s3.root_password},
    }.items():
        literals = [f"--from-literal={k}={v}" for k, v in data.items()]
        cluster.kubectl("create", "secret", "generic", name, "-n", "codeb-system", *literals)
    ref = {"namespace": "codeb-system"}
    platform = {
        "apiVersion": "codeb.dev/v1alpha1",
        "kind": "Platform",
        "metadata": {"name": "shared"},
        "spec": {
            # "rivals": the local runtime test's second tenant, which must meet DomainTaken, not PlatformNotAllowed.
            "namespaces": {"names": [NS, "rivals"]},
            "postgres": {"host": pg.host, "port": pg.port, "adminSecretRef": {**ref, "name": "pg-admin"}},
            "redis": {"host": rd.host, "port": rd.port, "adminSecretRef": {**ref, "name": "redis-admin"}},
            "objectStorage": {"endpoint": s3.endpoint, "secure": False, "adminSecretRef": {**ref, "name": "s3-admin"}},
            "caddy": {"adminUrl": caddy.admin_url, "listen": [f"127.0.0.1:{caddy.https_port}"]},
            "backup": {"bucket": "codeb-backups"},
        },
    }
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(platform))


def app(name: str, **extra: Any) -> dict[str, Any]:
    doc = project(name, NS, features={"database": {"version": "15"}, "redis": {}, "storage": {}}, **extra)
    doc["spec"]["servers"]["platform"] = "shared"
    return doc


def condition(cluster: LocalCluster, name: str, type_: str) -> dict[str, Any]:
    status = get_json(cluster, "project", name, "-n", NS).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def data_ready(cluster: LocalCluster, name: str) -> bool:
    return all(
        condition(cluster, name, t).get("status") == "True" for t in ("DatabaseReady", "CacheReady", "StorageReady")
    )


def test_projects_on_a_shared_platform(world: dict[str, Any], tmp_path: Path) -> None:
    cluster: LocalCluster = world["cluster"]
    pg, rd, s3, caddy = world["pg"], world["redis"], world["s3"], world["caddy"]
    install_platform(cluster, pg, rd, s3, caddy)
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="3").start()
    try:
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(app("alpha")))
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(app("bravo", deletionPolicy="Delete")))
        for name in ("alpha", "bravo"):
            wait_for(lambda n=name: data_ready(cluster, n), timeout=90, what=f"{name} data services")
        # Honest about the rest: no workload driver yet, so no route and no Ready.
        assert condition(cluster, "alpha", "WorkloadReady")["reason"] == "NotImplemented"
        assert condition(cluster, "alpha", "RouteReady")["status"] == "False"
        assert condition(cluster, "alpha", "Ready")["status"] == "False"
        a = secret_data(cluster, NS, "alpha-staging-connection")
        b = secret_data(cluster, NS, "bravo-staging-connection")
        for key in ("DATABASE_URL", "REDIS_URL", "REDIS_PREFIX", "S3_ENDPOINT", "S3_BUCKET", "S3_ACCESS_KEY",
                    "S3_SECRET_KEY"):  # fmt: skip
            assert a[key], key

        # Isolation, with the credentials the operator handed out.
        with psycopg.connect(a["DATABASE_URL"]) as conn:
            conn.execute("CREATE TABLE orders (id int)")
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(a["DATABASE_URL"].replace("alpha_staging_db", "bravo_staging_db"))
        alpha_cache = redis.Redis.from_url(a["REDIS_URL"])
        alpha_cache.set(a["REDIS_PREFIX"] + "k", "v")
        with pytest.raises(NoPermissionError):
            alpha_cache.get(b["REDIS_PREFIX"] + "k")
        alpha_s3 = Minio(s3.endpoint, access_key=a["S3_ACCESS_KEY"], secret_key=a["S3_SECRET_KEY"], secure=False)
        alpha_s3.put_object(a["S3_BUCKET"], "x", io.BytesIO(b"1"), 1)
        with pytest.raises(S3Error, match="AccessDenied"):
            alpha_s3.put_object(b["S3_BUCKET"], "x", io.BytesIO(b"1"), 1)

        # Drift: a role dropped by hand is back within a drift interval, and an Event says so.
        with psycopg.connect(host=pg.host, port=pg.port, user=pg.admin_user, password=pg.admin_password,
                             dbname="postgres", autocommit=True) as admin:  # fmt: skip
            admin.execute("ALTER ROLE alpha_staging_user PASSWORD 'stolen'")
        wait_for(lambda: any(e["reason"] == "DriftRepaired" and "Database" in e["message"]
                             for e in get_json(cluster, "events", "-n", NS)["items"]), timeout=30,
                 what="DriftRepaired event")  # fmt: skip
        with psycopg.connect(a["DATABASE_URL"]):
            pass  # the password in the Secret works again

        # Outage: PostgreSQL down -> DatabaseReady=False with a reason; back -> Ready.
        pg.stop()
        try:
            wait_for(lambda: condition(cluster, "alpha", "DatabaseReady").get("reason") == "DatabaseUnavailable",
                     timeout=30, what="DatabaseReady=False")  # fmt: skip
            assert "unreachable" in condition(cluster, "alpha", "DatabaseReady")["message"]
        finally:
            pg.start()
        wait_for(lambda: data_ready(cluster, "alpha"), timeout=60, what="recovered")

        # Deletion with deletionPolicy: Delete drops data and credentials.
        cluster.kubectl("delete", "project", "bravo", "-n", NS, "--timeout=60s")
        with psycopg.connect(host=pg.host, port=pg.port, user=pg.admin_user, password=pg.admin_password,
                             dbname="postgres") as admin:  # fmt: skip
            assert admin.execute("SELECT 1 FROM pg_database WHERE datname='bravo_staging_db'").fetchone() is None
        assert cluster.kubectl("get", "secret", "bravo-staging-connection", "-n", NS, check=False).returncode != 0
        # ...after a last dump into the Platform's backup store, beside its backups.
        store = Minio(s3.endpoint, access_key=s3.root_user, secret_key=s3.root_password, secure=False)
        kept = [
            o.object_name for o in store.list_objects("codeb-backups", prefix=f"projects/{NS}/bravo/", recursive=True)
        ]
        assert any("/final/bravo_staging_db-" in k for k in kept), kept
        assert any("/database/" in k for k in kept), kept  # its first backup
        assert any(k.endswith("/deleted.json") for k in kept), kept  # when it went, and what its retention is
    finally:
        operator.stop()

    # No credential anywhere the operator writes for people to read.
    secret_keys = ("DATABASE_PASSWORD", "REDIS_PASSWORD", "S3_SECRET_KEY")
    credentials = {data[k] for data in (a, b) for k in secret_keys}
    credentials |= {pg.admin_password, rd.password, s3.root_password}
    exposed = {
        "operator log": operator.log(),
        "events": json.dumps(get_json(cluster, "events", "-A")),
        "status": json.dumps(get_json(cluster, "projects", "-A")),  # status.kopf included
        "postgres statement log": pg.log(),  # every statement, password changes included
    }
    for where, text in exposed.items():
        leaked = [c[:4] + "…" for c in credentials if c in text]
        assert leaked == [], f"credentials in {where}: {leaked}"


def test_a_namespace_the_platform_does_not_allow_gets_nothing_from_it(world: dict[str, Any], tmp_path: Path) -> None:
    """A Project author in another namespace names the Platform: refused with PlatformNotAllowed, nothing is made
    on its servers, and the Project is deleted at once; once the admin's selector matches, it is served."""
    cluster: LocalCluster = world["cluster"]
    pg = world["pg"]
    if cluster.kubectl("get", "platform", "shared", check=False).returncode != 0:
        install_platform(cluster, pg, world["redis"], world["s3"], world["caddy"])
    cluster.kubectl("create", "namespace", "intruder")
    thief = app("thief", deletionPolicy="Delete")
    thief["metadata"]["namespace"] = "intruder"
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="3").start()

    def ready_reason() -> str | None:
        status = get_json(cluster, "project", "thief", "-n", "intruder").get("status", {})
        return next((c.get("reason") for c in status.get("conditions", []) if c["type"] == "Ready"), None)

    try:
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(thief))
        wait_for(lambda: ready_reason() == "PlatformNotAllowed", timeout=60, what="PlatformNotAllowed")
        with psycopg.connect(host=pg.host, port=pg.port, user=pg.admin_user, password=pg.admin_password,
                             dbname="postgres") as admin:  # fmt: skip
            assert admin.execute("SELECT 1 FROM pg_roles WHERE rolname='thief_staging_user'").fetchone() is None
        assert cluster.kubectl("get", "secret", "thief-staging-connection", "-n", "intruder",
                               check=False).returncode != 0  # fmt: skip
        cluster.kubectl("delete", "project", "thief", "-n", "intruder", "--timeout=60s")

        # The Platform's admin lets labelled namespaces in: the same Project is now served.
        cluster.kubectl("label", "namespace", "intruder", "team=payments")
        cluster.kubectl(
            "patch",
            "platform",
            "shared",
            "--type=merge",
            "-p",
            json.dumps({"spec": {"namespaces": {"selector": {"matchLabels": {"team": "payments"}}}}}),
        )
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(thief))
        wait_for(lambda: all(condition_in(cluster, "intruder", "thief", t).get("status") == "True"
                             for t in ("DatabaseReady", "CacheReady", "StorageReady")), timeout=90,
                 what="served once allowed")  # fmt: skip
        cluster.kubectl("delete", "project", "thief", "-n", "intruder", "--timeout=60s")
    finally:
        operator.stop()


def condition_in(cluster: LocalCluster, namespace: str, name: str, type_: str) -> dict[str, Any]:
    status = get_json(cluster, "project", name, "-n", namespace).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def test_a_backup_that_fails_is_told_to_the_projects_receivers(world: dict[str, Any], tmp_path: Path) -> None:
    """A Backup of something the Project does not have (made by hand) fails; the real operator tells the
    Project's receiver so, once, with why."""
    cluster: LocalCluster = world["cluster"]
    if cluster.kubectl("get", "platform", "shared", check=False).returncode != 0:
        install_platform(cluster, world["pg"], world["redis"], world["s3"], world["caddy"])
    # As installed, whatever the tests before did to whom the Platform lets in.
    allowed = {"spec": {"namespaces": {"names": [NS, "rivals"], "selector": None}}}
    cluster.kubectl("patch", "platform", "shared", "--type=merge", "-p", json.dumps(allowed))
    heard = Heard()
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="3").start()
    try:
        cluster.kubectl("create", "secret", "generic", "ops-hook", "-n", NS, f"--from-literal=url={heard.url}")
        ops = {"name": "ops", "urlSecretRef": "ops-hook", "events": ["BackupFailed"]}
        doc = project("charlie", NS, features={"database": {"version": "15"}}, monitoring={"notify": [ops]})
        doc["spec"]["servers"]["platform"] = "shared"
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
        wait_for(lambda: condition(cluster, "charlie", "DatabaseReady").get("status") == "True", timeout=90,
                 what="charlie's database")  # fmt: skip
        uid = get_json(cluster, "project", "charlie", "-n", NS)["metadata"]["uid"]
        body = record_body(ProjectKey(NS, "charlie", uid), "charlie-storage-by-hand", BackupTarget.storage,
                           BackupTrigger.Manual, None)  # fmt: skip
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(body))
        told = wait_for(lambda: heard.texts("backup failed"), timeout=60, what="the failed backup told")
        assert told == [f"{NS}/charlie: backup failed (charlie-storage-by-hand: Project charlie has no storage "
                        "to back up)"]  # fmt: skip
        time.sleep(5)  # later passes and watch events tell it no more
        assert len(heard.bodies) == 1
        cluster.kubectl("delete", "project", "charlie", "-n", NS, "--timeout=60s")
    finally:
        operator.stop()
        heard.server.shutdown()
