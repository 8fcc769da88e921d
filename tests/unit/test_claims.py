"""Allocation decisions on plain data: what each request does to a ledger."""

from __future__ import annotations

import pytest

from controller.claims.ledger import (
    Claim,
    Holder,
    KeepOnlyRequest,
    Ledger,
    NameRequest,
    NameSetRequest,
    NumberRequest,
    PortPairRequest,
    ReleaseRequest,
    decide_batch,
)
from controller.claims.plan import LOCAL_SCOPE, name_ledger, plan_claims, port_ledger, port_request
from controller.claims.store import ClaimStore
from controller.errors import AllocationConflict
from controller.loop.domains import PublicSuffixes, public_suffixes
from controller.loop.interface import Refusal
from controller.loop.naming import ProjectKey
from schemas.project import ProjectSpec
from tests.factories import project_spec

A = Holder("uid-a", "shop/a")
B = Holder("uid-b", "shop/b")


def ledger(**entries: Holder) -> Ledger:
    result = Ledger()
    # "_4500" for the port 4500 (a keyword can't start with a digit); "_.x.com" is the wildcard *.x.com.
    result.apply({value[1:] if value[1:].isdigit() else value: holder for value, holder in entries.items()})
    return result


def ports(holder: Holder, pinned: int | None = None, keep: int | None = None) -> NumberRequest:
    return NumberRequest(holder, "port", (4500, 4501, 4502), pinned, keep, "4500-4502")


def test_a_new_holder_gets_the_lowest_free_number() -> None:
    assert ports(A).decide(ledger(_4500=B)) == (4501, {"4501": A})


def test_a_held_number_is_kept_without_change() -> None:
    assert ports(A).decide(ledger(_4502=A)) == (4502, {})


def test_the_number_in_use_wins_over_crash_leftovers() -> None:
    # Two numbers for one holder (left by two replicas racing): keep the one in status.
    number, changes = ports(A, keep=4502).decide(ledger(_4500=A, _4502=A))
    assert number == 4502 and changes == {"4500": None}


def test_the_number_in_use_is_taken_back_when_the_ledger_lost_it() -> None:
    assert ports(A, keep=4502).decide(ledger(_4500=B)) == (4502, {"4502": A})
    # ...unless someone else holds it by now.
    assert ports(A, keep=4502).decide(ledger(_4502=B)) == (4500, {"4500": A})


def test_a_number_outside_the_range_is_exchanged() -> None:
    # The environment changed: the old production port goes, a staging one comes.
    number, changes = ports(A).decide(ledger(_4000=A))
    assert number == 4500 and changes == {"4000": None, "4500": A}


def test_a_pinned_number_held_by_another_is_refused_with_the_owner_and_the_fix() -> None:
    with pytest.raises(AllocationConflict, match=r"resources.port 4501 is already used by shop/b; choose another"):
        ports(A, pinned=4501).decide(ledger(_4501=B))


def test_moving_a_pinned_number_releases_the_old_one() -> None:
    assert ports(A, pinned=4501).decide(ledger(_4500=A)) == (4501, {"4500": None, "4501": A})


def test_a_full_range_says_so() -> None:
    with pytest.raises(AllocationConflict, match="no free port left") as info:
        ports(A).decide(ledger(_4500=B, _4501=B, _4502=B))
    assert info.value.reason == "Exhausted"


def test_a_taken_name_is_refused_naming_the_field() -> None:
    request = NameRequest(A, "database", "shop_db", "spec.project.slug")
    with pytest.raises(AllocationConflict, match=r"database name 'shop_db' is already used by shop/b; change spec"):
        request.decide(ledger(shop_db=B))


def test_a_renamed_bucket_releases_the_old_name() -> None:
    request = NameRequest(A, "bucket", "new", "spec.features.storage.bucket")
    assert request.decide(ledger(old=A)) == ("new", {"new": A, "old": None})


@pytest.mark.parametrize(("drop", "changes"), [(False, {}), (True, {"shop_db": None})])
def test_a_disabled_feature_keeps_its_name_while_data_is_retained(drop: bool, changes: dict[str, None]) -> None:
    assert NameRequest(A, "database", None, "spec.project.slug", drop).decide(ledger(shop_db=A)) == (None, changes)


def test_release_drops_only_the_holders_entries() -> None:
    count, changes = ReleaseRequest(A.uid).decide(ledger(_4500=A, _4501=B, shop_db=A))
    assert count == 2 and changes == {"4500": None, "shop_db": None}


def test_a_batch_decides_in_order_so_two_new_holders_never_share() -> None:
    work, outcomes = decide_batch(Ledger(), [ports(A), ports(B)])
    assert outcomes == [4500, 4501]
    assert work.to_data() == {"4500": "uid-a shop/a", "4501": "uid-b shop/b"}


def test_a_refused_request_changes_nothing_and_the_rest_go_ahead() -> None:
    before = ledger(_4501=B)
    work, outcomes = decide_batch(before, [ports(A, pinned=4501), ports(Holder("uid-c", "shop/c"))])
    assert isinstance(outcomes[0], AllocationConflict) and outcomes[1] == 4500
    assert work.holder("4501") == B and before.holder("4500") is None  # the input ledger is untouched


def test_the_stored_form_round_trips() -> None:
    original = ledger(_4500=A, shop_db=B)
    assert Ledger.from_data(original.to_data()) == original


def test_requests_follow_the_spec() -> None:
    spec = ProjectSpec.model_validate(project_spec(slug="shop", env="staging", features={"database": {}, "redis": {}}))
    key = ProjectKey("ns", "shop", "uid")
    pair = port_request(key, spec, {4500}, (4600, 4601))
    assert spec.servers.runtime.value == "local"  # two colours, so two ports
    assert isinstance(pair, PortPairRequest) and pair.keep_alternate == 4601
    port = pair.primary
    assert isinstance(port, NumberRequest) and port.keep == 4600 and 4500 not in port.candidates
    claims = plan_claims(key, spec, {}, pair).claims
    assert claims[port_ledger(LOCAL_SCOPE)] is pair
    domain = claims[name_ledger("domain", "shop.example.com")]
    assert isinstance(domain, NameSetRequest) and domain.names == ("shop.example.com",)
    database = claims[name_ledger("database", "shop_staging_db")]
    assert isinstance(database, NameRequest) and database.name == "shop_staging_db"
    assert not any(isinstance(r, NameRequest) and r.pool == "bucket" for r in claims.values())  # no storage


def test_a_port_pair_keeps_both_ports_and_takes_a_free_second_one() -> None:
    pair = PortPairRequest(ports(A))
    assert pair.decide(ledger(_4500=B)) == ((4501, 4502), {"4501": A, "4502": A})
    # Both held: both kept, whichever order they were taken in.
    assert PortPairRequest(ports(A, keep=4502), 4500).decide(ledger(_4500=A, _4502=A)) == ((4502, 4500), {})
    # A pinned primary that was the alternate: the other held one becomes the alternate; nothing is lost.
    assert PortPairRequest(ports(A, pinned=4501), 4501).decide(ledger(_4500=A, _4501=A)) == ((4501, 4500), {})
    with pytest.raises(AllocationConflict, match="second colour"):
        pair.decide(ledger(_4500=B, _4501=B))


def test_teardown_reads_the_primary_port_from_status() -> None:
    spec = ProjectSpec.model_validate(project_spec(slug="shop", env="staging"))
    held = [Claim("port", "4500"), Claim("port", "4501")]
    allocations = ClaimStore.allocations_held(spec, held, (4501, None))
    assert (allocations.port, allocations.alternate_port) == (4501, 4500)


def test_a_domain_set_is_all_or_nothing_and_names_the_holder() -> None:
    before = ledger(**{"shop.example.com": B, "old.example.com": A})
    refusal, changes = NameSetRequest(A, "domain", ("shop.example.com", "new.example.com")).decide(before)
    assert refusal == Refusal("DomainTaken", "shop.example.com is already routed by shop/b") and changes == {}
    refusal, changes = NameSetRequest(A, "domain", ("new.example.com", "_.new.example.com")).decide(before)
    assert refusal is None and changes == {"new.example.com": A, "_.new.example.com": A, "old.example.com": None}


def test_a_wildcard_and_a_name_below_it_are_refused_both_ways() -> None:
    """The live attack: B claims ``*.apps.example.localhost``, A then ``shop.apps.example.localhost``."""
    wildcard_first = ledger(**{"_.apps.example.localhost": B})
    refusal, changes = NameSetRequest(A, "domain", ("shop.apps.example.localhost",)).decide(wildcard_first)
    assert refusal == Refusal("DomainTaken", "shop.apps.example.localhost overlaps *.apps.example.localhost, "
                                             "routed by shop/b") and changes == {}  # fmt: skip
    name_first = ledger(**{"shop.apps.example.localhost": A})
    refusal, changes = NameSetRequest(B, "domain", ("_.apps.example.localhost",)).decide(name_first)
    assert refusal is not None and refusal.reason == "DomainTaken" and changes == {}
    # Not an overlap: two labels below, or the wildcard's own base (Caddy's "*." matches one label).
    for other in ("a.shop.apps.example.localhost", "apps.example.localhost"):
        assert NameSetRequest(A, "domain", (other,)).decide(wildcard_first)[0] is None
    # A Project's own wildcard and names below it are no conflict.
    assert NameSetRequest(B, "domain", ("_.apps.example.localhost", "x.apps.example.localhost")).decide(
        wildcard_first) == (None, {"x.apps.example.localhost": B})  # fmt: skip


@pytest.mark.parametrize("domain", ["*.co.uk", "*.github.io", "co.uk", "*.com", "*.kawasaki.jp"])
def test_public_suffixes_and_wildcards_over_them_are_nobodys(domain: str) -> None:
    refusal, changes = NameSetRequest(A, "domain", (domain.replace("*", "_"),)).decide(ledger())
    assert refusal is not None and refusal.reason == "DomainNotAllowed" and "public suffix" in refusal.message
    assert changes == {}


def test_the_public_suffix_list_reads_wildcards_and_exceptions() -> None:
    suffixes = PublicSuffixes.parse(["// comment", "uk", "co.uk", "*.ck", "!www.ck", ""])
    assert [suffixes.is_public(d) for d in ("co.uk", "shop.co.uk", "any.ck", "www.ck", "localhost")] == [
        True, False, True, False, True]  # fmt: skip
    assert public_suffixes().is_public("co.uk") and not public_suffixes().is_public("example.com")


def test_keep_only_undoes_what_a_failed_allocation_took() -> None:
    work = ledger(_4500=A, _4501=A, shop_db=B)
    assert KeepOnlyRequest(A.uid, frozenset({"4500"})).decide(work) == (None, {"4501": None})


def test_a_port_another_process_holds_is_skipped_but_a_held_one_is_kept() -> None:
    busy = {4500, 4502}
    request = NumberRequest(A, "port", (4500, 4501, 4502), usable=lambda p: p not in busy)
    assert request.decide(ledger()) == (4501, {"4501": A})
    # Our own application listening on its port is "in use" too: it keeps it.
    assert request.decide(ledger(_4500=A)) == (4500, {})


def test_teardown_names_only_what_the_project_holds() -> None:
    """A Project refused its bucket (another's) never made it: teardown must not try to delete it."""
    spec = ProjectSpec.model_validate(project_spec(
        slug="shop", features={"database": {}, "redis": {}, "storage": {"bucket": "theirs"}}))  # fmt: skip
    nothing = ClaimStore.allocations_held(spec, [])
    assert (nothing.database, nothing.database_role, nothing.redis_user, nothing.bucket) == (None, None, None, None)
    held = [Claim("database", "shop_staging_db"), Claim("cache", "shop-staging"), Claim("port", "4500")]
    some = ClaimStore.allocations_held(spec, held)
    assert (some.database, some.database_role, some.redis_user, some.redis_prefix, some.bucket, some.port) == (
        "shop_staging_db", "shop_staging_user", "shop-staging", "shop-staging:", None, 4500)  # fmt: skip
