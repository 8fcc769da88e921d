"""Connection Secrets on the real API server: the operator writes and deletes only its own."""

from __future__ import annotations

import json
import uuid

import pytest

from controller.clients.kube import KubeClient, KubeSecrets
from controller.errors import PermanentError
from controller.local.cluster import LocalCluster
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.secrets import ensure_password
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


async def test_a_project_may_not_reference_a_token_or_another_projects_credentials(
    cluster: LocalCluster, kube: KubeClient, namespace: str
) -> None:
    """The exfiltration: secretRefs naming a ServiceAccount token, or the connection Secret of another
    Project, would put them in the attacker's workload environment. Both are refused; its own are read."""
    victim = KubeSecrets(kube)
    await ensure_password(victim, ctx(namespace, "victim", "victim-staging-connection"), "DATABASE_PASSWORD")
    cluster.kubectl("create", "serviceaccount", "robot", "-n", namespace)
    token = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
             "metadata": {"name": "robot-token", "namespace": namespace,
                          "annotations": {"kubernetes.io/service-account.name": "robot"}}}  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(token))
    cluster.kubectl("create", "secret", "generic", "mine", "-n", namespace, "--from-literal=API_KEY=ok")
    for name, why in (("robot-token", "ServiceAccount's token"), ("victim-staging-connection", "Project victim")):
        with pytest.raises(PermanentError, match=why) as exc:
            await kube.read_secret(namespace, name, project="attacker")
        assert exc.value.reason == "SecretNotAllowed"
    assert await kube.read_secret(namespace, "mine", project="attacker") == {"API_KEY": "ok"}
    own = await kube.read_secret(namespace, "victim-staging-connection", project="victim")
    assert own is not None and "DATABASE_PASSWORD" in own
