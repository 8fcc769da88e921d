"""The pure core: what the world should look like, and how to get there.

`desired_state` turns a validated spec plus its allocations into one plain-data
state per component. `plan` compares that with what the drivers observed and
returns the ordered actions that converge them; `plan_deletion` does the same in
reverse. Neither does I/O, so both are tested with plain data, including the
half-finished worlds a crash leaves behind.

Ordering follows dependencies: hosts before data services, data services before
the workload (it needs their credentials), the route only once the workload is
healthy, backups once there is data to back up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from controller.loop import autoscaling, naming

# State (plain data, what every component's desired and observed state is) is defined beside the workload's,
# which this module builds on, and is this module's to export.
from controller.loop.workload_states import State as State
from controller.loop.workload_states import workload_state
from schemas.project import Allocations, ProjectSpec, Provider, Runtime, Servers


class Component(StrEnum):
    build = "Build"  # source.git's image: followed beside the plan (`controller.loop.build_step`), never planned
    infrastructure = "Infrastructure"
    database = "Database"
    cache = "Cache"
    storage = "Storage"
    workload = "Workload"
    route = "Route"
    dns = "Dns"
    alerts = "Alerts"
    backup = "Backup"

    @property
    def condition(self) -> str:
        return f"{self.value}Ready"


# Every planned component (not the build, which is followed beside the plan).
DEPENDS_ON: dict[Component, tuple[Component, ...]] = {
    Component.infrastructure: (),
    Component.database: (Component.infrastructure,),
    Component.cache: (Component.infrastructure,),
    Component.storage: (Component.infrastructure,),
    Component.workload: (Component.infrastructure, Component.database, Component.cache, Component.storage),
    Component.route: (Component.workload,),
    # A domain the route was refused (another Project's, a public suffix) gets no record either.
    Component.dns: (Component.route,),
    Component.alerts: (Component.route,),
    Component.backup: (Component.database, Component.storage),
}
# Declaration order above is a valid topological order.
ORDER: tuple[Component, ...] = tuple(DEPENDS_ON)
# Components holding user data: deletionPolicy decides whether they are destroyed.
DATA_COMPONENTS = frozenset({Component.database, Component.cache, Component.storage, Component.backup})
# What deletionPolicy Retain keeps when the Project goes: the data, and the hosts made for it.
RETAINED_ON_DELETE = DATA_COMPONENTS | {Component.infrastructure}
# Desired only where the drivers have one: DNS is written only by a Platform that declares a server, alert
# rules only in a cluster that serves PrometheusRules.
OPTIONAL = frozenset({Component.dns, Component.alerts})
# Absent from the desired state only while the Project is suspended: then stopped, never deleted.
STOPPED_WHEN_SUSPENDED = frozenset({Component.workload})


class Verb(StrEnum):
    create = "create"
    update = "update"
    delete = "delete"
    release = "release"  # stop managing, keep the data (deletionPolicy: Retain)
    stop = "stop"  # stop running, keep what it holds (spec.suspended)


@dataclass(frozen=True)
class Action:
    component: Component
    verb: Verb
    reason: str
    desired: State | None = None
    # Components that must be observed healthy before this action may run.
    requires_healthy: tuple[Component, ...] = ()


@dataclass(frozen=True)
class Observation:
    """What a driver saw: the component's state (None: absent), its health, or why it could not look.

    ``unsupported`` says that no real driver exists for this component on this
    provider / runtime: nothing was observed, so it can never count as ready.
    ``outputs`` carry what dependents need (addresses, endpoints) one way: from what a
    driver observed, through `desired_state`, to the dependents' actions.
    """

    state: State | None = None
    healthy: bool = True
    error: str | None = None
    error_reason: str | None = None  # the error's own reason (InvalidRegion, CredentialsMissing…)
    unsupported: str | None = None
    # Why it is unhealthy, in words a person can act on (health output, exit code).
    detail: str | None = None
    # The condition's reason when unhealthy (LastBackupFailed); None: Unhealthy.
    reason: str | None = None
    # What later components read from this one (the workload's endpoints), never compared.
    outputs: State = field(default_factory=dict)
    # What is left of an absent component (a role whose database was dropped by a delete cut short):
    # nothing to compare, but deletion still has work to do.
    leftovers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    # Components that cannot be planned now, with the reason (e.g. a dependency is unobservable).
    blocked: dict[Component, str] = field(default_factory=dict)
    # Components with no real driver (NotImplemented), with what is missing.
    unsupported: dict[Component, str] = field(default_factory=dict)
    # Blocked only behind unsupported components: nothing will change by waiting, so no retry.
    parked: frozenset[Component] = frozenset()
    # Components the reconciler holds back, with (reason, message): e.g. a domain another Project routes.
    refused: dict[Component, tuple[str, str]] = field(default_factory=dict)

    @property
    def progressing(self) -> bool:
        """Something is blocked that may clear by itself (worth looking again soon)."""
        return any(c not in self.parked for c in self.blocked)


def desired_state(
    spec: ProjectSpec, allocations: Allocations, outputs: Mapping[Component, State] | None = None
) -> dict[Component, State]:
    """One plain-data state per enabled component.

    ``outputs`` are what drivers observed components producing (`Observation.outputs`):
    the route sends traffic to the endpoints the workload was seen serving, never to
    addresses predicted from the spec.
    """
    outputs = outputs or {}
    features = spec.features
    states: dict[Component, State] = {Component.infrastructure: infrastructure_state(spec.servers)}
    if features.database is not None and features.database.enabled:
        states[Component.database] = {
            "name": allocations.database,
            "role": allocations.database_role,
            "version": features.database.version,
            "extensions": sorted(features.database.extensions),
            "connectionLimit": features.database.connection_limit,
            # Isolation and a working login are part of the desired state, so losing
            # either (a GRANT by hand, a password changed) is drift the driver repairs.
            "publicConnectRevoked": True,
            "loginWorks": True,
        }
    if features.redis is not None and features.redis.enabled:
        states[Component.cache] = {
            "user": allocations.redis_user,
            "prefix": allocations.redis_prefix,
            "aclMatches": True,
            "loginWorks": True,
        }
    if features.storage is not None and features.storage.enabled:
        states[Component.storage] = {
            "bucket": allocations.bucket,
            "versioning": features.storage.versioning,
            "expireAfterDays": features.storage.expire_after_days,
            "policyMatches": True,
            "loginWorks": True,
        }
    if not spec.suspended:
        states[Component.workload] = workload_state(spec, allocations, outputs.get(Component.infrastructure, {}))
    served = naming.served_domains(spec)
    # Suspended: nothing runs, and every domain answers the maintenance page instead.
    upstreams = [] if spec.suspended else list(outputs.get(Component.workload, {}).get("endpoints", []))
    states[Component.route] = {
        "domains": served,
        "upstreams": upstreams,
        "slots": upstream_slots(spec, len(upstreams)),
        "maintenance": spec.suspended,
        "redirects": naming.redirects(spec),  # www.<domain> -> <domain>
        "routeMatches": True,  # headers, compression, TLS: the whole rendered route
    }
    if served:
        # The records the Project's marks are on, each pointing where the Platform's Caddy answers.
        states[Component.dns] = {"names": sorted(served), "recordsMatch": True}
    if served and not spec.suspended:  # stopped on purpose: its maintenance page's 503s are no alarm
        alerts = spec.monitoring.alerts
        states[Component.alerts] = {"hosts": sorted(served), "errorRatePercent": alerts.error_rate_percent,
                                    "latencyP95Ms": alerts.latency_p95_ms, "forSeconds": alerts.for_seconds,
                                    "rulesMatch": True}  # fmt: skip
    if spec.backup.enabled:
        # Nothing due, nothing unclaimed or cut short, nothing past retention, and the store in place: the
        # schedule itself is read from the spec by the driver (`controller.loop.backups`).
        states[Component.backup] = dict(BACKUP_CONVERGED)
    return states


# Divisible by every number of hosts from 1 to 6, so up to six share a route's slots evenly; more share
# them within one slot in sixty (seven hosts: 9 or 8 of 60).
MOST_SLOTS = 60


def upstream_slots(spec: ProjectSpec, count: int) -> int:
    """How many upstreams the route lists for ``count`` endpoints.

    Where hosts autoscale, a fixed number, each slot cycling through the endpoints: scaling then changes
    only the address in each slot (the Platform's upstream files), never Caddy's config, whose every
    reload resets a few connections (`controller.drivers.caddy`). Elsewhere one slot per endpoint.
    """
    if count == 0 or not autoscaling.autoscaled(spec):
        return count
    most = spec.servers.max or count
    return max(count, min(math.lcm(*range(1, most + 1)), MOST_SLOTS))


BACKUP_CONVERGED: State = {"store": True, "due": [], "pending": [], "stale": [], "expired": [], "restores": []}


def infrastructure_state(servers: Servers) -> State:
    """The hosts a spec asks for; for a cloud, ``converged`` says Terraform has made them so."""
    if servers.provider is Provider.local:
        # The operator's own machine: nothing to size, firewall or balance.
        return {"provider": Provider.local.value}
    if servers.provider is Provider.existing and servers.runtime is Runtime.kubernetes:
        # A cluster someone else made (None: the operator's own): the operator only checks it gets in.
        cluster = servers.cluster.kubeconfig_secret_ref if servers.cluster else None
        return {"provider": Provider.existing.value, "cluster": cluster, "reachable": True}
    if servers.provider is Provider.existing:
        # Machines someone else made: the operator only checks it can use them.
        return {"provider": Provider.existing.value, "hosts": list(servers.hosts), "usable": True}
    if servers.vke is not None:
        # A VKE cluster Terraform makes: its node pool, sized by plan; its nodes run the workload's Pods.
        return {"provider": servers.provider.value, "region": servers.region, "plan": servers.plan,
                "version": servers.vke.version, "nodes": servers.vke.nodes, "converged": True}  # fmt: skip
    return {
        "provider": servers.provider.value,
        "region": servers.region,
        "plan": servers.plan,
        "count": host_count(servers),
        "max": servers.max,
        "hosts": list(servers.hosts),
        "firewall": {"ports": sorted(servers.firewall.ports), "allowedCidrs": sorted(servers.firewall.allowed_cidrs)},
        "loadBalancer": servers.load_balancer.model_dump(mode="json", by_alias=True),
        "converged": True,
    }


def host_count(servers: Servers) -> int:
    """Hosts to make: the fixed count, or the fewest when autoscaling."""
    return servers.count if servers.count is not None else (servers.min or 1)


def _changed_keys(desired: State, observed: State) -> list[str]:
    return sorted(k for k in desired.keys() | observed.keys() if desired.get(k) != observed.get(k))


def plan(
    desired: Mapping[Component, State],
    observed: Mapping[Component, Observation],
    retain_data: bool = True,
    refused: Mapping[Component, tuple[str, str]] | None = None,
) -> Plan:
    """Ordered actions converging ``observed`` to ``desired``.

    A ``refused`` component is left exactly as it is (not created, changed or removed).
    """
    refused = dict(refused or {})
    actions: list[Action] = []
    blocked: dict[Component, str] = {}
    unsupported: dict[Component, str] = {}
    parked: set[Component] = set()
    for component in ORDER:
        if component not in desired or component in refused:
            continue
        seen = observed.get(component, Observation())
        if seen.unsupported is not None:
            unsupported[component] = seen.unsupported
            continue
        stuck = [d for d in DEPENDS_ON[component] if d in blocked or d in unsupported or d in refused]
        if seen.error is not None:
            blocked[component] = seen.error
            continue
        if stuck:
            blocked[component] = f"waiting for {', '.join(stuck)}"
            if all(d in unsupported or d in parked or d in refused for d in stuck):
                parked.add(component)
                blocked[component] += " (refused)" if any(d in refused for d in stuck) else " (no driver yet)"
            continue
        action = _converge(component, desired[component], seen, Component.workload in desired)
        if action is not None:
            actions.append(action)
    actions = _shrink_last(actions, desired, observed)
    # Components no longer wanted go last, once their dependents have been updated
    # to stop using them, and dependents before what they depend on.
    for component in reversed(ORDER):
        leftover = observed.get(component)
        if component not in desired and component not in refused and leftover is not None and leftover.state:
            actions.append(_leftover(component, retain_data))
    return Plan(actions, blocked, unsupported, frozenset(parked), refused)


def _leftover(component: Component, retain_data: bool) -> Action:
    if component in STOPPED_WHEN_SUSPENDED:
        return Action(component, Verb.stop, "suspended")
    verb = Verb.release if retain_data and component in DATA_COMPONENTS else Verb.delete
    return Action(component, verb, "no longer requested")


def _shrink_last(
    actions: list[Action], desired: Mapping[Component, State], observed: Mapping[Component, Observation]
) -> list[Action]:
    """Fewer hosts: the route stops sending to the departing ones, then the workload leaves them (after
    the requests in flight), then the infrastructure takes them away.

    So the route's update goes before the workload's, and the infrastructure's after every other
    create and update, only once the workload is seen healthy (on the hosts that stay).
    """
    seen = observed.get(Component.infrastructure, Observation()).state or {}
    want = desired.get(Component.infrastructure, {})
    if not isinstance(seen.get("count"), int) or not isinstance(want.get("count"), int):
        return actions
    if seen["count"] <= want["count"]:
        return actions
    shrink = [a for a in actions if a.component is Component.infrastructure]
    route = [a for a in actions if a.component is Component.route and a.verb is Verb.update]
    rest = [a for a in actions if a.component is not Component.infrastructure and a not in route]
    first = next((i for i, a in enumerate(rest) if a.component is Component.workload), len(rest))
    rest[first:first] = route  # the route drops the departing hosts before the workload leaves them
    gate = (Component.workload,) if Component.workload in desired else ()
    return rest + [replace(a, requires_healthy=gate, reason=f"{a.reason}; after the workload left") for a in shrink]


def _converge(component: Component, want: State, seen: Observation, workload_wanted: bool) -> Action | None:
    # The route sends traffic only to a healthy workload; suspended, it sends none, and waits for nothing.
    gate = (Component.workload,) if component is Component.route and workload_wanted else ()
    if seen.state is None:
        return Action(component, Verb.create, "missing", want, gate)
    if "colours" in want:
        colours = _colour_changes(want["colours"], seen.state.get("colours", {}))
        return Action(component, Verb.update, "; ".join(colours), want, gate) if colours else None
    changed = _changed_keys(want, seen.state)
    if changed:
        return Action(component, Verb.update, "differs in " + ", ".join(changed), want, gate)
    return None


def _colour_changes(want: State, seen: State) -> list[str]:
    """What a blue-green workload's update does, colour by colour (`controller.loop.rollouts.bluegreen`)."""
    changes = []
    for colour in sorted(want.keys() | seen.keys()):
        if colour not in want:
            changes.append(f"stop {colour}")
        elif colour not in seen:
            changes.append(f"start {colour}")
        elif changed := _changed_keys(want[colour], seen[colour]):
            changes.append(f"restart {colour}: differs in {', '.join(changed)}")
    return changes


def plan_deletion(observed: Mapping[Component, Observation], retain_data: bool) -> Plan:
    """Tear down in reverse dependency order; data survives unless ``retain_data`` is False."""
    actions = []
    for component in reversed(ORDER):
        seen = observed.get(component)
        if seen is None or (seen.state is None and seen.error is None and not seen.leftovers):
            continue
        verb = Verb.release if retain_data and component in RETAINED_ON_DELETE else Verb.delete
        actions.append(Action(component, verb, "project deleted"))
    return Plan(actions)
