"""End to end on runtime kubernetes: `kubectl apply` of a Project whose workload runs in another
cluster, named by a kubeconfig Secret, ends in a Ready Project with real PostgreSQL, Redis and
MinIO allocations; deleting it removes what the operator put in that cluster.

The target cluster is a second real control plane with the real kube-controller-manager:
Deployments make ReplicaSets and those make Pods. No kubelet runs, so the test writes
the Pods' ready status where a kubelet would (`kubelet_reports`), and says so here. The
application's page is not fetched: Pods that no kubelet runs serve nothing, and the
route's upstream is the Service's cluster IP, which nothing routes to here (the node's tests,
``test_kubernetes_node_e2e``, fetch it through Caddy).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.local.cluster import LocalCluster
from tests.apiserver.test_kubernetes_runtime import flat_kubeconfig, kubelet_reports, pods
from tests.apiserver.test_platform_e2e import NS, condition, install_platform, running_world, secret_data
from tests.conftest import start_cluster
from tests.factories import project
from tests.helpers import OperatorProcess, get_json, wait_for

DOMAIN = "shop.k8s.localhost"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield from running_world(tmp_path_factory.mktemp("kubernetes"))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = start_cluster(tmp_path_factory.mktemp("target"), controllers=True)
    yield local
    local.stop()


def shop() -> dict[str, Any]:
    servers = {"provider": "existing", "runtime": "kubernetes", "cluster": {"kubeconfigSecretRef": "target"},
               "platform": "shared"}  # fmt: skip
    return project(
        "shop",
        NS,
        project={"slug": "shop", "source": {"image": "ghcr.io/acme/shop:1.4.0"}, "revision": "1"},
        environment={"type": "staging", "domains": [DOMAIN]},
        servers=servers,
        resources={"replicas": 2},
        features={"database": {"version": "15"}, "redis": {}, "storage": {}},
        backup={"enabled": False},
    )


def test_a_project_in_a_target_cluster_is_ready_once_its_pods_are_and_is_removed_on_delete(
    world: dict[str, Any], target: LocalCluster, tmp_path: Path
) -> None:
    cluster: LocalCluster = world["cluster"]
    install_platform(cluster, world["pg"], world["redis"], world["s3"], world["caddy"])
    kubeconfig = flat_kubeconfig(target)
    cluster.kubectl("create", "secret", "generic", "target", "-n", NS, f"--from-literal=kubeconfig={kubeconfig}")
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="5").start()
    try:
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(shop()))
        # The real ReplicaSet controller of the target makes the Pods; until they are ready, not Ready.
        made = wait_for(lambda: pods(target, NS) if len(pods(target, NS)) == 2 else None, timeout=90, what="pods")
        workload = condition(cluster, "shop", "WorkloadReady")
        assert workload.get("status") != "True" and condition(cluster, "shop", "Ready").get("status") != "True"
        wait_for(lambda: "replicas available" in condition(cluster, "shop", "WorkloadReady").get("message", ""),
                 timeout=30, what="WorkloadReady names the replicas")  # fmt: skip
        container = made[0]["spec"]["containers"][0]
        assert container["envFrom"][0] == {"secretRef": {"name": "shop-staging-connection"}}
        # The Pods read a copy of the connection Secret, identical to the operator's.
        source = secret_data(cluster, NS, "shop-staging-connection")
        assert source["DATABASE_URL"].startswith("postgresql://")
        assert secret_data(target, NS, "shop-staging-connection") == source
        for pod in made:  # what a kubelet would report
            kubelet_reports(target, NS, pod["metadata"]["name"], ready=True)
        operator.wait_ready(NS, "shop", timeout=60)
        print(f"runtime kubernetes (target cluster, 2 replicas): apply to Ready in {time.monotonic() - started:.1f} s")
        status = get_json(cluster, "project", "shop", "-n", NS)["status"]
        port = status["allocations"]["port"]
        upstream = f"{get_json(target, 'service', 'shop-staging', '-n', NS)['spec']['clusterIP']}:{port}"
        assert status["endpoints"]["internal"] == [upstream]
        # The rolling update is recorded as every runtime's rollout is, naming the ReplicaSet that serves.
        assert status["rollout"]["step"] == "Succeeded" and status["serving"]["revision"] == "1"
        assert [(d["revision"], d["result"]) for d in status["deployments"]] == [("1", "Succeeded")]
        assert all(p["metadata"]["name"].startswith(status["serving"]["replicaSet"]) for p in made)
        assert condition(cluster, "shop", "Serving")["reason"] == "ReplicaSet"
        assert condition(cluster, "shop", "InfrastructureReady")["status"] == "True"
        routes = httpx.get(f"{world['caddy'].admin_url}/config/apps/http/servers", timeout=10).text
        assert upstream in routes
        assert cluster.kubectl("get", "deployments", "-n", NS, "-o", "name").stdout.strip() == ""

        # Deleting the Project removes the Deployment, Service, budget and the Secret copy from the target.
        cluster.kubectl("delete", "project", "shop", "-n", NS, "--timeout=120s")
        for kind in ("deployment", "service", "pdb", "secret"):
            assert target.kubectl("get", kind, "-n", NS, "-o", "name").stdout.strip() == "", kind
        wait_for(lambda: pods(target, NS) == [], timeout=60, what="the garbage collector removes the Pods")
        log = operator.log()
        assert all(secret not in log for secret in source.values() if len(secret) >= 12)
        key = yaml.safe_load(kubeconfig)["users"][0]["user"]["client-key-data"]
        assert key[:40] not in log
    finally:
        operator.stop()
