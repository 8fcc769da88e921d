"""Teardown outlives its namespace: the Secrets it needs are kept in the operator's namespace.

Deleting a namespace deletes its Secrets at once and its Projects only after their finalizers
ran. Here a Lightsail Project (the Terraform stand-in module, state in the real API server)
loses its SSH key and cloud credentials the way a namespace deletion takes them; its hosts
are still destroyed, from the copies, and the copies go with the Project. No controller
manager runs in the test cluster, so the test deletes the Secrets as the namespace
controller would.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from controller.clients.kept_secrets import KEPT_FOR, KeptSecrets
from controller.clients.kube import KubeClient
from controller.errors import RetryableError
from controller.local.cluster import LocalCluster
from controller.loop.naming import ProjectKey
from controller.specs import terraform as tf
from tests.apiserver.test_terraform_runs import World, converge, recorded, world  # noqa: F401 (the fixture)

pytestmark = pytest.mark.apiserver


def kept_in(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    listed = cluster.kubectl("get", "secrets", "-n", namespace, "-l", KEPT_FOR, "-o", "json")
    return list(json.loads(listed.stdout)["items"])


@pytest.fixture()
def operator_namespace(cluster: LocalCluster) -> str:
    name = f"codeb-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    return name


async def test_hosts_are_destroyed_after_their_namespace_took_the_secrets(
    world: World,  # noqa: F811 (the fixture imported above)
    kube: KubeClient,
    operator_namespace: str,
) -> None:
    kept = KeptSecrets(kube, operator_namespace)
    # As the operator wires it: Secrets read through the keeper, the state in the operator's namespace.
    driver = world.driver(kept.read, state_namespace=operator_namespace)
    ctx = world.ctx(count=1)
    record = recorded(await converge(driver, ctx))
    assert world.ledger() == [f"made {tf.resource_name(ProjectKey(world.namespace, 'shop', ''))}-0"]
    copies = kept_in(world.cluster, operator_namespace)
    assert sorted(c["metadata"]["annotations"]["codeb.dev/source"] for c in copies) == [
        f"{world.namespace}/cloud-credentials", f"{world.namespace}/deploy-key"]  # fmt: skip

    for secret in ("deploy-key", "cloud-credentials"):  # what the namespace controller deletes first
        world.cluster.kubectl("delete", "secret", secret, "-n", world.namespace)
    gone = world.ctx(count=1, recorded=record)
    # While the namespace lives, a deleted Secret is deleted: its Project waits and says which.
    with pytest.raises(RetryableError) as waiting:
        await world.driver(state_namespace=operator_namespace).delete(gone, retain=False)
    assert waiting.value.reason in ("SSHKeyMissing", "CredentialsMissing")

    world.cluster.kubectl("delete", "namespace", world.namespace, "--wait=false")
    # A restarted operator: nothing in memory.
    fresh = world.driver(KeptSecrets(kube, operator_namespace).read, state_namespace=operator_namespace)
    await fresh.delete(gone, retain=False)
    assert world.ledger()[-1] == "destroyed 127.0.1.10"  # the host did not outlive its Project
    assert await kept.forget(ProjectKey(world.namespace, "shop", "uid-shop")) == 2
    assert kept_in(world.cluster, operator_namespace) == []


async def test_copies_of_projects_that_vanished_are_collected(
    cluster: LocalCluster, kube: KubeClient, namespace: str, operator_namespace: str
) -> None:
    cluster.kubectl("create", "secret", "generic", "deploy-key", "-n", namespace, "--from-literal=privateKey=k")
    kept = KeptSecrets(kube, operator_namespace)
    assert await kept.read(namespace, "deploy-key", "ghost") == {"privateKey": "k"}  # no Project "ghost" exists
    assert await kept.read(namespace, "deploy-key") == {"privateKey": "k"}  # not for a Project: not kept
    assert len(kept_in(cluster, operator_namespace)) == 1
    assert await kept.collect() == 1
    assert kept_in(cluster, operator_namespace) == []
