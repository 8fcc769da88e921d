"""The reconciler with local drivers and real claims: what it does, and what it reports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import kopf
import pytest

from controller.claims.store import ClaimStore
from controller.clients.kube import KubeClient
from controller.drivers.registry import DriverRegistry
from controller.errors import PermanentError, RetryableError
from controller.local.cluster import LocalCluster
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import ORDER, Component, Observation, State
from controller.loop.reconciler import ProjectInput, Reconciler, Teardown
from controller.loop.status import condition
from controller.operator.handlers import InvalidSpec, project_input, recorded_teardown
from schemas.project import Phase, ProjectSpec, ProjectStatus
from tests.factories import project_spec
from tests.memory_drivers import MemoryDriver, memory_drivers


class FlakyDriver(MemoryDriver):
    """A local driver whose apply fails with a chosen error until told otherwise."""

    def __init__(self, component: Component, error: Exception | None) -> None:
        super().__init__(component)
        self.error = error

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        if self.error is not None:
            raise self.error
        await super().apply(ctx, desired)


@pytest.fixture()
async def claims(kube: KubeClient) -> AsyncIterator[ClaimStore]:
    store = ClaimStore(kube, f"claims-{uuid.uuid4().hex[:8]}")
    await store.setup()
    yield store


def project(
    status: ProjectStatus | None = None, paused: bool = False, generation: int = 1, **sections: Any
) -> ProjectInput:
    sections = {"features": {"database": {}, "redis": {}, "storage": {}}} | sections
    spec = ProjectSpec.model_validate(project_spec(slug="shop", **sections))
    return ProjectInput(ProjectKey("ns", "shop", "uid-1"), generation, spec, status or ProjectStatus(), paused)


def cond(status: ProjectStatus, type_: str) -> tuple[str, str]:
    c = condition(status, type_)
    assert c is not None, f"no {type_} condition"
    return c.status.value, c.reason


async def test_fresh_project_converges_to_ready(claims: ClaimStore) -> None:
    drivers = memory_drivers()
    outcome = await Reconciler(drivers, claims).reconcile(project())
    status = outcome.status
    assert status.phase is Phase.Ready and status.observed_generation == 1
    assert cond(status, "Ready") == ("True", "AllComponentsReady")
    assert cond(status, "Synced") == ("True", "Converged")
    assert cond(status, "DatabaseReady") == ("True", "Ready")
    assert status.allocations.database == "shop_staging_db" and 4500 <= (status.allocations.port or 0) <= 4999
    assert status.endpoints.url == "https://shop.example.com"
    [event] = outcome.events
    assert (event.type, event.reason) == ("Normal", "Created")
    assert event.message.split("; ") == [f"{c.value} create: missing" for c in ORDER]
    assert outcome.retry_after is None


async def test_a_first_clean_converge_posts_no_event(claims: ClaimStore) -> None:
    outcome = await Reconciler(memory_drivers(), claims).reconcile(project(), trigger="create")
    assert outcome.status.phase is Phase.Ready and len(outcome.results) == len(ORDER) and outcome.events == []


async def test_second_pass_does_nothing(claims: ClaimStore) -> None:
    reconciler = Reconciler(memory_drivers(), claims)
    first = await reconciler.reconcile(project())
    second = await reconciler.reconcile(project(status=first.status))
    assert second.events == [] and second.results == []
    assert second.status == first.status  # nothing to write


async def test_drift_is_repaired_and_said(claims: ClaimStore) -> None:
    drivers = memory_drivers()
    reconciler = Reconciler(drivers, claims)
    first = await reconciler.reconcile(project())
    drivers[Component.route].world.clear()  # someone deleted the route by hand
    repaired = await reconciler.reconcile(project(status=first.status), trigger="timer")
    assert [(e.reason, e.message) for e in repaired.events] == [("DriftRepaired", "Route create: missing")]
    assert repaired.status.phase is Phase.Ready


@pytest.mark.parametrize(
    ("paused", "policy", "reason"), [(True, "Manage", "Paused"), (False, "ObserveOnly", "ObserveOnly")]
)
async def test_paused_or_observe_only_reports_drift_and_changes_nothing(
    claims: ClaimStore, paused: bool, policy: str, reason: str
) -> None:
    drivers = memory_drivers()
    outcome = await Reconciler(drivers, claims).reconcile(project(paused=paused, managementPolicy=policy))
    assert all(d.calls == [] for d in drivers.values())
    assert len(outcome.drift) == len(ORDER)  # every component, absent
    assert cond(outcome.status, "Synced") == ("False", reason)
    assert "drift: Infrastructure create" in (condition(outcome.status, "Synced").message)  # type: ignore[union-attr]


async def test_retryable_failure_backs_off_and_blocks_dependents(claims: ClaimStore) -> None:
    drivers: dict[Component, Any] = memory_drivers()
    drivers[Component.database] = FlakyDriver(Component.database, RetryableError("connection refused", delay=7))
    reconciler = Reconciler(drivers, claims)
    outcome = await reconciler.reconcile(project())
    assert outcome.retry_after == 5.0  # progress recheck beats the driver's 7 s
    assert cond(outcome.status, "DatabaseReady") == ("False", "Unavailable")
    assert cond(outcome.status, "WorkloadReady") == ("False", "Waiting")
    assert cond(outcome.status, "CacheReady") == ("True", "Ready")  # independent work went on
    assert outcome.status.phase is Phase.Provisioning
    assert any(e.type == "Warning" and e.reason == "CreateFailed" for e in outcome.events)
    drivers[Component.database].error = None  # the database came back
    recovered = await reconciler.reconcile(project(status=outcome.status))
    assert recovered.status.phase is Phase.Ready and recovered.status.last_error is None


async def test_permanent_failure_sets_failed_with_the_fix(claims: ClaimStore) -> None:
    drivers: dict[Component, Any] = memory_drivers()
    drivers[Component.storage] = FlakyDriver(
        Component.storage, PermanentError("bucket exists and belongs to someone else; set features.storage.bucket")
    )
    outcome = await Reconciler(drivers, claims).reconcile(project())
    assert outcome.status.phase is Phase.Failed
    assert outcome.permanent_error is not None and "features.storage.bucket" in outcome.permanent_error


async def test_ready_project_that_loses_a_component_is_degraded(claims: ClaimStore) -> None:
    drivers: dict[Component, Any] = memory_drivers()
    reconciler = Reconciler(drivers, claims)
    ready = await reconciler.reconcile(project())
    drivers[Component.workload].world.clear()
    drivers[Component.workload] = FlakyDriver(Component.workload, RetryableError("host unreachable"))
    degraded = await reconciler.reconcile(project(status=ready.status))
    assert degraded.status.phase is Phase.Degraded


async def test_a_component_as_asked_but_not_yet_healthy_is_looked_at_again_soon(claims: ClaimStore) -> None:
    """Pods of a scale-up still starting: no change is due, but status must follow them once they are up."""

    class Starting(MemoryDriver):
        healthy = False

        async def observe(self, ctx: DriverContext) -> Observation:
            seen = await super().observe(ctx)
            return replace(seen, healthy=self.healthy, detail=None if self.healthy else "2 of 3 replicas available")

    drivers: dict[Component, Any] = memory_drivers()
    starting = Starting(Component.storage)
    drivers[Component.storage] = starting
    reconciler = Reconciler(drivers, claims)
    first = await reconciler.reconcile(project())
    again = await reconciler.reconcile(project(status=first.status), trigger="retry")
    assert again.results == [] and again.retry_after == 5.0
    assert cond(again.status, "StorageReady")[0] == "False"
    starting.healthy = True
    settled = await reconciler.reconcile(project(status=again.status), trigger="retry")
    assert settled.retry_after is None and cond(settled.status, "StorageReady") == ("True", "Ready")


async def test_spec_change_updates_and_bumps_observed_generation(claims: ClaimStore) -> None:
    reconciler = Reconciler(memory_drivers(), claims)
    first = await reconciler.reconcile(project())
    changed = {"type": "staging", "domains": ["shop.example.com"], "variables": {"CHANGED": "yes"}}
    second = await reconciler.reconcile(project(status=first.status, generation=2, environment=changed))
    assert second.status.rollout is not None
    release, green = second.status.rollout.release, second.status.allocations.alternate_port
    assert [e.message for e in second.events] == [
        "Workload update: start green",
        f"release {release[:8]} starts as green on port {green}: differs in variables",
    ]
    assert second.status.observed_generation == 2


@pytest.mark.parametrize(("policy", "verb"), [("Retain", "release"), ("Delete", "delete")])
async def test_deletion_follows_policy_and_releases_claims(claims: ClaimStore, policy: str, verb: str) -> None:
    drivers = memory_drivers()
    reconciler = Reconciler(drivers, claims)
    created = await reconciler.reconcile(project(deletionPolicy=policy))
    done = await reconciler.finalize(Teardown.of(project(status=created.status, deletionPolicy=policy)))
    assert done.retry_after is None and done.status.phase is Phase.Deleting
    assert drivers[Component.database].calls[-1] == (verb, "uid-1")
    assert drivers[Component.workload].calls[-1] == ("delete", "uid-1")
    assert await claims.held(project().key) == []


def fail_teardown(drivers: dict[Component, Any], component: Component, error: Exception) -> None:
    """Swap in a driver over the same world whose delete raises ``error``."""

    class FailingDelete(MemoryDriver):
        async def delete(self, ctx: DriverContext, retain: bool) -> None:
            raise error

    failing = FailingDelete(component)
    failing.world = drivers[component].world
    drivers[component] = failing


async def test_blocked_deletion_says_why_and_keeps_claims(claims: ClaimStore) -> None:
    drivers: dict[Component, Any] = memory_drivers()
    reconciler = Reconciler(drivers, claims)
    created = await reconciler.reconcile(project())
    fail_teardown(drivers, Component.route, RetryableError("Caddy admin API unreachable"))
    blocked = await reconciler.finalize(Teardown.of(project(status=created.status)))
    assert blocked.retry_after is not None
    assert cond(blocked.status, "Synced") == ("False", "DeleteBlocked")
    assert "Caddy admin API unreachable" in condition(blocked.status, "Synced").message  # type: ignore[union-attr]
    assert await claims.held(project().key) != []


async def test_permanent_teardown_error_still_keeps_the_finalizer(claims: ClaimStore) -> None:
    drivers: dict[Component, Any] = memory_drivers()
    reconciler = Reconciler(drivers, claims)
    created = await reconciler.reconcile(project(deletionPolicy="Delete"))
    error = PermanentError("no place for the final dump; add spec.objectStorage to the Platform")
    fail_teardown(drivers, Component.database, error)
    blocked = await reconciler.finalize(Teardown.of(project(status=created.status, deletionPolicy="Delete")))
    assert blocked.retry_after is not None  # a retry is what keeps kopf's finalizer in place
    assert cond(blocked.status, "Synced") == ("False", "DeleteBlocked")
    assert await claims.held(project().key) != []


async def test_real_registry_reports_no_driver_as_not_implemented(claims: ClaimStore) -> None:
    """The running operator's registry: what has no real driver is never Ready, and no retry loops on it."""
    outcome = await Reconciler(DriverRegistry(), claims).reconcile(project())
    status = outcome.status
    assert cond(status, "InfrastructureReady") == ("True", "Ready")  # the operator's own machine
    for type_ in ("DatabaseReady", "CacheReady", "StorageReady", "WorkloadReady", "BackupReady"):
        assert cond(status, type_) == ("False", "NotImplemented"), type_
    assert "spec.servers.platform" in condition(status, "DatabaseReady").message  # type: ignore[union-attr]
    assert cond(status, "RouteReady") == ("False", "NotImplemented")
    assert cond(status, "Ready") == ("False", "NotImplemented")
    assert cond(status, "Synced") == ("False", "NotImplemented")
    assert status.phase is not Phase.Ready and status.endpoints.url is None and status.endpoints.internal == []
    assert outcome.retry_after is None and outcome.permanent_error is None


async def test_cloud_hosts_without_a_driver_are_not_ready(claims: ClaimStore) -> None:
    servers = {"provider": "vultr", "region": "icn", "runtime": "quadlet", "count": 3}
    outcome = await Reconciler(DriverRegistry(), claims).reconcile(project(servers=servers))
    infra = condition(outcome.status, "InfrastructureReady")
    assert infra is not None and (infra.status.value, infra.reason) == ("False", "NotImplemented")
    assert "provider vultr" in infra.message
    # The data services wait behind hosts that do not exist: parked, not retried.
    assert cond(outcome.status, "DatabaseReady") == ("False", "NotImplemented")
    assert outcome.retry_after is None


async def test_a_spec_that_no_longer_validates_is_torn_down_from_status(claims: ClaimStore) -> None:
    """An upgrade tightened a rule: the stored spec fails validation, yet deletion still tears down."""
    drivers = memory_drivers()
    reconciler = Reconciler(drivers, claims)
    created = await reconciler.reconcile(project(deletionPolicy="Delete"))
    raw = {
        "apiVersion": "codeb.dev/v1alpha1",
        "kind": "Project",
        "metadata": {"name": "shop", "namespace": "ns", "uid": "uid-1", "generation": 3},
        "spec": {
            **project_spec(slug="shop"),
            "deletionPolicy": "Delete",
            "servers": {"provider": "local", "runtime": "local", "hosts": ["not a host"]},
        },  # invalid now
        "status": created.status.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    with pytest.raises(InvalidSpec):
        project_input(kopf.Body(raw))  # type: ignore[arg-type]
    teardown = recorded_teardown(kopf.Body(raw))  # type: ignore[arg-type]
    assert teardown.allocations == created.status.allocations and not teardown.retain_data
    done = await reconciler.finalize(teardown)
    assert done.retry_after is None
    assert all(d.world == {} for d in drivers.values())  # everything torn down, data included
    assert drivers[Component.database].calls[-1] == ("delete", "uid-1")
    assert await claims.held(ProjectKey("ns", "shop", "uid-1")) == []


async def test_a_taken_domain_holds_back_only_the_route(claims: ClaimStore) -> None:
    drivers = memory_drivers()
    reconciler = Reconciler(drivers, claims)
    first = await reconciler.reconcile(project())
    route_before = dict(drivers[Component.route].world["uid-1"])
    spec = ProjectSpec.model_validate(
        project_spec(
            slug="copycat", features={"database": {}}, environment={"type": "staging", "domains": ["shop.example.com"]}
        )
    )
    second = ProjectInput(ProjectKey("other", "copycat", "uid-2"), 1, spec, ProjectStatus())
    taken = await reconciler.reconcile(second)
    route = condition(taken.status, "RouteReady")
    assert route is not None and (route.status.value, route.reason) == ("False", "DomainTaken")
    assert "shop.example.com is already routed by ns/shop" in route.message
    assert cond(taken.status, "DatabaseReady") == ("True", "Ready")  # everything else converged
    assert cond(taken.status, "Stalled") == ("True", "DomainTaken")  # waiting alone will not route it
    assert cond(first.status, "Ready") == ("True", "AllComponentsReady") and condition(first.status, "Stalled") is None
    assert "uid-2" not in drivers[Component.route].world  # no route made for the second
    assert drivers[Component.route].world["uid-1"] == route_before  # the first keeps serving, untouched
    assert first.status.phase is Phase.Ready and taken.retry_after is None  # no retry loop: the drift check looks


async def test_a_project_whose_namespace_is_deleted_is_released_when_its_secrets_went_first(
    claims: ClaimStore, kube: KubeClient, cluster: LocalCluster
) -> None:
    """Deleting a namespace deletes its Secrets at once, the Projects only after their finalizers: teardown
    that needs the SSH key would wait forever, and so would the namespace. It is released and says so."""
    namespace = f"leaving-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    drivers: dict[Component, Any] = memory_drivers()
    reconciler = Reconciler(drivers, claims, kube.namespace_terminating)
    gone = RetryableError("Secret deploy-key (spec.servers.ssh.secretRef) does not exist", reason="SSHKeyMissing")
    leaving = replace(project(), key=ProjectKey(namespace, "shop", "uid-leaving"))
    created = await reconciler.reconcile(leaving)
    fail_teardown(drivers, Component.infrastructure, gone)
    teardown = Teardown.of(replace(leaving, status=created.status))

    waiting = await reconciler.finalize(teardown)  # the namespace stays: waiting is right (the key may return)
    assert waiting.retry_after is not None and await claims.held(leaving.key) != []

    cluster.kubectl("delete", "namespace", namespace, "--wait=false")  # no controller here: it stays Terminating
    done = await reconciler.finalize(teardown)
    assert done.retry_after is None and await claims.held(leaving.key) == []
    [said] = [e for e in done.events if e.reason == "TeardownAbandoned"]
    assert said.type == "Warning" and "deploy-key" in said.message and namespace in said.message
