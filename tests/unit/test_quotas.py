"""Who a Platform's per-namespace quota admits: the oldest first, by creation then name (pure)."""

from __future__ import annotations

from controller.claims.quotas import Member, _member, refusal
from schemas.platform import NamespaceQuotas


def members(*domains: int) -> list[Member]:
    # Listed in no particular order; created a second apart, p0 first.
    return [Member(f"p{i}", f"uid-{i}", f"2026-12-03T10:00:0{i}Z", n) for i, n in reversed(list(enumerate(domains)))]


def test_the_oldest_projects_are_admitted_and_a_newer_one_past_the_limit_is_not() -> None:
    quota = NamespaceQuotas(projects=2)
    team = members(1, 1, 1)
    assert refusal(quota, "edge", "team", "uid-0", team) is None
    assert refusal(quota, "edge", "team", "uid-1", team) is None
    why = refusal(quota, "edge", "team", "uid-2", team)
    assert why is not None and "namespace team may have 2 Projects on Platform edge" in why and "p2 is number 3" in why
    # Once an older one goes, the next in line is in.
    assert refusal(quota, "edge", "team", "uid-2", [m for m in team if m.uid != "uid-0"]) is None


def test_domains_count_oldest_project_first() -> None:
    quota = NamespaceQuotas(domains=3)
    team = members(2, 1, 1)
    assert refusal(quota, "edge", "team", "uid-1", team) is None  # 2 + 1
    why = refusal(quota, "edge", "team", "uid-2", team)
    assert why is not None and "may route 3 domains" in why and "it would be 4" in why


def test_ties_in_creation_are_broken_by_name_so_every_replica_agrees() -> None:
    same_second = [Member(name, f"uid-{name}", "2026-12-03T10:00:00Z", 1) for name in ("b", "a", "c")]
    quota = NamespaceQuotas(projects=2)
    assert refusal(quota, "edge", "team", "uid-c", same_second) is not None
    assert refusal(quota, "edge", "team", "uid-a", same_second) is None


def test_no_quota_and_a_project_not_listed_yet_are_not_refused() -> None:
    assert refusal(NamespaceQuotas(), "edge", "team", "uid-9", members(5, 5)) is None
    assert refusal(NamespaceQuotas(projects=0), "edge", "team", "uid-9", members(1)) is None
    assert refusal(NamespaceQuotas(projects=0), "edge", "team", "uid-0", members(1)) is not None


def test_projects_without_a_platform_are_counted_against_the_operators_limits() -> None:
    """Without a Platform there is no Platform admin: the limit and the fix are the operator's."""
    team = members(1, 2)
    assert refusal(NamespaceQuotas(projects=1), None, "team", "uid-0", team) is None
    why = refusal(NamespaceQuotas(projects=1), None, "team", "uid-1", team)
    assert why is not None and "may have 1 Projects without a Platform (CODEB_QUOTA_PROJECTS)" in why
    assert "the operator's admin" in why and "Platform's admin" not in why
    why = refusal(NamespaceQuotas(domains=2), None, "team", "uid-1", team)
    assert why is not None and "may route 2 domains without a Platform (CODEB_QUOTA_DOMAINS)" in why


def test_a_project_named_by_its_platforms_domain_counts_that_domain() -> None:
    item = {"metadata": {"name": "shop", "uid": "u1", "creationTimestamp": "2026-12-03T10:00:00Z"},
            "spec": {"servers": {"platform": "edge"}, "environment": {"domains": []}}}  # fmt: skip
    named = _member(item, "edge", names_domain=True)
    unnamed = _member(item, "edge", names_domain=False)
    assert named is not None and unnamed is not None and (named.domains, unnamed.domains) == (1, 0)
    item["spec"]["environment"]["domains"] = ["a.example.com", "b.example.com"]
    assert (member := _member(item, "edge", names_domain=True)) is not None and member.domains == 2


def test_www_names_count_against_the_domain_quota() -> None:
    environment = {"domains": ["a.example.com", "*.b.example.com"], "redirectWww": True}
    item = {"metadata": {"name": "shop", "uid": "u1", "creationTimestamp": "2026-12-03T10:00:00Z"},
            "spec": {"servers": {"platform": "edge"}, "environment": environment}}  # fmt: skip
    assert (member := _member(item, "edge")) is not None and member.domains == 3
    item["spec"]["environment"]["domains"] = []  # the Platform's name, and its www
    assert (member := _member(item, "edge", names_domain=True)) is not None and member.domains == 2
