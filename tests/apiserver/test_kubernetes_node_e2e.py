"""Runtime kubernetes on a real node: Pods the kubelet really starts, probes and reports.

The local cluster (real API server, kube-controller-manager and kube-scheduler) with one node
(``tests.testnode``: kubelet, kube-proxy, containerd, runc and the CNI plugins in a booted test
host). Nothing here writes a Pod's status: readiness is the kubelet's probe of the application,
an image that cannot be pulled is the kubelet's ErrImagePull, a Pod with no room is the
scheduler's Unschedulable, and the page is fetched from each Pod and through a real Caddy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.claims.store import ClaimStore
from controller.clients.kube import KubeClient, api_client_from_environment
from controller.clients.registry_issuer import RegistryIssuer
from controller.drivers.caddy import CaddyDriver
from controller.drivers.clusters import TargetClusters
from controller.drivers.kubernetes import KubernetesWorkload
from controller.local.cluster import LocalCluster, free_port
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.passes import PAUSED_ANNOTATION
from controller.loop.planner import Component, desired_state
from controller.loop.reconciler import ProjectInput, Reconciler
from controller.specs.registry import CERTIFICATE, ISSUER
from schemas.project import Allocations, ProjectSpec, ProjectStatus
from tests.apiserver.test_kubernetes_runtime import OWN_CLUSTER, cond, pods, step
from tests.apiserver.test_platform_e2e import NS, install_platform, secret_data
from tests.factories import project, project_spec
from tests.helpers import OperatorProcess, get_json, observe_until, wait_for
from tests.memory_drivers import memory_drivers
from tests.registryserver import start_registry
from tests.servers import https_get, start_caddy, start_minio, start_postgres, start_redis
from tests.testhosts import HELLO_IMAGE, ROLLOUT_IMAGE, SERVICES_ADDRESS
from tests.testnode import Node, images_directory, node_cluster

PORT = 4512
# A first Pod on a fresh node takes its time (the image's layers, the sandbox, the first probe).
START_TIMEOUT = 60
CONNECTION = "shop-staging-connection"
MISSING = "localhost/codeb-missing:1"  # in no store and no registry: the kubelet cannot pull it


@pytest.fixture(scope="module")
def noded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Node]]:
    with node_cluster(tmp_path_factory.mktemp("node")) as (cluster, node):
        yield cluster, node


@pytest.fixture()
async def kube(noded: tuple[LocalCluster, Node]) -> AsyncIterator[KubeClient]:
    executor = ThreadPoolExecutor(4)
    yield KubeClient(api_client_from_environment(config_file=str(noded[0].kubeconfig)), executor)
    executor.shutdown()


def spec(image: str, revision: str = "1", replicas: int = 2, cpu: str = "100m", **variables: str) -> ProjectSpec:
    # The node has no registry to ask: an image is run as imported (Kubernetes' default for a tag
    # other than latest is IfNotPresent).
    return ProjectSpec.model_validate(project_spec(
        project={"slug": "shop", "source": {"image": image}, "revision": revision,
                 "rollout": {"startTimeoutSeconds": START_TIMEOUT}},
        servers=OWN_CLUSTER, resources={"replicas": replicas, "cpu": cpu, "memory": "128Mi"},
        environment={"type": "staging", "domains": ["shop.example.com"], "variables": variables}))  # fmt: skip


def new_namespace(cluster: LocalCluster) -> str:
    """A namespace with the Project's connection Secret (no services: the page says so)."""
    namespace = f"k-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "secret", "generic", CONNECTION, "-n", namespace, "--from-literal=APP_NAME=shop")
    return namespace


def page(pod: dict[str, Any], path: str = "/") -> httpx.Response:
    """From this machine to the Pod's own address on the node's Pod network."""
    return httpx.get(address(pod) + path, timeout=5)


def address(pod: dict[str, Any]) -> str:
    return f"http://{pod['status']['podIP']}:{pod['spec']['containers'][0]['ports'][0]['containerPort']}"


def running(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    return [p for p in pods(cluster, namespace) if p.get("status", {}).get("podIP")]


async def test_pods_the_kubelet_starts_serve_the_page_and_an_unpullable_image_is_named(
    noded: tuple[LocalCluster, Node], kube: KubeClient
) -> None:
    cluster, node = noded
    namespace = new_namespace(cluster)
    allocations = Allocations(port=PORT, connection_secret=CONNECTION)
    ctx = DriverContext(ProjectKey(namespace, "shop", "uid-1"), allocations, servers=spec(HELLO_IMAGE).servers)
    driver = KubernetesWorkload(TargetClusters(kube))
    want = dict(desired_state(spec(HELLO_IMAGE), ctx.allocations)[Component.workload])
    assert (await driver.observe(ctx)).state is None
    await driver.apply(ctx, want)
    seen = await driver.observe(ctx)
    assert seen.state == want and not seen.healthy
    assert seen.detail and seen.detail.startswith("Deployment shop-staging: 0 of 2 replicas available")
    seen = await observe_until(driver, ctx, lambda s: s.healthy, timeout=120)
    assert seen.healthy and seen.state == want, seen.detail
    service = get_json(cluster, "service", "shop-staging", "-n", namespace)["spec"]["clusterIP"]
    assert seen.outputs["endpoints"] == [f"{service}:{PORT}"]  # the Service's address, its allocated port
    replica_set = seen.outputs["rollout"]["replicaSet"]
    # Complete: the condition says NewReplicaSetAvailable, which is not progress on the template.
    assert seen.outputs["rollout"] == {"progress": "Complete", "replicaSet": replica_set, "previous": None,
                                       "serving": True, "progressedAt": None}  # fmt: skip
    made = running(cluster, namespace)
    assert len(made) == 2 and {p["spec"]["nodeName"] for p in made} == {node.name}  # placed by the scheduler
    assert all(p["metadata"]["name"].startswith(replica_set) for p in made)
    for pod in made:
        # Ready because the kubelet's probe of /api/health passed, on a container it started.
        statuses = pod["status"]["containerStatuses"]
        assert statuses[0]["ready"] and "running" in statuses[0]["state"] and statuses[0]["containerID"]
        answer = page(pod)
        assert answer.status_code == 200 and "Hello, CodeB" in answer.text
    # The route the workload's endpoints make, in a real Caddy on this machine: through its TLS
    # listener, the Service (kube-proxy's rules on the node) and the Service's port to the Pods' own.
    route = desired_state(spec(HELLO_IMAGE), allocations, {Component.workload: seen.outputs})[Component.route]
    caddy = start_caddy()
    try:
        await CaddyDriver(caddy.admin_url, [f"127.0.0.1:{caddy.https_port}"]).apply(ctx, dict(route))
        # Waited for: Caddy's certificate, and kube-proxy's rules for the new Service, come moments after.
        wait_for(lambda: "Hello, CodeB" in https_get(caddy, "shop.example.com").stdout, timeout=30,
                 what="the page through Caddy")  # fmt: skip
    finally:
        caddy.stop()
    logs = cluster.kubectl("logs", "-n", namespace, made[0]["metadata"]["name"]).stdout
    assert "GET / " in logs or "GET /api/health" in logs, logs  # the application's own log, through the kubelet

    # An image the node cannot pull: the kubelet's own reason, while the ready Pods serve on.
    await driver.apply(ctx, dict(desired_state(spec(MISSING, revision="2"), ctx.allocations)[Component.workload]))
    seen = await observe_until(driver, ctx, lambda s: "ErrImagePull" in (s.detail or "")
                               or "ImagePullBackOff" in (s.detail or ""), timeout=90)  # fmt: skip
    assert "ErrImagePull" in (seen.detail or "") or "ImagePullBackOff" in (seen.detail or ""), seen.detail
    assert all(page(pod).status_code == 200 for pod in made)

    # More CPU than the node has: the scheduler's own words.
    await driver.apply(
        ctx, dict(desired_state(spec(HELLO_IMAGE, revision="3", cpu="64"), allocations)[Component.workload])
    )
    seen = await observe_until(driver, ctx, lambda s: "Unschedulable" in (s.detail or ""), timeout=60)
    assert "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu" in (seen.detail or ""), seen.detail
    assert all(page(pod).status_code == 200 for pod in made)


async def test_a_revision_whose_health_fails_on_the_node_is_rolled_back_and_the_old_pods_serve_throughout(
    noded: tuple[LocalCluster, Node], kube: KubeClient
) -> None:
    """Through the reconciler: revision 2 starts on the node and answers 503 to the kubelet's
    readiness probe (the rollout application's MODE=broken), so it never gets ready; the progress
    deadline fails the rollout, the real Deployment controller goes back to revision 1's
    ReplicaSet, and revision 1's Pods, the same Pods, answer every request meanwhile."""
    cluster, _ = noded
    namespace = new_namespace(cluster)
    claims = ClaimStore(kube, f"claims-{uuid.uuid4().hex[:8]}")
    await claims.setup()
    drivers: dict[Component, Any] = {**memory_drivers(), Component.workload: KubernetesWorkload(TargetClusters(kube))}
    reconciler = Reconciler(drivers, claims)
    key = ProjectKey(namespace, "shop", "uid-1")

    async def converge(revision: str, mode: str, status: ProjectStatus, until: Callable[[ProjectStatus], bool],
                       timeout: float = 150) -> tuple[ProjectStatus, list[str]]:  # fmt: skip
        deadline, reasons = asyncio.get_running_loop().time() + timeout, []
        while True:
            wanted = spec(ROLLOUT_IMAGE, revision=revision, MODE=mode)
            outcome = await reconciler.reconcile(ProjectInput(key, 1, wanted, status))
            status, reasons = outcome.status, reasons + [e.reason for e in outcome.events]
            if until(status) or asyncio.get_running_loop().time() > deadline:
                return status, reasons
            await asyncio.sleep(1)

    status, _ = await converge("1", "ok", ProjectStatus(), lambda s: step(s) == "Succeeded")
    assert step(status) == "Succeeded" and cond(status, "WorkloadReady") == ("True", "Ready")
    serving = running(cluster, namespace)
    assert len(serving) == 2 and all(page(p).json()["revision"] == "1" for p in serving)

    answers: list[int] = []

    async def load() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                for pod in serving:
                    answers.append((await client.get(address(pod) + "/")).status_code)
                await asyncio.sleep(0.1)

    loader = asyncio.create_task(load())
    try:
        status, reasons = await converge("2", "broken", status, lambda s: step(s) == "Failed", timeout=180)
    finally:
        loader.cancel()
    assert step(status) == "Failed" and "RolloutFailed" in reasons, status.rollout
    assert f"no progress within {START_TIMEOUT} s" in status.rollout.message, status.rollout.message  # type: ignore[union-attr]
    assert "running, not ready: its readiness probe has not passed" in status.rollout.message  # type: ignore[union-attr]
    assert cond(status, "WorkloadReady") == ("False", "RolloutFailed")
    assert [(d.revision, d.result) for d in status.deployments] == [("2", "Failed"), ("1", "Succeeded")]
    deployment = get_json(cluster, "deployment", "shop-staging", "-n", namespace)
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODE"] == "ok" and env["CODEB_REVISION"] == "1"  # rolled back by the real controller
    # The broken Pod goes; revision 1's two are the ones that served before and throughout.
    deadline = asyncio.get_running_loop().time() + 60
    while len(pods(cluster, namespace)) != 2 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.5)
    names = sorted(p["metadata"]["name"] for p in pods(cluster, namespace))
    assert names == sorted(p["metadata"]["name"] for p in serving)
    assert answers and set(answers) == {200}, f"{len(answers)} requests, answers {sorted(set(answers))}"


# ---------------------------------------------------------------- the whole operator, on the node

DOMAIN = "shop.node.localhost"


@pytest.fixture(scope="module")
def platform(noded: tuple[LocalCluster, Node]) -> Iterator[dict[str, Any]]:
    """PostgreSQL, Redis and MinIO on the address the node's Pods reach, a Caddy, and the Platform naming them."""
    pg, rd, s3 = start_postgres(SERVICES_ADDRESS), start_redis(SERVICES_ADDRESS), start_minio(SERVICES_ADDRESS)
    caddy = start_caddy()
    try:
        install_platform(noded[0], pg, rd, s3, caddy)
        yield {"pg": pg, "caddy": caddy}
    finally:
        for server in (caddy, s3, rd, pg):
            server.stop()


def test_a_project_on_runtime_kubernetes_serves_its_page_from_pods_on_the_node_through_caddy(
    noded: tuple[LocalCluster, Node], platform: dict[str, Any], tmp_path: Path
) -> None:
    """`kubectl apply` of a Project on the operator's own cluster: the operator allocates its
    database, Redis user and bucket, the kubelet starts its Pods, and the page, through Caddy and
    the Service, shows all three working; deleting the Project takes the Pods away."""
    cluster, node = noded
    shop = project(
        "shop", NS, project={"slug": "shop", "source": {"image": HELLO_IMAGE}, "revision": "1"},
        environment={"type": "staging", "domains": [DOMAIN]},
        servers={"provider": "existing", "runtime": "kubernetes", "platform": "shared"},
        resources={"replicas": 2, "cpu": "100m", "memory": "128Mi"},
        features={"database": {"version": "15"}, "redis": {}, "storage": {}}, backup={"enabled": False},
    )  # fmt: skip
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="5").start()
    try:
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(shop))
        operator.wait_ready(NS, "shop", timeout=180)
        print(f"runtime kubernetes (a real node, 2 replicas): apply to Ready in {time.monotonic() - started:.1f} s")
        status = get_json(cluster, "project", "shop", "-n", NS)["status"]
        credentials = secret_data(cluster, NS, "shop-staging-connection")
        assert (
            credentials["DATABASE_URL"].startswith("postgresql://") and SERVICES_ADDRESS in credentials["DATABASE_URL"]
        )
        service = get_json(cluster, "service", "shop-staging", "-n", NS)["spec"]["clusterIP"]
        assert status["endpoints"]["internal"] == [f"{service}:{status['allocations']['port']}"]
        made = running(cluster, NS)
        assert len(made) == 2 and {p["spec"]["nodeName"] for p in made} == {node.name}
        assert status["serving"]["replicaSet"] and all(
            p["metadata"]["name"].startswith(status["serving"]["replicaSet"]) for p in made
        )

        # Through Caddy's TLS listener and the Service: the page used all three services.
        page = wait_for(lambda: (r := https_get(platform["caddy"], DOMAIN)).stdout.count("<td>works</td>") == 3 and r,
                        timeout=30, what="the page through Caddy")  # fmt: skip
        assert "Hello, CodeB" in page.stdout
        visits = [httpx.get(address(pod) + "/api/visit", timeout=10).json() for pod in made]
        assert all(v["bucket"]["readBack"] and "visits" in v["database"] for v in visits), visits
        assert visits[1]["database"]["visits"] == visits[0]["database"]["visits"] + 1  # one database for both

        cluster.kubectl("delete", "project", "shop", "-n", NS, "--timeout=120s")
        wait_for(lambda: not pods(cluster, NS), timeout=90, what="the Pods gone")
        assert "Hello, CodeB" not in https_get(platform["caddy"], DOMAIN).stdout
        log = operator.log()
        assert all(secret not in log for secret in credentials.values() if len(secret) >= 12)
    finally:
        operator.stop()


# ---------------------------------------------------------------- images from the Platform's registry

PULLED = "pulled"


def on_the_node(name: str, image: str) -> dict[str, Any]:
    return project(name, NS, project={"slug": name, "source": {"image": image}, "revision": "1"},
                   environment={"type": "staging", "domains": [f"{name}.node.localhost"]},
                   servers={"provider": "existing", "runtime": "kubernetes", "platform": "shared"},
                   resources={"replicas": 1, "cpu": "100m", "memory": "128Mi"}, backup={"enabled": False})  # fmt: skip


async def test_a_project_runs_its_image_from_its_platforms_registry_with_its_own_credential(
    noded: tuple[LocalCluster, Node], platform: dict[str, Any], tmp_path: Path
) -> None:
    """Debian's docker-registry with the operator as token issuer, as the Platform's registry: the Project's
    image, pushed from the node with the Project's credential, is pulled by the kubelet with the pull Secret
    the operator made, and serves. A Project naming that image, not its own, gets no credential for it."""
    cluster, node = noded
    kube = KubeClient(api_client_from_environment(config_file=str(cluster.kubeconfig)), ThreadPoolExecutor(2))
    issuer = RegistryIssuer(kube, "codeb-system")
    tokens_port = free_port()
    registry = start_registry(SERVICES_ADDRESS, f"http://{SERVICES_ADDRESS}:{tokens_port}/registry/token",
                              "codeb-registry", ISSUER, (await issuer.data())[CERTIFICATE], tls=True)  # fmt: skip
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_INBOUND_PORT=str(tokens_port),
                               CODEB_DRIFT_INTERVAL="5")  # fmt: skip
    try:
        operator.start()
        # The node's containerd and podman trust the registry's CA, as a cluster's nodes would be set up to
        # (containerd reads the system's roots at its first pull from a registry, which this is).
        assert registry.ca_file is not None
        shutil.copy(registry.ca_file, node.host.directory / "merged/usr/local/share/ca-certificates/registry.crt")
        node.ssh("update-ca-certificates >/dev/null")
        patch = {"spec": {"registry": {"host": registry.address}}}
        cluster.kubectl("patch", "platform", "shared", "--type=merge", "-p", json.dumps(patch))
        image = f"{registry.address}/codeb/{NS}/{PULLED}:1"
        doc = on_the_node(PULLED, image)
        doc["metadata"]["annotations"] = {PAUSED_ANNOTATION: "true"}  # held until its image is pushed
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
        uid = get_json(cluster, "project", PULLED, "-n", NS)["metadata"]["uid"]
        credential = f"{NS}/{PULLED}:{await issuer.password(NS, PULLED, uid)}"
        images = images_directory(node.cache)
        node.ssh(f"podman load -q -i /codeb-cache/{images}/apps.tar >/dev/null && podman push -q --creds "
                 f"'{credential}' {HELLO_IMAGE} {image}", timeout=180)  # fmt: skip
        cluster.kubectl("annotate", "project", PULLED, "-n", NS, f"{PAUSED_ANNOTATION}-")
        operator.wait_ready(NS, PULLED, timeout=180)

        made = running(cluster, NS)
        assert [p["spec"]["containers"][0]["image"] for p in made] == [image]
        assert made[0]["status"]["containerStatuses"][0]["imageID"].startswith(f"{registry.address}/codeb/")
        pull_secret = made[0]["spec"]["imagePullSecrets"][0]["name"]
        stored = get_json(cluster, "secret", pull_secret, "-n", NS)
        config = json.loads(base64.b64decode(stored["data"][".dockerconfigjson"]))
        assert config["auths"][registry.address]["password"] == credential.split(":", 1)[1]
        wait_for(lambda: "Hello, CodeB" in https_get(platform["caddy"], f"{PULLED}.node.localhost").stdout,
                 timeout=30, what="the page of the image pulled from the registry, through Caddy")  # fmt: skip

        # Another Project naming the same image: not its own repository, so no credential, and the registry
        # refuses the kubelet.
        thief = on_the_node("thief", image)
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(thief))

        def refused() -> str:
            status = get_json(cluster, "project", "thief", "-n", NS).get("status", {})
            message = next((c["message"] for c in status.get("conditions", []) if c["type"] == "WorkloadReady"), "")
            return message if "ErrImagePull" in message or "ImagePullBackOff" in message else ""

        wait_for(refused, timeout=120, what="the thief's Pods refused by the registry")
        thief_pods = get_json(cluster, "pods", "-n", NS, "-l", "app.kubernetes.io/name=thief-staging")["items"]
        assert thief_pods and all(not p["spec"].get("imagePullSecrets") for p in thief_pods)

        for name in ("thief", PULLED):
            cluster.kubectl("delete", "project", name, "-n", NS, "--timeout=120s")
        assert cluster.kubectl("get", "secret", pull_secret, "-n", NS, check=False).returncode != 0  # gone with it
    finally:
        operator.stop()
        registry.stop()
        kube.close()
