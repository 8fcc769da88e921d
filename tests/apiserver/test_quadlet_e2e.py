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

from controller.local.cluster import LocalCluster
from tests.apiserver.test_platform_e2e import NS, install_platform, running_world, secret_data
from tests.apiserver.test_terraform_runs import CREDENTIALS, MODULES, counting_terraform
from tests.factories import project
from tests.helpers import OperatorProcess, get_json, wait_for
from tests.rollouts import Load
from tests.servers import CaddyServer, https_get, start_prometheus
from tests.testhosts import HELLO_IMAGE, ROLLOUT_IMAGE, SERVICES_ADDRESS, BootedHosts, booted

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


def condition(cluster: LocalCluster, type_: str, name: str = "shop") -> dict[str, Any]:
    status = get_json(cluster, "project", name, "-n", NS).get("status", {})
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
            assert hosts.ssh(host, "systemctl is-active codeb.apps.shop.blue.service").strip() == "active"

        # Stopped: no container runs on either host and Caddy answers the maintenance page; started
        # again, it serves on the same database.
        suspend = json.dumps({"spec": {"suspended": True}})
        cluster.kubectl("patch", "project", "shop", "-n", NS, "--type=merge", "-p", suspend)
        wait_for(lambda: get_json(cluster, "project", "shop", "-n", NS)["status"].get("phase") == "Suspended",
                 timeout=90, what="shop suspended")  # fmt: skip
        for host in hosts.hosts:
            assert hosts.ssh(host, "podman ps --format '{{.Names}}'").strip() == ""
        assert "Temporarily unavailable" in https_get(caddy, DOMAIN).stdout
        cluster.kubectl("patch", "project", "shop", "-n", NS, "--type=merge", "-p", suspend.replace("true", "false"))
        wait_for(lambda: condition(cluster, "Ready").get("reason") == "AllComponentsReady", timeout=120,
                 what="shop started again")  # fmt: skip
        upstream = get_json(cluster, "project", "shop", "-n", NS)["status"]["endpoints"]["internal"][0]
        again = httpx.get(f"http://{upstream}/api/visit", timeout=10).json()
        assert again["database"]["visits"] > visits[1], again  # the same database, its rows kept

        # Deleting the Project stops and removes the units, their environment files and containers.
        cluster.kubectl("delete", "project", "shop", "-n", NS, "--timeout=120s")
        for host in hosts.hosts:
            left = hosts.ssh(host, "ls -A /etc/containers/systemd/ /etc/codeb/env/ | grep '^codeb[.]'", check=False)
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
    the workload lands on the hosts Terraform made; count 2 -> 1 takes the route off the second host,
    then the workload, before Terraform destroys that host."""
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
        assert (
            hosts.ssh(hosts.hosts[1], "ls -A /etc/containers/systemd/ | grep '^codeb[.]apps[.]site[.]'", check=False)
            == ""
        )
        assert f"destroyed {made[1]}" in (work / "ledger").read_text()
        # One pass did it, in this order: the route stopped sending there, the workload left (after the
        # requests in flight), then Terraform.
        passes = [json.loads(line) for line in operator.log().splitlines() if '"reconciled"' in line]
        shrink = next(p["actions"] for p in passes if "Infrastructure update" in p["actions"] and
                      "Workload update" in p["actions"])  # fmt: skip
        assert shrink.index("Route update") < shrink.index("Workload update") < shrink.index("Infrastructure update")
        assert "Hello, CodeB" in https_get(caddy, "site.quadlet.localhost").stdout
        cluster.kubectl("delete", "project", "site", "-n", NS, "--timeout=120s")
        assert (
            hosts.ssh(hosts.hosts[0], "ls -A /etc/containers/systemd/ | grep '^codeb[.]apps[.]site[.]'", check=False)
            == ""
        )
    except AssertionError as failed:
        raise AssertionError(f"{failed}\n{operator.log()[-4000:]}") from None
    finally:
        operator.stop()


ROLL = "roll.quadlet.localhost"
# Quick enough for a test; healthyThreshold 3 and a flaky app that passes once can never pass the gate,
# however many of its checks podman's own HealthCmd takes.
QUICK = {"healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1, "healthyThreshold": 3, "unhealthyThreshold": 3},
         "startTimeoutSeconds": 40, "drainSeconds": 2, "keepWarmSeconds": 600}  # fmt: skip


def roll(hosts: BootedHosts, revision: str, mode: str = "ok") -> dict[str, Any]:
    servers = {"provider": "existing", "runtime": "quadlet", "hosts": [h.address for h in hosts.hosts],
               "ssh": {"secretRef": "deploy-key"}, "platform": "quadlet-edge"}  # fmt: skip
    return project(
        "roll",
        NS,
        project={"slug": "roll", "source": {"image": ROLLOUT_IMAGE}, "revision": revision, "rollout": QUICK},
        environment={"type": "staging", "domains": [ROLL], "variables": {"MODE": mode}},
        servers=servers,
        backup={"enabled": False},
    )


def edge_platform(cluster: LocalCluster, caddy: CaddyServer) -> None:
    """Platform quadlet-edge: only the Caddy (the services of Platform shared are not needed)."""
    edge = {"apiVersion": "codeb.dev/v1alpha1", "kind": "Platform", "metadata": {"name": "quadlet-edge"},
            "spec": {"namespaces": {"selector": {}},
                     "caddy": {"adminUrl": caddy.admin_url, "listen": [f"127.0.0.1:{caddy.https_port}"],
                               "upstreamDir": str(caddy.root / "upstreams")}}}  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(edge))


def rollout_reaches(cluster: LocalCluster, revision: str, step: str, operator: OperatorProcess) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        record = get_json(cluster, "project", "roll", "-n", NS).get("status", {}).get("rollout") or {}
        return record if (record.get("revision"), record.get("step")) == (revision, step) else None

    try:
        return wait_for(reached, timeout=120, what=f"the rollout of {revision} {step}")
    except AssertionError:
        status = get_json(cluster, "project", "roll", "-n", NS).get("status", {})
        raise AssertionError(json.dumps(status, indent=1)[-3000:] + operator.log()[-3000:]) from None


def revision_served(caddy: CaddyServer) -> str | None:
    try:
        answer: dict[str, Any] = json.loads(https_get(caddy, ROLL).stdout)
    except ValueError:
        return None
    return answer.get("revision")


SITE_UNITS = "ls -A /etc/containers/systemd/ | grep '^codeb[.]apps[.]site[.]'"


def green_units(hosts: BootedHosts) -> list[str]:
    listing = "ls /etc/containers/systemd/ | grep 'roll[.]green'"
    return [hosts.ssh(host, listing, check=False).strip() for host in hosts.hosts]


def served_on(hosts: BootedHosts, revision: str) -> list[int]:
    """Requests each host's containers of the Project counted for ``revision``, from their own output."""
    units = "-u codeb.apps.roll.blue.service -u codeb.apps.roll.green.service"
    line = f"journalctl {units} -o cat --no-pager | grep -c '^served {revision}$'"
    return [int(hosts.ssh(host, line, check=False).strip() or 0) for host in hosts.hosts]


def test_blue_green_on_two_quadlet_hosts_never_serves_a_broken_revision(
    installed: dict[str, Any], hosts: BootedHosts, tmp_path: Path
) -> None:
    """The issue's proof on quadlet: with load running through Caddy, a revision whose health never
    passes, and one that passes once and then fails, are stopped on both hosts without a request
    (counted by the broken app itself); a good one switches both hosts at once; setting the
    revision back switches to the warm colour at once. No request fails throughout."""
    cluster: LocalCluster = installed["cluster"]
    caddy: CaddyServer = installed["caddy"]
    edge_platform(cluster, caddy)
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="5").start()
    load = Load(caddy, ROLL, threads=2)
    try:
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(roll(hosts, "r1")))
        rollout_reaches(cluster, "r1", "Succeeded", operator)
        load.start()
        for revision, mode in (("bad", "broken"), ("flaky", "flaky:1")):
            cluster.kubectl("apply", "-f", "-", input_text=json.dumps(roll(hosts, revision, mode)))
            failed = rollout_reaches(cluster, revision, "Failed", operator)
            assert "consecutive health checks" in failed["message"] or "health gate" in failed["message"], failed
            assert all(h.address in failed["message"] for h in hosts.hosts), failed  # judged on each host
            ready = condition(cluster, "Ready", "roll")
            assert (ready["status"], ready["reason"]) == ("False", "RolloutFailed")
            # Stopped everywhere (the pass after the one that judged it), blue untouched.
            wait_for(lambda: not any(green_units(hosts)), timeout=30, what=f"{revision} stopped on every host")
            for host in hosts.hosts:
                assert hosts.ssh(host, "systemctl is-active codeb.apps.roll.blue.service").strip() == "active"
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(roll(hosts, "r2")))
        rollout_reaches(cluster, "r2", "Succeeded", operator)
        assert condition(cluster, "Serving", "roll")["reason"] == "Green"
        wait_for(lambda: load.revisions.get("r2", 0) > 20, timeout=30, what="r2 served through Caddy")
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(roll(hosts, "r1")))
        wait_for(lambda: revision_served(caddy) == "r1", timeout=10, interval=0.05, what="r1 served again")
        switched_back = time.monotonic() - started
        print(f"quadlet, two hosts: switch back to the warm colour in {switched_back:.2f} s")
        assert switched_back < 2.0
        time.sleep(2)
        # Each release started once: the failed ones were not started again (bad, flaky, r2 as green;
        # r1 came back warm, without a start).
        passes = [json.loads(line) for line in operator.log().splitlines() if '"reconciled"' in line]
        starts = [r for p in passes if p["project"] == "roll" for r in p.get("reasons", []) if r.startswith("start")]
        assert starts == ["start green"] * 3, starts
    except AssertionError as failed:
        raise AssertionError(f"{failed}\n{operator.log()[-3000:]}") from None
    finally:
        load.stop()
        cluster.kubectl("delete", "project", "roll", "-n", NS, "--timeout=120s", check=False)
        operator.stop()
    assert served_on(hosts, "bad") == [0, 0] and served_on(hosts, "flaky") == [0, 0]
    assert all(count > 0 for count in served_on(hosts, "r2"))  # the count works: both hosts served r2
    assert load.failures == [] and set(load.revisions) == {"r1", "r2"} and load.sent > 100, load.failures[:5]
    print(f"quadlet rollouts under load: {load.sent} requests, 0 failed, p99 {load.p99() * 1000:.0f} ms")


AUTO = "auto.quadlet.localhost"


def test_load_scales_hosts_terraform_makes_out_and_back_in_without_a_failed_request(
    installed: dict[str, Any], hosts: BootedHosts, tmp_path: Path
) -> None:
    """servers min 1, max 2 with the Terraform stand-in whose hosts are the two booted machines, and a real
    Prometheus scraping the real Caddy: load through Caddy adds the second host, the cool-down passes, a
    light load takes it away again (drained first), and no request fails on the way."""
    cluster: LocalCluster = installed["cluster"]
    caddy: CaddyServer = installed["caddy"]
    cluster.kubectl("create", "secret", "generic", "cloud-credentials", "-n", NS,
                    *(f"--from-literal={k}={v}" for k, v in CREDENTIALS.items()), check=False)  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    (work / "addresses").write_text(" ".join(h.address for h in hosts.hosts))
    binary, _ = counting_terraform(tmp_path)
    prometheus = start_prometheus([f"127.0.0.1:{caddy.admin_port}"], {"groups": []})
    edge_platform(cluster, caddy)
    settings = {"CODEB_TERRAFORM": str(binary), "CODEB_TERRAFORM_DIR": str(work),
                "CODEB_TERRAFORM_MODULES": str(MODULES), "CODEB_TERRAFORM_WAIT": "5", "CODEB_DRIFT_INTERVAL": "5",
                "CODEB_PROMETHEUS_URL": prometheus.url}  # fmt: skip
    operator = OperatorProcess(cluster, tmp_path / "operator.log", **settings).start()
    doc = roll(hosts, "r1")
    doc["metadata"]["name"] = doc["spec"]["project"]["slug"] = "auto"
    doc["spec"]["environment"]["domains"] = [AUTO]
    policy = {"requestsPerHost": 5, "scaleOutCooldownSeconds": 0, "scaleInCooldownSeconds": 20}
    doc["spec"]["servers"] = {"provider": "lightsail", "region": "ap-northeast-2", "runtime": "quadlet", "min": 1,
                              "max": 2, "autoscale": policy, "ssh": {"secretRef": "deploy-key"},
                              "credentialsSecretRef": "cloud-credentials", "platform": "quadlet-edge"}  # fmt: skip

    def addresses() -> list[str]:
        status = get_json(cluster, "project", "auto", "-n", NS)["status"]
        return list(((status.get("infrastructure") or {}).get("outputs") or {}).get("publicAddresses") or [])

    def serving_on(count: int) -> bool:
        status = get_json(cluster, "project", "auto", "-n", NS)["status"]
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        return ready and len(addresses()) == count and len(status["endpoints"].get("internal") or []) == count

    heavy = Load(caddy, AUTO, threads=2)  # tens of requests per second: more than 5 per host
    light = Load(caddy, AUTO, threads=1, path="/slow?ms=500")  # about 2 per second: one host's worth
    try:
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
        operator.wait_ready(NS, "auto", timeout=180)
        assert addresses() == [hosts.hosts[0].address]
        heavy.start()
        wait_for(lambda: serving_on(2), timeout=180, what="scaled out to two hosts")
        light.start()
        heavy.stop()
        wait_for(lambda: serving_on(1), timeout=240, what="scaled back in to one host")
        light.stop()
        assert heavy.failures == [] and light.failures == [], (heavy.failures[:5], light.failures[:5])
        assert len(heavy.latencies) > 200 and len(light.latencies) > 20
        assert f"destroyed {hosts.hosts[1].address}" in (work / "ledger").read_text()
        # Each decision an Event with the figure that caused it.
        events = get_json(cluster, "events", "-n", NS, "--field-selector", "involvedObject.name=auto")["items"]
        said = {e["reason"]: e["message"] for e in events if e["reason"] in ("ScaledOut", "ScaledIn")}
        assert said["ScaledOut"].startswith("1 -> 2 hosts: ") and "more than 5 per host" in said["ScaledOut"]
        assert said["ScaledIn"].startswith("2 -> 1 hosts: ") and "less than 5 per host" in said["ScaledIn"]
        recorded = get_json(cluster, "project", "auto", "-n", NS)["status"]["autoscaling"]
        assert recorded["hosts"] == 1 and recorded["requestsPerSecond"] is not None
        cluster.kubectl("delete", "project", "auto", "-n", NS, "--timeout=120s")
    except AssertionError as failed:
        raise AssertionError(f"{failed}\n{operator.log()[-4000:]}") from None
    finally:
        heavy.stop()
        light.stop()
        operator.stop()
        prometheus.stop()
