"""`kubectl get projects` shows the operator's values, and changes are observed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.localcluster import LocalCluster
from tests.conftest import start_cluster
from tests.factories import project
from tests.helpers import OperatorProcess, get_json, projects, wait_for

EXAMPLES = Path(__file__).parents[2] / "manifests" / "examples"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Overrides the shared cluster: a clusterwide operator must not meet other tests' Projects."""
    local = start_cluster(tmp_path_factory.mktemp("operated"))
    yield local
    local.stop()


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(cluster, tmp_path_factory.mktemp("operator") / "operator.log").start()
    yield proc
    proc.stop()


def status_of(cluster: LocalCluster, namespace: str, name: str) -> dict:  # type: ignore[type-arg]
    return dict(get_json(cluster, "project", name, "-n", namespace).get("status", {}))


def test_examples_show_real_columns(cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    count = len(list(EXAMPLES.glob("*.yaml")))

    def ready() -> int:
        return sum(p.get("status", {}).get("phase") == "Ready" for p in projects(cluster, namespace))

    wait_for(lambda: ready() == count, timeout=60, what="examples Ready")
    rows = {r.split()[0]: r.split() for r in cluster.kubectl("get", "projects", "-n", namespace).stdout.splitlines()}
    assert rows["NAME"] == ["NAME", "ENV", "RUNTIME", "PHASE", "READY", "URL", "AGE"]
    assert rows["food-delivery"][1:6] == [
        "production",
        "quadlet",
        "Ready",
        "True",
        "https://food-delivery.leocompany.com",
    ]
    assert rows["hello"][1:5] == ["staging", "local", "Ready", "True"]


def test_generation_bump_is_observed(cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> None:
    doc = project("blog", namespace)
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    wait_for(lambda: status_of(cluster, namespace, "blog").get("observedGeneration") == 1, what="generation 1")
    doc["spec"]["resources"] = {"replicas": 2}
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    wait_for(lambda: status_of(cluster, namespace, "blog").get("observedGeneration") == 2, what="generation 2")
    events = get_json(cluster, "events", "-n", namespace)["items"]
    assert any(e["message"] == "Workload update: differs in replicas" for e in events)


def test_pinned_port_conflict_is_reported(cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> None:
    first = project("first", namespace, resources={"port": 4777})
    second = project("second", namespace, resources={"port": 4777})
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(first))
    wait_for(lambda: status_of(cluster, namespace, "first").get("phase") == "Ready", what="first Ready")
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(second))
    status = wait_for(lambda: (s := status_of(cluster, namespace, "second")).get("phase") == "Failed" and s)
    synced = next(c for c in status["conditions"] if c["type"] == "Synced")
    assert synced["reason"] == "AllocationConflict"
    assert f"resources.port 4777 is already used by {namespace}/first" in synced["message"]
    # Freeing the port lets the second one through (the drift timer or a spec change retries).
    cluster.kubectl("delete", "project", "first", "-n", namespace)
    second["spec"]["resources"]["replicas"] = 2
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(second))
    wait_for(lambda: status_of(cluster, namespace, "second").get("phase") == "Ready", what="second Ready")


def test_pause_annotation_stops_acting(cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> None:
    doc = project("quiet", namespace)
    doc["metadata"]["annotations"] = {"codeb.dev/paused": "true"}
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    status = wait_for(lambda: status_of(cluster, namespace, "quiet").get("conditions"), what="conditions")
    synced = next(c for c in status if c["type"] == "Synced")
    assert synced["reason"] == "Paused" and "drift: Infrastructure create" in synced["message"]
    cluster.kubectl("annotate", "project", "quiet", "-n", namespace, "codeb.dev/paused-")
    wait_for(lambda: status_of(cluster, namespace, "quiet").get("phase") == "Ready", what="Ready after unpause")
