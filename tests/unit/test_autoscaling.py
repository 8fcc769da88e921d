"""How many hosts the load asks for (`controller.loop.autoscaling`), decided from the record in status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from controller.loop.autoscaling import autoscaled, decide, with_hosts
from controller.loop.planner import host_count, infrastructure_state, upstream_slots
from controller.specs.caddy import slot_addresses
from schemas.project import ProjectSpec
from schemas.status import AutoscalingStatus
from tests.factories import project_spec

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def spec(**servers: Any) -> ProjectSpec:
    policy = {"requestsPerHost": 10, "scaleOutCooldownSeconds": 60, "scaleInCooldownSeconds": 300}
    made = {"provider": "lightsail", "region": "ap-northeast-2", "runtime": "quadlet", "min": 1, "max": 3,
            "autoscale": policy}  # fmt: skip
    return ProjectSpec.model_validate(project_spec(servers=made | servers))


def at(hosts: int, seconds_ago: float) -> AutoscalingStatus:
    return AutoscalingStatus(hosts=hosts, decided_at=NOW - timedelta(seconds=seconds_ago))


def test_only_min_max_on_hosts_the_operator_makes_are_autoscaled() -> None:
    assert autoscaled(spec())
    assert not autoscaled(spec(min=None, max=None, count=2))
    # On a VKE cluster min/max are the Pods' replicas (the HorizontalPodAutoscaler's), not hosts.
    assert not autoscaled(spec(provider="vultr", region="icn", runtime="kubernetes", vke={"version": "v1.33.0+1"}))
    local = ProjectSpec.model_validate(project_spec())
    assert not autoscaled(local)


def test_load_above_the_target_adds_hosts_up_to_max_and_says_with_what_figure() -> None:
    first = decide(spec(), None, 25.0, NOW)
    assert first.status.hosts == 3 and first.status.decided_at == NOW and first.status.requests_per_second == 25.0
    assert first.event == ("ScaledOut", first.status.message)
    assert first.event[1] == ("1 -> 3 hosts: 25.0 requests/s over 1 host, more than 10 per host "
                              "(servers.autoscale.requestsPerHost)")  # fmt: skip
    assert decide(spec(), at(1, 600), 1000.0, NOW).status.hosts == 3  # never past max


def test_cool_downs_hold_a_change_back_and_the_record_keeps_its_time() -> None:
    held = decide(spec(), at(1, 30), 25.0, NOW)  # out: 60 s after the last change
    assert held.status.hosts == 1 and held.event is None and held.status.decided_at == NOW - timedelta(seconds=30)
    assert "asks for 3; waiting out the cool-down" in (held.status.message or "")
    assert decide(spec(), at(1, 61), 25.0, NOW).status.hosts == 3
    assert decide(spec(), at(3, 200), 0.0, NOW).status.hosts == 3  # in: 300 s
    scaled_in = decide(spec(), at(3, 301), 0.0, NOW)
    assert scaled_in.status.hosts == 1 and scaled_in.event is not None and scaled_in.event[0] == "ScaledIn"


def test_no_figure_keeps_the_number_and_a_changed_range_bounds_it() -> None:
    kept = decide(spec(), at(2, 5), None, NOW)
    assert kept.status.hosts == 2 and kept.event is None and "CODEB_PROMETHEUS_URL" in (kept.status.message or "")
    assert decide(spec(min=3, max=5), at(2, 5), None, NOW).status.hosts == 3
    assert decide(spec(min=1, max=1), at(2, 5), None, NOW).status.hosts == 1
    steady = decide(spec(), at(2, 5), 15.0, NOW)
    assert steady.status.hosts == 2 and steady.event is None


def test_the_decided_number_is_the_host_count_terraform_gets() -> None:
    scaled = with_hosts(spec(), 2)
    assert host_count(scaled.servers) == 2 and infrastructure_state(scaled.servers)["count"] == 2
    assert host_count(spec().servers) == 1  # the spec itself is not changed


def test_an_autoscaled_route_lists_a_fixed_number_of_slots_that_cycle_through_its_hosts() -> None:
    """Scaling must not change the route's shape (a Caddy reload resets connections): only the addresses."""
    by_max = {most: [upstream_slots(spec(max=most), count) for count in range(1, most + 1)] for most in (2, 3, 4, 9)}
    assert by_max == {2: [2, 2], 3: [6, 6, 6], 4: [12] * 4, 9: [60] * 9}
    assert upstream_slots(spec(), 0) == 0  # nothing to route to: no slots
    assert upstream_slots(spec(min=None, max=None, count=2), 2) == 2  # a fixed count: one per endpoint
    # Each host has its share of the slots: exactly even up to six hosts, within one slot beyond.
    for count in range(1, 8):
        hosts = [f"10.0.0.{n}:8080" for n in range(count)]
        slots = slot_addresses({"upstreams": hosts, "slots": upstream_slots(spec(max=9), count)})
        shares = sorted(slots.count(host) for host in hosts)
        assert len(slots) == 60 and shares[-1] - shares[0] <= (0 if 60 % count == 0 else 1), (count, shares)
        assert slots[:count] == hosts  # the first round is the upstreams in order
