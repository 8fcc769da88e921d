"""A Project's DNS records as PowerDNS rrsets, and the ownership mark beside each (pure).

Every name the operator writes gets a TXT record beside it, as external-dns marks its own:
``_codeb.<name>`` (``_codeb-wildcard.<parent>`` for ``*.<parent>``, a ``*`` label being no
place for another name) holding ``heritage=codeb,codeb/owner=<operator>,codeb/project=<ns>/<name>``.
A name without that mark, or with another's, is not the operator's to change or remove. The
mark sits below the name rather than on it, because nothing may sit beside a CNAME.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from controller.errors import PermanentError
from controller.loop.naming import ProjectKey
from schemas.platform import DnsEndpoint

# The record types that say where a name answers: the ones the operator writes, and the ones that,
# made by someone else, make a name not the operator's.
ADDRESS_TYPES = ("A", "AAAA", "CNAME")
OWNER_LABEL = "_codeb"
WILDCARD_OWNER_LABEL = "_codeb-wildcard"

RRSet = dict[str, Any]


def absolute(name: str) -> str:
    """The name as PowerDNS's API writes it: with the root's trailing dot."""
    return name if name.endswith(".") else f"{name}."


def owner_name(domain: str) -> str:
    if domain.startswith("*."):
        return f"{WILDCARD_OWNER_LABEL}.{domain[2:]}"
    return f"{OWNER_LABEL}.{domain}"


def domain_of_owner_name(name: str) -> str | None:
    """The domain an ownership record marks (None: the name is not one)."""
    name = name.removesuffix(".")
    for label, prefix in ((WILDCARD_OWNER_LABEL, "*."), (OWNER_LABEL, "")):
        if name.startswith(f"{label}."):
            return prefix + name[len(label) + 1 :]
    return None


def owner_content(endpoint: DnsEndpoint, key: ProjectKey) -> str:
    """The ownership TXT's content, quoted as a TXT record's content is."""
    return f'"heritage=codeb,codeb/owner={endpoint.owner},codeb/project={key.namespace}/{key.name}"'


def owner_search(endpoint: DnsEndpoint, key: ProjectKey) -> str:
    """PowerDNS's search-data term for exactly this Project's marks (its trailing quote ends the match, so
    Project ``shop`` does not find ``shop2``'s)."""
    return f"*,codeb/owner={endpoint.owner},codeb/project={key.namespace}/{key.name}" + '"'


def zone_for(domain: str, zones: list[str]) -> str | None:
    """The most specific zone the domain is in (None: in none of them)."""
    name = domain.removeprefix("*.")  # *.apps.example.com sits in apps.example.com (or above)
    inside = [zone for zone in zones if name == zone or name.endswith(f".{zone}")]
    return max(inside, key=len, default=None)


def address_rrsets(domain: str, endpoint: DnsEndpoint) -> list[RRSet]:
    """The rrsets that point ``domain`` at the Platform's Caddy: A and AAAA, or one CNAME."""
    target, ttl = endpoint.target, endpoint.ttl
    if target.cname is not None:
        return [_rrset(domain, "CNAME", ttl, [absolute(target.cname)])]
    by_type: dict[str, list[str]] = {}
    for written in target.addresses or []:
        try:
            address = ipaddress.ip_address(written)
        except ValueError:
            raise PermanentError(f"the Platform's spec.dns.target.addresses holds {written!r}, not an IP address",
                                 reason="PlatformInvalid") from None  # fmt: skip
        by_type.setdefault("A" if address.version == 4 else "AAAA", []).append(address.compressed)
    return [_rrset(domain, kind, ttl, sorted(set(contents))) for kind, contents in sorted(by_type.items())]


def owner_rrset(domain: str, endpoint: DnsEndpoint, key: ProjectKey) -> RRSet:
    return _rrset(owner_name(domain), "TXT", endpoint.ttl, [owner_content(endpoint, key)])


def records_of(rrsets: list[RRSet]) -> dict[str, tuple[int, list[str]]]:
    """rrsets by type, as (ttl, sorted contents): what two sets of records are compared by."""
    return {r["type"]: (int(r.get("ttl", 0)), sorted(x["content"] for x in r.get("records", []))) for r in rrsets}


def replacing(domain: str, endpoint: DnsEndpoint, key: ProjectKey, present: list[RRSet]) -> list[RRSet]:
    """The change that makes ``domain`` the Project's: its mark and its records, and the end of address
    records of a type no longer wanted (a CNAME target that became addresses)."""
    wanted = address_rrsets(domain, endpoint)
    stale = {r["type"] for r in present if r["type"] in ADDRESS_TYPES} - {r["type"] for r in wanted}
    changes = [owner_rrset(domain, endpoint, key), *wanted]
    changes += [_deleting(domain, kind) for kind in sorted(stale)]
    return [{**rrset, "changetype": rrset.get("changetype", "REPLACE")} for rrset in changes]


def removing(domain: str) -> list[RRSet]:
    """The change that removes the Project's records of ``domain`` and their mark (in one PATCH, so a
    crash leaves both or neither)."""
    return [_deleting(domain, kind) for kind in ADDRESS_TYPES] + [_deleting(owner_name(domain), "TXT")]


def _rrset(name: str, kind: str, ttl: int, contents: list[str]) -> RRSet:
    return {"name": absolute(name), "type": kind, "ttl": ttl,
            "records": [{"content": content, "disabled": False} for content in contents]}  # fmt: skip


def _deleting(name: str, kind: str) -> RRSet:
    return {"name": absolute(name), "type": kind, "changetype": "DELETE"}
