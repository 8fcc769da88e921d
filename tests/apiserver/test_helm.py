"""The operator's Helm chart with the real helm (built from the Go module proxy) and a real API server.

The chart and the kustomize base are one installation: `helm template` renders exactly the objects
`kubectl kustomize` does (but the Namespace, which is the release's). Installed into a namespace of
its own choosing, the operator's ServiceAccount has exactly the golden permissions there; an upgrade
changes the image; an uninstall removes the operator but keeps the CRDs (and so every Project), and
a second install takes over again.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.local.cluster import LocalCluster, find_binary
from tests.apiserver.test_install import GOLDEN, can_i
from tests.conftest import start_cluster
from tests.factories import project
from tests.gotools import HELM, go_installed, prometheus_crd
from tests.helpers import get_json

pytestmark = pytest.mark.apiserver

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "operator" / "chart"


@dataclass(frozen=True)
class Helm:
    binary: Path
    home: Path  # its caches and settings, not the user's

    def __call__(self, cluster: LocalCluster | None, *args: str) -> str:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home)}
        if cluster is not None:
            env["KUBECONFIG"] = str(cluster.kubeconfig)
        done = subprocess.run([str(self.binary), *args], capture_output=True, text=True, timeout=180, check=False,
                              env=env)  # fmt: skip
        assert done.returncode == 0, f"helm {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done.stdout


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(go_installed(HELM, "helm"), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = start_cluster(tmp_path_factory.mktemp("helm"))
    try:
        yield local
    finally:
        local.stop()


def objects(rendered: str) -> dict[tuple[str, str], dict[str, Any]]:
    found = [o for o in yaml.safe_load_all(rendered) if o]
    return {(o["kind"], o["metadata"]["name"]): o for o in found}


def test_the_chart_renders_exactly_the_kustomize_installation(helm: Helm) -> None:
    helm(None, "lint", str(CHART))
    charted = objects(helm(None, "template", "codeb", str(CHART), "-n", "codeb-system", "--include-crds"))
    kustomized = objects(subprocess.run([find_binary("kubectl"), "kustomize", str(ROOT / "deploy" / "operator")],
                                        capture_output=True, text=True, check=True, timeout=60).stdout)  # fmt: skip
    del kustomized[("Namespace", "codeb-system")]  # helm install --create-namespace makes it
    assert sorted(charted) == sorted(kustomized)
    for key, obj in kustomized.items():
        assert charted[key] == obj, key


def test_install_upgrade_uninstall_and_install_again(helm: Helm, fresh: LocalCluster) -> None:
    chart = str(CHART)
    helm(fresh, "install", "codeb", chart, "-n", "ops", "--create-namespace")
    fresh.kubectl("create", "namespace", "tenant")
    # The golden permissions, in the namespace this release chose.
    found = [f"[tenant] {line}" for line in can_i(fresh, "tenant", "system:serviceaccount:ops:codeb-operator")]
    found += [f"[codeb-system] {line}" for line in can_i(fresh, "ops", "system:serviceaccount:ops:codeb-operator")]
    golden = [line for line in GOLDEN.read_text().splitlines() if line and not line.startswith("#")]
    assert found == golden
    deployment = get_json(fresh, "deployment", "codeb-operator", "-n", "ops")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "codeb-operator:0.1.0"
    claims = next(e for e in container["env"] if e["name"] == "CODEB_CLAIMS_NAMESPACE")
    assert claims["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"  # its ledgers go where it runs

    helm(fresh, "upgrade", "codeb", chart, "-n", "ops", "--set", "image.tag=0.2.0")
    deployment = get_json(fresh, "deployment", "codeb-operator", "-n", "ops")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "codeb-operator:0.2.0"

    fresh.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(project("shop", "tenant")))
    helm(fresh, "uninstall", "codeb", "-n", "ops")
    assert fresh.kubectl("get", "deployment", "codeb-operator", "-n", "ops", check=False).returncode != 0
    assert get_json(fresh, "project", "shop", "-n", "tenant")["metadata"]["name"] == "shop"  # CRDs and Projects stay
    helm(fresh, "install", "codeb", chart, "-n", "ops")
    assert get_json(fresh, "deployment", "codeb-operator", "-n", "ops")["spec"]["replicas"] == 1


def test_the_optional_service_monitor_and_network_policy_are_valid_objects(helm: Helm, fresh: LocalCluster) -> None:
    off = objects(helm(None, "template", "codeb", str(CHART)))
    assert not {kind for kind, _ in off} & {"ServiceMonitor", "NetworkPolicy"}
    scrapers = '[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]'
    rendered = helm(None, "template", "codeb", str(CHART), "-n", "ops", "--set", "serviceMonitor.enabled=true",
                    "--set", "networkPolicy.enabled=true", "--set-json", f"networkPolicy.metricsFrom={scrapers}",
                    "--set", "serviceMonitor.labels.release=prometheus",
                    "--show-only", "templates/monitoring.yaml")  # fmt: skip
    made = objects(rendered)
    assert sorted(made) == [("NetworkPolicy", "codeb-operator"), ("ServiceMonitor", "codeb-operator")]
    assert made[("ServiceMonitor", "codeb-operator")]["metadata"]["labels"]["release"] == "prometheus"
    # Both as the API server validates them: the NetworkPolicy's own schema, the Prometheus Operator's CRD.
    fresh.kubectl("apply", "--server-side", "-f", str(prometheus_crd("servicemonitors")))
    fresh.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=60s")
    fresh.kubectl("create", "namespace", "ops", check=False)
    fresh.kubectl("apply", "--dry-run=server", "-f", "-", input_text=rendered)
