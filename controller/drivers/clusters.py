"""Kubernetes clusters a workload runs in: the operator's own, or one a Project names.

With ``servers.cluster.kubeconfigSecretRef`` the runtime ``kubernetes`` deploys to
another cluster, reached with the kubeconfig in that Secret (`TargetClusters`); the
client is made once per kubeconfig and made again when the Secret changes. Without
it, the operator's own cluster is the target.

`ExistingCluster` is the infrastructure of provider ``existing`` with runtime
``kubernetes``: a cluster someone else made. The operator creates nothing here; it
checks that it can reach the cluster and is let in, and names the cause when not.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from controller.clients.kube import KubeClient
from controller.clients.kubeconfig import api_client_from_kubeconfig, kubeconfig_configuration
from controller.clients.targets import resolve_target
from controller.drivers.workloads import SecretReader
from controller.errors import CodebError, RetryableError
from controller.jobs.terraform_state import StateStore
from controller.loop.interface import DriverContext
from controller.loop.planner import Component, Observation, State
from schemas.project import Provider

OWN_CLUSTER = "the operator's own cluster"
# Requests to another cluster fail fast: it may be far away or gone.
TARGET_TIMEOUT_SECONDS = 10.0
# A Project's cluster gets threads of its own (a server that stalls them stalls only its Project), a total
# deadline per call, and a cap on what one answer may be.
TARGET_THREADS = 2
TARGET_DEADLINE_SECONDS = 30.0
TARGET_MAX_BYTES = 8 << 20
# A client connects to the address its server's name had when checked (`resolve_target`); the name is
# resolved and checked again this often, so a cluster that moves is followed and still checked.
RESOLVE_AGAIN_SECONDS = 300.0


@dataclass(frozen=True)
class Target:
    kube: KubeClient
    name: str  # for messages: which cluster
    remote: bool  # not the operator's own: Secrets must be copied, the namespace may be missing


class TargetClusters:
    def __init__(self, own: KubeClient, allow_internal: bool = False, read_secret: SecretReader | None = None,
                 states: StateStore | None = None) -> None:  # fmt: skip
        self._own = Target(own, OWN_CLUSTER, remote=False)
        self._read_secret = read_secret or own.read_secret  # the kubeconfig Secret (`KeptSecrets` in the operator)
        # Where the kubeconfig of a cluster Terraform made is (servers.vke): its state, in the operator's namespace.
        self._states = states
        # A kubeconfig's server on loopback or link-local (`controller.clients.targets`): only where all
        # runs on one machine.
        self._allow_internal = allow_internal
        # (namespace, Secret; or "/<Project>" for a cluster Terraform made, no Secret's name): (digest of the
        # kubeconfig, its target, when its server's address was resolved)
        self._clients: dict[tuple[str, str], tuple[str, Target, float]] = {}

    @property
    def own(self) -> KubeClient:
        return self._own.kube

    async def of(self, ctx: DriverContext) -> Target:
        """The cluster this Project's workload runs in (a stored spec that no longer validates: the own one)."""
        servers = ctx.servers
        if servers is not None and servers.vke is not None:
            slot, name, source = (ctx.key.namespace, f"/{ctx.key.name}"), "the Project's VKE cluster", "the VKE state"
            kubeconfig = await self._states.kubeconfig(ctx.key) if self._states is not None else None
            if not kubeconfig:
                raise RetryableError("the Project's VKE cluster has no kubeconfig yet: Terraform has not made it "
                                     "(see status.infrastructure)", reason="ClusterNotMade", delay=30)  # fmt: skip
            return await self._client(slot, kubeconfig, name, f"{source} of {ctx.key.namespace}/{ctx.key.name}")
        cluster = servers.cluster if servers is not None else None
        if cluster is None:
            return self._own
        namespace, secret = ctx.key.namespace, cluster.kubeconfig_secret_ref
        source = f"Secret {namespace}/{secret} (spec.servers.cluster.kubeconfigSecretRef)"
        data = await self._read_secret(namespace, secret, ctx.key.name)
        if not data or not data.get("kubeconfig"):
            raise RetryableError(f"{source} does not exist or has no key kubeconfig", reason="KubeconfigMissing",
                                 delay=30)  # fmt: skip
        name = f"the cluster of Secret {namespace}/{secret}"
        return await self._client((namespace, secret), data["kubeconfig"], name, source)

    async def _client(self, slot: tuple[str, str], kubeconfig: str, name: str, source: str) -> Target:
        """A client for ``kubeconfig``, made once per kubeconfig and again when it changes or its address is due."""
        digest = hashlib.sha256(kubeconfig.encode()).hexdigest()
        cached = self._clients.get(slot)
        if cached is not None and cached[0] == digest and time.monotonic() - cached[2] < RESOLVE_AGAIN_SECONDS:
            return cached[1]
        server = urlsplit(str(kubeconfig_configuration(kubeconfig, source).host)).hostname or ""
        address = await resolve_target(server, f"{source}: server", self._allow_internal)
        api = api_client_from_kubeconfig(kubeconfig, source, connect_to=address)
        threads = ThreadPoolExecutor(TARGET_THREADS, thread_name_prefix="target-cluster")
        client = KubeClient(api, threads, TARGET_TIMEOUT_SECONDS, cluster=name, deadline=TARGET_DEADLINE_SECONDS,
                            max_bytes=TARGET_MAX_BYTES)  # fmt: skip
        target = Target(client, name, remote=True)
        if cached is not None:
            cached[1].kube.close()  # the kubeconfig changed, or the address is resolved again: old connections go
        self._clients[slot] = (digest, target, time.monotonic())
        return target


class ExistingCluster:
    component = Component.infrastructure

    def __init__(self, clusters: TargetClusters) -> None:
        self._clusters = clusters

    async def observe(self, ctx: DriverContext) -> Observation:
        problem = await self._problem(ctx)
        state = {"provider": Provider.existing.value, "cluster": _secret_of(ctx), "reachable": problem is None}
        return Observation(state=state, healthy=problem is None, detail=problem[0] if problem else None)

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        """Nothing can be created in a cluster we do not own: name what keeps it out of reach."""
        problem = await self._problem(ctx)
        if problem is not None:
            raise RetryableError(problem[0], reason=problem[1], delay=30)

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        return None  # the cluster stays; the workload driver removes what it put there

    async def _problem(self, ctx: DriverContext) -> tuple[str, str] | None:
        return await cluster_problem(self._clusters, ctx)


async def cluster_problem(clusters: TargetClusters, ctx: DriverContext) -> tuple[str, str] | None:
    """(message, reason) when the Project's cluster cannot be used: unreachable, or not letting us in."""
    try:
        target = await clusters.of(ctx)
    except CodebError as exc:
        return exc.message, exc.reason
    try:
        # Reaching the API and being let into the Project's namespace: a 404 there is fine.
        await target.kube.request("GET", "/version")
        await target.kube.request("GET", f"/api/v1/namespaces/{ctx.key.namespace}")
    except CodebError as exc:
        reason = "ClusterUnreachable" if isinstance(exc, RetryableError) else "ClusterRefused"
        return exc.message, reason
    return None


def _secret_of(ctx: DriverContext) -> str | None:
    cluster = ctx.servers.cluster if ctx.servers is not None else None
    return cluster.kubeconfig_secret_ref if cluster is not None else None
