"""Domains and DNS end to end: the real operator, Caddy, PowerDNS and application on runtime local.

A Project that names no domain is served at the name its Platform's ``spec.domain`` gives it
(``<slug>-staging.<domain>``, a preview at ``pr-<N>.<slug>.<domain>``), claimed in the domain ledger
like any other, and shown as its URL; one that names its own keeps them. The Platform's PowerDNS
answers each name with Caddy's address (asked with `dig`), a refused name gets no record, and a
deleted Project's records go while one made by hand in the same zone stays.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import wait_for
from tests.rollouts import NS, RolloutWorld, rollout_project, rollout_world
from tests.servers import PowerDnsServer, https_get, start_powerdns

pytestmark = pytest.mark.apiserver


@pytest.fixture(scope="module")
def pdns() -> Iterator[PowerDnsServer]:
    server = start_powerdns()
    try:
        for zone in ("apps.localhost", "localhost"):
            admin(server, "POST", "/zones", {"name": f"{zone}.", "kind": "Native", "nameservers": [f"ns1.{zone}."]})
        keep = {"name": "keep.apps.localhost.", "type": "A", "ttl": 60, "changetype": "REPLACE",
                "records": [{"content": "10.9.9.9", "disabled": False}]}  # fmt: skip
        admin(server, "PATCH", "/zones/apps.localhost.", {"rrsets": [keep]})
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pdns: PowerDnsServer) -> Iterator[RolloutWorld]:
    with rollout_world(tmp_path_factory.mktemp("domains")) as made:
        made.cluster.kubectl("create", "namespace", "codeb-system")
        made.cluster.kubectl("create", "secret", "generic", "pdns", "-n", "codeb-system",
                             f"--from-literal=apiKey={pdns.api_key}")  # fmt: skip
        dns = {"apiUrl": pdns.api_url, "apiKeySecretRef": {"namespace": "codeb-system", "name": "pdns"},
               "target": {"addresses": ["127.0.0.1"]}}  # fmt: skip
        platform = json.dumps({"spec": {"domain": "apps.localhost", "dns": dns}})
        made.cluster.kubectl("patch", "platform", "edge", "--type=merge", "-p", platform)
        yield made


def admin(server: PowerDnsServer, method: str, path: str, body: Any = None) -> None:
    url = f"{server.api_url}/api/v1/servers/localhost{path}"
    answer = httpx.request(method, url, json=body, headers={"X-API-Key": server.api_key}, timeout=10)
    assert answer.status_code < 300, answer.text


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


def test_a_project_without_domains_is_served_and_resolved_at_the_one_its_platform_gives(
    world: RolloutWorld, pdns: PowerDnsServer
) -> None:
    unnamed(world, "plain")
    unnamed(world, "peek", type="preview", pullRequest=12)
    for name, host in (("plain", "plain-staging.apps.localhost"), ("peek", "pr-12.peek.apps.localhost")):
        world.wait_rollout(name, "r1")
        wait_for(lambda h=host: served_at(world, h).get("revision") == "r1", timeout=30, what=f"served at {host}")
        assert world.status(name)["endpoints"]["url"] == f"https://{host}"
        wait_for(lambda n=name: world.condition(n, "Ready").get("status") == "True", timeout=30, what=f"{name} Ready")
        assert world.condition(name, "DnsReady")["status"] == "True"
        assert pdns.dig(host) == ["127.0.0.1"]  # what a resolver asking the Platform's DNS is told
    # Its own domains win over the Platform's, and are resolved too.
    world.apply("named", "r1")
    world.wait_rollout("named", "r1")
    assert world.status("named")["endpoints"]["url"] == "https://named.localhost"
    assert served_at(world, "named-staging.apps.localhost").get("revision") is None
    wait_for(lambda: pdns.dig("named.localhost") == ["127.0.0.1"], timeout=30, what="named.localhost resolved")
    # The derived name is claimed like any other: a Project naming it outright is refused, and gets no record.
    squatter = rollout_project("squat", "r1", world.counts)
    squatter["spec"]["environment"]["domains"] = ["plain-staging.apps.localhost", "squat.apps.localhost"]
    world.cluster.kubectl("apply", "-f", "-", input_text=json.dumps(squatter))
    wait_for(lambda: world.condition("squat", "RouteReady").get("reason") == "DomainTaken", timeout=30,
             what="the squatter refused")  # fmt: skip
    assert world.condition("squat", "DnsReady")["message"] == "waiting for Route (refused)"
    assert served_at(world, "plain-staging.apps.localhost").get("revision") == "r1"
    assert pdns.dig("squat.apps.localhost") == []
    # Deleting a Project removes exactly its records; one made by hand in the zone stays.
    world.cluster.kubectl("delete", "project", "plain", "-n", NS, "--timeout=60s")
    assert pdns.dig("plain-staging.apps.localhost") == []
    assert pdns.dig("_codeb.plain-staging.apps.localhost", "TXT") == []
    assert pdns.dig("pr-12.peek.apps.localhost") == ["127.0.0.1"] and pdns.dig("keep.apps.localhost") == ["10.9.9.9"]
