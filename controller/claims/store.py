"""Allocations, with the API server as the only source of truth.

Every allocated value (a port, a database name, a Redis user, a bucket, a domain) is an
entry in an *allocation ledger*, a ConfigMap in the operator's namespace labelled
``codeb.dev/ledger=<pool>``, mapping the value to the Project that holds it
(``"4512": "<uid> shop/web"``). This is the pattern Kubernetes itself used
for Service IP ranges: every write replaces the whole ledger guarded by its
``resourceVersion``, so two replicas, two workers or a restarted operator can never
hand out one value twice; the loser of a race re-reads and decides again.

Deciding is pure (`controller.claims.ledger`: requests turn a `Ledger` into changes;
`controller.claims.plan`: which ledger each value goes to) and tested with plain data.
Writing is a group commit per ledger: the requests that arrive while a write is in
flight go out together in the next one, so a burst of new Projects shares writes. The
ledger is cached between writes; a read older than `CACHE_SECONDS` is refreshed.

Domains are a pool too, cluster-wide: a domain routes to one Project, and a second
Project naming it, or a name its wildcard would cover (or a wildcard covering its name:
`controller.loop.domains`), gets ``RouteReady=False DomainTaken`` while the first keeps serving.

Size: no ledger has to hold every Project. Ports are unique per machine a Project shares
(`claimplan.port_scopes`): one ledger for the operator's machine (provider local), one per
``existing`` host; a port range holds 2,000 numbers, about 160 KB. Each name pool is
split over `claimplan.NAME_SHARDS` ledgers by a hash of the name (domains by their parent,
so overlaps meet in one ledger): 16 MiB, about 200,000 names per pool. Ledgers from
before the split (``ledger-<pool>``) are moved into it at start (names), or read as
taken until their holders move (ports, whose ledger depends on the Project's hosts).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from controller.claims.ledger import (
    Claim,
    ExactRequest,
    Holder,
    KeepOnlyRequest,
    Ledger,
    ReleaseRequest,
    Request,
    Value,
    allocations_for,
    decide_batch,
)
from controller.claims.plan import ClaimPlan, name_ledger, plan_claims, port_ledger, port_request, port_scopes
from controller.clients.kube import Conflict, KubeClient, StoredConfigMap
from controller.errors import AllocationConflict, RetryableError
from controller.loop.interface import Claimed, Refusal
from controller.loop.naming import ProjectKey
from schemas.project import Allocations, ProjectSpec, Provider

LEDGER_LABEL = "codeb.dev/ledger"
NAME_POOLS = ("database", "cache", "bucket", "domain")
# The port ledger from before ports were per machine: its holders keep their ports until they move.
LEGACY_PORT_LEDGER = "ledger-port"
# A cached ledger older than this is read again before it is trusted.
CACHE_SECONDS = 30.0
# Least time between two writes of one ledger. A request after a quiet spell is written
# at once; during a burst, everything that arrives in this window shares one write, so a
# thousand new Projects cost a few dozen ledger writes rather than a thousand.
COMMIT_INTERVAL_SECONDS = 0.25
COMMIT_ATTEMPTS = 8


@dataclass
class _Waiting:
    request: Request
    result: asyncio.Future[Value]


class _Pool:
    """One ledger on the API server: cached, and written by group commit."""

    def __init__(self, kube: KubeClient, namespace: str, name: str, pool: str) -> None:
        self._kube, self._namespace, self.pool = kube, namespace, pool
        self._name = name
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
        self._take(await self._kube.read_config_map(self._namespace, self._name))

    def seed(self, stored: StoredConfigMap) -> None:
        """Take the ledger as a list found it, if it was never read: a list may be older than what this
        process last wrote or read (it refreshes itself after `CACHE_SECONDS`)."""
        if self._ledger is None and not self._queue:
            self._take(stored)

    def _take(self, stored: StoredConfigMap | None) -> None:
        self._version = stored.resource_version if stored else None
        self._ledger = Ledger.from_data(stored.data if stored else {})
        self._read_at = time.monotonic()

    def cached(self) -> Ledger:
        return self._ledger if self._ledger is not None else Ledger()

    async def run(self, request: Request) -> Value:
        try:
            result, changes = request.decide(await self.current())
            if not changes:
                return result  # already so: nothing to write
        except (AllocationConflict, RetryableError):
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
            if not read_now and any(isinstance(o, (AllocationConflict, RetryableError)) for o in outcomes):
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
                if isinstance(outcome, Exception):
                    waiting.result.set_exception(outcome)
                else:
                    waiting.result.set_result(outcome)
            return
        raise RetryableError(f"allocation ledger {self._name} kept changing; will retry", reason="LedgerContention")


def _as_ports(value: object) -> tuple[int, ...]:
    if isinstance(value, tuple):
        return value
    return (value,) if isinstance(value, int) else ()


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
        self._pools: dict[str, _Pool] = {}
        self._listed_at = 0.0

    async def setup(self) -> None:
        await self._kube.ensure_namespace(self._namespace)
        # Read every ledger now, not in the first Project's reconcile.
        await self._ledgers(fresh=True)
        await self._split_legacy()

    def _pool(self, name: str, pool: str) -> _Pool:
        if name not in self._pools:
            self._pools[name] = _Pool(self._kube, self._namespace, name, pool)
        return self._pools[name]

    async def _ledgers(self, fresh: bool = False) -> dict[str, _Pool]:
        """Every ledger there is, found by its label (one list; another replica may have made new ones)."""
        if fresh or time.monotonic() - self._listed_at > CACHE_SECONDS:
            listed = await self._kube.list_config_maps(self._namespace, LEDGER_LABEL)
            for name, (pool, stored) in listed.items():
                self._pool(name, pool).seed(stored)
            self._listed_at = time.monotonic()
        return self._pools

    async def _split_legacy(self) -> None:
        """Move each name from a ledger of before the split into its own; safe to repeat after a kill -9.

        The names are written to their new ledgers first, and only then dropped from the old
        one, so a crash in between leaves them in both, held by the same Project.
        """
        for pool in NAME_POOLS:
            legacy = self._pools.get(f"ledger-{pool}")
            entries = legacy.cached().entries if legacy else {}
            if legacy is None or not entries:
                continue
            by_ledger: dict[str, dict[str, Holder]] = {}
            for value, holder in entries.items():
                by_ledger.setdefault(name_ledger(pool, value), {})[value] = holder
            await asyncio.gather(*[self._pool(name, pool).run(_Restore(moved)) for name, moved in by_ledger.items()])
            await legacy.run(_Restore({value: None for value in entries}))

    async def _held(self, uid: str) -> dict[str, frozenset[str]]:
        pools = dict(await self._ledgers())  # a snapshot: other claims add ledgers meanwhile
        ledgers = await asyncio.gather(*[pool.current() for pool in pools.values()])
        return {name: held for name, ledger in zip(pools, ledgers, strict=True) if (held := ledger.held_by(uid))}

    async def held(self, key: ProjectKey) -> list[Claim]:
        held = await self._held(key.uid)
        return [Claim(self._pools[name].pool, value) for name, values in held.items() for value in sorted(values)]

    async def ensure(
        self, key: ProjectKey, spec: ProjectSpec, current_port: int | None = None, current_alternate: int | None = None
    ) -> Claimed:
        """Claim everything the spec needs and release what it no longer does.

        All or nothing: when one ledger refuses, what the others newly took is given back and
        nothing is released, so a Project whose allocation failed holds exactly what it did.
        """
        before = await self._held(key.uid)
        plan, port = await self._plan(key, spec, before, (current_port, current_alternate))
        decided = await self._claim(key, before, plan.claims)
        # No port scope: the Project's hosts or Service are its own, so its numbers are nobody else's.
        ports = _as_ports(decided[plan.port_ledger] if plan.port_ledger else port.decide(Ledger())[0])
        holder = Holder(key.uid, str(key))
        more = {name: ExactRequest(holder, ports, scope) for name, scope in plan.more_ports.items()}
        await self._claim(key, before, more, also_undo=list(plan.claims))
        refusals = [r for r in decided.values() if isinstance(r, Refusal)]
        domain_conflict = Refusal(refusals[0].reason, "; ".join(r.message for r in refusals)) if refusals else None
        now = await self._held(key.uid)
        keep = plan.keep(now, ports)
        if domain_conflict is not None:  # the route keeps the domains it had: none go, none new stay
            keep.update({name: before.get(name, frozenset()) for name in now if name.startswith("ledger-domain")})
        await asyncio.gather(*[self._pools[n].run(KeepOnlyRequest(key.uid, values)) for n, values in keep.items()])
        return Claimed(allocations_for(spec, *ports[:2]), domain_conflict)

    async def _plan(self, key: ProjectKey, spec: ProjectSpec, held: Mapping[str, frozenset[str]],
                    current: tuple[int | None, int | None]) -> tuple[ClaimPlan, Request]:  # fmt: skip
        """The plan, and its port request: decided against every ledger the port must agree with."""
        scopes = [port_ledger(scope) for scope in port_scopes(spec)]
        others = [self._pool(name, "port") for name in [*scopes[1:], LEGACY_PORT_LEDGER]] if scopes else []
        await asyncio.gather(*[pool.current() for pool in others])

        def elsewhere(number: int) -> Holder | None:
            return next((h for pool in others if (h := pool.cached().holder(str(number))) is not None), None)

        port_free = self._local_port_free if spec.servers.provider is Provider.local else None
        port = port_request(key, spec, self._reserved, current, port_free, elsewhere)
        plan = plan_claims(key, spec, held, port)
        for name, request in plan.claims.items():
            self._pool(name, getattr(request, "pool", "port"))
        return plan, port

    async def _claim(self, key: ProjectKey, before: Mapping[str, frozenset[str]], claims: Mapping[str, Request],
                     also_undo: Iterable[str] = ()) -> dict[str, Value]:  # fmt: skip
        """Run the claims; if one fails, give back what every one (and ``also_undo``) newly took, and raise."""
        names = list(claims)
        for name in names:
            self._pool(name, "port")
        # Ledgers are independent: a new Project waits for one round of writes, not one per value.
        results = await asyncio.gather(*[self._pools[n].run(claims[n]) for n in names], return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is None:
            return {n: r for n, r in zip(names, results, strict=True) if not isinstance(r, BaseException)}
        undo = [self._pools[n].run(KeepOnlyRequest(key.uid, before.get(n, frozenset())))
                for n in {*claims, *also_undo}]  # fmt: skip
        await asyncio.gather(*undo, return_exceptions=True)
        raise failure

    async def collect(self, living: Callable[[], Awaitable[set[str]]]) -> int:
        """Release what Projects that no longer exist still hold (their finalizer was removed by hand).

        The ledgers are read before the Projects are listed: a holder missing from the list
        was gone before it was taken, and one created since holds nothing in what was read.
        """
        pools = list((await self._ledgers(fresh=True)).values())
        ledgers = await asyncio.gather(*[pool.current(fresh=True) for pool in pools])
        holders = {uid for ledger in ledgers for uid, values in ledger.by_uid.items() if values}
        if not holders:
            return 0
        gone = holders - await living()
        released = await asyncio.gather(*[pool.run(ReleaseRequest(uid)) for pool in pools for uid in gone
                                          if pool.cached().held_by(uid)])  # fmt: skip
        return sum(n for n in released if isinstance(n, int))

    async def release_all(self, key: ProjectKey) -> int:
        pools = list((await self._ledgers(fresh=True)).values())
        released = await asyncio.gather(*[pool.run(ReleaseRequest(key.uid)) for pool in pools])
        return sum(n for n in released if isinstance(n, int))

    async def allocations_for_teardown(
        self, key: ProjectKey, spec: ProjectSpec, ports: tuple[int | None, int | None]
    ) -> Allocations:
        """What this Project holds, as allocations: only what it holds is its to tear down."""
        return self.allocations_held(spec, await self.held(key), ports)

    @staticmethod
    def allocations_held(spec: ProjectSpec, held: list[Claim], ports: tuple[int | None, int | None] = (None, None)
                         ) -> Allocations:  # fmt: skip
        """Allocations as currently claimed, without claiming anything (for teardown).

        ``ports`` are the primary and alternate as status last recorded them: with no port
        scope (`claimplan.port_scopes`) they are all there is; otherwise the held ports say.
        Only names this Project holds in the ledger: one it was refused (another Project's bucket,
        an operator name) was never made by it, so it is nobody's to delete here.
        """
        held_ports = sorted({int(c.value) for c in held if c.pool == "port"})
        if not port_scopes(spec) and not held_ports:
            derived = allocations_for(spec, *ports)
        else:
            primary = ports[0] if ports[0] in held_ports else min(held_ports, default=None)
            derived = allocations_for(spec, primary, next((p for p in held_ports if p != primary), None))
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
        await self._ledgers(fresh=True)
        plan, port = await self._plan(key, spec, await self._held(key.uid), (current_port, current_alternate))
        decided = {name: request.decide(await self._pools[name].current())[0] for name, request in plan.claims.items()}
        ports = _as_ports(decided[plan.port_ledger] if plan.port_ledger else port.decide(Ledger())[0])
        refusal = next((r for r in decided.values() if isinstance(r, Refusal)), None)
        return Claimed(allocations_for(spec, *ports[:2]), refusal)


class _Restore:
    """Add these entries, or drop them (``None``): a ledger of before the split moving into its shards."""

    def __init__(self, entries: Mapping[str, Holder | None]) -> None:
        self.entries = dict(entries)

    def decide(self, ledger: Ledger) -> tuple[None, dict[str, Holder | None]]:
        # A value is added only where nobody holds it, and dropped wherever it is.
        return None, {value: holder for value, holder in self.entries.items()
                      if (holder is None) != (ledger.holder(value) is None)}  # fmt: skip
