"""Provider vultr with runtime kubernetes: a VKE cluster made by real Terraform, its kubeconfig read
from the state Terraform keeps in the operator's cluster, and the workload deployed into it.

Vultr cannot be reached here, so the module is a stand-in (`tests/terraform_modules/vultr-kubernetes`:
the real module's variables and outputs, checked against the provider's schema in
`tests/unit/test_terraform_vultr.py`) whose cluster is a second real API server. Everything else is
what the operator runs: the Terraform runs and their state, `TerraformCluster`, `TargetClusters`
and `KubernetesWorkload`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.clients.kube import KubeClient
from controller.drivers.clusters import TargetClusters
from controller.drivers.kubernetes import KubernetesWorkload
from controller.drivers.vke import TerraformCluster
from controller.errors import RetryableError
from controller.jobs.terraform import TerraformRunner, TerraformSettings
from controller.jobs.terraform_state import StateStore
from controller.local.cluster import LocalCluster
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, Observation, desired_state
from controller.specs import terraform as tf
from schemas.project import Allocations, InfrastructureStatus, ProjectSpec
from tests.apiserver.test_kubernetes_runtime import flat_kubeconfig
from tests.apiserver.test_terraform_runs import MODULES, counting_terraform
from tests.conftest import start_cluster
from tests.factories import project_spec
from tests.helpers import OperatorProcess, get_json, wait_for

pytestmark = pytest.mark.apiserver

VKE = {"provider": "vultr", "region": "icn", "runtime": "kubernetes", "plan": "vc2-2c-4gb", "count": 1,
       "credentialsSecretRef": "vultr-api", "vke": {"version": "v1.33.0+1", "nodes": 2}}  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The API server the stand-in's "VKE cluster" is."""
    local = start_cluster(tmp_path_factory.mktemp("vke"))
    yield local
    local.stop()


@dataclass
class World:
    cluster: LocalCluster
    made: LocalCluster
    work: Path
    infrastructure: TerraformCluster
    workload: KubernetesWorkload
    clusters: TargetClusters
    kube: KubeClient
    settings: TerraformSettings

    def restarted(self) -> TerraformCluster:
        """The driver of an operator that started again: nothing in memory, the status and the cluster only."""
        return TerraformCluster(TerraformRunner(self.settings), self.kube.read_secret, self.kube, self.clusters)

    def ctx(self, namespace: str) -> DriverContext:
        spec = ProjectSpec.model_validate(project_spec(slug="shop", servers=VKE, features={"database": {}}))
        allocations = Allocations(port=4512, connection_secret="shop-staging-connection", database="shop_staging_db")
        return DriverContext(ProjectKey(namespace, "shop", "uid-shop"), allocations, servers=spec.servers)

    def wanted_workload(self) -> dict[str, Any]:
        spec = ProjectSpec.model_validate(project_spec(slug="shop", servers=VKE, features={"database": {}}))
        allocations = Allocations(port=4512, connection_secret="shop-staging-connection", database="shop_staging_db")
        return dict(desired_state(spec, allocations)[Component.workload])

    def ledger(self) -> list[str]:
        path = self.work / "ledger"
        return path.read_text().splitlines() if path.exists() else []


def stand_in_cloud(made: LocalCluster, tmp_path: Path) -> tuple[Path, Path]:
    """Terraform's work directory, with what the stand-in module makes its cluster of (``made``'s kubeconfig and
    address), and the Terraform that logs its commands."""
    work = tmp_path / "work"
    work.mkdir()
    given = flat_kubeconfig(made)
    (work / "kubeconfig").write_text(given)
    (work / "endpoint").write_text(yaml.safe_load(given)["clusters"][0]["cluster"]["server"])
    binary, _ = counting_terraform(tmp_path)
    return work, binary


@pytest.fixture()
async def world(cluster: LocalCluster, made: LocalCluster, namespace: str, kube: KubeClient, tmp_path: Path
                ) -> AsyncIterator[World]:  # fmt: skip
    cluster.kubectl("create", "secret", "generic", "vultr-api", "-n", namespace, "--from-literal=apiKey=" + "V" * 36)
    cluster.kubectl("create", "secret", "generic", "shop-staging-connection", "-n", namespace,
                    "--from-literal=DATABASE_PASSWORD=first")  # fmt: skip
    work, binary = stand_in_cloud(made, tmp_path)
    settings = TerraformSettings(binary=str(binary), work_root=work, modules=MODULES, state_namespace=namespace,
                                 kubeconfig=str(cluster.kubeconfig), plugin_dir=None, concurrency=2,
                                 run_timeout=600, wait=60, plan_interval=3600)  # fmt: skip
    clusters = TargetClusters(kube, allow_internal=True, states=StateStore(kube, namespace))
    infrastructure = TerraformCluster(TerraformRunner(settings), kube.read_secret, kube, clusters)
    yield World(cluster, made, work, infrastructure, KubernetesWorkload(clusters), clusters, kube, settings)


async def converge(world: World, ctx: DriverContext) -> Observation:
    seen = await world.infrastructure.observe(ctx)
    if seen.state is None or not seen.state["converged"]:
        await world.infrastructure.apply(ctx, {})
        seen = await world.infrastructure.observe(ctx)
    return seen


async def test_terraform_makes_the_cluster_and_the_workload_lands_in_it_with_the_kubeconfig_from_its_state(
    world: World, namespace: str
) -> None:
    ctx = world.ctx(namespace)
    with pytest.raises(RetryableError) as early:
        await world.clusters.of(ctx)
    assert early.value.reason == "ClusterNotMade"

    seen = await converge(world, ctx)
    assert seen.healthy and seen.state is not None and seen.state["converged"] is True, seen.detail
    assert {k: seen.state[k] for k in ("version", "nodes", "plan")} == {"version": "v1.33.0+1", "nodes": 2,
                                                                        "plan": "vc2-2c-4gb"}  # fmt: skip
    record = InfrastructureStatus.model_validate(seen.outputs["terraform"])
    assert record.outputs.cluster_endpoint == (world.work / "endpoint").read_text()
    assert record.outputs.public_addresses == []
    prefix = tf.resource_name(ctx.key)
    assert world.ledger() == [f"made {prefix} v1.33.0+1 vc2-2c-4gb x2"]
    # The kubeconfig's key is in the state Secret of the operator's namespace, and in no status.
    key = yaml.safe_load((world.work / "kubeconfig").read_text())["users"][0]["user"]["client-key-data"]
    assert key not in json.dumps(seen.outputs) and key not in json.dumps(record.model_dump(mode="json"))

    # The workload goes to the made cluster (its namespace made there), not to the operator's.
    want = world.wanted_workload()
    await world.workload.apply(ctx, want)
    assert get_json(world.made, "deployment", want["instance"], "-n", namespace)["spec"]["template"]["spec"]
    assert world.cluster.kubectl("get", "deployment", "-n", namespace, "-o", "name").stdout.strip() == ""
    copied = get_json(world.made, "secret", "shop-staging-connection", "-n", namespace)
    assert copied["metadata"]["labels"]["codeb.dev/project"] == "shop"

    # The route reaches it through the cloud's balancer (the Platform's Caddy is outside the cluster): until
    # Vultr's cloud controller gives the Service an address, there is nowhere to route, and it says so.
    service = get_json(world.made, "service", want["instance"], "-n", namespace)
    assert service["spec"]["type"] == "LoadBalancer"
    waiting = await world.workload.observe(ctx)
    assert waiting.outputs["endpoints"] == [] and not waiting.healthy
    assert "load balancer has no address yet" in str(waiting.detail)
    assert waiting.state == want  # the Service as rendered: not drift
    ingress = {"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.20"}]}}}  # what the controller writes
    world.made.kubectl("patch", "service", want["instance"], "-n", namespace, "--subresource=status",
                       "--type=merge", "-p", json.dumps(ingress))  # fmt: skip
    assert (await world.workload.observe(ctx)).outputs["endpoints"] == [f"198.51.100.20:{want['port']}"]

    # Unchanged: a restarted operator (new drivers) reads the same cluster back and runs no Terraform.
    recorded = DriverContext(ctx.key, ctx.allocations, servers=ctx.servers, recorded=record)
    again = await world.restarted().observe(recorded)
    assert again.healthy and again.state is not None and again.state["converged"]
    assert world.ledger() == [f"made {prefix} v1.33.0+1 vc2-2c-4gb x2"]

    # Delete: the workload leaves the made cluster, then Terraform destroys it and its state goes.
    await world.workload.delete(ctx, retain=False)
    assert world.made.kubectl("get", "deployment", "-n", namespace, "-o", "name").stdout.strip() == ""
    await world.restarted().delete(recorded, retain=False)
    assert world.ledger()[-1] == f"destroyed {(world.work / 'endpoint').read_text()}"
    assert world.cluster.kubectl("get", "secret", f"tfstate-default-{tf.state_suffix(ctx.key)}", "-n", namespace,
                                 check=False).returncode != 0  # fmt: skip
    with pytest.raises(RetryableError) as gone:
        await world.clusters.of(ctx)
    assert gone.value.reason == "ClusterNotMade"


async def test_a_made_cluster_that_does_not_answer_keeps_infrastructure_unready_and_says_why(
    world: World, namespace: str
) -> None:
    given = yaml.safe_load((world.work / "kubeconfig").read_text())
    given["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"  # nothing listens there
    (world.work / "kubeconfig").write_text(yaml.safe_dump(given))
    ctx = world.ctx(namespace)
    seen = await converge(world, ctx)
    assert seen.state is not None and seen.state["converged"] is True  # Terraform made it
    assert not seen.healthy and "ClusterUnreachable" in str(seen.detail), seen.detail
    await world.infrastructure.delete(ctx, retain=False)


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The operator's own cluster, for the test that runs the whole operator."""
    local = start_cluster(tmp_path_factory.mktemp("operator"))
    yield local
    local.stop()


def condition(cluster: LocalCluster, namespace: str, name: str, kind: str) -> dict[str, Any]:
    status = get_json(cluster, "project", name, "-n", namespace).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def test_the_operator_makes_the_cluster_deploys_into_it_and_destroys_it_with_the_project(
    own: LocalCluster, made: LocalCluster, tmp_path: Path
) -> None:
    """The whole operator, as wired for production: a Project on provider vultr with runtime kubernetes."""
    namespace = "vke-apps"
    own.kubectl("create", "namespace", namespace)
    own.kubectl("create", "secret", "generic", "vultr-api", "-n", namespace, "--from-literal=apiKey=" + "V" * 36)
    work, binary = stand_in_cloud(made, tmp_path)
    settings = {"CODEB_TERRAFORM": str(binary), "CODEB_TERRAFORM_DIR": str(work), "CODEB_TERRAFORM_WAIT": "5",
                "CODEB_TERRAFORM_MODULES": str(MODULES), "CODEB_CLAIMS_NAMESPACE": namespace}  # fmt: skip
    operator = OperatorProcess(own, tmp_path / "operator.log", **settings).start()
    doc = {"apiVersion": "codeb.dev/v1alpha1", "kind": "Project", "metadata": {"name": "shop", "namespace": namespace},
           "spec": project_spec(slug="shop", servers=VKE) | {"deletionPolicy": "Delete"}}  # fmt: skip
    try:
        own.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
        wait_for(lambda: condition(own, namespace, "shop", "InfrastructureReady").get("status") == "True",
                 timeout=120, what="the VKE cluster made and answering")  # fmt: skip
        wait_for(lambda: made.kubectl("get", "deployment", "-n", namespace, "-o", "name").stdout.strip() != "",
                 timeout=60, what="the workload in the made cluster")  # fmt: skip
        status = get_json(own, "project", "shop", "-n", namespace)["status"]
        assert status["infrastructure"]["outputs"]["clusterEndpoint"] == (work / "endpoint").read_text()
        key = yaml.safe_load((work / "kubeconfig").read_text())["users"][0]["user"]["client-key-data"]
        assert key not in json.dumps(status)
        # No kubelet in the made cluster: the workload is not ready, and status says so rather than Ready.
        assert condition(own, namespace, "shop", "Ready").get("status") == "False"
        assert own.kubectl("get", "deployment", "-n", namespace, "-o", "name").stdout.strip() == ""
        own.kubectl("delete", "project", "shop", "-n", namespace, "--timeout=120s")
        assert made.kubectl("get", "deployment", "-n", namespace, "-o", "name").stdout.strip() == ""
        assert (work / "ledger").read_text().splitlines()[-1] == f"destroyed {(work / 'endpoint').read_text()}"
    except AssertionError as failed:
        raise AssertionError(f"{failed}\n{operator.log()[-3000:]}") from None
    finally:
        operator.stop()
