"""Wiring: which drivers the operator runs with, built from its configuration, and the kopf run.

The only place that picks concrete drivers, clients and stores for the loop's interfaces;
`codeb operator`, `codeb diff` / `logs` and the benches all start from here.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from controller.claims.quotas import QuotaCheck
from controller.clients.kube import api_client_from_environment
from controller.jobs.terraform import TerraformSettings
from controller.operator.config import OperatorConfig
from schemas.platform import NamespaceQuotas
from schemas.project import Provider, Runtime

if TYPE_CHECKING:
    from controller.clients.kube import KubeClient
    from controller.clients.ssh import SshPool
    from controller.drivers.clusters import TargetClusters
    from controller.drivers.registry import InfrastructureDrivers
    from controller.drivers.workloads import SecretReader
    from controller.loop.interface import Driver
    from controller.loop.reconciler import DriverSource


def operator_drivers(kube: KubeClient, config: OperatorConfig) -> DriverSource:
    """The drivers the operator runs with, and `codeb diff` and `logs` look with."""
    from controller.clients.hostkeys import HostKeys
    from controller.clients.kept_secrets import KeptSecrets
    from controller.clients.ssh import SshPool
    from controller.drivers.alerts import PrometheusRules
    from controller.drivers.backups import Runs
    from controller.drivers.clusters import TargetClusters
    from controller.drivers.platforms import PlatformDrivers
    from controller.drivers.registry import DriverRegistry
    from controller.jobs.terraform_state import StateStore

    runs = Runs.on(kube, config.backup_heartbeat_seconds, config.backup_concurrency, config.side_instances_dir)
    platforms = PlatformDrivers(kube, config.service_timeout_seconds, config.service_concurrency, runs)
    internal = config.allow_internal_targets
    host_keys = HostKeys(kube, config.claims_namespace)
    ssh = SshPool(allow_internal=internal, host_keys=host_keys)
    kept = KeptSecrets(kube, config.claims_namespace)  # what teardown needs, past its namespace's deletion
    states = StateStore(kube, config.claims_namespace)  # where a VKE cluster's kubeconfig is
    clusters = TargetClusters(kube, allow_internal=internal, read_secret=kept.read, states=states)
    unplaced = NamespaceQuotas(projects=config.quota_projects, domains=config.quota_domains)
    return DriverRegistry(
        platforms=platforms,
        infrastructure=infrastructure_drivers(kube, ssh, clusters, config, kept.read),
        workload=workload_drivers(kube, config, ssh, clusters, kept.read),
        unplaced_quotas=(unplaced, QuotaCheck(kube)),
        kept=kept,
        alerts=PrometheusRules(kube),
    )


def infrastructure_drivers(
    kube: KubeClient, ssh: SshPool, clusters: TargetClusters, config: OperatorConfig, kept: SecretReader
) -> InfrastructureDrivers:
    """Where this operator can run things: its own machine, existing hosts over SSH, existing clusters,
    and hosts it makes with Terraform. ``kept`` reads the Secrets teardown needs (`KeptSecrets`)."""
    from controller.drivers.clusters import ExistingCluster
    from controller.drivers.hosts import ExistingHosts
    from controller.drivers.registry import LocalMachine
    from controller.drivers.terraform import TerraformHosts
    from controller.drivers.vke import TerraformCluster
    from controller.jobs.terraform import TerraformRunner

    hosts = ExistingHosts(kept, ssh)
    runner = TerraformRunner(terraform_settings(config))
    return {
        Provider.local: LocalMachine(),
        Provider.existing: hosts,
        (Provider.existing, Runtime.kubernetes): ExistingCluster(clusters),
        Provider.vultr: TerraformHosts(Provider.vultr, runner, kept, kube, hosts),
        Provider.lightsail: TerraformHosts(Provider.lightsail, runner, kept, kube, hosts),
        (Provider.vultr, Runtime.kubernetes): TerraformCluster(runner, kept, kube, clusters),
    }


def workload_drivers(
    kube: KubeClient, config: OperatorConfig, ssh: SshPool, clusters: TargetClusters, kept: SecretReader | None = None
) -> dict[Runtime, Driver]:
    """The runtimes this operator may run workloads on; local only where it was switched on."""
    from controller.clients.registry_issuer import RegistryIssuer
    from controller.drivers.kubernetes import KubernetesWorkload
    from controller.drivers.processes import LocalProcesses
    from controller.drivers.quadlet import QuadletUnits
    from controller.drivers.registry_pulls import RegistryPulls

    # The Project's credential for its Platform's registry.
    pulls = RegistryPulls(kube, RegistryIssuer(kube, config.claims_namespace))
    drivers: dict[Runtime, Driver] = {
        Runtime.kubernetes: KubernetesWorkload(clusters, pulls, ssh, kube, read_secret=kept),
        Runtime.quadlet: QuadletUnits(kube.read_secret, ssh, read_login=kept, pulls=pulls),
    }
    if config.local_runtime:
        drivers[Runtime.local] = LocalProcesses(kube.read_secret, config.local_root, config.state_dir,
                                                namespaces=config.local_runtime_namespaces)  # fmt: skip
    return drivers


def run_operator(make_drivers: Callable[[KubeClient, OperatorConfig], DriverSource]) -> int:
    """Run the operator against the current kubeconfig with the drivers ``make_drivers`` picks."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import kopf

    from controller.claims.store import ClaimStore, local_port_free
    from controller.clients.kube import KubeClient
    from controller.clients.registry_issuer import RegistryIssuer
    from controller.drivers.load import PrometheusLoad
    from controller.loop.reconciler import Reconciler
    from controller.operator.config import ConfigError, load_config
    from controller.operator.handlers import Runtime, build_registry
    from controller.operator.inbound import Inbound
    from controller.operator.logs import configure_logging
    from controller.operator.metrics import Metrics
    from controller.operator.notify import Notifier
    from controller.operator.pushes import Pushes
    from controller.operator.registry_tokens import RegistryTokens
    from controller.operator.retries import Backoff, Retries
    from controller.operator.runs import Housekeeping

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format)
    kopf.configure(
        verbose=os.environ.get("CODEB_DEBUG") == "1",
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    kube = KubeClient(api_client_from_environment(config.max_workers), ThreadPoolExecutor(config.max_workers),
                      config.api_timeout_seconds)  # fmt: skip
    claims = ClaimStore(kube, config.claims_namespace, config.reserved_ports, local_port_free)
    retries = Retries(Backoff(cap=config.retry_max_seconds))
    drivers = make_drivers(kube, config)
    metrics = Metrics()
    notifier = Notifier(kube, config.allow_internal_targets, counted=metrics.notifications)
    load = PrometheusLoad(config.prometheus_url) if config.prometheus_url else None
    reconciler = Reconciler(drivers, claims, kube.namespace_terminating, load=load)
    runtime = Runtime(config, reconciler, metrics, kube, retries,
                      housekeeping=Housekeeping(getattr(drivers, "sweep", None)),
                      kept=getattr(drivers, "kept", None), notifier=notifier,
                      inbound=Inbound(kube, notifier, config.inbound_token_file,
                                      Pushes(kube, metrics.push_deliveries),
                                      RegistryTokens(kube, RegistryIssuer(kube, config.claims_namespace))))  # fmt: skip

    async def operate() -> None:
        if config.peering:
            await ensure_peering(kube, config.peering)
        await kopf.operator(
            registry=build_registry(runtime),
            clusterwide=True,
            standalone=config.peering is None,
            peering_name=config.peering,
        )

    asyncio.run(operate())
    return 0


async def ensure_peering(kube: KubeClient, name: str) -> None:
    """The cluster-wide peering object replicas meet in, made by whichever starts first.

    kopf only patches it: with peering mandatory and no object, every replica would stand by for
    ever. Made here, one Deployment runs with one replica or two, nothing else to apply.
    """
    from controller.clients.kube import Conflict, NotFound

    path = "/apis/kopf.dev/v1/clusterkopfpeerings"
    if await kube.request("GET", f"{path}/{name}") is not None:
        return
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    try:
        with contextlib.suppress(Conflict):  # another replica made it first
            await kube.request("POST", path, body)
    except NotFound:
        raise SystemExit(f"CODEB_PEERING={name}: kopf's peering CRD is not installed (manifests/crd/kopf-peering.yaml)"
                         ) from None  # fmt: skip


def terraform_settings(config: OperatorConfig) -> TerraformSettings:
    """From the operator's configuration; state goes to its own namespace, through its own kubeconfig."""
    kubeconfig = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
    default = Path.home() / ".kube" / "config"
    if kubeconfig is None and "KUBERNETES_SERVICE_HOST" not in os.environ and default.is_file():
        kubeconfig = str(default)
    return TerraformSettings(
        binary=config.terraform_binary,
        work_root=config.terraform_dir,
        modules=config.terraform_modules,
        state_namespace=config.claims_namespace,
        kubeconfig=kubeconfig,
        plugin_dir=config.terraform_plugins,
        concurrency=config.terraform_concurrency,
        run_timeout=config.terraform_timeout_seconds,
        wait=config.terraform_wait_seconds,
        plan_interval=config.terraform_plan_interval_seconds,
    )
