"""End to end on runtime quadlet: `kubectl apply` of a Project on two existing hosts (Debian booted
with systemd-nspawn, reached over SSH) ends in the example application serving through the real
Caddy from both hosts, on its real database, Redis user and bucket; deleting the Project removes
the units from both hosts.

PostgreSQL, Redis and MinIO listen on an address of this machine the hosts reach
through their own network namespaces (`tests.testhosts.SERVICES_ADDRESS`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from controller.localcluster import LocalCluster
from tests.apiserver.test_platform_e2e import NS, install_platform, running_world, secret_data
from tests.apiserver.test_terraform_runs import CREDENTIALS, MODULES, counting_terraform
from tests.factories import project
from tests.helpers import OperatorProcess, get_json, wait_for
from tests.servers import https_get
from tests.testhosts import HELLO_IMAGE, SERVICES_ADDRESS, BootedHosts, booted

DOMAIN = "shop.quadlet.localhost"


@pytest.fixture(scope="module")
def hosts() -> Iterator[BootedHosts]:
    with booted(2) as made:
        yield made


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, hosts: BootedHosts) -> Iterator[dict[str, Any]]:
    yield from running_world(tmp_path_factory.mktemp("quadlet"), services_host=SERVICES_ADDRESS)


@pytest.fixture(scope="module")
def installed(world: dict[str, Any], hosts: BootedHosts) -> dict[str, Any]:
    """The Platform, and the key the hosts take, installed once for the module's tests."""
    cluster: LocalCluster = world["cluster"]
    install_platform(cluster, world["pg"], world["redis"], world["s3"], world["caddy"])
    cluster.kubectl("create", "secret", "generic", "deploy-key", "-n", NS,
                    f"--from-literal=privateKey={hosts.private_key}")  # fmt: skip
    return world


def shop(hosts: BootedHosts) -> dict[str, Any]:
    servers = {"provider": "existing", "runtime": "quadlet", "hosts": [h.address for h in hosts.hosts],
               "ssh": {"secretRef": "deploy-key"}, "platform": "shared"}  # fmt: skip
    doc = project(
        "shop",
        NS,
        project={"slug": "shop", "source": {"image": HELLO_IMAGE}, "revision": "1"},
        environment={"type": "staging", "domains": [DOMAIN]},
        servers=servers,
        features={"database": {"version": "15"}, "redis": {}, "storage": {}},
        backup={"enabled": False},
    )
    return doc


def condition(cluster: LocalCluster, type_: str) -> dict[str, Any]:
    status = get_json(cluster, "project", "shop", "-n", NS).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def test_a_project_on_two_quadlet_hosts_serves_through_caddy_and_is_removed_on_delete(
    installed: dict[str, Any], hosts: BootedHosts, tmp_path: Path
) -> None:
    world = installed
    cluster: LocalCluster = world["cluster"]
    pg, caddy = world["pg"], world["caddy"]
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="5").start()
    try:
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(shop(hosts)))
        operator.wait_ready(NS, "shop", timeout=90)
        print(f"runtime quadlet (2 hosts): apply to Ready in {time.monotonic() - started:.1f} s")
        status = get_json(cluster, "project", "shop", "-n", NS)["status"]
        port = status["allocations"]["port"]
        assert sorted(status["endpoints"]["internal"]) == [f"{h.address}:{port}" for h in hosts.hosts]
        assert condition(cluster, "InfrastructureReady")["status"] == "True"
        reported = [(h["address"], h["usable"], h["podman"][:3]) for h in status["hosts"]]
        assert reported == [(h.address, True, "4.3") for h in hosts.hosts]

        # Through Caddy's TLS listener: the page used all three services...
        page = https_get(caddy, DOMAIN)
        assert "Hello, CodeB" in page.stdout and page.stdout.count("<td>works</td>") == 3, page.stdout
        # ...and each host's container serves on its own published address, on the same database.
        visits = []
        for host in hosts.hosts:
            answer = httpx.get(f"http://{host.address}:{port}/api/visit", timeout=10).json()
            assert answer["bucket"]["readBack"] and answer["redis"]["hits"] >= 1, answer
            assert "visits" in answer["database"], answer
            visits.append(answer["database"]["visits"])
        assert visits[1] == visits[0] + 1
        with psycopg.connect(host=pg.host, port=pg.port, user=pg.admin_user, password=pg.admin_password,
                             dbname="shop_staging_db") as admin:  # fmt: skip
            row = admin.execute("SELECT count(*) FROM visits").fetchone()
            assert row is not None and row[0] >= visits[1]
        for host in hosts.hosts:
            assert hosts.ssh(host, "systemctl is-active codeb-apps-shop-blue.service").strip() == "active"

        # Deleting the Project stops and removes the units, their environment files and containers.
        cluster.kubectl("delete", "project", "shop", "-n", NS, "--timeout=120s")
        for host in hosts.hosts:
            left = hosts.ssh(host, "ls -A /etc/containers/systemd/ /etc/codeb/env/ | grep '^codeb-'", check=False)
            assert left.strip() == ""
            assert hosts.ssh(host, "podman ps -a --format '{{.Names}}'").strip() == ""
        assert "Hello, CodeB" not in https_get(caddy, DOMAIN).stdout
        credentials = secret_data(cluster, NS, "shop-staging-connection")
        log = operator.log()
        assert all(secret not in log for secret in credentials.values() if len(secret) >= 12)
        assert hosts.private_key.splitlines()[1] not in log
    finally:
        operator.stop()


def test_hosts_terraform_makes_take_the_workload_and_a_scale_down_drains_them_first(
    installed: dict[str, Any], hosts: BootedHosts, tmp_path: Path
) -> None:
    """Provider lightsail with the Terraform stand-in module, whose hosts are the two booted machines:
    the workload lands on the hosts Terraform made; count 2 -> 1 takes it off the second host,
    and the route with it, before Terraform destroys that host."""
    cluster: LocalCluster = installed["cluster"]
    caddy = installed["caddy"]
    cluster.kubectl("create", "secret", "generic", "cloud-credentials", "-n", NS,
                    *(f"--from-literal={k}={v}" for k, v in CREDENTIALS.items()))  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    (work / "addresses").write_text(" ".join(h.address for h in hosts.hosts))
    binary, _ = counting_terraform(tmp_path)
    terraform = {"CODEB_TERRAFORM": str(binary), "CODEB_TERRAFORM_DIR": str(work),
                 "CODEB_TERRAFORM_MODULES": str(MODULES), "CODEB_TERRAFORM_WAIT": "5"}  # fmt: skip
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="5", **terraform).start()
    doc = shop(hosts)
    doc["metadata"]["name"] = "site"
    doc["spec"]["project"]["slug"] = "site"
    doc["spec"]["environment"]["domains"] = ["site.quadlet.localhost"]
    doc["spec"]["servers"] = {"provider": "lightsail", "region": "ap-northeast-2", "runtime": "quadlet", "count": 2,
                              "ssh": {"secretRef": "deploy-key"}, "credentialsSecretRef": "cloud-credentials",
                              "platform": "shared"}  # fmt: skip
    doc["spec"]["features"] = {}
    try:
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
        operator.wait_ready(NS, "site", timeout=120)
        status = get_json(cluster, "project", "site", "-n", NS)["status"]
        port = status["allocations"]["port"]
        made = status["infrastructure"]["outputs"]["publicAddresses"]
        assert made == [h.address for h in hosts.hosts]
        assert sorted(status["endpoints"]["internal"]) == sorted(f"{a}:{port}" for a in made)
        assert "Hello, CodeB" in https_get(caddy, "site.quadlet.localhost").stdout

        doc["spec"]["servers"]["count"] = 1
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
        wait_for(lambda: get_json(cluster, "project", "site", "-n", NS)["status"]["infrastructure"]["outputs"][
            "publicAddresses"] == made[:1], timeout=120, what="one host left")  # fmt: skip
        operator.wait_ready(NS, "site", timeout=60)
        status = get_json(cluster, "project", "site", "-n", NS)["status"]
        assert status["endpoints"]["internal"] == [f"{made[0]}:{port}"]
        assert hosts.ssh(hosts.hosts[1], "ls -A /etc/containers/systemd/ | grep '^codeb-apps-site-'", check=False) == ""
        assert f"destroyed {made[1]}" in (work / "ledger").read_text()
        # One pass did it, in this order: the workload left, the route followed, then Terraform.
        passes = [json.loads(line) for line in operator.log().splitlines() if '"reconciled"' in line]
        shrink = next(p["actions"] for p in passes if "Infrastructure update" in p["actions"] and
                      "Workload update" in p["actions"])  # fmt: skip
        assert shrink.index("Workload update") < shrink.index("Route update") < shrink.index("Infrastructure update")
        assert "Hello, CodeB" in https_get(caddy, "site.quadlet.localhost").stdout
        cluster.kubectl("delete", "project", "site", "-n", NS, "--timeout=120s")
        assert hosts.ssh(hosts.hosts[0], "ls -A /etc/containers/systemd/ | grep '^codeb-apps-site-'", check=False) == ""
    except AssertionError as failed:
        raise AssertionError(f"{failed}\n{operator.log()[-4000:]}") from None
    finally:
        operator.stop()
