"""Domains a Platform gives, end to end: the real operator, Caddy and application on runtime local.

A Project that names no domain is served at the name its Platform's ``spec.domain`` gives it
(``<slug>-staging.<domain>``, a preview at ``pr-<N>.<slug>.<domain>``), claimed in the domain ledger
like any other, and shown as its URL; one that names its own keeps them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.rollouts import RolloutWorld, rollout_project, rollout_world
from tests.servers import https_get

pytestmark = pytest.mark.apiserver


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutWorld]:
    with rollout_world(tmp_path_factory.mktemp("domains")) as made:
        domain = json.dumps({"spec": {"domain": "apps.localhost"}})
        made.cluster.kubectl("patch", "platform", "edge", "--type=merge", "-p", domain)
        yield made


def unnamed(world: RolloutWorld, name: str, **environment: Any) -> None:
    doc = rollout_project(name, "r1", world.counts)
    doc["spec"]["environment"] |= {"domains": [], **environment}
    world.cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))


def served_at(world: RolloutWorld, host: str) -> dict[str, Any]:
    answer = https_get(world.caddy, host).stdout
    try:
        found: dict[str, Any] = json.loads(answer)
    except ValueError:
        return {"answer": answer}
    return found


def test_a_project_without_domains_is_served_at_the_one_its_platform_gives(world: RolloutWorld) -> None:
    unnamed(world, "plain")
    unnamed(world, "peek", type="preview", pullRequest=12)
    for name, host in (("plain", "plain-staging.apps.localhost"), ("peek", "pr-12.peek.apps.localhost")):
        world.wait_rollout(name, "r1")
        wait_for(lambda h=host: served_at(world, h).get("revision") == "r1", timeout=30, what=f"served at {host}")
        assert world.status(name)["endpoints"]["url"] == f"https://{host}"
        assert world.condition(name, "RouteReady")["status"] == "True"
    # Its own domains win over the Platform's.
    world.apply("named", "r1")
    world.wait_rollout("named", "r1")
    assert world.status("named")["endpoints"]["url"] == "https://named.localhost"
    assert served_at(world, "named-staging.apps.localhost").get("revision") is None
    # The derived name is claimed like any other: a Project naming it outright is refused.
    squatter = rollout_project("squat", "r1", world.counts)
    squatter["spec"]["environment"]["domains"] = ["plain-staging.apps.localhost"]
    world.cluster.kubectl("apply", "-f", "-", input_text=json.dumps(squatter))
    wait_for(lambda: world.condition("squat", "RouteReady").get("reason") == "DomainTaken", timeout=30,
             what="the squatter refused")  # fmt: skip
    assert served_at(world, "plain-staging.apps.localhost").get("revision") == "r1"
