"""`kubectl get projects` shows the operator's values, and changes are observed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.local.cluster import LocalCluster
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


def condition_of(cluster: LocalCluster, namespace: str, name: str, type_: str) -> dict:  # type: ignore[type-arg]
    return next((c for c in status_of(cluster, namespace, name).get("conditions", []) if c["type"] == type_), {})


def reconciled(cluster: LocalCluster, namespace: str, name: str, generation: int = 1) -> bool:
    return bool(status_of(cluster, namespace, name).get("observedGeneration") == generation)


def test_examples_show_honest_columns(cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> None:
    """No example has real drivers for all it asks, so none may say Ready."""
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    names = [p["metadata"]["name"] for p in projects(cluster, namespace)]
    wait_for(lambda: all(reconciled(cluster, namespace, n) for n in names), timeout=60, what="examples reconciled")
    rows = {r.split()[0]: r.split() for r in cluster.kubectl("get", "projects", "-n", namespace).stdout.splitlines()}
    assert rows["NAME"] == ["NAME", "ENV", "RUNTIME", "PHASE", "READY", "URL", "AGE"]
    assert all(row[4] == "False" for name, row in rows.items() if name != "NAME"), rows
    # No URL is shown for a route nobody observed serving.
    assert all(not row[5].startswith("https://") for name, row in rows.items() if name != "NAME"), rows
    infra = condition_of(cluster, namespace, "food-delivery", "InfrastructureReady")
    assert infra["status"] == "False" and "vultr-api (spec.servers.credentialsSecretRef) does not exist" in infra[
        "message"]  # fmt: skip
    vke = condition_of(cluster, namespace, "food-delivery-pr-42", "InfrastructureReady")
    assert (vke["status"], vke["reason"]) == ("False", "CredentialsMissing") and "vultr-api" in vke["message"]
    assert condition_of(cluster, namespace, "hello", "InfrastructureReady")["status"] == "True"
    assert condition_of(cluster, namespace, "hello", "WorkloadReady")["reason"] == "NotImplemented"


def test_generation_bump_is_observed(cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> None:
    doc = project("blog", namespace)
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    wait_for(lambda: reconciled(cluster, namespace, "blog"), what="generation 1")
    doc["spec"]["environment"]["variables"] = {"CHANGED": "yes"}
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    wait_for(lambda: reconciled(cluster, namespace, "blog", 2), what="generation 2")
    ready = condition_of(cluster, namespace, "blog", "Ready")
    assert ready["observedGeneration"] == 2 and ready["status"] == "False"


def test_pinned_port_conflict_is_reported(cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> None:
    first = project("first", namespace, resources={"port": 4777})
    second = project("second", namespace, resources={"port": 4777})
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(first))
    wait_for(lambda: status_of(cluster, namespace, "first").get("allocations", {}).get("port") == 4777, what="first")
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(second))
    status = wait_for(lambda: (s := status_of(cluster, namespace, "second")).get("phase") == "Failed" and s)
    synced = next(c for c in status["conditions"] if c["type"] == "Synced")
    assert synced["reason"] == "AllocationConflict"
    assert f"resources.port 4777 is already used by {namespace}/first" in synced["message"]
    # Freeing the port lets the second one through (the drift timer or a spec change retries).
    cluster.kubectl("delete", "project", "first", "-n", namespace)
    second["spec"]["environment"]["variables"] = {"CHANGED": "yes"}
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(second))
    wait_for(lambda: status_of(cluster, namespace, "second").get("allocations", {}).get("port") == 4777, what="second")


def test_pause_annotation_stops_acting(cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> None:
    doc = project("quiet", namespace)
    doc["metadata"]["annotations"] = {"codeb.dev/paused": "true"}
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    synced = wait_for(lambda: condition_of(cluster, namespace, "quiet", "Synced"), what="conditions")
    assert synced["reason"] == "Paused"
    cluster.kubectl("annotate", "project", "quiet", "-n", namespace, "codeb.dev/paused-")
    wait_for(lambda: condition_of(cluster, namespace, "quiet", "Synced").get("reason") == "NotImplemented",
             what="acting again after unpause")  # fmt: skip
