"""Which ledger each value goes to: ports per machine shared, names split by a hash (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.claims.ledger import ExactRequest, Holder, Ledger, NameSetRequest, encode_domain
from controller.claims.plan import (
    LOCAL_SCOPE,
    NAME_SHARDS,
    name_ledger,
    plan_claims,
    port_ledger,
    port_request,
    port_scopes,
)
from controller.errors import RetryableError
from controller.loop import naming
from controller.loop.naming import ProjectKey
from schemas.project import ProjectSpec
from tests.factories import project_spec

KEY = ProjectKey("shop", "web", "uid-a")
A = Holder("uid-a", "shop/web")
B = Holder("uid-b", "other/web")


def spec(**sections: Any) -> ProjectSpec:
    return ProjectSpec.model_validate(project_spec(slug="web", **sections))


EXISTING = {"provider": "existing", "runtime": "quadlet", "hosts": ["a.example.net", "B.example.net"],
            "ssh": {"secretRef": "deploy-key"}}  # fmt: skip


def test_ports_are_unique_per_machine_a_project_shares_and_nowhere_else() -> None:
    assert port_scopes(spec()) == (LOCAL_SCOPE,)
    assert port_scopes(spec(servers=EXISTING)) == ("host a.example.net", "host b.example.net")
    # Hosts Terraform makes for this Project, a Service of its own: shared with nobody.
    assert port_scopes(spec(servers={"provider": "vultr", "runtime": "quadlet", "region": "icn"})) == ()
    assert port_scopes(spec(servers={"provider": "existing", "runtime": "kubernetes",
                                     "cluster": {"kubeconfigSecretRef": "cluster"}})) == ()  # fmt: skip
    assert port_ledger(LOCAL_SCOPE) == "ledger-port-local"
    assert port_ledger("host a.example.net") != port_ledger("host b.example.net")


def test_a_project_on_two_hosts_claims_one_port_on_the_first_and_the_same_on_the_other() -> None:
    on_hosts = spec(servers=EXISTING)
    request = port_request(KEY, on_hosts)
    plan = plan_claims(KEY, on_hosts, {}, request)
    first, second = (port_ledger(s) for s in port_scopes(on_hosts))
    assert plan.port_ledger == first and plan.claims[first] is request
    assert plan.more_ports == {second: "host b.example.net"}


def test_the_first_hosts_port_is_chosen_free_on_the_others_too() -> None:
    taken_elsewhere = {4500: B}
    request = port_request(KEY, spec(), elsewhere=taken_elsewhere.get)
    ports, changes = request.decide(Ledger())
    assert ports == (4501, 4502) and changes == {"4501": A, "4502": A}  # staging: blue-green, two colours
    # Even the port the Project had: another Project has it on one of its hosts (or in the old ledger).
    keep = port_request(KEY, spec(), current=(4500, None), elsewhere=taken_elsewhere.get)
    assert keep.decide(Ledger())[0][0] == 4501


def test_the_same_port_on_another_host_is_refused_for_now_if_someone_just_took_it() -> None:
    ledger = Ledger.from_data({"4501": B.encode()})
    with pytest.raises(RetryableError, match=r"4501 on host b\.example\.net was just taken by other/web"):
        ExactRequest(A, (4500, 4501), "host b.example.net").decide(ledger)
    mine = Ledger.from_data({"4502": A.encode()})
    assert ExactRequest(A, (4500, 4501), "host b").decide(mine) == ((4500, 4501), {"4502": None, "4500": A,
                                                                                    "4501": A})  # fmt: skip


def test_names_spread_over_the_shards_and_each_name_has_exactly_one() -> None:
    ledgers = {name_ledger("database", f"db_{i}") for i in range(400)}
    assert len(ledgers) == NAME_SHARDS
    assert name_ledger("database", "db_7") == name_ledger("database", "db_7")


@pytest.mark.parametrize("other", ["shop.apps.example.com", "_.apps.example.com", "apps.apps.example.com"])
def test_domains_that_could_overlap_meet_in_one_ledger(other: str) -> None:
    assert name_ledger("domain", encode_domain("*.apps.example.com")) == name_ledger("domain", other)


def test_a_plan_claims_first_and_releases_only_what_the_project_no_longer_needs() -> None:
    renamed = spec(features={"database": {}}, environment={"type": "staging", "domains": ["a.example.com"]})
    old_db, new_db = name_ledger("database", "old_db"), name_ledger("database", naming.database_name(renamed))
    old_domain = name_ledger("domain", "b.example.org")
    held = {old_db: frozenset({"old_db"}), old_domain: frozenset({"b.example.org"}),
            "ledger-port": frozenset({"4500"})}  # fmt: skip
    plan = plan_claims(KEY, renamed, held, port_request(KEY, renamed))
    domain_request = plan.claims[name_ledger("domain", "a.example.com")]
    assert (
        isinstance(domain_request, NameSetRequest) and not domain_request.release
    )  # nothing goes before all is granted
    keep = plan.keep({**held, new_db: held.get(new_db, frozenset()) | {naming.database_name(renamed)}}, (4501,))
    if old_db == new_db:
        assert keep[new_db] == {naming.database_name(renamed)}
    else:
        assert keep[old_db] == frozenset() and new_db not in keep
    assert keep[old_domain] == frozenset() and keep["ledger-port"] == frozenset()


def test_a_retained_feature_switched_off_keeps_its_name_wherever_it_is() -> None:
    retained = spec(deletionPolicy="Retain")
    held = {name_ledger("database", "web_staging_db"): frozenset({"web_staging_db"})}
    plan = plan_claims(KEY, retained, held, port_request(KEY, retained))
    assert plan.keep(held, (4500,)) == {}


def test_www_names_are_claimed_with_their_domains() -> None:
    redirected = spec(environment={"type": "staging", "domains": ["a.example.com"], "redirectWww": True})
    plan = plan_claims(KEY, redirected, {}, port_request(KEY, redirected))
    claimed = {n for r in plan.claims.values() if isinstance(r, NameSetRequest) for n in r.names}
    assert claimed == {encode_domain("a.example.com"), encode_domain("www.a.example.com")}
