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
from tests.factories import project
from tests.helpers import OperatorProcess, get_json
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
    world: dict[str, Any], hosts: BootedHosts, tmp_path: Path
) -> None:
    cluster: LocalCluster = world["cluster"]
    pg, caddy = world["pg"], world["caddy"]
    install_platform(cluster, pg, world["redis"], world["s3"], caddy)
    cluster.kubectl("create", "secret", "generic", "deploy-key", "-n", NS,
                    f"--from-literal=privateKey={hosts.private_key}")  # fmt: skip
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
            assert answer["bucket"]["readBack"] and answer["redis"]["hits"] >= 1
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
