"""Allocation ledgers against the real API server: race-free, restart-safe, released on deletion."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from controller.claims.ledger import Claim, Holder
from controller.claims.plan import port_ledger
from controller.claims.store import LEDGER_LABEL, ClaimStore, local_port_free
from controller.clients.kube import KubeClient, api_client_from_environment
from controller.errors import AllocationConflict
from controller.local.cluster import LocalCluster
from controller.loop.naming import ProjectKey
from schemas.project import ProjectSpec
from tests.factories import project_spec
from tests.helpers import ledger_entries


@pytest.fixture()
def kube(cluster: LocalCluster) -> Iterator[KubeClient]:
    api = api_client_from_environment(pool_size=16, config_file=str(cluster.kubeconfig))
    with ThreadPoolExecutor(16) as pool:
        yield KubeClient(api, pool)
    api.close()


@pytest.fixture()
def namespace() -> str:
    return f"claims-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
async def store(kube: KubeClient, namespace: str) -> AsyncIterator[ClaimStore]:
    claims = ClaimStore(kube, namespace, reserved_ports={4500})
    await claims.setup()
    yield claims


def key(name: str) -> ProjectKey:
    return ProjectKey("ns", name, str(uuid.uuid4()))


HOST = "shared.example.net"
# Quadlet on a host other Projects deploy to as well: a pair of ports unique on that host.
SHARED_HOST = {"provider": "existing", "runtime": "quadlet", "hosts": [HOST], "ssh": {"secretRef": "key"}}


def spec(slug: str, **sections: object) -> ProjectSpec:
    """Quadlet on `HOST`, unless ``servers`` says otherwise."""
    sections.setdefault("servers", SHARED_HOST)
    return ProjectSpec.model_validate(project_spec(slug=slug, **sections))


def ports_held(claims: list[Claim]) -> set[str]:
    return {c.value for c in claims if c.pool == "port"}


LOCAL = {"provider": "local", "runtime": "local"}  # two colours: a pair of ports


async def test_two_replicas_allocating_at_once_never_share_a_port(
    cluster: LocalCluster, kube: KubeClient, store: ClaimStore, namespace: str
) -> None:
    # A second store is a second replica: its own cache, the same ledgers. Every write
    # races the other's, so resourceVersion conflicts really happen and are resolved.
    other = ClaimStore(kube, namespace, reserved_ports={4500})
    keys = [key(f"p{i}") for i in range(60)]
    results = await asyncio.gather(*[s.ensure(k, spec(k.name, servers=LOCAL)) for k in keys for s in (store, other)])
    # Runtime local: each Project holds a pair (blue's port and green's), and both replicas agree on it.
    pairs_by_project: dict[str, set[tuple[int | None, int | None]]] = {}
    for k, alloc in zip([k for k in keys for _ in range(2)], results, strict=True):
        pairs_by_project.setdefault(k.uid, set()).add((alloc.allocations.port, alloc.allocations.alternate_port))
    assert all(len(p) == 1 for p in pairs_by_project.values()), "one project got two different pairs"
    ports = [port for pairs in pairs_by_project.values() for port in next(iter(pairs))]
    assert len(set(ports)) == 120 and all(p is not None and 4501 <= p <= 4999 for p in ports)
    stored = ledger_entries(cluster, namespace)["port"]
    assert sorted(int(p.removeprefix("ledger-port-local:")) for p in stored) == sorted(
        p for p in ports if p is not None
    )


async def test_allocation_is_stable_across_restarts(kube: KubeClient, store: ClaimStore, namespace: str) -> None:
    k = key("stable")
    first = await store.ensure(k, spec("stable"))
    # A new store object is what a restarted operator has: nothing in memory.
    again = await ClaimStore(kube, namespace, {4500}).ensure(k, spec("stable"))
    assert again == first


async def test_pinned_port_taken_is_refused_with_the_owner(store: ClaimStore) -> None:
    owner = key("owner")
    await store.ensure(owner, spec("owner", resources={"port": 4600}))
    with pytest.raises(AllocationConflict, match=r"resources.port 4600 is already used by ns/owner"):
        await store.ensure(key("late"), spec("late", resources={"port": 4600}))


async def test_a_conflict_seen_by_a_stale_replica_is_checked_against_the_stored_ledger(
    kube: KubeClient, store: ClaimStore, namespace: str
) -> None:
    first = key("first")
    await store.ensure(first, spec("first", resources={"port": 4650}))
    stale = ClaimStore(kube, namespace, {4500})
    await stale.ensure(key("warm-up"), spec("warm-up"))  # its cache now shows 4650 taken
    await store.release_all(first)
    # The stale replica still believes 4650 taken; a refusal is only final against the stored ledger.
    assert (await stale.ensure(key("second"), spec("second", resources={"port": 4650}))).allocations.port == 4650


async def test_derived_name_conflict_names_the_field(store: ClaimStore) -> None:
    await store.ensure(key("a"), spec("shop", features={"database": {}}))
    with pytest.raises(AllocationConflict, match=r"database name 'shop_staging_db'.*spec.project.slug"):
        await store.ensure(key("b"), spec("shop", features={"database": {}}))


async def test_changing_a_pinned_port_releases_the_old_one(cluster: LocalCluster, store: ClaimStore) -> None:
    k = key("mover")
    await store.ensure(k, spec("mover", resources={"port": 4700}))
    moved = await store.ensure(k, spec("mover", resources={"port": 4701}))
    assert ports_held(await store.held(k)) == {"4701", str(moved.allocations.alternate_port)}
    assert "4700" not in ports_held(await store.held(k))


async def test_crash_leftover_duplicate_port_is_released(kube: KubeClient, store: ClaimStore, namespace: str) -> None:
    k = key("dup")
    alloc = (await store.ensure(k, spec("dup"))).allocations
    # Two replicas racing could leave a second port for one project: write one in by hand.
    ledger = port_ledger(f"host {HOST}")
    stored = await kube.read_config_map(namespace, ledger)
    assert stored is not None and alloc.port is not None
    extra = str(4999 if alloc.port != 4999 else 4998)
    data = {**stored.data, extra: Holder(k.uid, str(k)).encode()}
    await kube.write_config_map(namespace, ledger, data, {LEDGER_LABEL: "port"}, stored.resource_version)
    fresh = ClaimStore(kube, namespace, {4500})
    again = await fresh.ensure(k, spec("dup"), current_port=alloc.port, current_alternate=alloc.alternate_port)
    assert again.allocations.port == alloc.port
    assert ports_held(await fresh.held(k)) == {str(alloc.port), str(alloc.alternate_port)}


async def test_release_all_leaves_nothing(cluster: LocalCluster, store: ClaimStore, namespace: str) -> None:
    k = key("gone")
    await store.ensure(k, spec("gone", features={"database": {}, "redis": {}, "storage": {}}))
    assert {c.pool for c in await store.held(k)} == {"port", "database", "cache", "bucket", "domain"}
    assert await store.release_all(k) == 6  # two ports (blue's and green's), four names
    assert all(entries == {} for entries in ledger_entries(cluster, namespace).values())


async def test_failed_allocation_gives_back_what_it_took(
    cluster: LocalCluster, store: ClaimStore, namespace: str
) -> None:
    await store.ensure(key("a"), spec("shop", features={"database": {}}))
    late = key("b")
    with pytest.raises(AllocationConflict):
        await store.ensure(late, spec("shop", features={"database": {}}))  # same derived database name
    assert await store.held(late) == []  # no port, no domain kept behind a failure
    holders = {h.split(" ", 1)[0] for entries in ledger_entries(cluster, namespace).values() for h in entries.values()}
    assert late.uid not in holders


async def test_a_domain_routes_to_one_project(store: ClaimStore) -> None:
    first, second = key("first"), key("second")
    domains = {"environment": {"type": "staging", "domains": ["shop.example.com", "*.shop.example.com"]}}
    assert (await store.ensure(first, spec("first", **domains))).domain_conflict is None
    taken = await store.ensure(second, spec("second", **domains))
    assert (
        taken.domain_conflict is not None
        and "shop.example.com is already routed by ns/first" in taken.domain_conflict.message
    )
    assert taken.allocations.port is not None  # everything else is still allocated
    assert {c.value for c in await store.held(second) if c.pool == "domain"} == set()
    await store.release_all(first)
    assert (await store.ensure(second, spec("second", **domains))).domain_conflict is None
    assert {c.value for c in await store.held(second) if c.pool == "domain"} == {
        "shop.example.com",
        "_.shop.example.com",
    }


async def test_full_range_is_reported_not_looped(store: ClaimStore) -> None:
    # Staging has 499 ports after the reserved one: 249 pairs fill all but one.
    await asyncio.gather(
        *[store.ensure(key(f"f{p}"), spec(f"f{p}", resources={"port": p})) for p in range(4501, 4999, 2)]
    )
    with pytest.raises(AllocationConflict, match="no free port"):
        await store.ensure(key("xx"), spec("xx"))


async def test_a_port_in_use_on_this_machine_is_not_handed_out(kube: KubeClient, namespace: str) -> None:
    store = ClaimStore(kube, namespace, reserved_ports={4500}, local_port_free=local_port_free)
    await store.setup()
    first = next(p for p in range(4501, 5000) if local_port_free(p))
    with socket.socket() as listener:  # another process's server on the first free port
        listener.bind(("127.0.0.1", first))
        listener.listen()
        claimed = await store.ensure(key("busy"), spec("busy", servers=LOCAL))
    blue, green = claimed.allocations.port, claimed.allocations.alternate_port
    assert blue is not None and green is not None and blue > first and green > first and blue != green


async def test_an_undo_keeps_every_value_held_before(cluster: LocalCluster, store: ClaimStore, namespace: str) -> None:
    """A pool can hold several values for one Project (domains): a failed change keeps all of them."""
    two = {"environment": {"type": "staging", "domains": ["a.example.com", "b.example.com"]}}
    mover = key("mover")
    await store.ensure(mover, spec("mover", **two))
    await store.ensure(key("owner"), spec("taken", features={"database": {}}))
    with pytest.raises(AllocationConflict):  # the change fails: its database name is someone else's
        await store.ensure(mover, spec("taken", features={"database": {}}, **two))
    held = {c.value for c in await store.held(mover) if c.pool == "domain"}
    assert held == {"a.example.com", "b.example.com"}
