"""The operator installed into the local cluster as a team installs it, and run by the node as a Pod.

The cluster has its real node (``tests.testnode``); the operator's image is the one
``deploy/operator/Containerfile`` builds (``tests.operator_image``), imported into the node's containerd
as a registry would have served it. ``kubectl apply -k`` of an overlay of ``deploy/operator`` (the image
set, as its comment tells a user to), then separately ``helm install`` of the chart: each time the
operator's Pod runs with its ServiceAccount's token alone, and a Project on runtime kubernetes serves
its page from Pods on the node through Caddy. ``helm upgrade`` replaces the operator in the middle of a
rollout and every request through Caddy meanwhile is answered; ``helm uninstall`` leaves the Project
serving, and a second install takes it up again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.local.cluster import LocalCluster
from tests.apiserver.test_helm import CHART, Helm
from tests.apiserver.test_kubernetes_node_e2e import running
from tests.apiserver.test_platform_e2e import NS, install_platform
from tests.factories import project
from tests.gotools import HELM, go_installed
from tests.helpers import get_json, wait_for, wait_project_ready
from tests.operator_image import IMAGE, operator_image
from tests.servers import CaddyServer, https_get, start_caddy, start_minio, start_postgres, start_redis
from tests.testhosts import HELLO_IMAGE, REPO, SERVICES_ADDRESS
from tests.testnode import Node, node_cluster

pytestmark = pytest.mark.timeout(1500)

SYSTEM = "codeb-system"
DOMAIN = "shop.installed.localhost"
REPOSITORY, TAG = IMAGE.rsplit(":", 1)
UPGRADED_TAG = "test-upgraded"  # the same image under a second tag: what `helm upgrade` moves to
INSTALL_SECONDS = 240.0


@pytest.fixture(scope="module")
def installable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Node, CaddyServer]]:
    """The cluster with its node, the operator's image in the node's containerd, and the Platform: PostgreSQL,
    Redis, MinIO and Caddy's admin API where the node's Pods reach them."""
    with node_cluster(tmp_path_factory.mktemp("installed")) as (cluster, node):
        archive = operator_image(node.host, node.key_file, node.cache)
        node.ssh(f"ctr -n k8s.io images import /codeb-cache/{archive.name} >/dev/null && "
                 f"ctr -n k8s.io images tag {IMAGE} {REPOSITORY}:{UPGRADED_TAG} >/dev/null", timeout=300)  # fmt: skip
        pg, rd, s3 = start_postgres(SERVICES_ADDRESS), start_redis(SERVICES_ADDRESS), start_minio(SERVICES_ADDRESS)
        caddy = start_caddy(admin_host=SERVICES_ADDRESS)
        try:
            install_platform(cluster, pg, rd, s3, caddy)
            yield cluster, node, caddy
        finally:
            for server in (caddy, s3, rd, pg):
                server.stop()


def overlay(directory: Path) -> Path:
    """What deploy/operator's comment tells a user to write: a kustomization of it with their image set."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(REPO / "deploy" / "operator", directory)],
        "images": [{"name": "codeb-operator", "newName": REPOSITORY, "newTag": TAG}],
    }))  # fmt: skip
    return directory


def operator_pod(cluster: LocalCluster) -> dict[str, Any]:
    """The one operator Pod, Running and ready (its probe of /metrics passed), once the Deployment has rolled out."""
    cluster.kubectl("rollout", "status", "deployment/codeb-operator", "-n", SYSTEM, f"--timeout={INSTALL_SECONDS:.0f}s")
    listed = get_json(cluster, "pods", "-n", SYSTEM, "-l", "app.kubernetes.io/name=codeb-operator")["items"]
    live = [p for p in listed if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in live]
    return dict(live[0])


def operator_log(cluster: LocalCluster) -> Callable[[], str]:
    """What a failed wait shows: the operator's last lines, and the Project's Pods as the kubelet left them."""

    def read() -> str:
        pods = cluster.kubectl("describe", "pods", "-n", NS, check=False).stdout
        return cluster.kubectl("logs", "-n", SYSTEM, "deployment/codeb-operator", "--tail=60", check=False).stdout + (
            "\n--- the Project's Pods ---\n" + pods[-6000:]
        )

    return read


def shop(revision: str, replicas: int = 2) -> dict[str, Any]:
    return project(
        "shop", NS, project={"slug": "shop", "source": {"image": HELLO_IMAGE}, "revision": revision},
        environment={"type": "staging", "domains": [DOMAIN]},
        servers={"provider": "existing", "runtime": "kubernetes", "platform": "shared"},
        resources={"replicas": replicas, "cpu": "100m", "memory": "128Mi"},
        features={"database": {"version": "15"}, "redis": {}, "storage": {}}, backup={"enabled": False},
    )  # fmt: skip


def apply(cluster: LocalCluster, doc: dict[str, Any]) -> int:
    """Applied; the Project's generation now."""
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    return int(get_json(cluster, "project", "shop", "-n", NS)["metadata"]["generation"])


def served(caddy: CaddyServer) -> bool:
    """The page through Caddy, made with the Project's database, Redis user and bucket all working."""
    return https_get(caddy, DOMAIN).stdout.count("<td>works</td>") == 3


def revisions_serving(cluster: LocalCluster) -> set[str]:
    pods = running(cluster, NS)
    return {e["value"] for p in pods for e in p["spec"]["containers"][0]["env"] if e["name"] == "CODEB_REVISION"}


def test_kubectl_apply_k_runs_the_operator_as_a_pod_that_serves_a_project_from_the_node(
    installable: tuple[LocalCluster, Node, CaddyServer], tmp_path: Path
) -> None:
    cluster, node, caddy = installable
    started = time.monotonic()
    cluster.kubectl("apply", "--server-side", "-k", str(overlay(tmp_path / "overlay")))
    pod = operator_pod(cluster)
    print(f"kubectl apply -k to the operator Pod ready in {time.monotonic() - started:.1f} s")
    assert pod["spec"]["nodeName"] == node.name and pod["spec"]["serviceAccountName"] == "codeb-operator"
    assert pod["spec"]["containers"][0]["image"] == IMAGE
    # As the Deployment asks: its own user, a read-only root, the token the kubelet asked for as its credential.
    probe = ("id -u; touch /opt/x 2>/dev/null || echo read-only; "
             "test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo token")  # fmt: skip
    said = cluster.kubectl("exec", "-n", SYSTEM, pod["metadata"]["name"], "--", "sh", "-c", probe).stdout
    assert said.split() == ["10001", "read-only", "token"], said

    generation = apply(cluster, shop("1"))
    wait_project_ready(cluster, NS, "shop", 180, operator_log(cluster), generation)
    print(f"kubectl apply -k, then the Project: Ready {time.monotonic() - started:.1f} s after the install")
    made = running(cluster, NS)
    assert len(made) == 2 and {p["spec"]["nodeName"] for p in made} == {node.name}
    wait_for(lambda: served(caddy), timeout=30, what="the page through Caddy, all three services working")


def remove_kustomize_install(cluster: LocalCluster, directory: Path) -> None:
    """Everything ``kubectl apply -k`` made but the CRDs (and so every Project) and the namespace (the
    Platform's admin Secrets and the operator's ledgers are in it), as a team moving to Helm removes it."""
    rendered = cluster.kubectl("kustomize", str(directory)).stdout
    kept = ("CustomResourceDefinition", "Namespace")
    removed = [doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] not in kept]
    cluster.kubectl("delete", "--wait=true", "-f", "-", input_text=yaml.safe_dump_all(removed))


class Load:
    """Requests through Caddy to the Project's domain, one after another, until stopped: every status seen."""

    def __init__(self, caddy: CaddyServer) -> None:
        self.caddy, self.answers, self.stopped = caddy, list[str](), threading.Event()
        self.failed = list[tuple[float, str]]()  # when, from the start, and what
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stopped.is_set():
            answer = https_get(self.caddy, DOMAIN, "-o", "/dev/null", "-w", "%{http_code}").stdout
            self.answers.append(answer)
            if answer != "200":
                self.failed.append((round(time.monotonic() - started, 1), answer))
            time.sleep(0.1)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)


def test_helm_install_upgrade_mid_rollout_uninstall_and_reinstall_keep_the_project_served(
    installable: tuple[LocalCluster, Node, CaddyServer], tmp_path: Path
) -> None:
    cluster, _, caddy = installable
    helm = Helm(go_installed(HELM, "helm"), tmp_path / "helm-home")
    if not get_json(cluster, "deployments", "-n", SYSTEM)["items"]:  # run alone: the Project the first test made
        cluster.kubectl("apply", "--server-side", "-k", str(overlay(tmp_path / "overlay")))
        wait_project_ready(cluster, NS, "shop", 240, operator_log(cluster), apply(cluster, shop("1")))
    remove_kustomize_install(cluster, overlay(tmp_path / "overlay"))
    assert served(caddy), "without an operator, what it made serves on"

    values = ["--set", f"image.repository={REPOSITORY}", "--set", f"image.tag={TAG}"]
    helm(cluster, "install", "codeb", str(CHART), "-n", SYSTEM, *values)
    first = operator_pod(cluster)
    # Taken up by the new installation: a change to the Project is carried out.
    wait_project_ready(cluster, NS, "shop", 180, operator_log(cluster), apply(cluster, shop("2")), settled=True)
    wait_for(lambda: revisions_serving(cluster) == {"2"}, timeout=60, what="revision 2's Pods alone")

    # An upgrade of the operator in the middle of a rollout: every request through Caddy is answered.
    with Load(caddy) as load:
        generation = apply(cluster, shop("3"))
        wait_for(lambda: "3" in revisions_serving(cluster), timeout=60, what="revision 3's rollout started")
        helm(cluster, "upgrade", "codeb", str(CHART), "-n", SYSTEM, *values[:2], "--set", f"image.tag={UPGRADED_TAG}")
        upgraded = operator_pod(cluster)
        wait_project_ready(cluster, NS, "shop", 180, operator_log(cluster), generation, settled=True)
        wait_for(lambda: revisions_serving(cluster) == {"3"}, timeout=60, what="revision 3's Pods alone")
    assert upgraded["metadata"]["uid"] != first["metadata"]["uid"]
    assert upgraded["spec"]["containers"][0]["image"] == f"{REPOSITORY}:{UPGRADED_TAG}"
    assert load.answers and not load.failed, f"{len(load.answers)} requests; not answered: {load.failed}"
    history = get_json(cluster, "project", "shop", "-n", NS)["status"]["deployments"]
    assert [(d["revision"], d["result"]) for d in history][:3] == [("3", "Succeeded"), ("2", "Succeeded"),
                                                                   ("1", "Succeeded")]  # fmt: skip

    # Uninstalled: the operator goes, the CRDs and the Project stay, and the page is still served.
    helm(cluster, "uninstall", "codeb", "-n", SYSTEM, "--wait")
    wait_for(lambda: not get_json(cluster, "pods", "-n", SYSTEM, "-l", "app.kubernetes.io/name=codeb-operator")[
        "items"], timeout=60, what="the operator's Pod gone")  # fmt: skip
    assert get_json(cluster, "project", "shop", "-n", NS)["metadata"]["uid"] and served(caddy)
    generation = apply(cluster, shop("3", replicas=3))  # waits for an operator
    helm(cluster, "install", "codeb", str(CHART), "-n", SYSTEM, *values)
    operator_pod(cluster)
    wait_project_ready(cluster, NS, "shop", 180, operator_log(cluster), generation)
    wait_for(lambda: len(running(cluster, NS)) == 3, timeout=60, what="three replicas")
    assert served(caddy)

    # And the Project's deletion is carried out by the operator in its Pod: its Pods and its page go.
    cluster.kubectl("delete", "project", "shop", "-n", NS, "--timeout=120s")
    wait_for(lambda: not running(cluster, NS), timeout=90, what="the Project's Pods gone")
    assert not served(caddy)
