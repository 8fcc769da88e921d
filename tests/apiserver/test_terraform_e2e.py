"""The operator running Terraform, end to end: `kubectl apply` of a Lightsail Project, the real
operator process, the machine's Terraform, state in the real API server.

The module is the test stand-in (`tests/terraform_modules/lightsail`, terraform_data only),
so nothing reaches a cloud; its hosts' addresses (127.0.1.x) answer no SSH, so the
workload waits for hosts and the infrastructure is what these tests look at. The operator
is killed with SIGKILL in the middle of an apply: once with Terraform left running (it
finishes, and the restarted operator must not start a second apply), once with Terraform
killed too, as when the machine or container goes (a lock is left; the restarted operator
releases it, with an Event, and converges from the state as it was).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from controller.local.cluster import LocalCluster
from controller.loop.naming import ProjectKey
from controller.specs import terraform as tf
from tests.apiserver.test_terraform_runs import CREDENTIALS, MODULES, counting_terraform
from tests.conftest import start_cluster
from tests.factories import project
from tests.helpers import OperatorProcess, get_json, wait_for
from tests.terraform_tools import stored_state

pytestmark = pytest.mark.apiserver

NS = "o4o"
STATE_NS = "codeb-system"


def prefix_of(name: str) -> str:
    """The prefix of the resources' names Terraform makes for Project ``name``."""
    return tf.resource_name(ProjectKey(NS, name, ""))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = start_cluster(tmp_path_factory.mktemp("terraform-e2e"))
    local.kubectl("create", "namespace", NS)
    key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    for name, data in (("deploy-key", {"privateKey": key}), ("cloud-credentials", CREDENTIALS)):
        local.kubectl("create", "secret", "generic", name, "-n", NS,
                      *(f"--from-literal={k}={v}" for k, v in data.items()))  # fmt: skip
    yield local
    local.stop()


class Site:
    """One Project on Lightsail, its operator, and what Terraform did for it."""

    def __init__(self, cluster: LocalCluster, root: Path, name: str) -> None:
        self.cluster, self.name = cluster, name
        self.work = root / "work"
        self.work.mkdir(parents=True)
        binary, self.commands = counting_terraform(root)
        self.operator = OperatorProcess(
            cluster, root / "operator.log", CODEB_TERRAFORM=str(binary), CODEB_TERRAFORM_DIR=str(self.work),
            CODEB_TERRAFORM_MODULES=str(MODULES), CODEB_TERRAFORM_WAIT="2", CODEB_DRIFT_INTERVAL="3",
            CODEB_RETRY_MAX="3",
        )  # fmt: skip

    def apply(self, **servers: Any) -> None:
        on_lightsail = {"provider": "lightsail", "region": "ap-northeast-2", "runtime": "quadlet"} | servers
        doc = project(self.name, NS, servers=on_lightsail, backup={"enabled": False})
        self.cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))

    def status(self) -> dict[str, Any]:
        return dict(get_json(self.cluster, "project", self.name, "-n", NS).get("status", {}))

    def condition(self, kind: str) -> dict[str, Any]:
        return next((c for c in self.status().get("conditions", []) if c["type"] == kind), {})

    def infrastructure_ready(self, generation: int) -> bool:
        ready = self.condition("InfrastructureReady")
        return ready.get("status") == "True" and ready.get("observedGeneration") == generation

    def ran(self) -> list[str]:
        return self.commands.read_text().split() if self.commands.exists() else []

    def ledger(self) -> list[str]:
        path = self.work / "ledger"
        return path.read_text().splitlines() if path.exists() else []

    def run_record(self) -> dict[str, Any]:
        return dict(json.loads((self.work / f"{NS}.{self.name}" / "run" / "run.json").read_text()))

    def state_ids(self) -> list[str]:
        secret = get_json(self.cluster, "secret", f"tfstate-default-{NS}.{self.name}", "-n", STATE_NS)
        return [i["attributes"]["id"] for r in stored_state(secret)["resources"] for i in r["instances"]]

    def lock_holder(self) -> str | None:
        lease = get_json(self.cluster, "lease", f"lock-tfstate-default-{NS}.{self.name}", "-n", STATE_NS)
        return lease.get("spec", {}).get("holderIdentity")

    def events(self, reason: str) -> list[str]:
        found = get_json(self.cluster, "events", "-n", NS, "--field-selector", f"reason={reason}")["items"]
        return [e["message"] for e in found if e["involvedObject"]["name"] == self.name]

    def explain(self) -> str:
        return json.dumps(self.status(), indent=1)[-3000:] + self.operator.log()[-3000:]


def kill_session(leader: int) -> None:
    """SIGKILL every process of the run's session: Terraform going down with its machine."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[3]
            except OSError:
                continue
            if int(session) == leader:
                os.kill(int(entry.name), signal.SIGKILL)


def test_terraform_outliving_a_killed_operator_finishes_and_is_not_started_again(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    site = Site(cluster, tmp_path, "survivor")
    (site.work / "delay").write_text("6")
    site.operator.start()
    try:
        site.apply(count=2)
        wait_for(lambda: "apply" in site.ran(), timeout=60, what="the apply started")
        site.operator.kill()
        assert site.ledger() == []  # mid-apply: no host made yet
        site.operator.start()
        wait_for(lambda: site.infrastructure_ready(1), timeout=90, what="InfrastructureReady")
        infrastructure = site.status()["infrastructure"]
        assert infrastructure["outputs"]["publicAddresses"] == ["127.0.1.10", "127.0.1.11"]
        assert infrastructure["lastRun"]["result"] == "Succeeded"
        assert sorted(site.ledger()) == [f"made {prefix_of('survivor')}-{i}" for i in (0, 1)]
        assert site.ran().count("apply") == 1 and site.lock_holder() is None
        assert site.events("TerraformLockReleased") == []
        # The hosts answer no SSH: the workload waits for them, and status.hosts says why.
        hosts = site.status()["hosts"]
        assert [(h["address"], h["usable"]) for h in hosts] == [("127.0.1.10", False), ("127.0.1.11", False)]
        wait_for(lambda: site.condition("WorkloadReady").get("reason") == "WaitingForHosts", timeout=30,
                 what="the workload waits for the hosts")  # fmt: skip
        # Passes over an unchanged Project (the workload retries every 3 s, drift every 3 s) start no Terraform.
        before, applied = len(site.ran()), infrastructure["appliedHash"]
        time.sleep(10)
        assert len(site.ran()) == before and site.status()["infrastructure"]["appliedHash"] == applied
    except AssertionError:
        raise AssertionError(site.explain()) from None
    finally:
        site.operator.stop()


def test_a_lock_left_by_a_run_killed_with_its_machine_is_released_and_the_state_kept(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    site = Site(cluster, tmp_path, "crashed")
    site.operator.start()
    try:
        site.apply(count=1)
        wait_for(lambda: site.infrastructure_ready(1), timeout=90, what="one host")
        first = site.state_ids()
        (site.work / "delay").write_text("30")
        site.apply(count=3)
        wait_for(lambda: site.ran().count("apply") == 2 and site.lock_holder() is not None, timeout=60,
                 what="the second apply holding the lock")  # fmt: skip
        leader = int(site.run_record()["pid"])
        site.operator.kill()
        kill_session(leader)
        assert site.lock_holder() is not None  # left behind
        (site.work / "delay").write_text("0")
        site.operator.start()
        wait_for(lambda: site.infrastructure_ready(2), timeout=120, what="three hosts")
        released = site.events("TerraformLockReleased")
        assert len(released) == 1 and "its run is gone" in released[0]
        ids = site.state_ids()
        assert len(ids) == 3 and ids[0] == first[0]  # the state from before the crash was kept
        assert site.ledger().count(f"made {prefix_of('crashed')}-0") == 1
        assert site.lock_holder() is None
        assert site.status()["infrastructure"]["outputs"]["publicAddresses"] == [f"127.0.1.1{i}" for i in range(3)]
    except AssertionError:
        raise AssertionError(site.explain()) from None
    finally:
        site.operator.stop()


def test_approval_through_the_manifest_and_credentials_never_shown(cluster: LocalCluster, tmp_path: Path) -> None:
    site = Site(cluster, tmp_path, "approved")
    site.operator.start()
    try:
        site.apply(count=2, apply="approve")
        wait_for(lambda: site.condition("InfrastructureReady").get("reason") == "AwaitingApproval", timeout=60,
                 what="a plan awaiting approval")  # fmt: skip
        plan = site.status()["infrastructure"]["plan"]
        assert (plan["add"], plan["change"], plan["destroy"]) == (2, 0, 0) and site.ledger() == []
        assert f"approvedPlan to {plan['id']}" in site.condition("InfrastructureReady")["message"]
        site.apply(count=2, apply="approve", approvedPlan=plan["id"])
        wait_for(lambda: site.infrastructure_ready(2), timeout=60, what="the approved plan applied")
        assert len(site.ledger()) == 2 and site.ran().count("apply") == 1
        shown = json.dumps(get_json(cluster, "project", site.name, "-n", NS)) + site.operator.log()
        shown += json.dumps(get_json(cluster, "events", "-n", NS))
        assert all(value not in shown for value in CREDENTIALS.values())
    except AssertionError:
        raise AssertionError(site.explain()) from None
    finally:
        site.operator.stop()
