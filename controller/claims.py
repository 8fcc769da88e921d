"""Allocations, with the API server as the only source of truth.

Every allocated value (a port, a database name, a Redis user, a bucket) is an entry
in an *allocation ledger*: one ConfigMap per pool in the operator's namespace
(``ledger-port``, ``ledger-database``, ...), mapping the value to the Project that
holds it (``"4512": "<uid> shop/web"``). This is the pattern Kubernetes itself used
for Service IP ranges: every write replaces the whole ledger guarded by its
``resourceVersion``, so two replicas, two workers or a restarted operator can never
hand out one value twice; the loser of a race re-reads and decides again.

Deciding is pure (`NumberRequest`, `NameRequest`, `ReleaseRequest` turn a `Ledger`
into changes) and tested with plain data. Writing is a group commit per pool: the
requests that arrive while a write is in flight go out together in the next one, so
a burst of new Projects costs a handful of writes instead of one per value. The
ledger is cached between writes; a read older than `CACHE_SECONDS` is refreshed.

Domains are a pool too, cluster-wide: a domain routes to one Project, and a second
Project naming it, or a name its wildcard would cover (or a wildcard covering its name:
`controller.domains`), gets ``RouteReady=False DomainTaken`` while the first keeps serving.

Size: an entry is about 60 bytes, a Project holds at most one per pool (a few domains),
and there are 2,000 ports in all, so a ledger stays near 120 KB, well inside a
ConfigMap's 1 MiB.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from controller import domains, naming
from controller.errors import AllocationConflict, RetryableError
from controller.kube import Conflict, KubeClient
from controller.naming import ProjectKey
from controller.rollout import blue_green
from schemas.project import (
    PORT_RANGES,
    Allocations,
    DeletionPolicy,
    EnvironmentType,
    ProjectSpec,
    Provider,
)

LEDGER_LABEL = "codeb.dev/ledger"
POOLS = ("port", "database", "cache", "bucket", "domain")
# A cached ledger older than this is read again before it is trusted.
CACHE_SECONDS = 30.0
# Least time between two writes of one ledger. A request after a quiet spell is written
# at once; during a burst, everything that arrives in this window shares one write, so a
# thousand new Projects cost a few dozen ledger writes rather than a thousand.
COMMIT_INTERVAL_SECONDS = 0.25
COMMIT_ATTEMPTS = 8


@dataclass(frozen=True)
class Holder:
    uid: str
    owner: str  # namespace/name, for messages

    def encode(self) -> str:
        return f"{self.uid} {self.owner}"

    @classmethod
    def decode(cls, raw: str) -> Holder:
        uid, _, owner = raw.partition(" ")
        return cls(uid, owner or "another project")


@dataclass(frozen=True)
class Claim:
    pool: str
    value: str


Changes = dict[str, Holder | None]  # value -> new holder, or None to release it


@dataclass
class Ledger:
    """One pool's entries, indexed by holder uid.

    The per-uid sets are never changed in place, only replaced, so `copy` is two
    shallow dict copies: a commit decides on a copy and keeps it only once written.
    """

    entries: dict[str, Holder] = field(default_factory=dict)
    by_uid: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_data(cls, data: Mapping[str, str]) -> Ledger:
        ledger = cls()
        ledger.apply({value: Holder.decode(raw) for value, raw in data.items()})
        return ledger

    def to_data(self) -> dict[str, str]:
        return {value: holder.encode() for value, holder in self.entries.items()}

    def held_by(self, uid: str) -> frozenset[str]:
        return self.by_uid.get(uid, frozenset())

    def holder(self, value: str) -> Holder | None:
        return self.entries.get(value)

    def apply(self, changes: Changes) -> None:
        for value, holder in changes.items():
            old = self.entries.pop(value, None)
            if old is not None:
                self.by_uid[old.uid] = self.held_by(old.uid) - {value}
            if holder is not None:
                self.entries[value] = holder
                self.by_uid[holder.uid] = self.held_by(holder.uid) | {value}

    def copy(self) -> Ledger:
        return Ledger(dict(self.entries), dict(self.by_uid))


@dataclass(frozen=True)
class Refusal:
    """Why a component may not have what it asked for, as a condition says it (not an error: the rest goes on)."""

    reason: str
    message: str


# What a request decides: a name, a number, a pair of ports, or nothing.
Value = str | int | tuple[int, int] | Refusal | None


class Request(Protocol):
    def decide(self, ledger: Ledger) -> tuple[Value, Changes]:
        """The value this request ends up with and the changes that takes; raises AllocationConflict."""
        ...


@dataclass(frozen=True)
class NumberRequest:
    """Exactly one number from a range for this holder (a port, a Redis database index)."""

    holder: Holder
    pool: str
    candidates: tuple[int, ...]  # the usable numbers, in preference order
    pinned: int | None = None
    keep: int | None = None  # the number in use now: never switched silently
    range_text: str = ""
    pinned_field: str = "resources.port"
    # Whether a number nobody holds may be handed out (e.g. no other process listens on the port).
    usable: Callable[[int], bool] | None = None

    def decide(self, ledger: Ledger) -> tuple[int, Changes]:
        mine = sorted(int(v) for v in ledger.held_by(self.holder.uid))
        chosen = self.pinned if self.pinned is not None else self._free_or_held(ledger, mine)
        if self.pinned is not None:
            taken = ledger.holder(str(self.pinned))
            if taken is not None and taken.uid != self.holder.uid:
                raise AllocationConflict(
                    f"{self.pinned_field} {self.pinned} is already used by {taken.owner}; choose another "
                    f"{self.pool} in {self.range_text} or omit {self.pinned_field} to have one allocated"
                )
        changes: Changes = {str(n): None for n in mine if n != chosen}
        if chosen not in mine:
            changes[str(chosen)] = self.holder
        return chosen, changes

    def _free_or_held(self, ledger: Ledger, mine: list[int]) -> int:
        held = [n for n in mine if n in self.candidates]
        if held:
            return self.keep if self.keep in held else held[0]
        if self.keep in self.candidates and ledger.holder(str(self.keep)) is None:
            return self.keep  # in use but not recorded (a lost ledger): keep the app where it is
        usable = self.usable or (lambda _: True)
        free = next((n for n in self.candidates if ledger.holder(str(n)) is None and usable(n)), None)
        if free is None:
            raise AllocationConflict(f"no free {self.pool} left; free one or widen the range", reason="Exhausted")
        return free


@dataclass(frozen=True)
class PortPairRequest:
    """The application's port and a second one beside it: the other colour of a blue-green deploy.

    The primary is decided exactly as a lone port is (`NumberRequest`); the alternate is
    the other number this holder already has, else a free one. Both stay held while the
    runtime runs two colours, so no other Project can take the port a deploy starts on.
    """

    primary: NumberRequest
    keep_alternate: int | None = None

    def decide(self, ledger: Ledger) -> tuple[tuple[int, int], Changes]:
        holder = self.primary.holder
        mine = sorted(int(v) for v in ledger.held_by(holder.uid))
        port, changes = self.primary.decide(ledger)
        alternate = self._alternate(ledger, mine, port)
        changes.pop(str(alternate), None)
        if alternate not in mine:
            changes[str(alternate)] = holder
        return (port, alternate), changes

    def _alternate(self, ledger: Ledger, mine: list[int], port: int) -> int:
        candidates = self.primary.candidates
        held = [n for n in mine if n != port and n in candidates]
        if held:
            return self.keep_alternate if self.keep_alternate in held else held[0]
        keep = self.keep_alternate
        if keep is not None and keep != port and keep in candidates and ledger.holder(str(keep)) is None:
            return keep
        usable = self.primary.usable or (lambda _: True)
        free = next((n for n in candidates if n != port and ledger.holder(str(n)) is None and usable(n)), None)
        if free is None:
            raise AllocationConflict(
                f"no free port left for a second colour in {self.primary.range_text}; free one or widen the range",
                reason="Exhausted",
            )
        return free


@dataclass(frozen=True)
class NameRequest:
    """A derived name for this holder; ``name=None`` means the feature is off.

    Names no longer wanted are released when the feature was renamed, or when the
    data goes with the Project (``drop_unwanted``). A disabled feature's name stays
    held while its data is retained, so no other Project can take over a database or
    bucket that still holds this one's data.
    """

    holder: Holder
    pool: str
    name: str | None
    field_path: str
    drop_unwanted: bool = False

    def decide(self, ledger: Ledger) -> tuple[str | None, Changes]:
        mine = ledger.held_by(self.holder.uid)
        changes: Changes = {}
        if self.name is not None:
            taken = ledger.holder(self.name)
            if taken is not None and taken.uid != self.holder.uid:
                raise AllocationConflict(
                    f"{self.pool} name {self.name!r} is already used by {taken.owner}; "
                    f"change {self.field_path} (or the environment) so the derived name is unique"
                )
            if self.name not in mine:
                changes[self.name] = self.holder
        if self.name is not None or self.drop_unwanted:
            changes.update({value: None for value in mine if value != self.name})
        return self.name, changes


@dataclass(frozen=True)
class NameSetRequest:
    """All of these names for this holder, or none new; releases the ones no longer listed.

    A refusal does not raise: the value is a message naming the holder, for the one
    component that needs the names (a route serves all its domains or is not touched).
    """

    holder: Holder
    pool: str
    names: tuple[str, ...]

    def decide(self, ledger: Ledger) -> tuple[Refusal | None, Changes]:
        not_allowed = [why for n in self.names if (why := domains.refusal(decode_domain(n)))]
        if not_allowed:
            return Refusal("DomainNotAllowed", "; ".join(not_allowed)), {}
        taken = [_taken_message(n, other, h) for n in self.names for other, h in _overlapping(ledger, n)
                 if h.uid != self.holder.uid]  # fmt: skip
        if taken:
            return Refusal("DomainTaken", "; ".join(taken)), {}
        mine = ledger.held_by(self.holder.uid)
        changes: Changes = {n: self.holder for n in self.names if n not in mine}
        changes.update({value: None for value in mine if value not in self.names})
        return None, changes


def _overlapping(ledger: Ledger, key: str) -> list[tuple[str, Holder]]:
    """The held domains whose routes could match a request for ``key`` (ledger keys, with their holders)."""
    name = decode_domain(key)
    candidates = [key]
    if (wildcard := domains.wildcard_over(name)) is not None:
        candidates.append(encode_domain(wildcard))
    if name.startswith("*."):
        # Names one label below a wildcard: a scan, but only for wildcards, which are few.
        candidates += [held for held in ledger.entries if domains.covers(name, decode_domain(held))]
    return [(other, holder) for other in candidates if (holder := ledger.holder(other)) is not None]


def _taken_message(key: str, other: str, holder: Holder) -> str:
    if key == other:
        return f"{decode_domain(key)} is already routed by {holder.owner}"
    return f"{decode_domain(key)} overlaps {decode_domain(other)}, routed by {holder.owner}"


@dataclass(frozen=True)
class KeepOnlyRequest:
    """Release what this holder took beyond ``keep`` (undoing half of a failed allocation)."""

    uid: str
    keep: frozenset[str]

    def decide(self, ledger: Ledger) -> tuple[None, Changes]:
        return None, {value: None for value in ledger.held_by(self.uid) if value not in self.keep}


def encode_domain(domain: str) -> str:
    # ConfigMap keys allow [-._a-zA-Z0-9]; "_" never occurs in a domain, so "*" maps to it.
    return domain.replace("*", "_")


def decode_domain(key: str) -> str:
    return key.replace("_", "*")


@dataclass(frozen=True)
class ReleaseRequest:
    uid: str

    def decide(self, ledger: Ledger) -> tuple[int, Changes]:
        mine = ledger.held_by(self.uid)
        return len(mine), dict.fromkeys(mine)


def port_candidates(spec: ProjectSpec, reserved: Iterable[int]) -> tuple[int, ...]:
    return _port_range(spec.environment.type, frozenset(reserved))


@functools.cache
def _port_range(environment: EnvironmentType, reserved: frozenset[int]) -> tuple[int, ...]:
    # Every reconcile asks, drift ticks included; the answer only depends on these two.
    low, high = PORT_RANGES[environment]
    return tuple(p for p in range(low, high + 1) if p not in reserved)


def requests_for(
    key: ProjectKey,
    spec: ProjectSpec,
    reserved_ports: Iterable[int] = (),
    current_port: int | None = None,
    port_free: Callable[[int], bool] | None = None,
    current_alternate: int | None = None,
) -> dict[str, Request]:
    """What this spec asks of each pool (pure, given ``port_free``)."""
    holder = Holder(key.uid, str(key))
    low, high = PORT_RANGES[spec.environment.type]
    candidates = port_candidates(spec, reserved_ports)
    port = NumberRequest(holder, "port", candidates, spec.resources.port, current_port, f"{low}-{high}",
                         usable=port_free)  # fmt: skip
    requests: dict[str, Request] = {"port": PortPairRequest(port, current_alternate) if blue_green(spec) else port}
    allocations = allocations_for(spec, None)
    drop = spec.deletion_policy is DeletionPolicy.Delete
    requests["database"] = NameRequest(holder, "database", allocations.database, "spec.project.slug", drop)
    requests["cache"] = NameRequest(holder, "cache", allocations.redis_user, "spec.project.slug", drop)
    requests["bucket"] = NameRequest(holder, "bucket", allocations.bucket, "spec.features.storage.bucket", drop)
    requests["domain"] = NameSetRequest(holder, "domain", tuple(encode_domain(d) for d in spec.environment.domains))
    return requests


def allocations_for(spec: ProjectSpec, port: int | None, alternate_port: int | None = None) -> Allocations:
    """The full set of allocated names for a spec, given its claimed numbers (pure)."""
    features = spec.features
    database = features.database is not None and features.database.enabled
    cache = features.redis is not None and features.redis.enabled
    storage = features.storage is not None and features.storage.enabled
    return Allocations(
        port=port,
        alternate_port=alternate_port if blue_green(spec) else None,
        database=naming.database_name(spec) if database else None,
        database_role=naming.database_role(spec) if database else None,
        redis_user=naming.redis_user(spec) if cache else None,
        redis_prefix=naming.redis_prefix(spec) if cache else None,
        bucket=naming.bucket_name(spec) if storage else None,
        connection_secret=naming.connection_secret_name(spec),
    )


Outcome = Value | AllocationConflict


def decide_batch(ledger: Ledger, requests: list[Request]) -> tuple[Ledger, list[Outcome]]:
    """Decide requests in order, each seeing the ones before it; a refused one changes nothing."""
    work = ledger.copy()
    outcomes: list[Outcome] = []
    for request in requests:
        try:
            result, changes = request.decide(work)
        except AllocationConflict as exc:
            outcomes.append(exc)
            continue
        work.apply(changes)
        outcomes.append(result)
    return work, outcomes


@dataclass
class _Waiting:
    request: Request
    result: asyncio.Future[Value]


class _Pool:
    """One ledger on the API server: cached, and written by group commit."""

    def __init__(self, kube: KubeClient, namespace: str, pool: str) -> None:
        self._kube, self._namespace, self.pool = kube, namespace, pool
        self._name = f"ledger-{pool}"
        self._ledger: Ledger | None = None
        self._version: str | None = None
        self._read_at = 0.0
        self._queue: list[_Waiting] = []
        self._committer: asyncio.Task[None] | None = None
        self._reading: asyncio.Future[None] | None = None
        self._committed_at = 0.0

    async def current(self, fresh: bool = False) -> Ledger:
        if fresh or self._ledger is None or time.monotonic() - self._read_at > CACHE_SECONDS:
            # One read in flight per ledger: a burst of new Projects shares it.
            if self._reading is None or self._reading.done():
                self._reading = asyncio.ensure_future(self._read())
            await asyncio.shield(self._reading)
        assert self._ledger is not None
        return self._ledger

    async def _read(self) -> None:
        stored = await self._kube.read_config_map(self._namespace, self._name)
        self._version = stored.resource_version if stored else None
        self._ledger = Ledger.from_data(stored.data if stored else {})
        self._read_at = time.monotonic()

    async def run(self, request: Request) -> Value:
        try:
            result, changes = request.decide(await self.current())
            if not changes:
                return result  # already so: nothing to write
        except AllocationConflict:
            pass  # decided again below, against the ledger as stored
        waiting = _Waiting(request, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued())
        return await waiting.result

    async def _commit_queued(self) -> None:
        while self._queue:
            await asyncio.sleep(max(0.0, self._committed_at + COMMIT_INTERVAL_SECONDS - time.monotonic()))
            self._committed_at = time.monotonic()
            batch, self._queue = self._queue, []
            try:
                await self._commit(batch)
            except Exception as exc:  # every waiter learns of it; the committer lives on
                for waiting in batch:
                    if not waiting.result.done():
                        waiting.result.set_exception(exc)

    async def _commit(self, batch: list[_Waiting]) -> None:
        read_now = False
        for _ in range(COMMIT_ATTEMPTS):
            ledger = await self.current(fresh=read_now)
            work, outcomes = decide_batch(ledger, [waiting.request for waiting in batch])
            if not read_now and any(isinstance(o, AllocationConflict) for o in outcomes):
                read_now = True  # a refusal is only final against the ledger as stored now
                continue
            if work.entries != ledger.entries:
                try:
                    self._version = await self._kube.write_config_map(
                        self._namespace, self._name, work.to_data(), {LEDGER_LABEL: self.pool}, self._version
                    )
                except Conflict:
                    read_now = True  # someone else wrote first: read and decide again
                    continue
                self._ledger, self._read_at = work, time.monotonic()
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if waiting.result.done():
                    continue
                if isinstance(outcome, AllocationConflict):
                    waiting.result.set_exception(outcome)
                else:
                    waiting.result.set_result(outcome)
            return
        raise RetryableError(f"allocation ledger {self._name} kept changing; will retry", reason="LedgerContention")


@dataclass(frozen=True)
class Claimed:
    allocations: Allocations
    # Why the route may not have its domains (another Project's overlap, a public suffix), if so.
    domain_conflict: Refusal | None = None


def _as_ports(value: object) -> tuple[int | None, int | None]:
    if isinstance(value, tuple):
        return value[0], value[1]
    return (value if isinstance(value, int) else None), None


def _claimed(spec: ProjectSpec, decided: Mapping[str, object]) -> Claimed:
    domain_conflict = decided["domain"] if isinstance(decided["domain"], Refusal) else None
    return Claimed(allocations_for(spec, *_as_ports(decided["port"])), domain_conflict)


def local_port_free(port: int) -> bool:
    """Whether no process on this machine listens on ``port`` (any address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class ClaimStore:
    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        reserved_ports: Iterable[int] = (),
        local_port_free: Callable[[int], bool] | None = None,
    ) -> None:
        self._kube = kube
        self._namespace = namespace
        self._reserved = frozenset(reserved_ports)
        # Provider local runs on this machine: a port another process holds is not handed out.
        self._local_port_free = local_port_free
        self._pools = {pool: _Pool(kube, namespace, pool) for pool in POOLS}

    async def setup(self) -> None:
        await self._kube.ensure_namespace(self._namespace)
        # Read every ledger now, not in the first Project's reconcile.
        await asyncio.gather(*[pool.current() for pool in self._pools.values()])

    async def held(self, key: ProjectKey) -> list[Claim]:
        ledgers = await asyncio.gather(*[pool.current() for pool in self._pools.values()])
        return [
            Claim(pool, value)
            for pool, ledger in zip(self._pools, ledgers, strict=True)
            for value in sorted(ledger.held_by(key.uid))
        ]

    async def ensure(
        self, key: ProjectKey, spec: ProjectSpec, current_port: int | None = None, current_alternate: int | None = None
    ) -> Claimed:
        """Claim everything the spec needs and release what it no longer does.

        All or nothing: when one pool refuses, what the others newly took is given back,
        so a Project whose allocation failed holds no more than before.
        """
        before: dict[str, set[str]] = {}
        for claim in await self.held(key):  # a pool may hold several values (domains)
            before.setdefault(claim.pool, set()).add(claim.value)
        requests = self._requests(key, spec, current_port, current_alternate)
        # Pools are independent: a new Project waits for one round of writes, not five.
        results = await asyncio.gather(
            *[self._pools[pool].run(request) for pool, request in requests.items()], return_exceptions=True
        )
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            undo = [
                self._pools[pool].run(KeepOnlyRequest(key.uid, frozenset(before.get(pool, ()))))
                for pool, result in zip(requests, results, strict=True)
                if not isinstance(result, BaseException)
            ]
            await asyncio.gather(*undo, return_exceptions=True)
            raise failure
        return _claimed(spec, dict(zip(requests, results, strict=True)))

    def _requests(
        self, key: ProjectKey, spec: ProjectSpec, current_port: int | None, current_alternate: int | None
    ) -> dict[str, Request]:
        port_free = self._local_port_free if spec.servers.provider is Provider.local else None
        return requests_for(key, spec, self._reserved, current_port, port_free, current_alternate)

    async def release_all(self, key: ProjectKey) -> int:
        released = await asyncio.gather(*[pool.run(ReleaseRequest(key.uid)) for pool in self._pools.values()])
        return sum(n for n in released if isinstance(n, int))

    @staticmethod
    def allocations_held(spec: ProjectSpec, held: list[Claim], port: int | None = None) -> Allocations:
        """Allocations as currently claimed, without claiming anything (for teardown).

        ``port`` is the primary as status last recorded it; the other held port is the alternate.
        Only names this Project holds in the ledger: one it was refused (another Project's bucket,
        an operator name) was never made by it, so it is nobody's to delete here.
        """
        ports = sorted(int(c.value) for c in held if c.pool == "port")
        primary = port if port in ports else min(ports, default=None)
        alternate = next((p for p in ports if p != primary), None)
        derived = allocations_for(spec, primary, alternate)
        mine = {(c.pool, c.value) for c in held}
        database = ("database", derived.database) in mine
        cache = ("cache", derived.redis_user) in mine
        return derived.model_copy(update={
            "database": derived.database if database else None,
            "database_role": derived.database_role if database else None,
            "redis_user": derived.redis_user if cache else None,
            "redis_prefix": derived.redis_prefix if cache else None,
            "bucket": derived.bucket if ("bucket", derived.bucket) in mine else None,
        })  # fmt: skip


class ClaimPreview(ClaimStore):
    """What `ClaimStore.ensure` would decide, against the ledgers as stored, writing nothing (`codeb diff`)."""

    async def ensure(
        self, key: ProjectKey, spec: ProjectSpec, current_port: int | None = None, current_alternate: int | None = None
    ) -> Claimed:
        requests = self._requests(key, spec, current_port, current_alternate)
        decided = {pool: request.decide(await self._pools[pool].current(fresh=True))[0]
                   for pool, request in requests.items()}  # fmt: skip
        return _claimed(spec, decided)
