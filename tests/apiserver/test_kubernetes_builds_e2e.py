"""Builds from git for runtime kubernetes, end to end, on a real node.

The Platform names a builder (here the test node itself, over SSH with the Platform's key) and a registry
(Debian's docker-registry, the operator its token issuer). Each commit pushed through GitHub's webhook is
built there with podman in its namespace's own image storage, pushed to the Project's own repository with the
Project's own credential, and run by digest: the kubelet pulls it with the pull Secret, and the Deployment
rolls it out under load through Caddy with no failed request. A commit that does not build leaves the last
good one serving. Another namespace's build cannot use an image the first namespace's storage holds.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from controller.clients.kube import KubeClient, api_client_from_environment
from controller.clients.registry_issuer import RegistryIssuer
from controller.drivers.platform_builds import build_storage
from controller.local.cluster import LocalCluster, free_port
from controller.specs.builds import storage_options
from controller.specs.registry import CERTIFICATE, ISSUER
from tests.apiserver.test_builds_e2e import CONTAINERFILE, WEBHOOK_SECRET, github_push, rolled_out, served
from tests.apiserver.test_quadlet_e2e import QUICK
from tests.factories import project
from tests.gitserver import GitServer, WorkTree
from tests.helpers import OperatorProcess, get_json, wait_for
from tests.registryserver import RegistryServer, start_registry
from tests.rollouts import Load
from tests.servers import CaddyServer, start_caddy
from tests.testhosts import SERVICES_ADDRESS
from tests.testnode import Node, images_directory, node_cluster

NS, INTRUDER_NS = "apps", "intruders"  # NS as test_builds_e2e's helpers name it
PLATFORM = "node-builds"
SERVICE = "codeb-registry"
# Two Pods replaced one at a time, each pulled from the registry and probed by the kubelet.
START_TIMEOUT = 120


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The cluster and its node, a Git server and a registry the node trusts, a Caddy, the operator's inbound
    listener's port (the registry's realm), and Platform node-builds naming the node as its builder."""
    root = tmp_path_factory.mktemp("kubernetes-builds")
    inbound = free_port()
    with node_cluster(root / "node") as (cluster, node):
        git = GitServer(root / "git", host=SERVICES_ADDRESS, tls=True)
        caddy = start_caddy()
        registry = None
        try:
            registry = _registry(cluster, inbound)
            _trusted_by(node, git.ca_file, registry)
            _platform(cluster, node, caddy, registry)
            yield {"cluster": cluster, "node": node, "git": git, "caddy": caddy, "registry": registry,
                   "inbound": inbound, "root": root}  # fmt: skip
        finally:
            for server in (registry, caddy, git):
                if server is not None:
                    server.stop()


def _registry(cluster: LocalCluster, inbound: int) -> RegistryServer:
    cluster.kubectl("create", "namespace", "codeb-system", check=False)
    with ThreadPoolExecutor(2) as pool:
        kube = KubeClient(api_client_from_environment(config_file=str(cluster.kubeconfig)), pool)
        certificate = asyncio.run(RegistryIssuer(kube, "codeb-system").data())[CERTIFICATE]
        kube.close()
    return start_registry(SERVICES_ADDRESS, f"http://{SERVICES_ADDRESS}:{inbound}/registry/token", SERVICE, ISSUER,
                          certificate, tls=True)  # fmt: skip


def _trusted_by(node: Node, git_ca: Path, registry: RegistryServer) -> None:
    """The node (its podman, git and containerd) trusts the Git server's and the registry's CAs, as a team's
    builder and nodes would be set up to; before containerd's first pull from a registry, when it reads them."""
    assert registry.ca_file is not None
    for name, ca in (("codeb-git", git_ca), ("codeb-registry", registry.ca_file)):
        node.ssh(f"printf '%s' {shlex.quote(ca.read_text())} >/usr/local/share/ca-certificates/{name}.crt")
    node.ssh("update-ca-certificates >/dev/null 2>&1")


def _platform(cluster: LocalCluster, node: Node, caddy: CaddyServer, registry: RegistryServer) -> None:
    for namespace in (NS, INTRUDER_NS):
        cluster.kubectl("create", "namespace", namespace)
        cluster.kubectl("create", "secret", "generic", "site-webhook", "-n", namespace,
                        f"--from-literal=secret={WEBHOOK_SECRET}")  # fmt: skip
    cluster.kubectl("create", "secret", "generic", "node-builder", "-n", "codeb-system",
                    f"--from-literal=privateKey={node.key_file.read_text()}")  # fmt: skip
    spec = {
        "namespaces": {"names": [NS, INTRUDER_NS]},
        "caddy": {"adminUrl": caddy.admin_url, "listen": [f"127.0.0.1:{caddy.https_port}"]},
        "registry": {"host": registry.address, "service": SERVICE},
        "builder": {"host": node.host.address, "sshSecretRef": {"namespace": "codeb-system", "name": "node-builder"}},
    }
    platform = {"apiVersion": "codeb.dev/v1alpha1", "kind": "Platform", "metadata": {"name": PLATFORM}, "spec": spec}
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(platform))


def on_the_node(name: str, namespace: str, url: str, revision: str) -> dict[str, Any]:
    git = {"url": url, "ref": "main", "buildArgs": {"GREETING": "built"}, "timeoutSeconds": 300,
           "webhookSecretRef": "site-webhook"}  # fmt: skip
    return project(name, namespace,
                   project={"slug": name, "source": {"git": git}, "revision": revision,
                            "rollout": {**QUICK, "startTimeoutSeconds": START_TIMEOUT}},
                   environment={"type": "staging", "domains": [f"{name}.{namespace}.node.localhost"],
                                "variables": {"MODE": "ok"}},
                   servers={"provider": "existing", "runtime": "kubernetes", "platform": PLATFORM},
                   resources={"replicas": 2, "cpu": "100m", "memory": "128Mi"}, backup={"enabled": False})  # fmt: skip


def storage(namespace: str) -> str:
    """podman's options for a namespace's image storage on the builder."""
    return storage_options(build_storage(namespace))


def test_commits_build_on_the_platforms_builder_push_and_roll_out_on_the_node_under_load(
    world: dict[str, Any], tmp_path: Path
) -> None:
    cluster: LocalCluster = world["cluster"]
    node: Node = world["node"]
    registry: RegistryServer = world["registry"]
    # The base image the Containerfile starts FROM, in this namespace's storage on the builder (a team's base
    # would come from a registry; the node has none of its own).
    images = images_directory(node.cache)
    node.ssh(f"podman {storage(NS)} load -q -i /codeb-cache/{images}/apps.tar >/dev/null", timeout=180)
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="5",
                               CODEB_INBOUND_PORT=str(world["inbound"])).start()  # fmt: skip
    domain = f"built.{NS}.node.localhost"
    load = Load(world["caddy"], domain, threads=2)
    repository = f"{registry.address}/codeb/{NS}/built"
    try:
        tree = WorkTree(world["git"], "built", tmp_path / "tree")
        one = tree.commit("one", {"Containerfile": CONTAINERFILE})
        doc = on_the_node("built", NS, world["git"].url("built"), one)
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
        rolled_out(cluster, one, operator)
        build = get_json(cluster, "project", "built", "-n", NS)["status"]["build"]
        assert build["pushedTo"] == repository and [run["name"] for run in build["hosts"]] == [node.host.address]
        image = build["lastSucceeded"]["image"]
        assert image.startswith(f"{repository}@sha256:"), build
        pods = get_json(cluster, "pods", "-n", NS, "-l", "app.kubernetes.io/name=built-staging")["items"]
        assert len(pods) == 2 and all(p["spec"]["containers"][0]["image"] == image for p in pods)
        assert all(p["spec"]["imagePullSecrets"] == [{"name": "built-staging-registry"}] for p in pods)
        # Built in the namespace's own storage, none in the builder's own; no credential left behind.
        assert node.ssh(f"podman {storage(NS)} images -q --filter reference={repository}").strip()
        assert node.ssh(f"podman images -q --filter reference={repository}").strip() == ""
        assert node.ssh("find /run/codeb -type f 2>/dev/null; true").strip() == ""
        wait_for(lambda: served(world["caddy"], domain) == one, timeout=60, what="the first build through Caddy")
        load.start()

        broken = tree.commit("broken", {"Containerfile": CONTAINERFILE + "RUN echo the build broke >&2; exit 3\n"})
        github_push(world["inbound"], "built", broken)
        said = wait_for(lambda: _build_failed(cluster, NS, "built"), timeout=240, what="the broken build failed")
        assert "the build broke" in said and f"{one} keeps serving" in said, said
        assert served(world["caddy"], domain) == one

        two = tree.commit("two", {"Containerfile": CONTAINERFILE + "RUN echo two > /app/two.txt\n"})
        github_push(world["inbound"], "built", two)
        rolled_out(cluster, two, operator)
        wait_for(lambda: load.revisions.get(two, 0) > 10, timeout=60, what="the second commit through Caddy")
        load.stop()
        intruder_cannot_use_the_first_namespaces_images(world, tmp_path)
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n{operator.log()[-3000:]}") from None
    finally:
        load.stop()
        cluster.kubectl("delete", "project", "built", "-n", NS, "--timeout=120s", check=False)
        operator.stop()
    assert load.failures == [], f"{len(load.failures)} of {load.sent} requests failed: {load.failures[:5]}"
    assert broken not in load.revisions and load.sent > 50, (load.revisions, load.sent)
    # Deleted: its runs and images went from the builder (the registry keeps its repository).
    left = node.ssh(f"podman {storage(NS)} images --filter reference={repository}").strip()
    assert len(left.splitlines()) <= 1, f"images left on the builder:\n{left}\n{operator.log()[-3000:]}"
    runs = node.ssh("ls -A /var/lib/codeb/builds").strip()
    assert runs == "", f"build runs left on the builder: {runs}\n{operator.log()[-3000:]}"
    assert node.key_file.read_text().splitlines()[1] not in operator.log()
    print(f"runtime kubernetes builds on the Platform's builder, rolled out under load: {load.sent} requests, "
          "0 failed")  # fmt: skip


def intruder_cannot_use_the_first_namespaces_images(world: dict[str, Any], tmp_path: Path) -> None:
    """A Project in another namespace builds FROM the base image the first namespace's storage holds: not there
    for it, so its build fails (and it is told the image is not known), while the first namespace keeps it."""
    cluster: LocalCluster = world["cluster"]
    node: Node = world["node"]
    tree = WorkTree(world["git"], "intruder", tmp_path / "intruder")
    commit = tree.commit("steal", {"Containerfile": "FROM localhost/codeb-rollout:1\nRUN ls /app\n"})
    doc = on_the_node("intruder", INTRUDER_NS, world["git"].url("intruder"), commit)
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    try:
        said = wait_for(lambda: _build_failed(cluster, INTRUDER_NS, "intruder"), timeout=240,
                        what="the intruder's build failed")  # fmt: skip
        assert "localhost/codeb-rollout:1" in said, said
        kept = node.ssh(f"podman {storage(NS)} images -q --filter reference=localhost/codeb-rollout:1").strip()
        assert kept, "the first namespace's base image is gone from its storage"
        theirs = node.ssh(f"podman {storage(INTRUDER_NS)} images").strip()
        assert len(theirs.splitlines()) <= 1, f"the intruder's storage holds images:\n{theirs}"
    finally:
        cluster.kubectl("delete", "project", "intruder", "-n", INTRUDER_NS, "--timeout=120s", check=False)


def _build_failed(cluster: LocalCluster, namespace: str, name: str) -> str:
    found = get_json(cluster, "project", name, "-n", namespace).get("status", {})
    ready = next((c for c in found.get("conditions", []) if c["type"] == "BuildReady"), {})
    return str(ready.get("message", "")) if ready.get("reason") == "BuildFailed" else ""
