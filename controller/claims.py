"""Allocations, with the API server as the only source of truth.

Every allocated value (a port, a database name, a bucket, a Redis user) is a
claim: a ``coordination.k8s.io`` Lease in the operator's namespace whose *name is
the value* (``port-4512``, ``database-shop-db``). Creating an object is atomic, so
two replicas, two workers or a restarted operator can never hold the same value:
the loser gets 409 and moves on. Claims carry the Project's uid as a label, so a
Project's holdings are found again after any crash, and released on deletion.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from controller import naming
from controller.errors import AllocationConflict
from controller.kube import AlreadyExists, KubeClient, LeaseInfo
from controller.naming import ProjectKey
from schemas.project import PORT_RANGES, Allocations, DeletionPolicy, ProjectSpec, RedisIsolation

LABEL_UID = "codeb.dev/project-uid"
LABEL_KIND = "codeb.dev/claim"
ANNOTATION_OWNER = "codeb.dev/owner"
REDIS_DB_INDEXES = range(1, 16)  # 0 stays the shared default database


@dataclass(frozen=True)
class NamedClaim:
    kind: str
    value: str
    field: str  # manifest field the value comes from, for conflict messages

    @property
    def lease_name(self) -> str:
        return lease_name(self.kind, self.value)


def lease_name(kind: str, value: str) -> str:
    # Database names use '_' where the slug had '-', and never contain '-'.
    return f"{kind}-{value.replace('_', '-')}"


def named_claims(spec: ProjectSpec) -> list[NamedClaim]:
    """The unique names this spec needs, pure."""
    features = spec.features
    claims = []
    if features.database is not None and features.database.enabled:
        claims.append(NamedClaim("database", naming.database_name(spec), "spec.project.slug"))
    if features.redis is not None and features.redis.enabled:
        claims.append(NamedClaim("cache", naming.redis_user(spec), "spec.project.slug"))
    if features.storage is not None and features.storage.enabled:
        claims.append(NamedClaim("bucket", naming.bucket_name(spec), "spec.features.storage.bucket"))
    return claims


def port_candidates(spec: ProjectSpec, reserved: Iterable[int], uid: str) -> list[int]:
    """Free-port search order: the whole range, starting at a uid-derived offset.

    Starting points spread by uid mean concurrent allocations rarely probe the same
    port first, so most claims succeed on the first create without listing anything.
    """
    low, high = PORT_RANGES[spec.environment.type]
    ports = [p for p in range(low, high + 1) if p not in set(reserved)]
    start = zlib.crc32(uid.encode()) % len(ports)
    return ports[start:] + ports[:start]


def allocations_for(spec: ProjectSpec, port: int | None, redis_db: int | None) -> Allocations:
    """The full set of allocated names for a spec, given its claimed numbers (pure)."""
    features = spec.features
    database = features.database is not None and features.database.enabled
    cache = features.redis is not None and features.redis.enabled
    storage = features.storage is not None and features.storage.enabled
    return Allocations(
        port=port,
        database=naming.database_name(spec) if database else None,
        database_role=naming.database_role(spec) if database else None,
        redis_user=naming.redis_user(spec) if cache else None,
        redis_prefix=naming.redis_prefix(spec) if cache else None,
        redis_db_index=redis_db,
        bucket=naming.bucket_name(spec) if storage else None,
        connection_secret=naming.connection_secret_name(spec),
    )


def _number(lease: LeaseInfo, kind: str) -> int:
    return int(lease.name.removeprefix(f"{kind}-"))


class ClaimStore:
    def __init__(self, kube: KubeClient, namespace: str, reserved_ports: Iterable[int] = ()) -> None:
        self._kube = kube
        self._namespace = namespace
        self._reserved = frozenset(reserved_ports)
        # Numbers believed taken, per kind: only a hint to skip likely collisions. The
        # API server still decides, atomically, and a wrong hint costs one extra probe.
        self._taken_hint: dict[str, set[int]] = {}

    async def setup(self) -> None:
        await self._kube.ensure_namespace(self._namespace)

    async def held(self, key: ProjectKey) -> list[LeaseInfo]:
        return await self._kube.list_leases(self._namespace, f"{LABEL_UID}={key.uid}")

    async def ensure(
        self, key: ProjectKey, spec: ProjectSpec, held: list[LeaseInfo] | None = None, current_port: int | None = None
    ) -> Allocations:
        """Claim everything the spec needs, reusing what the Project holds (``current_port`` first)."""
        held = await self.held(key) if held is None else held
        by_kind: dict[str, list[LeaseInfo]] = {}
        for lease in held:
            by_kind.setdefault(lease.labels.get(LABEL_KIND, ""), []).append(lease)
        wanted = named_claims(spec)
        held_names = {lease.name for lease in held}
        # Independent claims go out together: a new Project pays one round trip, not four.
        port, redis_db, *_ = await asyncio.gather(
            self._ensure_port(key, spec, by_kind.get("port", []), current_port),
            self._ensure_redis_db(key, spec, by_kind.get("redis-db", [])),
            *[self._claim_name(key, claim) for claim in wanted if claim.lease_name not in held_names],
        )
        chosen = {f"port-{port}"} | ({f"redis-db-{redis_db}"} if redis_db is not None else set())
        await self._release_stale(spec, by_kind, {c.lease_name for c in wanted}, chosen)
        return allocations_for(spec, port, redis_db)

    async def release_all(self, key: ProjectKey) -> int:
        leases = await self.held(key)
        for lease in leases:
            await self._release(lease)
        return len(leases)

    async def _release(self, lease: LeaseInfo) -> None:
        await self._kube.delete_lease(self._namespace, lease.name)
        kind = lease.labels.get(LABEL_KIND, "")
        if kind in self._taken_hint:
            self._taken_hint[kind].discard(_number(lease, kind))

    def allocations_held(self, spec: ProjectSpec, held: list[LeaseInfo]) -> Allocations:
        """Allocations as currently claimed, without claiming anything (for teardown)."""

        def lowest(kind: str) -> int | None:
            return min((_number(lease, kind) for lease in held if lease.labels.get(LABEL_KIND) == kind), default=None)

        return allocations_for(spec, lowest("port"), lowest("redis-db"))

    async def _create(self, key: ProjectKey, kind: str, name: str) -> bool:
        """True if we now hold ``name`` (created it, or already held it); False if someone else does."""
        labels = {LABEL_UID: key.uid, LABEL_KIND: kind}
        try:
            await self._kube.create_lease(self._namespace, name, key.uid, labels, {ANNOTATION_OWNER: str(key)})
            return True
        except AlreadyExists:
            holder = await self._kube.read_lease(self._namespace, name)
            return holder is not None and holder.holder == key.uid

    async def _owner_of(self, name: str) -> str:
        lease = await self._kube.read_lease(self._namespace, name)
        return lease.annotations.get(ANNOTATION_OWNER, "another project") if lease else "another project"

    async def _claim_name(self, key: ProjectKey, claim: NamedClaim) -> None:
        if not await self._create(key, claim.kind, claim.lease_name):
            owner = await self._owner_of(claim.lease_name)
            raise AllocationConflict(
                f"{claim.kind} name {claim.value!r} is already used by {owner}; "
                f"change {claim.field} (or the environment) so the derived name is unique"
            )

    async def _ensure_port(
        self, key: ProjectKey, spec: ProjectSpec, held: list[LeaseInfo], current: int | None = None
    ) -> int:
        pinned = spec.resources.port
        low, high = PORT_RANGES[spec.environment.type]
        mine = sorted(_number(lease, "port") for lease in held)
        if pinned is not None:
            if pinned not in mine and not await self._create(key, "port", f"port-{pinned}"):
                owner = await self._owner_of(f"port-{pinned}")
                raise AllocationConflict(
                    f"resources.port {pinned} is already used by {owner}; choose another port in {low}-{high} "
                    "or omit resources.port to have one allocated"
                )
            return pinned
        usable = [p for p in mine if low <= p <= high and p not in self._reserved]
        if usable:
            # The port in status is the one the running app uses; never switch it silently.
            return current if current in usable else usable[0]
        return await self._allocate_number(key, "port", port_candidates(spec, self._reserved, key.uid))

    async def _ensure_redis_db(self, key: ProjectKey, spec: ProjectSpec, held: list[LeaseInfo]) -> int | None:
        redis = spec.features.redis
        if redis is None or not redis.enabled or redis.isolation is not RedisIsolation.db_index:
            return None
        if held:
            return min(_number(lease, "redis-db") for lease in held)
        return await self._allocate_number(key, "redis-db", list(REDIS_DB_INDEXES))

    async def _allocate_number(self, key: ProjectKey, kind: str, candidates: list[int]) -> int:
        hint = self._taken_hint.setdefault(kind, set())
        refreshed = False
        for number in candidates:
            if number in hint:
                continue
            if await self._create(key, kind, f"{kind}-{number}"):
                hint.add(number)
                return number
            hint.add(number)
            if not refreshed:
                # First collision: learn what is taken instead of probing one by one,
                # and notice a number an interrupted earlier attempt already won for us.
                refreshed = True
                leases = await self._kube.list_leases(self._namespace, f"{LABEL_KIND}={kind}")
                ours = sorted(_number(lease, kind) for lease in leases if lease.holder == key.uid)
                if ours:
                    return ours[0]
                hint.clear()
                hint.update(_number(lease, kind) for lease in leases)
        if not refreshed and hint:
            # Every candidate looked taken only by the hint: check with the API server once.
            self._taken_hint[kind] = set()
            return await self._allocate_number(key, kind, candidates)
        raise AllocationConflict(f"no free {kind} left; free one or widen the range", reason="Exhausted")

    async def _release_stale(
        self, spec: ProjectSpec, by_kind: dict[str, list[LeaseInfo]], wanted: set[str], chosen: set[str]
    ) -> None:
        """Release claims the spec no longer needs: an old port, a renamed bucket, or extras a crash left.

        A disabled feature's name stays claimed while its data is retained, so no other
        project can take over a database or bucket that still holds this one's data.
        """
        dropped = spec.deletion_policy is DeletionPolicy.Delete
        for kind, leases in by_kind.items():
            if kind in ("port", "redis-db"):
                stale = [lease for lease in leases if lease.name not in chosen]
            else:
                renamed = any(name.startswith(f"{kind}-") for name in wanted)
                stale = [lease for lease in leases if lease.name not in wanted and (renamed or dropped)]
            for lease in stale:
                await self._release(lease)
