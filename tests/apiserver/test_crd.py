"""The CRD against the real kube-apiserver: examples apply, bad manifests are refused
field by field, and `kubectl explain` prints the models' descriptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from controller.local.cluster import LocalCluster
from tests.bad_manifests import CORPUS, BadManifest
from tests.factories import project

EXAMPLES = sorted((Path(__file__).parents[2] / "manifests" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_applies(cluster: LocalCluster, namespace: str, path: Path) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(path))
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    stored = json.loads(cluster.kubectl("get", "project", name, "-n", namespace, "-o", "json").stdout)
    # API-server defaulting from the generated schema fills what the user left out.
    assert stored["spec"]["servers"]["loadBalancer"]["healthCheck"]["path"] == "/api/health"
    assert stored["spec"]["deletionPolicy"] in ("Retain", "Delete")


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.id)
def test_bad_manifest_is_refused_naming_the_field(cluster: LocalCluster, namespace: str, case: BadManifest) -> None:
    result = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(case.build(namespace)), check=False)
    assert result.returncode != 0, f"{case.id} was accepted"
    assert case.field in result.stderr, result.stderr
    # Nothing was stored.
    listed = cluster.kubectl("get", "projects", "-n", namespace, "-o", "name").stdout
    assert listed.strip() == ""


def test_refused_update_keeps_the_stored_object(cluster: LocalCluster, namespace: str) -> None:
    good = EXAMPLES[-1]
    cluster.kubectl("apply", "-n", namespace, "-f", str(good))
    doc = yaml.safe_load(good.read_text())
    get = ("get", "project", doc["metadata"]["name"], "-n", namespace, "-o", "json")
    before = json.loads(cluster.kubectl(*get).stdout)
    doc["metadata"]["namespace"] = namespace
    doc["spec"]["resources"] = {"port": 80}
    result = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc), check=False)
    assert result.returncode != 0 and "spec.resources.port" in result.stderr
    after = json.loads(cluster.kubectl(*get).stdout)
    assert after["spec"] == before["spec"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_explain_prints_the_descriptions(cluster: LocalCluster) -> None:
    out = cluster.kubectl("explain", "project.spec.features").stdout
    assert "PostgreSQL database for the project." in out
    assert "S3-compatible bucket for the project." in out
    out = cluster.kubectl("explain", "project.spec.servers.loadBalancer.healthCheck.intervalSeconds").stdout
    assert "Seconds between probes." in out


def test_short_names_and_printer_columns(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES[0]))
    header = cluster.kubectl("get", "proj", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "ENV", "RUNTIME", "PHASE", "READY", "URL", "AGE"]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("project", "slug"), "renamed", "spec.project.slug"),
        (("environment", "type"), "production", "spec.environment.type"),
        (("features", "storage", "bucket"), "another-bucket", "spec.features.storage.bucket"),
    ],
)
def test_identity_fields_are_immutable(
    cluster: LocalCluster, namespace: str, path: tuple[str, ...], value: str, field: str
) -> None:
    doc = project("ident", namespace, features={"storage": {}})
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    node = doc["spec"]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    result = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc), check=False)
    assert result.returncode != 0, f"{field} was changed"
    assert field in result.stderr and "is immutable" in result.stderr, result.stderr
    # Other fields still change freely.
    changed = {"type": "staging", "variables": {"CHANGED": "yes"}}
    doc = project("ident", namespace, features={"storage": {}}, environment=changed)
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
