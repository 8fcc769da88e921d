"""A Platform's per-namespace quota against the real API server: a Project past it claims nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controller.claims import quotas
from controller.claims.store import ClaimStore
from controller.clients.kube import KubeClient
from controller.drivers.platforms import PlatformDrivers
from controller.drivers.registry import DriverRegistry
from controller.local.cluster import LocalCluster
from controller.loop.naming import ProjectKey
from controller.loop.reconciler import ProjectInput, Reconciler
from controller.loop.status import condition
from schemas.platform import NamespaceQuotas
from schemas.project import ProjectSpec, ProjectStatus
from tests.factories import project
from tests.helpers import get_json


@pytest.fixture()
async def claims(kube: KubeClient) -> AsyncIterator[ClaimStore]:
    store = ClaimStore(kube, f"claims-{uuid.uuid4().hex[:8]}")
    await store.setup()
    yield store


def apply(cluster: LocalCluster, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))


def platform(name: str, namespace: str, **limits: int) -> dict[str, Any]:
    return {"apiVersion": "codeb.dev/v1alpha1", "kind": "Platform", "metadata": {"name": name},
            "spec": {"namespaces": {"names": [namespace]}, "quotas": limits}}  # fmt: skip


async def reconciled(cluster: LocalCluster, reconciler: Reconciler, namespace: str, name: str) -> tuple[str, str]:
    body = get_json(cluster, "project", name, "-n", namespace)
    key = ProjectKey(namespace, name, body["metadata"]["uid"])
    spec = ProjectSpec.model_validate(body["spec"])
    outcome = await reconciler.reconcile(ProjectInput(key, 1, spec, ProjectStatus()))
    synced = condition(outcome.status, "Synced")
    assert synced is not None
    return synced.reason, synced.message


async def test_a_project_past_its_namespaces_quota_is_refused_and_claims_nothing(
    cluster: LocalCluster, kube: KubeClient, claims: ClaimStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quotas, "LIST_SECONDS", 0.0)  # every check lists: the test changes what is there
    suffix = uuid.uuid4().hex[:6]
    namespace, edge = f"quota-{suffix}", f"edge-{suffix}"
    cluster.kubectl("create", "namespace", namespace)
    apply(cluster, platform(edge, namespace, projects=2, domains=3))
    for name, domains in (("pa", 2), ("pb", 1), ("pc", 1)):
        doc = project(
            name,
            namespace,
            servers={"provider": "local", "runtime": "local", "platform": edge},
            environment={"type": "staging", "domains": [f"{name}{i}.example.com" for i in range(domains)]},
        )
        apply(cluster, doc)  # fmt: skip
    reconciler = Reconciler(DriverRegistry(platforms=PlatformDrivers(kube)), claims)
    assert (await reconciled(cluster, reconciler, namespace, "pa"))[0] != "QuotaExceeded"
    assert (await reconciled(cluster, reconciler, namespace, "pb"))[0] != "QuotaExceeded"
    reason, message = await reconciled(cluster, reconciler, namespace, "pc")
    assert reason == "QuotaExceeded" and "may have 2 Projects on Platform" in message
    pc = get_json(cluster, "project", "pc", "-n", namespace)["metadata"]["uid"]
    assert await claims.held(ProjectKey(namespace, "pc", pc)) == []  # not a port, not a domain
    # The Platform's admin tightens the domains: the newest Project whose domains do not fit is refused.
    apply(cluster, platform(edge, namespace, projects=2, domains=2))
    assert (await reconciled(cluster, reconciler, namespace, "pb"))[0] == "QuotaExceeded"
    # An older Project goes, and the next in line is in.
    apply(cluster, platform(edge, namespace, projects=2, domains=10))
    cluster.kubectl("delete", "project", "pa", "-n", namespace, "--wait=false")
    cluster.kubectl("patch", "project", "pa", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                    check=False)  # fmt: skip
    assert (await reconciled(cluster, reconciler, namespace, "pc"))[0] != "QuotaExceeded"
    assert {c.pool for c in await claims.held(ProjectKey(namespace, "pc", pc))} >= {"port", "domain"}


async def test_projects_without_a_platform_meet_the_operators_own_limit(
    cluster: LocalCluster, kube: KubeClient, claims: ClaimStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`CODEB_QUOTA_PROJECTS` bounds what a namespace claims without a Platform (ports on this machine,
    names, domains); Projects on a Platform are the Platform's to count."""
    monkeypatch.setattr(quotas, "LIST_SECONDS", 0.0)
    suffix = uuid.uuid4().hex[:6]
    namespace, edge = f"unplaced-{suffix}", f"edge-{suffix}"
    cluster.kubectl("create", "namespace", namespace)
    apply(cluster, platform(edge, namespace))
    for name, placed in (("on-edge", True), ("first", False), ("second", False)):
        servers = {"provider": "local", "runtime": "local", **({"platform": edge} if placed else {})}
        environment = {"type": "staging", "domains": [f"{name}-{suffix}.example.com"]}
        apply(cluster, project(name, namespace, servers=servers, environment=environment))
    registry = DriverRegistry(platforms=PlatformDrivers(kube),
                              unplaced_quotas=(NamespaceQuotas(projects=1), quotas.QuotaCheck(kube)))  # fmt: skip
    reconciler = Reconciler(registry, claims)
    assert (await reconciled(cluster, reconciler, namespace, "on-edge"))[0] != "QuotaExceeded"
    assert (await reconciled(cluster, reconciler, namespace, "first"))[0] != "QuotaExceeded"
    reason, message = await reconciled(cluster, reconciler, namespace, "second")
    assert reason == "QuotaExceeded" and "may have 1 Projects without a Platform (CODEB_QUOTA_PROJECTS)" in message
    second = get_json(cluster, "project", "second", "-n", namespace)["metadata"]["uid"]
    assert await claims.held(ProjectKey(namespace, "second", second)) == []
