"""The planner on plain data: create, update, partial failure, crash leftovers, pause-style
drift reporting, feature removal and deletion."""

from __future__ import annotations

from typing import Any

import pytest

from controller.loop.planner import (
    ORDER,
    Component,
    Observation,
    Verb,
    desired_state,
    plan,
    plan_deletion,
)
from schemas.project import Allocations, ProjectSpec
from tests.factories import project_spec

ALLOC = Allocations(
    port=4512,
    database="shop_staging_db",
    database_role="shop_staging_user",
    redis_user="shop-staging",
    redis_prefix="shop-staging:",
    bucket="shop-staging-uploads",
    connection_secret="shop-staging-connection",
)
ALL_FEATURES = {"features": {"database": {}, "redis": {}, "storage": {}}}


def desired(**sections: Any) -> dict[Component, Any]:
    return desired_state(ProjectSpec.model_validate(project_spec(**(ALL_FEATURES | sections))), ALLOC)


def converged(want: dict[Component, Any]) -> dict[Component, Observation]:
    return {c: Observation(state=dict(s)) for c, s in want.items()}


def verbs(p: Any) -> list[tuple[Component, Verb]]:
    return [(a.component, a.verb) for a in p.actions]


def test_fresh_project_creates_everything_in_dependency_order() -> None:
    want = desired()
    assert verbs(plan(want, {})) == [(c, Verb.create) for c in ORDER]


def test_converged_world_plans_nothing() -> None:
    want = desired()
    result = plan(want, converged(want))
    assert result.actions == [] and result.blocked == {}


def test_disabled_features_are_not_desired() -> None:
    want = desired_state(ProjectSpec.model_validate(project_spec()), ALLOC)
    assert Component.database not in want and Component.storage not in want
    assert Component.workload in want and Component.route in want


def test_update_names_what_differs() -> None:
    want = desired()
    seen = converged(want)
    seen[Component.workload] = Observation(state={**want[Component.workload], "replicas": 3})
    [action] = plan(want, seen).actions
    assert (action.component, action.verb) == (Component.workload, Verb.update)
    assert action.reason == "differs in replicas"
    assert action.desired == want[Component.workload]


def test_spec_change_updates_only_affected_components() -> None:
    before = desired()
    environment = {"type": "staging", "domains": ["shop.example.com"], "variables": {"A": "1"}}
    # The backup section's schedule and retention are read by its driver each pass (what is due, what has
    # expired): a change there is no action of its own.
    after = desired(environment=environment, backup={"retentionDays": 30})
    assert verbs(plan(after, converged(before))) == [(Component.workload, Verb.update)]


def test_crash_leftovers_resume_where_they_stopped() -> None:
    # The operator died after the data services were created, before the workload.
    want = desired()
    seen = {c: Observation(state=dict(want[c])) for c in (Component.infrastructure, Component.database)}
    seen[Component.cache] = Observation(state={**want[Component.cache], "prefix": None})  # half-written
    assert verbs(plan(want, seen)) == [
        (Component.cache, Verb.update),
        (Component.storage, Verb.create),
        (Component.workload, Verb.create),
        (Component.route, Verb.create),
        (Component.dns, Verb.create),
        (Component.alerts, Verb.create),
        (Component.backup, Verb.create),
    ]


def test_unobservable_component_blocks_its_dependents_only() -> None:
    want = desired()
    seen = converged(want)
    seen[Component.database] = Observation(error="connection refused")
    seen[Component.storage] = Observation(state=None)
    seen[Component.workload] = Observation(state=None)
    result = plan(want, seen)
    assert result.blocked[Component.database] == "connection refused"
    assert "Database" in result.blocked[Component.workload]
    assert "Workload" in result.blocked[Component.route]
    assert "Database" in result.blocked[Component.backup]
    assert verbs(result) == [(Component.storage, Verb.create)]


def test_route_waits_for_workload_health() -> None:
    want = desired()
    [route] = [a for a in plan(want, {}).actions if a.component is Component.route]
    assert route.requires_healthy == (Component.workload,)


@pytest.mark.parametrize(("retain", "verb"), [(True, Verb.release), (False, Verb.delete)])
def test_removed_feature_follows_deletion_policy(retain: bool, verb: Verb) -> None:
    before = desired()
    after = desired(features={"redis": {}, "storage": {}})
    result = plan(after, converged(before), retain_data=retain)
    assert verbs(result) == [(Component.database, verb)]


def test_removed_stateless_component_is_deleted_even_when_retaining() -> None:
    want = desired(backup={"enabled": False})
    seen = converged(desired())
    assert verbs(plan(want, seen, retain_data=True)) == [(Component.backup, Verb.release)]
    want = desired()
    seen = converged(want)
    del want[Component.route]
    assert verbs(plan(want, seen, retain_data=True)) == [(Component.route, Verb.delete)]


def test_deletion_runs_in_reverse_order_and_retains_data_and_hosts() -> None:
    seen = converged(desired())
    assert verbs(plan_deletion(seen, retain_data=True)) == [
        (Component.backup, Verb.release),
        (Component.alerts, Verb.delete),  # rules and records are not data: they go whatever the policy
        (Component.dns, Verb.delete),
        (Component.route, Verb.delete),
        (Component.workload, Verb.delete),
        (Component.storage, Verb.release),
        (Component.cache, Verb.release),
        (Component.database, Verb.release),
        (Component.infrastructure, Verb.release),  # hosts Terraform made stay, out of management
    ]


def test_deletion_with_delete_policy_destroys_data() -> None:
    seen = converged(desired())
    assert all(a.verb is Verb.delete for a in plan_deletion(seen, retain_data=False).actions)


def test_deletion_skips_what_never_existed_but_retries_what_it_cannot_see() -> None:
    seen = {Component.workload: Observation(state=None), Component.database: Observation(error="timeout")}
    assert verbs(plan_deletion(seen, retain_data=False)) == [(Component.database, Verb.delete)]


def test_observed_drift_is_reported_as_actions_for_observe_only() -> None:
    # ObserveOnly and paused Projects report plan(...).actions as drift instead of running them.
    want = desired()
    seen = converged(want)
    seen[Component.route] = Observation(state=None)
    assert verbs(plan(want, seen)) == [(Component.route, Verb.create)]


def test_route_sends_traffic_only_to_endpoints_the_workload_was_seen_serving() -> None:
    spec = ProjectSpec.model_validate(project_spec(**ALL_FEATURES))
    assert desired_state(spec, ALLOC)[Component.route]["upstreams"] == []
    served = {Component.workload: {"endpoints": ["10.0.0.5:4512", "10.0.0.6:4512"]}}
    assert desired_state(spec, ALLOC, served)[Component.route]["upstreams"] == ["10.0.0.5:4512", "10.0.0.6:4512"]
    assert desired_state(spec, ALLOC, served)[Component.workload]["port"] == 4512


def test_local_workload_states_only_what_a_local_process_has() -> None:
    want = desired(project={"slug": "shop", "source": {"command": ["python3", "app.py"], "workingDir": "deploy/hello"}})
    workload = want[Component.workload]
    assert workload["command"] == ["python3", "app.py"] and workload["workingDir"] == "deploy/hello"
    # Nothing limits or replicates a local process, so the state does not pretend to.
    assert not {"cpu", "memory", "replicas", "image"} & set(workload)
    assert workload["environmentCurrent"] is True


def test_unsupported_component_is_never_planned_and_parks_its_dependents() -> None:
    want = desired()
    seen = converged(want)
    seen[Component.workload] = Observation(unsupported="runtime local has no workload driver yet")
    del seen[Component.route]
    result = plan(want, seen)
    assert verbs(result) == []  # nothing acts on a component no driver can observe
    assert result.unsupported == {Component.workload: "runtime local has no workload driver yet"}
    assert result.blocked[Component.route] == "waiting for Workload (no driver yet)"
    assert result.parked == {Component.route, Component.dns, Component.alerts} and not result.progressing


def test_blocked_behind_an_unobservable_component_keeps_progressing() -> None:
    want = desired()
    seen = converged(want)
    seen[Component.workload] = Observation(error="host unreachable")
    result = plan(want, seen)
    assert Component.route in result.blocked and result.parked == frozenset() and result.progressing


def test_local_infrastructure_is_only_the_provider() -> None:
    assert desired()[Component.infrastructure] == {"provider": "local"}
    cloud = desired(servers={"provider": "vultr", "region": "icn", "runtime": "quadlet", "count": 2})
    assert cloud[Component.infrastructure]["count"] == 2


def test_existing_infrastructure_is_hosts_for_quadlet_and_a_cluster_for_kubernetes() -> None:
    ssh = {"secretRef": "deploy-key"}
    hosts = desired(servers={"provider": "existing", "runtime": "quadlet", "hosts": ["10.0.0.5"], "ssh": ssh})
    assert hosts[Component.infrastructure] == {"provider": "existing", "hosts": ["10.0.0.5"], "usable": True}
    own = desired(servers={"provider": "existing", "runtime": "kubernetes"})
    assert own[Component.infrastructure] == {"provider": "existing", "cluster": None, "reachable": True}
    other = desired(servers={"provider": "existing", "runtime": "kubernetes", "cluster": {"kubeconfigSecretRef": "k"}})
    assert other[Component.infrastructure] == {"provider": "existing", "cluster": "k", "reachable": True}


def test_fewer_hosts_wait_for_the_workload_to_leave_them_more_hosts_come_first() -> None:
    def on_vultr(count: int) -> dict[Component, Any]:
        servers = {"provider": "vultr", "region": "icn", "runtime": "quadlet", "count": count}
        return desired(servers=servers, project={"slug": "shop", "source": {"image": "ghcr.io/acme/shop:1"}})

    three, one = on_vultr(3), on_vultr(1)
    seen = converged(three)
    seen[Component.infrastructure] = Observation(state={**three[Component.infrastructure], "converged": False})
    seen[Component.workload] = Observation(state={**three[Component.workload], "hosts": ["a", "b", "c"]})
    one[Component.workload] = {**one[Component.workload], "hosts": ["a"]}
    shrink = plan(one, seen)
    assert verbs(shrink) == [(Component.workload, Verb.update), (Component.infrastructure, Verb.update)]
    assert shrink.actions[-1].requires_healthy == (Component.workload,)
    # Growing: the hosts first, then the workload onto them.
    seen = converged(one)
    seen[Component.infrastructure] = Observation(state={**one[Component.infrastructure], "converged": False})
    seen[Component.workload] = Observation(state=dict(one[Component.workload]))
    grow = plan(three, seen)
    assert verbs(grow)[0] == (Component.infrastructure, Verb.update) and grow.actions[0].requires_healthy == ()


def test_dns_waits_for_the_route_so_a_refused_domain_gets_no_record() -> None:
    want = desired()
    refused = {Component.route: ("DomainTaken", "shop.example.com is team-b/shop's")}
    result = plan(want, {**converged(want), Component.dns: Observation()}, refused=refused)
    assert verbs(result) == [] and result.blocked[Component.dns] == "waiting for Route (refused)"
