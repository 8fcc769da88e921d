"""Ledgers that bound one machine, not the fleet: ports per shared host, names split, old ledgers moved,
entries of vanished Projects collected (against the real API server)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from controller.claims.ledger import Holder
from controller.claims.plan import name_ledger
from controller.claims.store import LEDGER_LABEL, LEGACY_PORT_LEDGER, ClaimStore
from controller.clients.kube import KubeClient
from controller.local.cluster import LocalCluster
from controller.loop.naming import ProjectKey
from schemas.project import ProjectSpec
from tests.factories import project_spec
from tests.helpers import ledger_entries


@pytest.fixture()
async def store(kube: KubeClient, namespace: str) -> AsyncIterator[ClaimStore]:
    claims = ClaimStore(kube, namespace)
    await claims.setup()
    yield claims


def key(name: str) -> ProjectKey:
    return ProjectKey("ns", name, str(uuid.uuid4()))


def on_hosts(slug: str, *hosts: str, **sections: object) -> ProjectSpec:
    servers = {"provider": "existing", "runtime": "quadlet", "hosts": list(hosts), "ssh": {"secretRef": "key"}}
    return ProjectSpec.model_validate(project_spec(slug=slug, servers=servers, **sections))


def ports(claimed: object) -> set[int]:
    allocations = getattr(claimed, "allocations")  # noqa: B009
    return {allocations.port, allocations.alternate_port}


async def test_a_port_is_unique_on_each_host_and_free_to_reuse_on_another(store: ClaimStore) -> None:
    a = await store.ensure(key("aa"), on_hosts("aa", "h1.example.net"))
    both = await store.ensure(key("both"), on_hosts("both", "h1.example.net", "h2.example.net"))
    c = await store.ensure(key("cc"), on_hosts("cc", "h2.example.net"))
    elsewhere = await store.ensure(key("dd"), on_hosts("dd", "h3.example.net"))
    assert not ports(a) & ports(both) and not ports(both) & ports(c)  # sharing a host: never the same
    assert ports(elsewhere) == ports(a)  # a host nobody else uses starts at the bottom of the range again
    cloud = {"provider": "vultr", "runtime": "quadlet", "region": "icn"}
    alone = key("own")
    own = await store.ensure(alone, ProjectSpec.model_validate(project_spec(slug="own", servers=cloud)))
    assert ports(own) == ports(a)  # hosts of its own: no ledger at all, only its domain
    assert {c.pool for c in await store.held(alone)} == {"domain"}


async def test_a_project_moving_hosts_gives_up_its_ports_on_the_old_one(
    cluster: LocalCluster, store: ClaimStore, namespace: str
) -> None:
    mover = key("mover")
    first = await store.ensure(mover, on_hosts("mover", "h1.example.net"))
    await store.ensure(mover, on_hosts("mover", "h2.example.net"), *sorted(ports(first)))
    taker = await store.ensure(key("taker"), on_hosts("taker", "h1.example.net"))
    assert ports(taker) == ports(first)  # h1's numbers were given back
    held = ledger_entries(cluster, namespace)["port"]
    assert sum(1 for holder in held.values() if holder.startswith(mover.uid)) == 2


async def test_names_from_one_old_ledger_are_moved_into_their_shards_even_after_a_crash(
    kube: KubeClient, namespace: str, cluster: LocalCluster
) -> None:
    holders = {f"db_{i}": Holder(f"uid-{i}", f"ns/p{i}") for i in range(40)}
    data = {name: holder.encode() for name, holder in holders.items()}
    await kube.ensure_namespace(namespace)
    await kube.write_config_map(namespace, "ledger-database", data, {LEDGER_LABEL: "database"}, None)
    # A kill -9 in the middle of the move: one shard written, the old ledger still whole.
    first = name_ledger("database", "db_0")
    moved = {n: d for n, d in data.items() if name_ledger("database", n) == first}
    await kube.write_config_map(namespace, first, moved, {LEDGER_LABEL: "database"}, None)
    store = ClaimStore(kube, namespace)
    await store.setup()
    old = await kube.read_config_map(namespace, "ledger-database")
    assert old is not None and old.data == {}
    assert ledger_entries(cluster, namespace)["database"] == data  # every name once, with its holder
    # And the names are held where a new claim looks for them.
    taken = ProjectSpec.model_validate(project_spec(slug="db", features={"database": {}}))
    holder = holders["db_0"]
    assert {c.value for c in await store.held(ProjectKey("ns", "p0", holder.uid))} == {"db_0"}
    assert (await store.ensure(key("new"), taken)).allocations.database not in holders


async def test_ports_of_the_old_ledger_stay_taken_until_their_holder_moves(
    kube: KubeClient, namespace: str, cluster: LocalCluster
) -> None:
    old_holder = key("old")
    await kube.ensure_namespace(namespace)
    old = {"4500": Holder(old_holder.uid, str(old_holder)).encode(), "4501": Holder(old_holder.uid, "").encode()}
    await kube.write_config_map(namespace, LEGACY_PORT_LEDGER, old, {LEDGER_LABEL: "port"}, None)
    store = ClaimStore(kube, namespace)
    await store.setup()
    newcomer = await store.ensure(key("new"), on_hosts("new", "h1.example.net"))
    assert ports(newcomer).isdisjoint({4500, 4501})  # the old holder may be on this very host
    kept = await store.ensure(old_holder, on_hosts("old", "h1.example.net"), 4500, 4501)
    assert ports(kept) == {4500, 4501}
    assert not any(v.startswith(f"{LEGACY_PORT_LEDGER}:") for v in ledger_entries(cluster, namespace)["port"])


async def test_entries_of_projects_that_no_longer_exist_are_collected(store: ClaimStore) -> None:
    alive, gone = key("alive"), key("gone")
    for k in (alive, gone):
        await store.ensure(k, on_hosts(k.name, "h1.example.net", features={"database": {}, "redis": {}}))

    async def living() -> set[str]:
        return {alive.uid}

    assert await store.collect(living) == 5  # two ports, database, Redis user, domain
    assert await store.held(gone) == [] and len(await store.held(alive)) == 5
    assert await store.collect(living) == 0
