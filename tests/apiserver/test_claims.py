"""Claims against the real API server: atomic, restart-safe, released on deletion."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from controller.claims import LABEL_KIND, LABEL_UID, ClaimStore
from controller.errors import AllocationConflict
from controller.kube import KubeClient, api_client_from_environment
from controller.localcluster import LocalCluster
from controller.naming import ProjectKey
from schemas.project import ProjectSpec
from tests.factories import project_spec
from tests.helpers import leases


@pytest.fixture()
def kube(cluster: LocalCluster) -> Iterator[KubeClient]:
    api = api_client_from_environment(pool_size=16, config_file=str(cluster.kubeconfig))
    with ThreadPoolExecutor(16) as pool:
        yield KubeClient(api, pool)
    api.close()


@pytest.fixture()
async def store(kube: KubeClient) -> AsyncIterator[ClaimStore]:
    claims = ClaimStore(kube, f"claims-{uuid.uuid4().hex[:8]}", reserved_ports={4500})
    await claims.setup()
    yield claims


def key(name: str) -> ProjectKey:
    return ProjectKey("ns", name, str(uuid.uuid4()))


def spec(slug: str, **sections: object) -> ProjectSpec:
    return ProjectSpec.model_validate(project_spec(slug=slug, **sections))


async def test_concurrent_allocations_never_share_a_port(store: ClaimStore) -> None:
    keys = [key(f"p{i}") for i in range(60)]
    # Two "replicas" allocating for every project at once.
    results = await asyncio.gather(*[store.ensure(k, spec(k.name)) for k in keys for _ in range(2)])
    ports_by_project: dict[str, set[int | None]] = {}
    for k, alloc in zip([k for k in keys for _ in range(2)], results, strict=True):
        ports_by_project.setdefault(k.uid, set()).add(alloc.port)
    assert all(len(p) == 1 for p in ports_by_project.values()), "one project got two ports"
    ports = [next(iter(p)) for p in ports_by_project.values()]
    assert len(set(ports)) == 60 and all(p is not None and 4501 <= p <= 4999 for p in ports)
    held = [await store.held(k) for k in keys]
    assert all(len([x for x in h if x.labels[LABEL_KIND] == "port"]) == 1 for h in held)


async def test_allocation_is_stable_across_restarts(kube: KubeClient, store: ClaimStore) -> None:
    k = key("stable")
    first = await store.ensure(k, spec("stable"))
    # A new store object is what a restarted operator has: nothing in memory.
    again = await ClaimStore(kube, store._namespace, {4500}).ensure(k, spec("stable"))
    assert again == first


async def test_pinned_port_taken_is_refused_with_the_owner(store: ClaimStore) -> None:
    owner = key("owner")
    await store.ensure(owner, spec("owner", resources={"port": 4600}))
    with pytest.raises(AllocationConflict, match=r"resources.port 4600 is already used by ns/owner"):
        await store.ensure(key("late"), spec("late", resources={"port": 4600}))


async def test_derived_name_conflict_names_the_field(store: ClaimStore) -> None:
    await store.ensure(key("a"), spec("shop", features={"database": {}}))
    with pytest.raises(AllocationConflict, match=r"database name 'shop_staging_db'.*spec.project.slug"):
        await store.ensure(key("b"), spec("shop", features={"database": {}}))


async def test_changing_a_pinned_port_releases_the_old_one(cluster: LocalCluster, store: ClaimStore) -> None:
    k = key("mover")
    await store.ensure(k, spec("mover", resources={"port": 4700}))
    await store.ensure(k, spec("mover", resources={"port": 4701}))
    names = {lease.name for lease in await store.held(k)}
    assert "port-4701" in names and "port-4700" not in names


async def test_crash_leftover_duplicate_port_is_released(kube: KubeClient, store: ClaimStore) -> None:
    k = key("dup")
    alloc = await store.ensure(k, spec("dup"))
    # Simulate a crash between two allocations: an extra port claim for the same project.
    extra = 4999 if alloc.port != 4999 else 4998
    labels = {LABEL_UID: k.uid, LABEL_KIND: "port"}
    await kube.create_lease(store._namespace, f"port-{extra}", k.uid, labels, {})
    assert (await store.ensure(k, spec("dup"))).port == min(alloc.port or 0, extra)
    assert len([x for x in await store.held(k) if x.labels[LABEL_KIND] == "port"]) == 1


async def test_release_all_leaves_nothing(cluster: LocalCluster, store: ClaimStore) -> None:
    k = key("gone")
    await store.ensure(k, spec("gone", features={"database": {}, "redis": {"isolation": "dbIndex"}, "storage": {}}))
    assert len(await store.held(k)) == 5  # port, database, cache, bucket, redis-db
    assert await store.release_all(k) == 5
    assert leases(cluster, store._namespace) == []


async def test_full_range_is_reported_not_looped(store: ClaimStore) -> None:
    low_taker = key("xx")
    # Preview has 1000 ports; staging has 499 after the reserved one. Fill staging quickly by pinning.
    await asyncio.gather(*[store.ensure(key(f"f{p}"), spec(f"f{p}", resources={"port": p})) for p in range(4501, 5000)])
    with pytest.raises(AllocationConflict, match="no free port"):
        await store.ensure(low_taker, spec("xx"))
