"""The Terraform driver's run machinery against the real API server and the machine's Terraform.

The module is `tests/terraform_modules/lightsail`: the Lightsail module's variables and
outputs, made of Terraform's built-in ``terraform_data``, so no provider and no cloud is
needed; each host it makes or destroys is a line in the work directory's ``ledger``.
State goes to the ``kubernetes`` backend of the real API server. Every Terraform process
is counted by a wrapper that logs its command before running the real binary.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from controller.clients.kube import KubeClient
from controller.drivers.terraform import TerraformHosts
from controller.drivers.workloads import SecretReader
from controller.errors import CodebError, PermanentError, RetryableError
from controller.jobs.terraform import TerraformRunner, TerraformSettings
from controller.local.cluster import LocalCluster
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Observation
from controller.specs import terraform as tf
from schemas.project import Allocations, InfrastructureStatus, ProjectSpec, Provider
from tests.factories import project_spec
from tests.terraform_tools import stored_state, terraform_binary

pytestmark = pytest.mark.apiserver

MODULES = Path(__file__).resolve().parents[1] / "terraform_modules"
CREDENTIALS = {"accessKeyId": "AKIATESTONLYVALUE123", "secretAccessKey": "s3cr3t-never-shown-anywhere"}


def counting_terraform(directory: Path) -> tuple[Path, Path]:
    """A terraform that writes each command it is given to a log, then is the real one."""
    log, wrapper = directory / "terraform-commands", directory / "terraform"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {log}\nexec {terraform_binary()} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, log


@dataclass
class World:
    cluster: LocalCluster
    namespace: str
    work: Path
    commands: Path
    kube: KubeClient
    settings: TerraformSettings

    def driver(self, read_secret: SecretReader | None = None, **settings: Any) -> TerraformHosts:
        runner = TerraformRunner(replace(self.settings, **settings))
        return TerraformHosts(Provider.lightsail, runner, read_secret or self.kube.read_secret, self.kube)

    def ctx(self, name: str = "shop", recorded: InfrastructureStatus | None = None, **servers: Any) -> DriverContext:
        on_lightsail = {"provider": "lightsail", "region": "ap-northeast-2", "runtime": "quadlet", "count": 1}
        spec = ProjectSpec.model_validate(project_spec(slug=name, servers=on_lightsail | servers))
        key = ProjectKey(self.namespace, name, f"uid-{name}")
        return DriverContext(key, Allocations(port=4100), servers=spec.servers, recorded=recorded)

    def ran(self) -> list[str]:
        return self.commands.read_text().split() if self.commands.exists() else []

    def ledger(self) -> list[str]:
        path = self.work / "ledger"
        return path.read_text().splitlines() if path.exists() else []

    def state_secret(self, name: str = "shop") -> dict[str, Any] | None:
        found = self.cluster.kubectl("get", "secret", f"tfstate-default-{self.namespace}.{name}", "-n",
                                     self.namespace, "-o", "json", check=False)  # fmt: skip
        return json.loads(found.stdout) if found.returncode == 0 else None

    def state(self, name: str = "shop") -> dict[str, Any]:
        secret = self.state_secret(name)
        assert secret is not None
        return stored_state(secret)


@pytest.fixture()
async def world(cluster: LocalCluster, namespace: str, kube: KubeClient, tmp_path: Path) -> AsyncIterator[World]:
    key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    for name, data in (("deploy-key", {"privateKey": key}), ("cloud-credentials", CREDENTIALS)):
        cluster.kubectl("create", "secret", "generic", name, "-n", namespace,
                        *(f"--from-literal={k}={v}" for k, v in data.items()))  # fmt: skip
    binary, commands = counting_terraform(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    settings = TerraformSettings(binary=str(binary), work_root=work, modules=MODULES, state_namespace=namespace,
                                 kubeconfig=str(cluster.kubeconfig), plugin_dir=None, concurrency=2,
                                 run_timeout=600, wait=60, plan_interval=3600)  # fmt: skip
    yield World(cluster, namespace, work, commands, kube, settings)


async def converge(driver: TerraformHosts, ctx: DriverContext) -> Observation:
    """One reconcile's worth for this component: observe, apply when not converged, observe again."""
    seen = await driver.observe(ctx)
    if seen.state is None or not seen.state["converged"]:
        await driver.apply(ctx, {})
        seen = await driver.observe(ctx)
    return seen


def recorded(seen: Observation) -> InfrastructureStatus:
    """What the reconciler writes to status.infrastructure."""
    return InfrastructureStatus.model_validate(seen.outputs["terraform"])


async def test_apply_records_outputs_then_an_unchanged_project_starts_no_terraform(world: World) -> None:
    seen = await converge(world.driver(), world.ctx(count=2, loadBalancer={"enabled": True}))
    record = recorded(seen)
    assert seen.healthy and seen.state is not None and seen.state["converged"] is True
    assert record.outputs.public_addresses == ["127.0.1.10", "127.0.1.11"]
    assert record.outputs.load_balancer_address == "198.51.100.1"
    assert record.applied_hash and record.last_run and record.last_run.result == "Succeeded"
    prefix = tf.resource_name(ProjectKey(world.namespace, "shop", ""))
    assert prefix.startswith(f"codeb-{world.namespace}-shop-")
    assert sorted(world.ledger()) == [f"made {prefix}-{i}" for i in (0, 1)]
    assert world.ran() == ["providers", "init", "apply", "output"]
    # The state is in the cluster, not in the workspace.
    assert [r["type"] for r in world.state()["resources"]] == ["terraform_data"]
    assert not list(world.work.glob("*/terraform.tfstate"))

    # A restarted operator (a new driver) with only the status: ten drift cycles, no process.
    fresh = world.driver()
    for _ in range(10):
        again = await fresh.observe(world.ctx(count=2, loadBalancer={"enabled": True}, recorded=record))
        assert again.state is not None and again.state["converged"] and again.healthy
    assert world.ran() == ["providers", "init", "apply", "output"]


async def test_three_hosts_from_one_make_exactly_two_and_back_to_one_destroys_them(world: World) -> None:
    driver = world.driver()
    record = recorded(await converge(driver, world.ctx(count=1)))
    first = world.state()["resources"][0]["instances"][0]["attributes"]["id"]
    seen = await converge(driver, world.ctx(count=3, recorded=record))
    assert recorded(seen).outputs.public_addresses == ["127.0.1.10", "127.0.1.11", "127.0.1.12"]
    assert len(world.ledger()) == 3  # one for the first apply, two for the second
    assert world.state()["resources"][0]["instances"][0]["attributes"]["id"] == first  # not made again
    seen = await converge(driver, world.ctx(count=1, recorded=recorded(seen)))
    assert world.ledger()[3:] == ["destroyed 127.0.1.11", "destroyed 127.0.1.12"] or sorted(world.ledger()[3:]) == [
        "destroyed 127.0.1.11",
        "destroyed 127.0.1.12",
    ]
    assert recorded(seen).outputs.public_addresses == ["127.0.1.10"]


async def test_hosts_made_with_the_earlier_prefix_keep_it_after_an_upgrade(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename would replace the hosts (the stand-in, like Lightsail, remakes a host whose name changes)."""
    key = ProjectKey(world.namespace, "shop", "uid-shop")
    legacy = tf.legacy_resource_name(key)
    with monkeypatch.context() as earlier_release:  # the release before injective names made the hosts
        earlier_release.setattr(tf, "resource_name", tf.legacy_resource_name)
        record = recorded(await converge(world.driver(), world.ctx(count=1)))
    assert world.ledger() == [f"made {legacy}-0"]

    # The upgraded operator reads the state: the same prefix, so the same inputs, and no run at all.
    upgraded = world.driver()
    seen = await converge(upgraded, world.ctx(count=1, recorded=record))
    assert (
        seen.state is not None and seen.state["converged"] and world.ran() == ["providers", "init", "apply", "output"]
    )
    # A second host gets the prefix of the first; the first is not made again.
    await converge(upgraded, world.ctx(count=2, recorded=record))
    assert world.ledger() == [f"made {legacy}-0", f"made {legacy}-1"]

    # Gone, and made again under the same name: the state was dropped, so the injective prefix.
    await upgraded.delete(world.ctx(count=2, recorded=record), retain=False)
    await converge(world.driver(), world.ctx(count=1))
    assert world.ledger()[-1] == f"made {tf.resource_name(key)}-0" != f"made {legacy}-0"


async def test_deletion_destroys_and_drops_the_state_or_retains_both(world: World) -> None:
    driver = world.driver()
    kept = recorded(await converge(driver, world.ctx("kept", count=1)))
    gone = recorded(await converge(driver, world.ctx("gone", count=2)))
    await driver.delete(world.ctx("kept", recorded=kept, count=1), retain=True)
    await driver.delete(world.ctx("gone", recorded=gone, count=2), retain=False)
    assert sorted(line.split()[0] for line in world.ledger()) == ["destroyed", "destroyed", "made", "made", "made"]
    assert world.state_secret("gone") is None and world.state_secret("kept") is not None
    assert not (world.work / f"{world.namespace}.kept").exists()


async def test_approve_applies_exactly_the_plan_named_and_only_then(world: World) -> None:
    driver = world.driver()
    ctx = world.ctx(count=2, apply="approve")
    with pytest.raises(RetryableError) as waiting:
        await driver.apply(ctx, {})
    assert waiting.value.reason == "AwaitingApproval"
    plan = recorded(await driver.observe(ctx)).plan
    assert plan is not None and (plan.add, plan.change, plan.destroy) == (2, 0, 0)
    hosts = "module.project.terraform_data.hosts"
    assert [(c.address, c.action) for c in plan.resources] == [(f"{hosts}[0]", "create"), (f"{hosts}[1]", "create")]
    assert plan.id in waiting.value.message and world.ledger() == []

    wrong = world.ctx(count=2, apply="approve", approvedPlan="0123456789ab")
    with pytest.raises(RetryableError, match="approvedPlan to "):
        await driver.apply(wrong, {})
    assert world.ledger() == [] and world.ran().count("plan") == 1  # the saved plan waits, not re-made

    approved = world.ctx(count=2, apply="approve", approvedPlan=plan.id)
    await driver.apply(approved, {})
    seen = await driver.observe(approved)
    assert seen.state is not None and seen.state["converged"] and seen.healthy
    assert len(world.ledger()) == 2 and world.ran().count("apply") == 1


async def test_observe_plans_and_reports_drift_but_never_applies(world: World) -> None:
    driver = world.driver()
    record = recorded(await converge(driver, world.ctx(count=1)))
    ctx = world.ctx(count=2, apply="observe", recorded=record)
    with pytest.raises(RetryableError) as drift:
        await driver.apply(ctx, {})
    assert drift.value.reason == "DriftDetected" and "1 to add" in drift.value.message
    seen = await driver.observe(ctx)
    assert seen.state is not None and seen.state["converged"] is False
    assert len(world.ledger()) == 1 and world.ran().count("apply") == 1  # the first, in auto
    # While the plan is fresh, another pass reports it again without planning again.
    with pytest.raises(RetryableError, match="differs from the spec"):
        await driver.apply(ctx, {})
    assert world.ran().count("plan") == 1


async def test_bad_input_names_the_field_and_starts_nothing(world: World) -> None:
    driver = world.driver()
    with pytest.raises(PermanentError, match=r"^spec\.servers\.region: 'mars-1'") as caught:
        await driver.observe(world.ctx(region="mars-1"))
    assert caught.value.reason == "InvalidRegion"
    world.cluster.kubectl("delete", "secret", "cloud-credentials", "-n", world.namespace)
    with pytest.raises(RetryableError, match=r"spec\.servers\.credentialsSecretRef\) does not exist"):
        await driver.observe(world.ctx())
    assert world.ran() == []
    missing = world.driver(binary="/nonexistent/terraform")
    world.cluster.kubectl("create", "secret", "generic", "cloud-credentials", "-n", world.namespace,
                          *(f"--from-literal={k}={v}" for k, v in CREDENTIALS.items()))  # fmt: skip
    with pytest.raises(RetryableError, match="cannot run /nonexistent/terraform") as absent:
        await missing.apply(world.ctx(), {})
    assert absent.value.reason == "TerraformMissing"


async def test_a_failing_change_is_shown_readably_without_credentials_and_the_hosts_stay(
    world: World, tmp_path: Path
) -> None:
    serving = recorded(await converge(world.driver(), world.ctx(count=1)))
    broken = tmp_path / "broken"
    (broken / "lightsail").mkdir(parents=True)
    text = (MODULES / "lightsail" / "main.tf").read_text()
    broken_text = text.replace("input = local.addresses[count.index]", "input = no_such_function(count.index)")
    assert broken_text != text
    (broken / "lightsail" / "main.tf").write_text(broken_text)
    driver = world.driver(modules=broken)
    with pytest.raises(CodebError) as failed:
        await driver.apply(world.ctx(count=2, recorded=serving), {})
    seen = await driver.observe(world.ctx(count=2, recorded=serving))
    assert "no_such_function" in failed.value.message and not seen.healthy
    text = json.dumps(seen.outputs) + failed.value.message
    assert all(value not in text for value in CREDENTIALS.values())
    # What was made still is, and status still says where.
    after = recorded(seen)
    assert after.outputs.public_addresses == ["127.0.1.10"] and after.applied_hash == serving.applied_hash
    assert len(world.state()["resources"][0]["instances"]) == 1 and len(world.ledger()) == 1


async def test_runs_across_projects_never_exceed_the_limit(world: World) -> None:
    (world.work / "delay").write_text("1")
    driver = world.driver(concurrency=2, wait=120)
    spans: list[tuple[float, float]] = []
    start = driver._runner.start

    async def timed(*args: Any, **kwargs: Any) -> Any:
        run = await start(*args, **kwargs)
        await driver._runner.wait(run, 120)
        spans.append((run.started, (run.directory / "exit").stat().st_mtime))
        return run

    driver._runner.start = timed  # type: ignore[method-assign]
    await asyncio.gather(*(converge(driver, world.ctx(f"p{i}")) for i in range(5)))
    overlapping = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlapping == 2 and len(spans) == 5 and len(world.ledger()) == 5
