"""The operator against the real API server: `kubectl get projects` shows its values."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kopf.testing import KopfRunner

from controller.localcluster import LocalCluster
from tests.factories import project


@pytest.fixture()
def operator(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[KopfRunner]:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    args = ["run", "--all-namespaces", "--standalone", "-m", "controller.operator"]
    with KopfRunner(args, timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output


def wait_for(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def get(cluster: LocalCluster, namespace: str, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads(cluster.kubectl("get", "project", name, "-n", namespace, "-o", "json").stdout)


def test_operator_writes_status_columns(cluster: LocalCluster, namespace: str, operator: KopfRunner) -> None:
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(project("shop", namespace)))
    stored = wait_for(lambda: (p := get(cluster, namespace, "shop")).get("status", {}).get("observedGeneration") and p)
    status = stored["status"]
    assert status["observedGeneration"] == stored["metadata"]["generation"]
    types = {c["type"]: c for c in status["conditions"]}
    assert types["Synced"]["status"] == "True"
    rows = cluster.kubectl("get", "projects", "-n", namespace, "--no-headers").stdout.split()
    assert rows[:4] == ["shop", "staging", "local", status["phase"]]


def test_generation_bump_is_observed(cluster: LocalCluster, namespace: str, operator: KopfRunner) -> None:
    doc = project("blog", namespace)
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    wait_for(lambda: get(cluster, namespace, "blog").get("status", {}).get("observedGeneration") == 1)
    doc["spec"]["resources"] = {"replicas": 2}
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    wait_for(lambda: get(cluster, namespace, "blog").get("status", {}).get("observedGeneration") == 2)


def test_examples_show_in_get_projects(cluster: LocalCluster, namespace: str, operator: KopfRunner) -> None:
    examples = Path(__file__).parents[2] / "manifests" / "examples"
    cluster.kubectl("apply", "-n", namespace, "-f", str(examples))
    count = len(list(examples.glob("*.yaml")))

    def all_observed() -> bool:
        items = json.loads(cluster.kubectl("get", "projects", "-n", namespace, "-o", "json").stdout)["items"]
        return len(items) == count and all("phase" in i.get("status", {}) for i in items)

    wait_for(all_observed)
    out = cluster.kubectl("get", "projects", "-A").stdout
    assert "production" in out and "quadlet" in out and "kubernetes" in out
    assert os.environ["KUBECONFIG"] == str(cluster.kubeconfig)
