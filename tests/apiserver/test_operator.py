"""The operator as a real process against a real, audited API server.

Covers the reconciler core's promises end to end: 200 Projects converge with unique
allocations while the operator is SIGKILLed and restarted; a converged fleet causes
no writes; deleting everything leaves no claim behind; a standby replica does not act.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.local.cluster import LocalCluster
from tests.conftest import start_cluster
from tests.factories import project
from tests.helpers import OperatorProcess, ledger_entries, projects, wait_for

CLAIMS_NS = "codeb-system"
AUDIT_WRITES = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster of its own, logging every write, so counts are not disturbed by other tests."""
    local = start_cluster(tmp_path_factory.mktemp("audited"), audit_policy=AUDIT_WRITES)
    yield local
    local.stop()


def fleet(namespace: str, count: int, per_host: int | None = None, prefix: str = "app") -> str:
    """``count`` Projects spread over the three environments, half with data features.

    Provider local (all on this machine), or with ``per_host`` quadlet on shared ``existing``
    hosts, that many Projects to each: a fleet larger than one machine's port range.
    """
    docs = []
    envs = ["production", "staging", "preview"]
    for i in range(count):
        features = {"database": {}, "redis": {}, "storage": {}} if i % 2 == 0 else {}
        servers = {} if per_host is None else {"servers": {
            "provider": "existing", "runtime": "quadlet", "hosts": [f"h{i // per_host}.fleet.example"],
            "ssh": {"secretRef": "deploy-key"},
        }}  # fmt: skip
        # Names (and so domains) are the fleet's own: two fleets of the cluster never claim the same.
        doc = project(f"{prefix}-{i:03d}", namespace, env=envs[i % 3], features=features, **servers)
        docs.append(json.dumps(doc))
    return "\n---\n".join(docs)


def settled(item: dict[str, Any]) -> bool:
    """Reconciled for its generation, with nothing left that waiting would change.

    With the real driver registry a local Project without a Platform has real hosts (the
    operator's machine) and no driver yet for the rest: Synced=False NotImplemented, never Ready.
    """
    status = item.get("status", {})
    synced = next((c for c in status.get("conditions", []) if c["type"] == "Synced"), {})
    return status.get("observedGeneration") == item["metadata"]["generation"] and synced.get("reason") in (
        "Converged",
        "NotImplemented",
    )


def all_settled(cluster: LocalCluster, namespace: str, count: int) -> bool:
    items = projects(cluster, namespace)
    return len(items) == count and all(settled(i) for i in items)


def assert_claims_consistent(cluster: LocalCluster, namespace: str) -> None:
    items = projects(cluster, namespace)
    uids = {i["metadata"]["uid"]: i for i in items}
    by_owner: dict[str, list[tuple[str, str]]] = {}
    for pool, entries in ledger_entries(cluster, CLAIMS_NS).items():
        for value, holder in entries.items():
            uid, _, owner = holder.partition(" ")
            if owner.startswith(f"{namespace}/"):  # the ledgers are the cluster's; other tests' fleets are theirs
                by_owner.setdefault(uid, []).append((pool, value))
    assert set(by_owner) <= set(uids), "a claim outlived its Project (leak)"
    ports = []
    for uid, item in uids.items():
        held = by_owner.get(uid, [])
        port_claims = sorted(value.removeprefix("ledger-port-local:") for pool, value in held if pool == "port")
        allocations = item["status"]["allocations"]
        # Runtime local holds a pair: blue's port and green's.
        mine = [allocations["port"], *([allocations["alternatePort"]] if "alternatePort" in allocations else [])]
        assert port_claims == sorted(str(p) for p in mine), (
            f"{item['metadata']['name']} holds {port_claims}, not {mine}"
        )
        ports.extend(mine)
        # ports and domain always; database, Redis user and bucket with the data features.
        expected = len(mine) + (4 if item["spec"]["features"].get("database") else 1)
        assert len(held) == expected, f"{item['metadata']['name']} holds {held}"
    # A ledger maps each value to one holder, so sharing is impossible by construction;
    # what remains to check is that status never reports a port the ledger gave elsewhere.
    assert len(ports) == len(set(ports)), "two Projects report the same port"


def operator_writes(cluster: LocalCluster, since: int) -> Counter[str]:
    """Writes by the operator's user (not kubectl, not the API server itself) since byte ``since``."""
    counts: Counter[str] = Counter()
    with cluster.audit_log.open() as log:
        log.seek(since)
        for line in log:
            entry: dict[str, Any] = json.loads(line)
            if entry["user"]["username"] != "codeb-admin" or entry.get("userAgent", "").startswith("kubectl"):
                continue
            ref = entry.get("objectRef", {})
            counts[f"{entry['verb']} {ref.get('resource')}/{ref.get('subresource', '')}".rstrip("/")] += 1
    return counts


def test_fleet_converges_through_sigkills_stays_quiet_and_cleans_up(audited: LocalCluster, tmp_path: Path) -> None:
    cluster, namespace, count = audited, "fleet", 200
    cluster.kubectl("create", "namespace", namespace)
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="10").start()
    try:
        cluster.kubectl("apply", "-f", "-", input_text=fleet(namespace, count))
        rng = random.Random(20261121)
        for _ in range(10):
            time.sleep(rng.uniform(0.5, 4.0))
            operator.kill()
            operator.start()
        wait_for(lambda: all_settled(cluster, namespace, count), timeout=240, what="200 Projects settled")
        assert_claims_consistent(cluster, namespace)

        for item in projects(cluster, namespace):
            conditions = {c["type"]: c for c in item["status"]["conditions"]}
            assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "NotImplemented"
            assert conditions["InfrastructureReady"]["status"] == "True"  # the operator's own machine
            assert conditions["WorkloadReady"]["reason"] == "NotImplemented"

        # Steady state: drift ticks every 10 s observe everything and must change nothing.
        time.sleep(12)
        offset = cluster.audit_log.stat().st_size
        time.sleep(60)
        writes = operator_writes(cluster, offset)
        total = sum(writes.values())
        print(f"\nwrites by the operator in a 60 s window with {count} Ready projects: {total} {dict(writes)}")
        assert total == 0, writes

        cluster.kubectl("delete", "projects", "--all", "-n", namespace, "--wait=false")
        wait_for(lambda: projects(cluster, namespace) == [], timeout=180, what="all Projects deleted")
        assert all(entries == {} for entries in ledger_entries(cluster, CLAIMS_NS).values())
    finally:
        operator.stop()


def test_standby_replica_does_not_act_twice(audited: LocalCluster, tmp_path: Path) -> None:
    """Two replicas of an installation as it comes (CODEB_PEERING, no peering object applied by hand: the
    first replica makes it): one acts, the other stands by."""
    cluster, namespace = audited, "peered"
    cluster.kubectl("create", "namespace", namespace)
    assert cluster.kubectl("get", "clusterkopfpeering", "codeb", check=False).returncode != 0
    replicas = [
        OperatorProcess(cluster, tmp_path / f"replica-{i}.log", CODEB_PEERING="codeb", CODEB_PEERING_PRIORITY=str(p))
        for i, p in enumerate((100, 200))
    ]
    for replica in replicas:
        replica.start()
    try:
        # Work arrives once both replicas are registered and only one acts, not after a guessed delay: on a
        # cold machine a replica may take longer than any fixed sleep to start.
        wait_for(lambda: peering_settled(cluster, replicas), timeout=90, what="one replica active, one standing by")
        cluster.kubectl("apply", "-f", "-", input_text=fleet(namespace, 10))
        wait_for(lambda: all_settled(cluster, namespace, 10), timeout=120, what="10 Projects settled")
        # Each Project was allocated exactly once, by one replica.
        assert_claims_consistent(cluster, namespace)
        acting = [i for i, r in enumerate(replicas) if "Handler 'build_registry.<locals>.changed'" in r.log()]
        assert acting == [1], "only the higher-priority replica acts"
    finally:
        for r in replicas:
            r.stop()


TAKEOVER_LIFETIME = 10


def test_the_standby_takes_over_when_the_active_replica_is_killed(audited: LocalCluster, tmp_path: Path) -> None:
    """SIGKILL of the active replica: the standby resumes within the peering lifetime (and a little), settles
    the Projects that came meanwhile, and redoes nothing the killed one finished (counted from the audit log)."""
    cluster, namespace = audited, "takeover"
    cluster.kubectl("create", "namespace", namespace)
    took = takeover(cluster, namespace, tmp_path, "takeover")
    print(f"\nstandby took over {took:.1f} s after the active replica was killed (lifetime {TAKEOVER_LIFETIME} s)")
    assert took <= TAKEOVER_LIFETIME + 10


def takeover(cluster: LocalCluster, namespace: str, logs: Path, peering: str, before: int = 4, after: int = 4) -> float:
    """Two replicas; ``before`` Projects settled by the active one; it is killed; ``after`` more arrive. Seconds
    from the kill until the standby resumed (asserting it settles all, once). Used by bench/takeover.py too."""
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}}
    ))  # fmt: skip
    lifetime = str(TAKEOVER_LIFETIME)
    replicas = [OperatorProcess(cluster, logs / f"{peering}-{i}.log", CODEB_PEERING=peering,
                                CODEB_PEERING_PRIORITY=str(p), CODEB_PEERING_LIFETIME=lifetime)
                for i, p in enumerate((100, 200))]  # fmt: skip
    for replica in replicas:
        replica.start()
    try:
        wait_for(lambda: peering_settled(cluster, replicas, peering), timeout=90, what="one replica active")
        cluster.kubectl("apply", "-f", "-", input_text=fleet(namespace, before, prefix=peering))
        wait_for(lambda: all_settled(cluster, namespace, before), timeout=120, what=f"{before} Projects settled")
        standby, active = replicas
        resumed_before = standby.log().count("Resuming operations")
        offset = cluster.audit_log.stat().st_size
        active.kill()
        killed = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input_text=fleet(namespace, before + after, prefix=peering))
        wait_for(lambda: standby.log().count("Resuming operations") > resumed_before, timeout=TAKEOVER_LIFETIME + 60,
                 what="the standby resumed", interval=0.1)  # fmt: skip
        took = time.monotonic() - killed
        wait_for(lambda: all_settled(cluster, namespace, before + after), timeout=120, what="all Projects settled")
        assert_claims_consistent(cluster, namespace)
        redone = writes_to(cluster, offset, {f"{peering}-{i:03d}" for i in range(before)})
        assert redone == Counter(), f"the standby rewrote what the killed replica had finished: {redone}"
        return took
    finally:
        for r in replicas:
            r.stop()


def writes_to(cluster: LocalCluster, since: int, names: set[str]) -> Counter[str]:
    """The operator's writes since byte ``since`` to the objects named ``names`` (a Project's, its status)."""
    counts: Counter[str] = Counter()
    with cluster.audit_log.open() as log:
        log.seek(since)
        for line in log:
            entry: dict[str, Any] = json.loads(line)
            ref = entry.get("objectRef", {})
            if entry["user"]["username"] != "codeb-admin" or entry.get("userAgent", "").startswith("kubectl"):
                continue
            if ref.get("name") in names:
                counts[f"{entry['verb']} {ref.get('resource')}/{ref.get('subresource', '')} {ref['name']}"] += 1
    return counts


def peering_settled(cluster: LocalCluster, replicas: list[OperatorProcess], peering: str = "codeb") -> bool:
    """Both replicas in the peering object, the higher one resumed, the lower one paused.

    kopf starts a replica with mandatory peering paused and resumes it once it sees no peer above it;
    the standby never resumes, or pauses again once it sees the other ("Pausing ... in favour of").
    """
    found = cluster.kubectl("get", "clusterkopfpeering", peering, "-o", "json", check=False)
    if found.returncode != 0:
        return False  # not made yet (the first replica to start makes it)
    peers = json.loads(found.stdout).get("status") or {}
    standby, active = replicas[0].log(), replicas[1].log()
    resumed = "Resuming operations" in active
    return len(peers) >= 2 and resumed and standby.rfind("Resuming operations") <= standby.rfind("Pausing operations")
