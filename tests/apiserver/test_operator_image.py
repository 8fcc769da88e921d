"""The operator's image (`deploy/operator/Containerfile`, built by `tests.operator_image`) run as the
Deployment runs it: user 10001, a read-only root filesystem, every capability dropped, /work its only
writable place. The operator in it reconciles a Project on a real API server and puts its units on a real host.
Run by podman in a booted test host (`tests.testhosts`), where podman works.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.local.cluster import LocalCluster
from tests.conftest import start_cluster
from tests.factories import project
from tests.helpers import get_json, wait_for
from tests.operator_image import IMAGE, operator_image
from tests.testhosts import HELLO_IMAGE, SERVICES_ADDRESS, BootedHosts, booted

pytestmark = pytest.mark.timeout(1500)

NS = "imaged"


@pytest.fixture(scope="module")
def built() -> Iterator[tuple[BootedHosts, LocalCluster]]:
    with booted(1) as hosts:
        host = hosts.hosts[0]
        archive = operator_image(host, hosts.key_file, hosts.cache)
        host.ssh(hosts.key_file, f"podman load -q -i /codeb-cache/{archive.name} >/dev/null", timeout=300)
        cluster = start_cluster(Path(host.directory) / "cluster", address=SERVICES_ADDRESS)
        try:
            yield hosts, cluster
        finally:
            cluster.stop()


def run(hosts: BootedHosts, command: str, timeout: float = 300) -> str:
    return hosts.hosts[0].ssh(hosts.key_file, command, timeout=timeout)


def test_the_image_runs_as_its_own_user_on_a_read_only_root_with_the_tools_it_needs(
    built: tuple[BootedHosts, LocalCluster],
) -> None:
    hosts, _ = built
    probe = ("id -u; terraform version | head -1; ssh -V 2>&1; pg_dump --version; codeb --help | head -1; "
             "touch /opt/codeb/x 2>/dev/null && echo root-writable; touch /work/x && echo work-writable")  # fmt: skip
    said = run(hosts, f"podman run --rm --read-only --cap-drop=ALL --security-opt no-new-privileges "
                      f"--tmpfs /work:rw,mode=1777 --entrypoint sh {IMAGE} -c {json.dumps(probe)}")  # fmt: skip
    lines = said.splitlines()
    assert lines[0] == "10001", said
    assert lines[1].startswith("Terraform v1.11"), said
    assert lines[2].startswith("OpenSSH_9"), said
    assert lines[3].startswith("pg_dump (PostgreSQL) 15"), said
    assert "usage: codeb" in lines[4], said
    assert "root-writable" not in said and "work-writable" in said


def kubeconfig_inline(cluster: LocalCluster) -> str:
    """The cluster's kubeconfig with its files' content inline (the container sees none of this machine's)."""
    pki = cluster.root / "pki"

    def data(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": f"https://{SERVICES_ADDRESS}:{cluster.api_port}",
                                                    "certificate-authority-data": data("ca.crt")}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": data("admin.crt"),
                                             "client-key-data": data("admin.key")}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
    })  # fmt: skip


def test_the_operator_in_its_image_reconciles_a_project_onto_a_host(built: tuple[BootedHosts, LocalCluster]) -> None:
    hosts, cluster = built
    host = hosts.hosts[0]
    for namespace in (NS, "codeb-system"):
        cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl(
        "create", "secret", "generic", "deploy-key", "-n", NS, f"--from-literal=privateKey={hosts.private_key}"
    )
    doc = project("shop", NS, project={"slug": "shop", "source": {"image": HELLO_IMAGE}}, backup={"enabled": False},
                  servers={"provider": "existing", "runtime": "quadlet", "hosts": [host.address],
                           "ssh": {"secretRef": "deploy-key"}})  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    encoded = base64.b64encode(kubeconfig_inline(cluster).encode()).decode()
    run(hosts, f"mkdir -p /root/operator && echo {encoded} | base64 -d >/root/operator/kubeconfig && "
               "chmod 644 /root/operator/kubeconfig")  # fmt: skip
    run(hosts, "podman run -d --name codeb-operator --network host --read-only --cap-drop=ALL "
               "--security-opt no-new-privileges --tmpfs /work:rw,mode=1777 --tmpfs /tmp "
               "-v /root/operator:/etc/codeb/kube:ro -e KUBECONFIG=/etc/codeb/kube/kubeconfig "
               "-e CODEB_CLAIMS_NAMESPACE=codeb-system -e CODEB_ALLOW_INTERNAL_TARGETS=1 "
               f"{IMAGE} operator >/dev/null")  # fmt: skip
    try:
        seen: dict[str, Any] = {}

        def reconciled() -> bool:
            seen.update(get_json(cluster, "project", "shop", "-n", NS).get("status", {}))
            # Its hosts looked at over SSH, its unit written and started there, and its health answered (with no
            # Platform, no route exists to switch to: the rollout waits there, Ready says why).
            healthy = seen.get("rollout", {}).get("healthyChecks", 0) >= 3
            return seen.get("observedGeneration") == 1 and healthy

        try:
            wait_for(reconciled, timeout=120)
        except AssertionError:
            raise AssertionError(f"the Project was not reconciled by the operator in its image: {seen}") from None
        wait_for(lambda: run(hosts, "systemctl is-active codeb.imaged.shop.blue.service || true").strip() == "active",
                 timeout=60, what="the unit the operator in its image wrote, active on the host")  # fmt: skip
        conditions = {c["type"]: c for c in seen["conditions"]}
        assert conditions["InfrastructureReady"]["status"] == "True", conditions
        assert conditions["RouteReady"]["reason"] == "NotImplemented", conditions
        assert seen["hosts"] == [{"address": host.address, "podman": "4.3.1", "usable": True}]
    finally:
        print(run(hosts, "podman logs --tail 40 codeb-operator 2>&1; podman rm -f codeb-operator >/dev/null"))
