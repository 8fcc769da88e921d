"""Infrastructure for provider vultr with runtime kubernetes: a VKE cluster made by Terraform.

Everything about the run is the hosts' (`TerraformHosts`): one workspace per Project, state in the
operator's namespace, runs detached and found again after a restart, the modes auto / approve /
observe, destroy on delete. What differs is the module (`terraform/vultr-kubernetes`: the control
plane and one node pool, no hosts of ours, no SSH key) and what is observed once it is made: the
cluster itself, reached with the kubeconfig in the Terraform state (`TargetClusters`), which is
never copied into status, an Event or a Secret of the tenant's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller.clients.kube import KubeClient
from controller.clients.ssh import Login
from controller.drivers.clusters import TargetClusters, cluster_problem
from controller.drivers.terraform import TerraformHosts
from controller.drivers.workloads import SecretReader
from controller.jobs.terraform import TerraformRunner
from controller.jobs.terraform_records import Workspace
from controller.loop.interface import DriverContext
from controller.loop.planner import Observation
from controller.specs import terraform as tf
from schemas.project import InfrastructureStatus, Provider, Servers


class TerraformCluster(TerraformHosts):
    def __init__(self, runner: TerraformRunner, read_secret: SecretReader, kube: KubeClient,
                 clusters: TargetClusters) -> None:  # fmt: skip
        super().__init__(Provider.vultr, runner, read_secret, kube)
        self.module, self.outputs = tf.CLUSTER_MODULE, tf.CLUSTER_OUTPUTS
        self._clusters = clusters

    async def _inputs(self, ctx: DriverContext, servers: Servers, name: str) -> tuple[Login | None, dict[str, Any]]:
        return None, tf.cluster_inputs(ctx.key, servers, name)

    async def _with_hosts(
        self, ctx: DriverContext, space: Workspace, record: InfrastructureStatus, seen: Observation
    ) -> Observation:
        """Made, and answering: the cluster's API reached with its kubeconfig, and the operator let in."""
        if record.applied_hash is None or not seen.healthy:
            return seen
        problem = await cluster_problem(self._clusters, ctx)
        if problem is None:
            return seen
        return replace(seen, healthy=False, detail=f"{problem[0]} ({problem[1]})")
