"""The DNS driver against a real PowerDNS (Debian's pdns-server, sqlite backend) and its HTTP API.

What a Project's records are is asked of the server with `dig`, as a resolver would. The
driver writes a Project's names with their ownership mark, finds them again from the server
alone, repairs records changed by hand, removes exactly its own, and leaves every record it
did not make (a hand-made one, another Project's, another operator's) as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from controller.clients.powerdns import PowerDns
from controller.drivers.dns import DnsDriver
from controller.errors import PermanentError, RetryableError
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from schemas.platform import DnsEndpoint
from schemas.project import Allocations
from tests.servers import PowerDnsServer, start_powerdns

ZONE = "apps.test"


@pytest.fixture(scope="module")
def pdns() -> Iterator[PowerDnsServer]:
    server = start_powerdns()
    try:
        admin(server, "POST", "/zones", {"name": f"{ZONE}.", "kind": "Native", "nameservers": [f"ns1.{ZONE}."]})
        hand_made(server, "mail", "A", "10.9.9.9")
        hand_made(server, "taken", "A", "10.9.9.8")
        yield server
    finally:
        server.stop()


def admin(server: PowerDnsServer, method: str, path: str, body: Any = None) -> None:
    """What the zone's administrator does by hand, through the same API."""
    url = f"{server.api_url}/api/v1/servers/localhost{path}"
    answer = httpx.request(method, url, json=body, headers={"X-API-Key": server.api_key}, timeout=10)
    assert answer.status_code < 300, answer.text


def hand_made(server: PowerDnsServer, label: str, kind: str, content: str) -> None:
    rrset = {"name": f"{label}.{ZONE}.", "type": kind, "ttl": 60, "changetype": "REPLACE",
             "records": [{"content": content, "disabled": False}]}  # fmt: skip
    admin(server, "PATCH", f"/zones/{ZONE}.", {"rrsets": [rrset]})


def driver(server: PowerDnsServer, key: str | None = None, zones: list[str] | None = None,
           **target: Any) -> DnsDriver:  # fmt: skip
    endpoint = DnsEndpoint.model_validate({
        "apiUrl": server.api_url, "apiKeySecretRef": {"namespace": "codeb-system", "name": "pdns"},
        "target": target or {"addresses": ["127.0.0.1", "::1"]}, "ttl": 120, "zones": zones,
    })  # fmt: skip
    api = PowerDns(server.api_url, "localhost", key or server.api_key, httpx.AsyncClient(timeout=10))
    return DnsDriver(api, endpoint)


def ctx(name: str, namespace: str = "team") -> DriverContext:
    return DriverContext(ProjectKey(namespace, name, f"uid-{name}"), Allocations())


async def test_records_are_written_found_repaired_and_removed_leaving_others_alone(pdns: PowerDnsServer) -> None:
    dns, shop = driver(pdns), ctx("shop")
    names = [f"*.preview.{ZONE}", f"shop.{ZONE}"]
    await dns.apply(shop, {"names": names})
    assert pdns.dig(f"shop.{ZONE}") == ["127.0.0.1"] and pdns.dig(f"shop.{ZONE}", "AAAA") == ["::1"]
    assert pdns.dig(f"pr-7.preview.{ZONE}") == ["127.0.0.1"]  # the wildcard answers every name below it
    assert pdns.dig(f"_codeb.shop.{ZONE}", "TXT") == ['"heritage=codeb,codeb/owner=codeb,codeb/project=team/shop"']
    seen = await dns.observe(shop)
    assert seen.state == {"names": names, "recordsMatch": True}
    await dns.apply(shop, {"names": names})  # again: nothing to do, nothing changes
    assert (await dns.observe(shop)).state == seen.state

    # Changed by hand: drift, repaired.
    hand_made(pdns, "shop", "A", "10.6.6.6")
    assert (await dns.observe(shop)).state == {"names": names, "recordsMatch": False}
    await dns.apply(shop, {"names": names})
    assert pdns.dig(f"shop.{ZONE}") == ["127.0.0.1"]
    # A mark left without its records (removed by hand; a write cannot leave this, being one transaction):
    # still the Project's, and written again.
    gone = [{"name": f"shop.{ZONE}.", "type": kind, "changetype": "DELETE"} for kind in ("A", "AAAA")]
    admin(pdns, "PATCH", f"/zones/{ZONE}.", {"rrsets": gone})
    assert (await dns.observe(shop)).state == {"names": names, "recordsMatch": False}
    await dns.apply(shop, {"names": names})
    assert pdns.dig(f"shop.{ZONE}", "AAAA") == ["::1"]

    # Another Project (or a hand-made record) is never overwritten; the other names still are written.
    blog = ctx("blog")
    with pytest.raises(PermanentError) as refused:
        await dns.apply(blog, {"names": [f"shop.{ZONE}", f"taken.{ZONE}", f"blog.{ZONE}", "blog.elsewhere.test"]})
    assert refused.value.reason == "RecordsRefused"
    assert f"shop.{ZONE}: _codeb.shop.{ZONE}. marks it as someone else's" in refused.value.message
    assert f"taken.{ZONE}: it has A records the operator did not make" in refused.value.message
    assert f"blog.elsewhere.test: the DNS server serves no zone it is in (zones: {ZONE})" in refused.value.message
    assert pdns.dig(f"blog.{ZONE}") == ["127.0.0.1"]
    assert pdns.dig(f"shop.{ZONE}") == ["127.0.0.1"] and pdns.dig(f"taken.{ZONE}") == ["10.9.9.8"]
    # Project "sho" is not "shop": an exact mark, not a prefix.
    assert (await dns.observe(ctx("sho"))).state is None

    # A name dropped from the spec goes, its mark with it; what is not the Project's stays.
    await dns.apply(shop, {"names": [f"*.preview.{ZONE}"]})
    assert pdns.dig(f"shop.{ZONE}") == [] and pdns.dig(f"_codeb.shop.{ZONE}", "TXT") == []
    assert pdns.dig(f"mail.{ZONE}") == ["10.9.9.9"] and pdns.dig(f"blog.{ZONE}") == ["127.0.0.1"]

    # The Platform points at a name instead: CNAME replaces the addresses.
    await driver(pdns, cname="edge.example.net").apply(shop, {"names": [f"cdn.{ZONE}"]})
    assert pdns.dig(f"cdn.{ZONE}", "CNAME") == ["edge.example.net."]

    await dns.delete(shop, retain=True)  # records are not data: gone whatever the policy
    await dns.delete(blog, retain=False)
    for gone in (f"cdn.{ZONE}", f"pr-1.preview.{ZONE}", f"blog.{ZONE}"):
        assert pdns.dig(gone) == [], gone
    assert pdns.dig(f"mail.{ZONE}") == ["10.9.9.9"] and pdns.dig(f"taken.{ZONE}") == ["10.9.9.8"]
    assert (await dns.observe(shop)).state is None


async def test_zones_outside_the_platforms_list_are_not_written(pdns: PowerDnsServer) -> None:
    dns = driver(pdns, zones=["other.test"])
    with pytest.raises(PermanentError, match="serves no zone it is in") as refused:
        await dns.apply(ctx("fenced"), {"names": [f"fenced.{ZONE}"]})
    assert refused.value.reason == "ZoneNotServed" and pdns.dig(f"fenced.{ZONE}") == []


async def test_a_wrong_api_key_is_reported_without_the_key(pdns: PowerDnsServer) -> None:
    with pytest.raises(RetryableError) as rejected:
        await driver(pdns, key="not-the-key").observe(ctx("shop"))
    assert rejected.value.reason == "DnsCredentialsRejected" and "not-the-key" not in rejected.value.message
