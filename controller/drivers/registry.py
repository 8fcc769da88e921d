"""Which driver serves a component, keyed by component × provider / runtime.

The running operator gets real drivers only. Where none exists yet, the component
gets a `NotImplementedDriver`, which observes nothing and so can never be reported
ready: its condition says ``NotImplemented`` and names what is missing. In-memory
stand-ins live under ``tests/`` and are passed in by tests and the control-loop
benchmark, never by ``codeb operator``.

Data services and the route come from the Platform the Project names
(`controller.drivers.platforms`); hosts from the provider; the workload from the runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from controller.claims.quotas import QuotaCheck
from controller.clients.kept_secrets import KeptSecrets
from controller.drivers.platforms import SERVICES
from controller.errors import PermanentError
from controller.loop.interface import Driver, DriverContext, Drivers, Placement
from controller.loop.naming import ProjectKey
from controller.loop.planner import ORDER, Component, Observation, State
from schemas.platform import NamespaceQuotas
from schemas.project import Provider, Runtime


@dataclass
class NotImplementedDriver:
    """Stands in, honestly, for a driver that does not exist yet."""

    component: Component
    missing: str

    async def observe(self, ctx: DriverContext) -> Observation:
        return Observation(unsupported=self.missing)

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        # The planner never acts on an unsupported component; reaching here is a bug.
        raise PermanentError(self.missing, reason="NotImplemented")

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        return None  # nothing was ever made


class LocalMachine:
    """Infrastructure for provider ``local``: the operator's own machine, which exists.

    There is nothing to create, size or firewall, so the only state is the provider.
    """

    component = Component.infrastructure

    async def observe(self, ctx: DriverContext) -> Observation:
        return Observation(state={"provider": Provider.local.value})

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        return None

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        return None


class PlatformServices(Protocol):
    """Drivers for the shared services of the named Platform (`controller.drivers.platforms`)."""

    async def __call__(self, name: str, namespace: str | None = None) -> Drivers: ...

    async def admit(self, name: str, key: ProjectKey) -> None: ...

    async def domain(self, name: str) -> str | None: ...

    async def sweep(self) -> int: ...


class AlertRules(Driver, Protocol):
    """The alerts driver (`controller.drivers.alerts`): offered only where its objects can exist."""

    async def available(self) -> bool: ...


# Infrastructure by provider, or by provider and runtime where the runtime decides what
# there is to find (existing hosts for quadlet, an existing cluster for kubernetes).
InfrastructureDrivers = Mapping[Provider | tuple[Provider, Runtime], Driver]


@dataclass
class DriverRegistry:
    """The driver for every component of a spec; missing entries are NotImplemented."""

    platforms: PlatformServices | None = None
    infrastructure: InfrastructureDrivers = field(default_factory=lambda: {Provider.local: LocalMachine()})
    workload: Mapping[Runtime, Driver] = field(default_factory=dict)
    # What one namespace may take without a Platform (the operator's CODEB_QUOTA_*), and who counts it.
    unplaced_quotas: tuple[NamespaceQuotas, QuotaCheck] | None = None
    # The copies of the Secrets teardown needs; the operator forgets a Project's once it is gone.
    kept: KeptSecrets | None = None
    # Each Project's alert rules as a PrometheusRule, where the cluster serves them.
    alerts: AlertRules | None = None

    async def __call__(self, placement: Placement) -> Drivers:
        provider, runtime = placement.provider, placement.runtime
        drivers: dict[Component, Driver] = {
            Component.infrastructure: self.infrastructure.get((provider, runtime))
            or self.infrastructure.get(provider)
            or NotImplementedDriver(Component.infrastructure, _missing_hosts(provider)),
            Component.workload: self.workload.get(runtime)
            or NotImplementedDriver(Component.workload, _missing_runtime(runtime)),
        }
        drivers.update(await self._shared(placement.platform, placement.namespace))
        if self.alerts is not None and await self.alerts.available():
            drivers[Component.alerts] = self.alerts
        return {component: drivers[component] for component in ORDER if component in drivers}

    async def sweep(self) -> int:
        """Housekeeping outside any Project's pass: deleted Projects' backups past their retention."""
        return await self.platforms.sweep() if self.platforms is not None else 0

    async def admit(self, placement: Placement, key: ProjectKey) -> None:
        if placement.platform is not None and self.platforms is not None:
            await self.platforms.admit(placement.platform, key)
        elif placement.platform is None and self.unplaced_quotas is not None:
            quotas, check = self.unplaced_quotas
            await check.check(quotas, None, key)

    async def platform_domain(self, placement: Placement) -> str | None:
        if placement.platform is None or self.platforms is None:
            return None
        return await self.platforms.domain(placement.platform)

    async def _shared(self, name: str | None, namespace: str | None) -> Drivers:
        if name is None or self.platforms is None:
            return {c: NotImplementedDriver(c, _no_platform(s.label)) for c, s in SERVICES.items()}
        return await self.platforms(name, namespace)


def _missing_hosts(provider: Provider) -> str:
    if provider is Provider.existing:
        return "provider existing: this registry has no SSH driver for hosts"
    return f"provider {provider.value}: hosts are not provisioned yet (no Terraform driver)"


def _missing_runtime(runtime: Runtime) -> str:
    if runtime is Runtime.local:
        return (
            "runtime local is off in this operator: it runs source.command on the operator's own machine; "
            "set CODEB_LOCAL_RUNTIME=1 where every Project author is trusted (codeb up does)"
        )
    return f"runtime {runtime.value} has no workload driver yet"


def _no_platform(service: str) -> str:
    return f"no built-in {service}: name a Platform that declares it in spec.servers.platform"
