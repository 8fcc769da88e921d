"""How many hosts a Project with ``servers.min`` / ``max`` runs, from the load on it (pure).

The figure is the requests per second to the Project's domains over the last minute, as the
Platform's Caddy counts them and the operator's Prometheus reads them (`controller.drivers.load`).
Hosts follow it between min and max at ``servers.autoscale.requestsPerHost`` each: out after the
scale-out cool-down, in after the (longer) scale-in one, both counted from the last change, so a
burst does not make hosts come and go. The number is kept in ``status.autoscaling`` (the API
server is the memory: a restart or another replica decides from the same record), and the
reconciler hands it on as the spec's host count: the same Terraform run, and the same drain
before a host goes, as a count changed by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from schemas.common import Provider, Runtime
from schemas.project import ProjectSpec
from schemas.status import AutoscalingStatus

# Providers whose hosts the operator makes (and so can add and remove).
MADE = (Provider.vultr, Provider.lightsail)


class LoadSource(Protocol):
    """Requests per second to these domains over the last minute; None when it cannot say."""

    async def requests_per_second(self, domains: list[str]) -> float | None: ...


@dataclass(frozen=True)
class Scaled:
    status: AutoscalingStatus
    event: tuple[str, str] | None = None  # (reason, message) when the number changed


def autoscaled(spec: ProjectSpec) -> bool:
    servers = spec.servers
    # On runtime kubernetes min/max are the Pods' (the HorizontalPodAutoscaler's), never hosts.
    made_hosts = servers.provider in MADE and servers.runtime is Runtime.quadlet
    return made_hosts and servers.min is not None and servers.max is not None


def decide(spec: ProjectSpec, recorded: AutoscalingStatus | None, load: float | None, now: datetime) -> Scaled:
    """The hosts to run now: the recorded number kept within min..max, moved toward what ``load`` asks for
    once its cool-down has passed. ``load`` None (no Prometheus, or no answer): the number stays."""
    servers, policy = spec.servers, spec.servers.autoscale
    low, high = servers.min or 1, servers.max or servers.min or 1
    current = min(max(recorded.hosts if recorded else low, low), high)
    since = recorded.decided_at if recorded else None
    if load is None:
        why = "no load figure (is CODEB_PROMETHEUS_URL set and answering?): the number of hosts stays"
        return Scaled(AutoscalingStatus(hosts=current, decided_at=since, requests_per_second=None, message=why))
    load = round(load, 1)  # as shown: a figure that moves in its noise is not a status write every pass
    wanted = min(max(math.ceil(load / policy.requests_per_host), low), high)
    figure = f"{load:.1f} requests/s over {current} host{'s' if current != 1 else ''}"
    target = f"{policy.requests_per_host:g} per host (servers.autoscale.requestsPerHost)"
    waited = (now - since).total_seconds() if since else math.inf
    if wanted > current and waited >= policy.scale_out_cooldown_seconds:
        message = f"{current} -> {wanted} hosts: {figure}, more than {target}"
        return Scaled(AutoscalingStatus(hosts=wanted, decided_at=now, requests_per_second=load, message=message),
                      ("ScaledOut", message))  # fmt: skip
    if wanted < current and waited >= policy.scale_in_cooldown_seconds:
        message = f"{current} -> {wanted} hosts: {figure}, less than {target}"
        return Scaled(AutoscalingStatus(hosts=wanted, decided_at=now, requests_per_second=load, message=message),
                      ("ScaledIn", message))  # fmt: skip
    if wanted != current:
        why = f"{figure} asks for {wanted}; waiting out the cool-down since the last change"
    else:
        why = f"{figure}: {current} host{'s' if current != 1 else ''} at {target}"
    return Scaled(AutoscalingStatus(hosts=current, decided_at=since, requests_per_second=load, message=why))


def with_hosts(spec: ProjectSpec, hosts: int) -> ProjectSpec:
    """The spec as the pass carries it out: the decided number as its host count (min/max stay its bounds)."""
    return spec.model_copy(update={"servers": spec.servers.model_copy(update={"count": hosts})})
