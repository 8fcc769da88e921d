"""100 Projects' first Terraform plans under the concurrency limit, then a drift cycle that runs none.

    python bench/terraform_plans.py [--projects 100] [--concurrency 4]

A real control plane (etcd + kube-apiserver) holds the state (kubernetes backend), the
machine's Terraform runs with its provider mirror as the plugin directory (every init
reads it, none downloads, so inits run concurrently), and the module is the test stand-in (terraform_data only:
`tests/terraform_modules/lightsail`), so what is measured is the run machinery (init,
plan, show, apply, output, state in the cluster), not a cloud's API. Every Terraform
process is counted by a wrapper that logs its command and start and end times.

Prints: seconds for N first plans (apply approve: init + plan + show each), the most
runs seen at once, seconds to apply the N approved plans, and the Terraform processes
started by one drift cycle over the N converged Projects (the target is 0), with its
time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncssh

from controller.clients.kube import KubeClient, api_client_from_environment
from controller.drivers.terraform import TerraformHosts
from controller.errors import RetryableError
from controller.jobs.terraform import TerraformRunner, TerraformSettings
from controller.local.cluster import LocalCluster
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from schemas.project import Allocations, InfrastructureStatus, ProjectSpec, Provider
from tests.apiserver.test_terraform_runs import CREDENTIALS, MODULES
from tests.factories import project_spec
from tests.terraform_tools import provider_mirror, terraform_binary

NS = "bench"


def wrapper(directory: Path) -> tuple[Path, Path]:
    """A terraform that logs `<command> <start> <end>` for each process it is."""
    log, script = directory / "runs", directory / "terraform"
    script.write_text(f'#!/bin/sh\nstart=$(date +%s.%N)\n{terraform_binary()} "$@"\ncode=$?\n'
                      f'echo "$1 $start $(date +%s.%N)" >> {log}\nexit $code\n')  # fmt: skip
    script.chmod(0o755)
    return script, log


def runs(log: Path, command: str | None = None) -> list[tuple[float, float]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [(float(s), float(e)) for c, s, e in (line.split() for line in lines) if command in (None, c)]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    return max((sum(1 for s, e in spans if s <= t < e) for t, _ in spans), default=0)


def context(index: int, record: InfrastructureStatus | None, approved: str | None = None) -> DriverContext:
    servers = {"provider": "lightsail", "region": "ap-northeast-2", "runtime": "quadlet", "count": 2,
               "apply": "approve", "approvedPlan": approved}  # fmt: skip
    spec = ProjectSpec.model_validate(project_spec(slug=f"site{index}", servers=servers))
    return DriverContext(ProjectKey(NS, f"site{index}", f"uid-{index}"), Allocations(port=4100 + index),
                         servers=spec.servers, recorded=record)  # fmt: skip


async def pass_of(driver: TerraformHosts, ctx: DriverContext) -> InfrastructureStatus:
    """One reconcile's worth: observe; act unless converged; the record status would get."""
    seen = await driver.observe(ctx)
    while seen.state is None or not seen.state["converged"]:
        try:
            await driver.apply(ctx, {})
        except RetryableError as exc:
            if exc.reason == "AwaitingApproval":
                return InfrastructureStatus.model_validate((await driver.observe(ctx)).outputs["terraform"])
            if exc.reason not in ("TerraformRunning", "TerraformQueued"):
                raise
        seen = await driver.observe(ctx)
    return InfrastructureStatus.model_validate(seen.outputs["terraform"])


async def measure(cluster: LocalCluster, root: Path, projects: int, concurrency: int) -> None:
    binary, log = wrapper(root)
    settings = TerraformSettings(binary=str(binary), work_root=root / "work", modules=MODULES, state_namespace=NS,
                                 kubeconfig=str(cluster.kubeconfig), plugin_dir=provider_mirror(),
                                 concurrency=concurrency, wait=600)  # fmt: skip
    with ThreadPoolExecutor(8) as pool:
        kube = KubeClient(api_client_from_environment(8, str(cluster.kubeconfig)), pool)
        driver = TerraformHosts(Provider.lightsail, TerraformRunner(settings), kube.read_secret, kube)
        started = time.monotonic()
        planned = await asyncio.gather(*(pass_of(driver, context(i, None)) for i in range(projects)))
        plan_seconds = time.monotonic() - started
        assert all(r.plan is not None and r.plan.add == 2 for r in planned)
        print(f"{projects} first plans (init + plan + show): {plan_seconds:.1f} s, "
              f"at most {most_at_once(runs(log, 'plan'))} plans at once (limit {concurrency})")  # fmt: skip

        started = time.monotonic()
        approved = [context(i, r, r.plan.id if r.plan else None) for i, r in enumerate(planned)]
        applied = await asyncio.gather(*(pass_of(driver, ctx) for ctx in approved))
        print(f"{projects} approved plans applied: {time.monotonic() - started:.1f} s")

        fresh = TerraformHosts(Provider.lightsail, TerraformRunner(settings), kube.read_secret, kube)
        before = len(runs(log))
        started = time.monotonic()
        cycle = [replace(ctx, recorded=r) for ctx, r in zip(approved, applied, strict=True)]
        seen = await asyncio.gather(*(fresh.observe(ctx) for ctx in cycle))
        assert all(s.state is not None and s.state["converged"] for s in seen)
        print(f"drift cycle over {projects} unchanged Projects: {len(runs(log)) - before} Terraform processes, "
              f"{time.monotonic() - started:.2f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = LocalCluster(root / "cluster").start()
        try:
            cluster.kubectl("create", "namespace", NS)
            key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
            cluster.kubectl("create", "secret", "generic", "deploy-key", "-n", NS, f"--from-literal=privateKey={key}")
            cluster.kubectl("create", "secret", "generic", "cloud-credentials", "-n", NS,
                            *(f"--from-literal={k}={v}" for k, v in CREDENTIALS.items()))  # fmt: skip
            asyncio.run(measure(cluster, root, args.projects, args.concurrency))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
