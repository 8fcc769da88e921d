"""Runtime kubernetes on the real API server with the real kube-controller-manager.

Deployments make ReplicaSets and ReplicaSets make Pods through the real controllers; what a
kubelet does with them (Pods that start, pass or fail their probes, cannot be pulled, find no
room) is proven on a real node in ``test_kubernetes_node_e2e``. No node runs here, and two tests
write a Pod's status where a kubelet would (``kubelet_reports``): a target cluster named by a
kubeconfig (a second control plane, with no node of its own), and the rollout test's hold and
retry, which are the operator's decisions, after three progress deadlines in seconds rather than minutes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.claims.store import ClaimStore
from controller.clients.kube import KubeClient, api_client_from_environment
from controller.clients.registry_issuer import RegistryIssuer
from controller.drivers.clusters import ExistingCluster, TargetClusters
from controller.drivers.kubernetes import KubernetesWorkload
from controller.drivers.registry_pulls import RegistryPulls
from controller.errors import PermanentError, RetryableError
from controller.local.cluster import LocalCluster, free_port
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, desired_state
from controller.loop.reconciler import ProjectInput, Reconciler
from controller.loop.status import condition
from schemas.project import Allocations, ProjectSpec, ProjectStatus
from tests.conftest import start_cluster
from tests.factories import project_spec
from tests.helpers import get_json, observe_until
from tests.memory_drivers import memory_drivers

# The operator's own cluster (a spec that names no other).
OWN_CLUSTER = {"provider": "existing", "runtime": "kubernetes"}


@pytest.fixture(scope="module")
def controlled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = start_cluster(tmp_path_factory.mktemp("controllers"), controllers=True)
    yield local
    local.stop()


@pytest.fixture()
async def kube(controlled: LocalCluster) -> AsyncIterator[KubeClient]:
    executor = ThreadPoolExecutor(4)
    yield KubeClient(api_client_from_environment(config_file=str(controlled.kubeconfig)), executor)
    executor.shutdown()


@pytest.fixture()
async def own_kube(cluster: LocalCluster) -> AsyncIterator[KubeClient]:
    """The operator's own cluster, for tests whose workload runs in another one (``controlled``)."""
    executor = ThreadPoolExecutor(4)
    yield KubeClient(api_client_from_environment(config_file=str(cluster.kubeconfig)), executor)
    executor.shutdown()


def workload(cluster: LocalCluster, **sections: Any) -> tuple[DriverContext, dict[str, Any]]:
    namespace = f"k-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    servers = {**OWN_CLUSTER, **sections.pop("servers", {})}
    spec = ProjectSpec.model_validate(project_spec(servers=servers, features={"database": {}}, **sections))
    allocations = Allocations(port=4512, connection_secret="shop-staging-connection", database="shop_staging_db")
    cluster.kubectl("create", "secret", "generic", "shop-staging-connection", "-n", namespace,
                    "--from-literal=DATABASE_PASSWORD=first")  # fmt: skip
    ctx = DriverContext(ProjectKey(namespace, "shop", "uid-1"), allocations, servers=spec.servers)
    return ctx, dict(desired_state(spec, allocations)[Component.workload])


def flat_kubeconfig(cluster: LocalCluster) -> str:
    """The cluster's kubeconfig with its certificates inline, as a user would put it in a Secret."""
    return cluster.kubectl("config", "view", "--raw", "--flatten", "--minify").stdout


def in_target(own: LocalCluster, target: LocalCluster) -> tuple[DriverContext, dict[str, Any]]:
    """A Project in ``own`` whose workload runs in ``target``, named by a kubeconfig Secret."""
    ctx, want = workload(own, servers={"provider": "existing", "cluster": {"kubeconfigSecretRef": "target"}})
    own.kubectl("create", "secret", "generic", "target", "-n", ctx.key.namespace,
                f"--from-literal=kubeconfig={flat_kubeconfig(target)}")  # fmt: skip
    return ctx, want


def pods(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = get_json(cluster, "pods", "-n", namespace)["items"]
    return [p for p in found if not p["metadata"].get("deletionTimestamp")]


def kubelet_reports(cluster: LocalCluster, namespace: str, pod: str, ready: bool, waiting: str | None = None) -> None:
    """What a kubelet would write to a Pod's status (none runs here)."""
    state = {"waiting": {"reason": waiting, "message": "pull access denied"}} if waiting else {"running": {}}
    status = {
        "phase": "Running" if ready else "Pending",
        "conditions": [{"type": t, "status": "True" if ready else "False"} for t in ("Ready", "ContainersReady")],
        "containerStatuses": [{"name": "app", "ready": ready, "restartCount": 0, "image": "x", "imageID": "",
                               "state": state}],
    }  # fmt: skip
    cluster.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))  # fmt: skip


async def wait_pods(cluster: LocalCluster, namespace: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(found := pods(cluster, namespace)) != count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.3)
    return found


async def test_hand_edits_and_rotations_are_drift_and_put_back(controlled: LocalCluster, kube: KubeClient) -> None:
    driver = KubernetesWorkload(TargetClusters(kube))
    ctx, want = workload(controlled)
    ns = ctx.key.namespace
    await driver.apply(ctx, want)
    controlled.kubectl("set", "image", "deployment/shop-staging", "app=evil/miner:latest", "-n", ns)
    controlled.kubectl("delete", "pdb", "shop-staging", "-n", ns)
    seen = await driver.observe(ctx)
    assert seen.state is not None and seen.state["image"] == "evil/miner:latest" and not seen.state["objectsMatch"]
    await driver.apply(ctx, want)
    assert (await driver.observe(ctx)).state == want
    # A rotated password is drift too: applying rolls the Pods onto a new template.
    before = get_json(controlled, "deployment", "shop-staging", "-n", ns)["spec"]["template"]["metadata"]
    controlled.kubectl("patch", "secret", "shop-staging-connection", "-n", ns, "--type=merge",
                       "-p", json.dumps({"stringData": {"DATABASE_PASSWORD": "rotated"}}))  # fmt: skip
    seen = await driver.observe(ctx)
    assert seen.state is not None and seen.state["environmentCurrent"] is False
    await driver.apply(ctx, want)
    after = get_json(controlled, "deployment", "shop-staging", "-n", ns)["spec"]["template"]["metadata"]
    assert after["annotations"] != before["annotations"]
    assert (await driver.observe(ctx)).state == want


async def test_an_image_in_the_platforms_registry_is_pulled_with_the_projects_own_credential(
    controlled: LocalCluster, kube: KubeClient
) -> None:
    """The pull Secret: made for the Project's own repository alone, drift when deleted, gone when the image
    moves elsewhere (the kubelet pulling with it is on the node, in ``test_kubernetes_node_e2e``)."""
    platform, registry = f"reg-{uuid.uuid4().hex[:6]}", "registry.example.com:5000"
    controlled.kubectl("apply", "-f", "-", input_text=json.dumps({
        "apiVersion": "codeb.dev/v1alpha1", "kind": "Platform", "metadata": {"name": platform},
        "spec": {"registry": {"host": registry}}}))  # fmt: skip
    controlled.kubectl("create", "namespace", "codeb-system", check=False)
    issuer = RegistryIssuer(kube, "codeb-system")
    driver = KubernetesWorkload(TargetClusters(kube), RegistryPulls(kube, issuer))
    ctx, want = workload(controlled, servers={"platform": platform})
    ns = ctx.key.namespace
    want = {**want, "image": f"{registry}/codeb/{ns}/shop:1"}
    await driver.apply(ctx, want)
    pod = get_json(controlled, "deployment", "shop-staging", "-n", ns)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "shop-staging-registry"}]
    stored = get_json(controlled, "secret", "shop-staging-registry", "-n", ns)
    assert stored["type"] == "kubernetes.io/dockerconfigjson"
    auth = json.loads(base64.b64decode(stored["data"][".dockerconfigjson"]))["auths"][registry]
    assert (auth["username"], auth["password"]) == (f"{ns}/shop", await issuer.password(ns, "shop", "uid-1"))
    assert (await driver.observe(ctx)).state == want
    # Deleted by hand: drift, and put back.
    controlled.kubectl("delete", "secret", "shop-staging-registry", "-n", ns)
    seen = await driver.observe(ctx)
    assert seen.state is not None and not seen.state["objectsMatch"]
    await driver.apply(ctx, want)
    assert (await driver.observe(ctx)).state == want
    # Another Project's repository in the same registry, or another registry: no credential, and no Secret.
    for image in (f"{registry}/codeb/{ns}/other:1", f"{registry}/codeb/{ns}/shop-x:1", "docker.io/library/shop:1"):
        elsewhere = {**want, "image": image}
        await driver.apply(ctx, elsewhere)
        pod = get_json(controlled, "deployment", "shop-staging", "-n", ns)["spec"]["template"]["spec"]
        assert "imagePullSecrets" not in pod, image
        assert controlled.kubectl("get", "secret", "shop-staging-registry", "-n", ns, check=False).returncode != 0
        assert (await driver.observe(ctx)).state == elsewhere
    # A Secret of that name a person made is never taken over.
    controlled.kubectl("create", "secret", "generic", "shop-staging-registry", "-n", ns, "--from-literal=a=b")
    with pytest.raises(PermanentError, match="not this Project's"):
        await driver.apply(ctx, want)
    # source.git never built (no image): refused, naming the builder it lacks and where a team's CI pushes instead.
    lacks = f"builds on its Platform's builder, and Platform {platform} names no builder and registry"
    with pytest.raises(PermanentError, match=f"{lacks} .* push it to {registry}/codeb/{ns}/shop:<tag>"):
        await driver.apply(ctx, {**want, "image": ""})
    controlled.kubectl("delete", "platform", platform)


async def test_min_max_makes_an_autoscaler_and_a_fixed_count_removes_it(
    controlled: LocalCluster, kube: KubeClient
) -> None:
    driver = KubernetesWorkload(TargetClusters(kube))
    ctx, scaled = workload(controlled, servers={"min": 2, "max": 5})
    await driver.apply(ctx, scaled)
    hpa = get_json(controlled, "hpa", "shop-staging", "-n", ctx.key.namespace)["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert (await driver.observe(ctx)).state == scaled
    fixed = {**scaled, "autoscaling": None, "replicas": 3}
    await driver.apply(ctx, fixed)
    assert controlled.kubectl("get", "hpa", "-n", ctx.key.namespace, "-o", "name").stdout.strip() == ""
    assert (await driver.observe(ctx)).state == fixed


async def test_a_foreign_deployment_of_the_same_name_is_refused_and_left_alone(
    controlled: LocalCluster, kube: KubeClient
) -> None:
    driver = KubernetesWorkload(TargetClusters(kube))
    ctx, want = workload(controlled)
    controlled.kubectl("create", "deployment", "shop-staging", "--image=theirs:1", "-n", ctx.key.namespace)
    assert (await driver.observe(ctx)).state is None
    with pytest.raises(PermanentError) as caught:
        await driver.apply(ctx, want)
    assert caught.value.reason == "NotOwned"
    await driver.delete(ctx, retain=False)
    image = get_json(controlled, "deployment", "shop-staging", "-n", ctx.key.namespace)
    assert image["spec"]["template"]["spec"]["containers"][0]["image"] == "theirs:1"


async def test_a_foreign_service_of_the_same_name_is_refused_before_anything_is_applied(
    controlled: LocalCluster, kube: KubeClient
) -> None:
    """Before, only the Deployment was checked: a Service made by someone else was force-applied over, and
    deleted as the Project's own when it went."""
    driver = KubernetesWorkload(TargetClusters(kube))
    ctx, want = workload(controlled)
    controlled.kubectl("create", "service", "clusterip", "shop-staging", "--tcp=80:8080", "-n", ctx.key.namespace)
    with pytest.raises(PermanentError) as caught:
        await driver.apply(ctx, want)
    assert caught.value.reason == "NotOwned" and "Service" in caught.value.message
    assert controlled.kubectl("get", "deployment", "shop-staging", "-n", ctx.key.namespace,
                              check=False).returncode != 0  # fmt: skip
    await driver.delete(ctx, retain=False)
    service = get_json(controlled, "service", "shop-staging", "-n", ctx.key.namespace)  # untouched, not deleted
    assert service["spec"]["ports"][0]["targetPort"] == 8080
    assert "codeb.dev/project" not in (service["metadata"].get("labels") or {})


async def test_delete_removes_the_objects_and_the_garbage_collector_the_pods(
    controlled: LocalCluster, kube: KubeClient, tmp_path: Path
) -> None:
    driver = KubernetesWorkload(TargetClusters(kube))
    ctx, want = workload(controlled)
    await driver.apply(ctx, want)
    assert len(await wait_pods(controlled, ctx.key.namespace, 1)) == 1
    await driver.delete(ctx, retain=False)
    assert (await driver.observe(ctx)).state is None
    for kind in ("deployment", "service", "pdb", "hpa"):
        assert controlled.kubectl("get", kind, "-n", ctx.key.namespace, "-o", "name").stdout.strip() == ""
    assert await wait_pods(controlled, ctx.key.namespace, 0) == []


async def test_a_target_cluster_gets_the_namespace_the_secret_copies_and_the_workload(
    cluster: LocalCluster, controlled: LocalCluster, own_kube: KubeClient
) -> None:
    driver = KubernetesWorkload(TargetClusters(own_kube, allow_internal=True))
    ctx, want = in_target(cluster, controlled)
    ns = ctx.key.namespace
    assert controlled.kubectl("get", "namespace", ns, check=False).returncode != 0
    await driver.apply(ctx, want)
    # In the target: the namespace, the copy of the connection Secret, the Pods (by its own controllers).
    copied = get_json(controlled, "secret", "shop-staging-connection", "-n", ns)
    assert copied["metadata"]["labels"]["codeb.dev/project"] == "shop"
    assert copied["data"] == get_json(cluster, "secret", "shop-staging-connection", "-n", ns)["data"]
    made = await wait_pods(controlled, ns, 1)
    assert cluster.kubectl("get", "deployment", "-n", ns, "-o", "name").stdout.strip() == ""
    kubelet_reports(controlled, ns, made[0]["metadata"]["name"], ready=True)
    seen = await observe_until(driver, ctx, lambda s: s.healthy)
    assert seen.state == want

    # The operator's Secret is the truth: a rotation there, or a copy edited there, is drift.
    for edited, value in ((cluster, "rotated"), (controlled, "tampered")):
        edited.kubectl("patch", "secret", "shop-staging-connection", "-n", ns, "--type=merge",
                       "-p", json.dumps({"stringData": {"DATABASE_PASSWORD": value}}))  # fmt: skip
        seen = await driver.observe(ctx)
        assert seen.state is not None and seen.state["environmentCurrent"] is False
        await driver.apply(ctx, want)
        assert secret_value(controlled, ns, "shop-staging-connection", "DATABASE_PASSWORD") == "rotated"
        assert (await driver.observe(ctx)).state == want

    # Deleting removes what the operator put in the target; its own Secret stays where it was.
    await driver.delete(ctx, retain=False)
    for kind in ("deployment", "service", "pdb", "secret"):
        assert controlled.kubectl("get", kind, "-n", ns, "-o", "name").stdout.strip() == ""
    assert secret_value(cluster, ns, "shop-staging-connection", "DATABASE_PASSWORD") == "rotated"


async def test_a_secret_of_the_same_name_in_the_target_is_not_taken_over(
    cluster: LocalCluster, controlled: LocalCluster, own_kube: KubeClient
) -> None:
    driver = KubernetesWorkload(TargetClusters(own_kube, allow_internal=True))
    ctx, want = in_target(cluster, controlled)
    controlled.kubectl("create", "namespace", ctx.key.namespace)
    controlled.kubectl("create", "secret", "generic", "shop-staging-connection", "-n", ctx.key.namespace,
                       "--from-literal=THEIRS=1")  # fmt: skip
    with pytest.raises(PermanentError) as caught:
        await driver.apply(ctx, want)
    assert caught.value.reason == "NotOwned" and "is not this Project's copy" in caught.value.message
    assert secret_value(controlled, ctx.key.namespace, "shop-staging-connection", "THEIRS") == "1"
    assert controlled.kubectl("get", "deployment", "-n", ctx.key.namespace, "-o", "name").stdout.strip() == ""


def with_user(kubeconfig: str, user: dict[str, Any]) -> str:
    doc = yaml.safe_load(kubeconfig)
    doc["users"][0]["user"] = user
    return yaml.safe_dump(doc)


def with_server(kubeconfig: str, server: str) -> str:
    return kubeconfig.replace(yaml.safe_load(kubeconfig)["clusters"][0]["cluster"]["server"], server)


@pytest.mark.parametrize(
    ("broken", "reason", "named"),
    [
        (
            lambda k: with_user(k, {"exec": {"command": "/bin/sh", "apiVersion": "client.authentication.k8s.io/v1"}}),
            "KubeconfigInvalid",
            "users[codeb-admin].user.exec runs a program",
        ),
        (lambda k: with_user(k, {"token": "not-a-token-of-this-cluster"}), "ClusterRefused", "401"),
        (lambda k: with_server(k, f"https://127.0.0.1:{free_port()}"), "ClusterUnreachable", "unreachable"),
        (lambda k: "just: [text", "KubeconfigInvalid", "not a kubeconfig document"),
        (None, "KubeconfigMissing", "does not exist or has no key kubeconfig"),
    ],
    ids=["exec-plugin", "wrong-token", "nothing-listens", "not-yaml", "no-secret"],
)
async def test_an_unusable_target_cluster_is_named_with_its_cause(
    cluster: LocalCluster,
    controlled: LocalCluster,
    own_kube: KubeClient,
    broken: Callable[[str], str] | None,
    reason: str,
    named: str,
) -> None:
    infrastructure = ExistingCluster(TargetClusters(own_kube, allow_internal=True))
    ctx, _ = in_target(cluster, controlled)
    good = await infrastructure.observe(ctx)
    assert good.healthy and good.state == {"provider": "existing", "cluster": "target", "reachable": True}
    if broken is None:
        cluster.kubectl("delete", "secret", "target", "-n", ctx.key.namespace)
    else:
        bad = broken(flat_kubeconfig(controlled))
        cluster.kubectl("delete", "secret", "target", "-n", ctx.key.namespace)
        cluster.kubectl("create", "secret", "generic", "target", "-n", ctx.key.namespace,
                        f"--from-literal=kubeconfig={bad}")  # fmt: skip
    seen = await infrastructure.observe(ctx)
    assert not seen.healthy and seen.state is not None and seen.state["reachable"] is False
    assert named in (seen.detail or ""), seen.detail
    with pytest.raises(RetryableError) as caught:
        await infrastructure.apply(ctx, {})
    assert caught.value.reason == reason
    key = yaml.safe_load(flat_kubeconfig(controlled))["users"][0]["user"]["client-key-data"]
    assert key[:40] not in caught.value.message and key[:40] not in (seen.detail or "")


def secret_value(cluster: LocalCluster, namespace: str, name: str, key: str) -> str:
    return base64.b64decode(get_json(cluster, "secret", name, "-n", namespace)["data"][key]).decode()


# ---------------------------------------------------------------- rollouts (controller.loop.rollouts.rolling)


async def test_a_revision_that_never_gets_ready_is_rolled_back_and_held_and_a_good_one_rolls_out(
    controlled: LocalCluster, kube: KubeClient
) -> None:
    """Through the reconciler, against the real Deployment and ReplicaSet controllers: the
    progress deadline fails the rollout, the Deployment goes back to the ReplicaSet that
    served (its Pods are the same Pods throughout), and the broken revision stays held back."""
    namespace = f"k-{uuid.uuid4().hex[:8]}"
    controlled.kubectl("create", "namespace", namespace)
    claims = ClaimStore(kube, f"claims-{uuid.uuid4().hex[:8]}")
    await claims.setup()
    drivers: dict[Component, Any] = {**memory_drivers(), Component.workload: KubernetesWorkload(TargetClusters(kube))}
    reconciler = Reconciler(drivers, claims)
    key = ProjectKey(namespace, "shop", "uid-1")

    def project(revision: str, image: str, status: ProjectStatus, retry: str | None = None) -> ProjectInput:
        source = {"image": image}
        spec = project_spec(project={"slug": "shop", "source": source, "revision": revision,
                                     "rollout": {"startTimeoutSeconds": 8}},
                            servers={"provider": "existing", "runtime": "kubernetes"},
                            resources={"replicas": 2})  # fmt: skip
        return ProjectInput(key, 1, ProjectSpec.model_validate(spec), status, retry_rollout=retry)

    async def converge(revision: str, image: str, status: ProjectStatus, until: Callable[[ProjectStatus], bool],
                       retry: str | None = None, timeout: float = 60) -> tuple[ProjectStatus, list[str]]:  # fmt: skip
        deadline, reasons = asyncio.get_running_loop().time() + timeout, []
        while True:
            outcome = await reconciler.reconcile(project(revision, image, status, retry))
            status = outcome.status
            reasons += [e.reason for e in outcome.events]
            if until(status) or asyncio.get_running_loop().time() > deadline:
                return status, reasons
            for pod in pods(controlled, namespace):  # what a kubelet would report of the good image
                if pod["spec"]["containers"][0]["image"] != BROKEN and not _ready(pod):
                    kubelet_reports(controlled, namespace, pod["metadata"]["name"], ready=True)
            await asyncio.sleep(0.5)

    status, _ = await converge("1", "shop:1", ProjectStatus(), lambda s: step(s) == "Succeeded")
    assert status.serving is not None and status.serving.revision == "1" and status.serving.replica_set
    assert cond(status, "Serving") == ("True", "ReplicaSet") and cond(status, "WorkloadReady") == ("True", "Ready")
    serving_pods = sorted(p["metadata"]["name"] for p in pods(controlled, namespace))
    assert len(serving_pods) == 2

    # Revision 2's Pods never get ready (a kubelet would report CrashLoopBackOff): the old ones serve on.
    status, reasons = await converge("2", BROKEN, status, lambda s: step(s) == "Checking")
    assert "RolloutStarted" in reasons and cond(status, "WorkloadReady") == ("True", "RollingOut")
    new = await wait_pods(controlled, namespace, 3)
    broken = next(p["metadata"]["name"] for p in new if p["spec"]["containers"][0]["image"] == BROKEN)
    kubelet_reports(controlled, namespace, broken, ready=False, waiting="CrashLoopBackOff")
    status, reasons = await converge("2", BROKEN, status, lambda s: step(s) == "Failed", timeout=90)
    assert step(status) == "Failed" and "RolloutFailed" in reasons
    assert "no progress within 8 s" in status.rollout.message and "CrashLoopBackOff" in status.rollout.message  # type: ignore[union-attr]
    assert cond(status, "WorkloadReady") == ("False", "RolloutFailed") and cond(status, "Ready")[1] == "RolloutFailed"
    assert [(d.revision, d.result) for d in status.deployments] == [("2", "Failed"), ("1", "Succeeded")]
    # Rolled back by the real controller: the Deployment runs revision 1's template, whose
    # ReplicaSet still has its Pods; the broken Pod goes.
    deployment = get_json(controlled, "deployment", "shop-staging", "-n", namespace)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "shop:1"
    assert deployment["metadata"]["annotations"]["codeb.dev/held-back"] == status.rollout.release  # type: ignore[union-attr]
    await wait_pods(controlled, namespace, 2)
    assert sorted(p["metadata"]["name"] for p in pods(controlled, namespace)) == serving_pods
    assert status.serving is not None and status.serving.revision == "1"

    # Held back: more passes do not roll revision 2 again.
    generation = deployment["metadata"]["generation"]
    status, _ = await converge("2", BROKEN, status, lambda s: False, timeout=3)
    again = get_json(controlled, "deployment", "shop-staging", "-n", namespace)
    assert again["metadata"]["generation"] == generation and step(status) == "Failed"

    # A retry rolls it once more, onto its old ReplicaSet: it fails at the deadline again and is
    # rolled back again, and the history has both attempts.
    status, _ = await converge("2", BROKEN, status, lambda s: step(s) == "Checking", retry="1")
    image = get_json(controlled, "deployment", "shop-staging", "-n", namespace)["spec"]["template"]["spec"]
    assert image["containers"][0]["image"] == BROKEN
    status, _ = await converge("2", BROKEN, status, lambda s: step(s) == "Failed", retry="1", timeout=90)
    assert step(status) == "Failed" and status.rollout is not None and status.rollout.retry == "1"
    image = get_json(controlled, "deployment", "shop-staging", "-n", namespace)["spec"]["template"]["spec"]
    assert image["containers"][0]["image"] == "shop:1"
    assert [(d.revision, d.result) for d in status.deployments][:2] == [("2", "Failed"), ("2", "Failed")]
    # A new good revision replaces it and the hold ends.
    status, reasons = await converge("3", "shop:3", status, lambda s: step(s) == "Succeeded", retry="1")
    assert "RolloutSucceeded" in reasons and cond(status, "Ready") == ("True", "AllComponentsReady")
    assert [(d.revision, d.result) for d in status.deployments][:3] == [("3", "Succeeded"), ("2", "Failed"),
                                                                          ("2", "Failed")]  # fmt: skip
    final = get_json(controlled, "deployment", "shop-staging", "-n", namespace)
    assert "codeb.dev/held-back" not in final["metadata"]["annotations"]
    assert status.serving is not None and status.serving.revision == "3"


BROKEN = "shop:broken"


def step(status: ProjectStatus) -> str | None:
    """Where the Project's rollout stands (Checking, Succeeded, Failed, …), or None before any."""
    return status.rollout.step.value if status.rollout else None


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def cond(status: ProjectStatus, type_: str) -> tuple[str, str]:
    found = condition(status, type_)
    assert found is not None, f"no {type_} condition"
    return found.status.value, found.reason


async def test_a_kubeconfig_aimed_at_the_operators_loopback_is_refused(
    cluster: LocalCluster, controlled: LocalCluster, own_kube: KubeClient
) -> None:
    """The blind SSRF: a Project's kubeconfig naming 127.0.0.1 would make the operator probe its own machine."""
    infrastructure = ExistingCluster(TargetClusters(own_kube))  # as in production: internal targets refused
    ctx, _ = in_target(cluster, controlled)
    seen = await infrastructure.observe(ctx)
    assert not seen.healthy and "loopback" in (seen.detail or ""), seen.detail
    with pytest.raises(RetryableError) as caught:
        await infrastructure.apply(ctx, {})
    assert caught.value.reason == "TargetNotAllowed"
