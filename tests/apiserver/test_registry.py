"""A Platform's registry by token, attacked: Debian's docker-registry (distribution 2.8) trusts only the
operator's issuer (`controller.operator.registry_tokens`, in its inbound listener here), and podman on a
booted test host pushes and pulls with Projects' credentials. A Project pushes and pulls its own repository;
with its credential nothing else is reached (a neighbour's repository, the same name in another namespace,
the catalog), nor with a guessed password, a Project's in a namespace the Platform does not allow, or one
of a Project since deleted.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from controller.clients.kube import KubeClient
from controller.clients.registry_issuer import ISSUER_SECRET, RegistryIssuer
from controller.errors import PermanentError
from controller.local.cluster import LocalCluster, free_port
from controller.operator.inbound import Inbound
from controller.operator.registry_tokens import RegistryTokens
from controller.specs.registry import CERTIFICATE, ISSUER
from tests.factories import project
from tests.helpers import get_json
from tests.registryserver import RegistryServer, start_registry
from tests.testhosts import HELLO_IMAGE, SERVICES_ADDRESS, BootedHosts, booted

pytestmark = [pytest.mark.apiserver, pytest.mark.timeout(900)]

SERVICE = "codeb-registry"
OPERATOR_NAMESPACE = "codeb-system"


@pytest.fixture(scope="module")
def host() -> Iterator[BootedHosts]:
    with booted(1) as hosts:
        yield hosts


@dataclass
class World:
    registry: RegistryServer
    tokens: RegistryTokens
    realm: str
    a: str  # namespaces the Platform allows
    b: str
    outside: str  # one it does not


@pytest.fixture
async def world(cluster: LocalCluster, kube: KubeClient) -> AsyncIterator[World]:
    suffix = uuid.uuid4().hex[:6]
    a, b, outside = f"reg-a-{suffix}", f"reg-b-{suffix}", f"reg-x-{suffix}"
    for namespace in (a, b, outside, OPERATOR_NAMESPACE):
        cluster.kubectl("create", "namespace", namespace, check=False)
    tokens, port = RegistryTokens(kube, RegistryIssuer(kube, OPERATOR_NAMESPACE)), free_port()
    inbound = Inbound(kube, notifier=None, token_file=None, registry=tokens)  # type: ignore[arg-type]
    await inbound.start(port, SERVICES_ADDRESS)
    realm = f"http://{SERVICES_ADDRESS}:{port}/registry/token"
    issuer = await tokens.issuer.data()  # made on first need, in the operator's namespace
    registry = start_registry(SERVICES_ADDRESS, realm, SERVICE, ISSUER, issuer[CERTIFICATE])
    platform = f"registry-{suffix}"
    try:
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps({
            "apiVersion": "codeb.dev/v1alpha1", "kind": "Platform", "metadata": {"name": platform},
            "spec": {"namespaces": {"names": [a, b]}, "registry": {"host": registry.address, "service": SERVICE}},
        }))  # fmt: skip
        for namespace, name in ((a, "site"), (a, "other"), (b, "site"), (outside, "site")):
            servers = {"provider": "existing", "runtime": "kubernetes", "platform": platform}
            doc = project(name, namespace, project={"slug": name, "source": {"image": HELLO_IMAGE}}, servers=servers)
            cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
        yield World(registry, tokens, realm, a, b, outside)
    finally:
        registry.stop()
        await inbound.stop()
        cluster.kubectl("delete", "platform", platform, "--wait=false", check=False)


async def credential(cluster: LocalCluster, world: World, namespace: str, name: str) -> str:
    uid = get_json(cluster, "project", name, "-n", namespace)["metadata"]["uid"]
    return f"{namespace}/{name}:{await world.tokens.issuer.password(namespace, name, uid)}"


async def podman(hosts: BootedHosts, world: World, verb: str, image: str, creds: str) -> tuple[bool, str]:
    """``podman push|pull`` of ``image`` in the registry with ``creds``: whether it did, and what it said. In a
    thread: the issuer answering podman runs on this test's event loop."""
    host = hosts.hosts[0]
    if verb == "push":
        command = f"podman push -q --tls-verify=false --creds '{creds}' {HELLO_IMAGE} {world.registry.address}/{image}"
    else:
        command = f"podman pull -q --tls-verify=false --creds '{creds}' {world.registry.address}/{image}"
    said = await asyncio.to_thread(host.ssh, hosts.key_file, f"{command} 2>&1; echo exit=$?", False, 180)
    return said.rstrip().endswith("exit=0"), said


async def test_a_project_pushes_and_pulls_its_own_repository_and_reaches_nothing_else(
    cluster: LocalCluster, kube: KubeClient, world: World, host: BootedHosts
) -> None:
    a, b = world.a, world.b
    mine, neighbour, namesake = (await credential(cluster, world, a, "site"), await credential(cluster, world, a,
                                 "other"), await credential(cluster, world, b, "site"))  # fmt: skip
    own = f"codeb/{a}/site:1"
    done, said = await podman(host, world, "push", own, mine)
    assert done, said
    done, said = await podman(host, world, "pull", own, mine)
    assert done, said
    # With its credential, another Project's repository is neither written nor read.
    for image in (f"codeb/{a}/other:1", f"codeb/{b}/site:1", f"codeb/{a}/site/extra:1", "library/site:1"):
        done, said = await podman(host, world, "push", image, mine)
        assert not done and ("denied" in said or "unauthorized" in said), said
    for creds in (neighbour, namesake):
        done, said = await podman(host, world, "pull", own, creds)
        assert not done, said
    # A guessed password, and a Project whose namespace the Platform does not allow: no token at all.
    done, said = await podman(host, world, "pull", own, f"{a}/site:{'A' * 43}")
    assert not done, said
    outsider = await credential(cluster, world, world.outside, "site")
    async with httpx.AsyncClient(timeout=10) as client:
        for creds in (f"{a}/site:{'A' * 43}", outsider, f"{a}/missing:{'A' * 43}"):
            user, _, password = creds.partition(":")
            asked = await client.get(world.realm, params={"service": SERVICE, "scope": f"repository:{own}:pull"},
                                     auth=(user, password))  # fmt: skip
            assert asked.status_code == 401 and asked.text == "a Project's registry credential is needed\n"
        # Its own credential for another registry's service: refused too.
        user, _, password = mine.partition(":")
        asked = await client.get(world.realm, params={"service": "another", "scope": f"repository:{own}:pull"},
                                 auth=(user, password))  # fmt: skip
        assert asked.status_code == 401
        # The catalog of every repository: its token grants nothing of it, and the registry refuses.
        token = (await client.get(world.realm, params={"service": SERVICE, "scope": "registry:catalog:*"},
                                  auth=(user, password))).json()["token"]  # fmt: skip
        catalog = await client.get(f"http://{world.registry.address}/v2/_catalog",
                                   headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert catalog.status_code == 401, catalog.text
    # The issuer is one Secret in the operator's namespace, and no Project may reference it, even one there
    # named as its record is.
    labels = get_json(cluster, "secret", ISSUER_SECRET, "-n", OPERATOR_NAMESPACE)["metadata"]["labels"]
    assert labels == {"app.kubernetes.io/managed-by": "codeb", "codeb.dev/record": "registry-issuer"}
    with pytest.raises(PermanentError, match="may not be referenced by Project registry-issuer"):
        await kube.read_secret(OPERATOR_NAMESPACE, ISSUER_SECRET, project="registry-issuer")
    # Deleted: its credential is worth nothing, even for what it pushed.
    cluster.kubectl("delete", "project", "site", "-n", a, "--timeout=30s")  # no operator runs: no finalizer
    done, said = await podman(host, world, "pull", own, mine)
    assert not done, said
