"""Which ledger each value a Project asks for goes to, and in what order it is claimed (pure).

Ports are unique per machine a Project shares with others (`port_scopes`); names are split
over `NAME_SHARDS` ledgers by a hash (`name_ledger`). `plan_claims` turns a spec and what
the Project holds now into a `ClaimPlan`; `controller.claims.store` carries it out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from controller.claims.ledger import (
    Holder,
    NameRequest,
    NameSetRequest,
    NumberRequest,
    PortPairRequest,
    Request,
    allocations_for,
    decode_domain,
    encode_domain,
    port_candidates,
)
from controller.loop import naming
from controller.loop.naming import ProjectKey
from controller.loop.rollouts.bluegreen import blue_green
from schemas.project import PORT_RANGES, DeletionPolicy, ProjectSpec, Provider, Runtime

# Each name pool is split over this many ledgers (ConfigMaps), so no one object has to hold
# every Project's entries: a ConfigMap holds 1 MiB, about 12,000 entries of ~80 bytes.
NAME_SHARDS = 16


def ledger_name(pool: str, shard: str) -> str:
    return f"ledger-{pool}-{shard}"


def name_ledger(pool: str, value: str) -> str:
    """The ledger a name belongs in: by a hash of the name, for domains of its parent.

    Every domain a route could confuse with another (the same name, or a wildcard and a
    name one label below it) has the same parent, so one ledger decides each overlap.
    """
    key = decode_domain(value).partition(".")[2] if pool == "domain" else value
    return ledger_name(pool, f"{int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % NAME_SHARDS:02d}")


def port_ledger(scope: str) -> str:
    """One port ledger per machine the Project shares: ``ledger-port-local``, ``ledger-port-h<hash of host>``."""
    return ledger_name("port", scope if scope == LOCAL_SCOPE else "h" + hashlib.sha256(scope.encode()).hexdigest()[:16])


# The port scope of the operator's own machine (provider local: processes and its Caddy).
LOCAL_SCOPE = "local"


def port_scopes(spec: ProjectSpec) -> tuple[str, ...]:
    """Where no other Project may have this one's ports: the machines it shares with others.

    Provider local runs on the operator's machine, so its ports are unique there; quadlet on
    ``existing`` hosts shares each host with whoever else deploys there, so a port is unique
    per host (and the same on each of the Project's hosts, the way its units are written).
    Hosts Terraform makes for one Project and a Kubernetes Service of its own share their
    port with nobody: no ledger, so the ranges bound one machine, never the fleet.
    """
    servers = spec.servers
    if servers.provider is Provider.local:
        return (LOCAL_SCOPE,)
    if servers.provider is Provider.existing and servers.runtime is Runtime.quadlet:
        return tuple(sorted({f"host {host.lower()}" for host in servers.hosts}))
    return ()


def port_request(
    key: ProjectKey,
    spec: ProjectSpec,
    reserved_ports: Iterable[int] = (),
    current: tuple[int | None, int | None] = (None, None),
    port_free: Callable[[int], bool] | None = None,
    elsewhere: Callable[[int], Holder | None] | None = None,
) -> Request:
    """The port (and, blue-green, the other colour's) this spec asks of its first port scope."""
    low, high = PORT_RANGES[spec.environment.type]
    candidates = port_candidates(spec, reserved_ports)
    port = NumberRequest(Holder(key.uid, str(key)), "port", candidates, spec.resources.port, current[0],
                         f"{low}-{high}", usable=port_free, elsewhere=elsewhere)  # fmt: skip
    return PortPairRequest(port, current[1]) if blue_green(spec) else port


@dataclass(frozen=True)
class ClaimPlan:
    """What one Project asks of which ledger, in the order `ClaimStore.ensure` writes it.

    First every claim (``claims``: one request per ledger, nothing released yet), then the
    Project's port on its other hosts (``more_ports``, the number the first decided), and
    only once everything is granted, what it no longer needs is released (`keep`).
    """

    claims: dict[str, Request]
    port_ledger: str | None  # the ledger of the first port scope (None: ports shared with nobody)
    more_ports: dict[str, str]  # ledger -> scope, of the other hosts
    names_kept: dict[str, frozenset[str]]  # name ledger -> what this Project keeps there

    def keep(self, held: Mapping[str, frozenset[str]], ports: tuple[int, ...]) -> dict[str, frozenset[str]]:
        """Each ledger holding something of this Project -> what stays there (the rest is released)."""
        port_ledgers = {self.port_ledger, *self.more_ports} - {None}
        numbers = frozenset(str(n) for n in ports)
        kept = {name: numbers if name in port_ledgers else self.names_kept.get(name, frozenset()) for name in held}
        return {name: values for name, values in kept.items() if held[name] - values}


def plan_claims(
    key: ProjectKey,
    spec: ProjectSpec,
    held: Mapping[str, frozenset[str]],
    port: Request,
) -> ClaimPlan:
    """Which ledger each name and port goes to (pure). ``held``: ledger -> what this Project holds there."""
    holder = Holder(key.uid, str(key))
    allocations = allocations_for(spec, None)
    drop = spec.deletion_policy is DeletionPolicy.Delete
    claims: dict[str, Request] = {}
    kept: dict[str, frozenset[str]] = {}
    for pool, name, field_path in (("database", allocations.database, "spec.project.slug"),
                                   ("cache", allocations.redis_user, "spec.project.slug"),
                                   ("bucket", allocations.bucket, "spec.features.storage.bucket")):  # fmt: skip
        if name is not None:
            claims[name_ledger(pool, name)] = NameRequest(holder, pool, name, field_path, drop, release=False)
            kept[name_ledger(pool, name)] = frozenset({name})
        elif not drop:  # the feature is off and its data kept: so are the names that hold it
            kept.update({ledger: values for ledger, values in held.items() if ledger.startswith(f"ledger-{pool}")})
    domains_by_ledger: dict[str, list[str]] = {}
    for domain in naming.served_domains(spec):
        domains_by_ledger.setdefault(name_ledger("domain", encode_domain(domain)), []).append(encode_domain(domain))
    for ledger, names in domains_by_ledger.items():
        claims[ledger] = NameSetRequest(holder, "domain", tuple(names), release=False)
        kept[ledger] = frozenset(names)
    scopes = {port_ledger(scope): scope for scope in port_scopes(spec)}
    first = next(iter(scopes), None)
    if first is not None:
        claims[first] = port
    return ClaimPlan(claims, first, {ledger: scope for ledger, scope in scopes.items() if ledger != first}, kept)
