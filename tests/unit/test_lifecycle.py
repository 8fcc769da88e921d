"""Stop, start and restart on plain data: what the planner asks for, how the route answers, how a rollout
under way ends, and what a restart changes (and what it must not change for Projects never restarted)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from controller.drivers.kubernetes import _state_of
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, Observation, Verb, desired_state, plan
from controller.loop.rollouts.colours import release_of
from controller.loop.rollouts.records import suspended, what_changed
from controller.specs.caddy import MAINTENANCE_RESPONSE, render_route
from controller.specs.kubernetes import render_objects
from schemas.project import Allocations, ProjectSpec, ProjectStatus
from tests.factories import project_spec

ALLOC = Allocations(port=4512, alternate_port=4513, connection_secret="shop-staging-connection")
CTX = DriverContext(ProjectKey("team", "shop", "uid-1"), ALLOC)
T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
T1 = datetime(2026, 12, 4, 10, 5, tzinfo=UTC)


def spec(**top: Any) -> ProjectSpec:
    return ProjectSpec.model_validate(project_spec(**top))


def test_suspended_stops_the_workload_and_routes_every_domain_to_the_maintenance_page() -> None:
    running = desired_state(spec(), ALLOC, {Component.workload: {"endpoints": ["127.0.0.1:4512"]}})
    world = {c: Observation(state=dict(s)) for c, s in running.items()}
    stopped = desired_state(spec(suspended=True), ALLOC, {Component.workload: {"endpoints": ["127.0.0.1:4512"]}})
    assert Component.workload not in stopped
    assert stopped[Component.route] == {"domains": ["shop.example.com"], "upstreams": [], "slots": 0,
                                        "maintenance": True, "redirects": {}, "routeMatches": True}  # fmt: skip
    steps = plan(stopped, world)
    # The route answers the page without waiting for a workload that is going; the workload is stopped,
    # never deleted, whatever deletionPolicy says; its alert rules go while the page answers 503 on purpose.
    assert [(a.component, a.verb, a.requires_healthy) for a in steps.actions] == [
        (Component.route, Verb.update, ()), (Component.alerts, Verb.delete, ()), (Component.workload, Verb.stop, ()),
    ]  # fmt: skip
    assert [a.verb for a in plan(stopped, world, retain_data=False).actions] == [Verb.update, Verb.delete, Verb.stop]
    # Started again: the workload is created, and the route waits for it to be healthy.
    back = plan(running, {**world, Component.workload: Observation(), Component.alerts: Observation(),
                          Component.route: Observation(state=dict(stopped[Component.route]))})  # fmt: skip
    assert [(a.component, a.verb, a.requires_healthy) for a in back.actions] == [
        (Component.workload, Verb.create, ()), (Component.route, Verb.update, (Component.workload,)),
        (Component.alerts, Verb.create, ())]  # fmt: skip


def test_the_maintenance_route_says_nothing_the_manifest_wrote() -> None:
    route = render_route(CTX, {"domains": ["evil.example.com"], "upstreams": [], "maintenance": True})
    [answer] = [h for h in route["handle"][0]["routes"][0]["handle"] if h["handler"] == "static_response"]
    assert answer == MAINTENANCE_RESPONSE and answer["status_code"] == 503
    assert "evil" not in answer["body"] and answer["headers"]["Cache-Control"] == ["no-store"]
    served = render_route(CTX, {"domains": ["shop.example.com"], "upstreams": ["127.0.0.1:4512"], "maintenance": False})
    assert [h["handler"] for h in served["handle"][0]["routes"][0]["handle"]] == ["headers", "encode", "reverse_proxy"]


@pytest.mark.parametrize("runtime", ["local", "quadlet", "kubernetes"])
def test_a_restart_is_a_new_release_and_a_project_never_restarted_keeps_its_release(runtime: str) -> None:
    def release(**top: Any) -> str:
        servers = {"provider": "existing" if runtime != "local" else "local", "runtime": runtime}
        servers |= {"hosts": ["10.0.0.5"], "ssh": {"secretRef": "deploy-key"}} if runtime == "quadlet" else {}
        return release_of(desired_state(spec(servers=servers, **top), ALLOC)[Component.workload])

    never = release()
    assert "restartedAt" not in desired_state(spec(), ALLOC)[Component.workload]  # so upgrading redeploys nothing
    first, second = release(restartedAt="2026-12-04T10:00:00Z"), release(restartedAt="2026-12-04T11:00:00Z")
    assert len({never, first, second}) == 3


def test_a_restart_token_rolls_every_pod_and_is_read_back_from_the_deployment() -> None:
    cluster = {"provider": "existing", "runtime": "kubernetes"}
    wanted = desired_state(spec(servers=cluster, restartedAt="2026-12-04T10:00:00Z"), ALLOC)[Component.workload]
    rendered = {o["kind"]: o for o in render_objects(CTX, wanted, "cafe")}
    template = rendered["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert template["codeb.dev/restartedAt"] == "2026-12-04T10:00:00Z"
    assert _state_of(rendered["Deployment"], rendered["Service"], None)["restartedAt"] == "2026-12-04T10:00:00Z"
    plain = desired_state(spec(servers=cluster), ALLOC)[Component.workload]
    plain_objects = {o["kind"]: o for o in render_objects(CTX, plain, "cafe")}
    assert "restartedAt" not in _state_of(plain_objects["Deployment"], plain_objects["Service"], None)


def test_what_changed_names_a_restart() -> None:
    before = {"revision": "r1", "port": 4512}
    assert what_changed(before, {"revision": "r1", "restartedAt": "x1"}, {"port"}) == "restart (x1)"
    assert what_changed(before, {"revision": "r2"}, {"port"}) == "revision r1 → r2"
    assert what_changed(before, {"revision": "r1", "restartedAt": "x1", "cpu": "1"}, {"port"}) == (
        "differs in cpu, restartedAt")  # fmt: skip


def status_with(step: str) -> ProjectStatus:
    record = {"revision": "r2", "release": "c2", "step": step, "colour": "green", "startedAt": T0.isoformat()}
    history = [{"revision": "r2", "release": "c2", "colour": "green", "startedAt": T0.isoformat(),
                "result": "Progressing"}]  # fmt: skip
    serving = {"colour": "blue", "release": "c1", "since": T0.isoformat()}
    return ProjectStatus.model_validate({"rollout": record, "deployments": history, "serving": serving})


@pytest.mark.parametrize(("step", "ends", "reason"), [
    ("Checking", "Superseded", "Suspended"), ("Hooks", "Superseded", "Suspended"),
    ("Switching", "Superseded", "Suspended"), ("Draining", "Succeeded", "RolloutSucceeded"),
])  # fmt: skip
def test_suspending_ends_a_rollout_under_way(step: str, ends: str, reason: str) -> None:
    after, notice = suspended(status_with(step), T1)
    assert after.serving is None
    assert after.rollout is not None and (after.rollout.step.value, after.rollout.finished_at) == (ends, T1)
    assert (after.deployments[0].result, after.deployments[0].reason) == (ends, reason)
    assert notice is not None and notice.reason == reason
    # Suspending what is suspended (a later pass) changes nothing more.
    again, none = suspended(after, T1)
    assert none is None and again.rollout == after.rollout and again.deployments == after.deployments
