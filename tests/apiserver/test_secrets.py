"""Connection Secrets on the real API server: the operator writes and deletes only its own."""

from __future__ import annotations

import uuid

import pytest

from controller.drivers import DriverContext
from controller.errors import PermanentError
from controller.kube import KubeClient, KubeSecrets
from controller.localcluster import LocalCluster
from controller.naming import ProjectKey
from controller.secrets import ensure_password
from schemas.project import Allocations


def ctx(namespace: str, project: str, secret: str = "shop-staging-connection") -> DriverContext:
    key = ProjectKey(namespace, project, str(uuid.uuid4()))
    return DriverContext(key, Allocations(connection_secret=secret))


async def test_a_foreign_secret_is_never_taken_over_or_deleted(
    cluster: LocalCluster, kube: KubeClient, namespace: str
) -> None:
    cluster.kubectl("create", "secret", "generic", "shop-staging-connection", "-n", namespace,
                    "--from-literal=DATABASE_PASSWORD=the-team-made-this")  # fmt: skip
    store = KubeSecrets(kube)
    with pytest.raises(PermanentError, match="not created by the operator") as exc:
        await ensure_password(store, ctx(namespace, "shop"), "REDIS_PASSWORD")
    assert exc.value.reason == "SecretNotOwned"
    assert await kube.delete_secret(namespace, "shop-staging-connection", "shop") is False
    kept = await kube.read_secret(namespace, "shop-staging-connection")
    assert kept == {"DATABASE_PASSWORD": "the-team-made-this"}


async def test_two_projects_deriving_one_secret_name_do_not_share_it(kube: KubeClient, namespace: str) -> None:
    store = KubeSecrets(kube)
    first = await ensure_password(store, ctx(namespace, "shop"), "REDIS_PASSWORD")
    with pytest.raises(PermanentError, match="not created by the operator for this Project"):
        await store.merge(ctx(namespace, "shop-copy"), {"REDIS_PASSWORD": "overwrite"})
    assert await kube.delete_secret(namespace, "shop-staging-connection", "shop-copy") is False
    assert (await kube.read_secret(namespace, "shop-staging-connection") or {})["REDIS_PASSWORD"] == first
    assert await kube.delete_secret(namespace, "shop-staging-connection", "shop") is True
    assert await kube.read_secret(namespace, "shop-staging-connection") is None
