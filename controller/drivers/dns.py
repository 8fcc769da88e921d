"""DNS: each Project's domains as records in the Platform's PowerDNS, marked as the operator's own.

What a Project owns is found from the server itself, not from anything the operator
remembers: its ownership marks (`controller.specs.dns`), searched for by their exact
content. So a pass after a crash, a restart, or a second replica finds exactly what was
written, and a name that was dropped from the spec is removed as surely as one kept is
written. A record and its mark are written and removed in one PATCH (one transaction in
PowerDNS). A name that holds records the operator did not make, or another's mark, is left
exactly as it is and reported (``RecordNotOwned``), as is a domain in no zone the server
serves (``ZoneNotServed``); the other names go on.

Which Project may have a domain at all is decided before this driver is asked, by the
domain ledger: DNS waits for the route, and a route refused its domains gets no records.
"""

from __future__ import annotations

from typing import Any

from controller.clients.powerdns import PowerDns
from controller.errors import PermanentError
from controller.loop.interface import DriverContext
from controller.loop.planner import Component, Observation, State
from controller.specs.dns import (
    ADDRESS_TYPES,
    absolute,
    address_rrsets,
    domain_of_owner_name,
    owner_content,
    owner_name,
    owner_search,
    records_of,
    removing,
    replacing,
    zone_for,
)
from schemas.platform import DnsEndpoint


class DnsDriver:
    component = Component.dns

    def __init__(self, api: PowerDns, endpoint: DnsEndpoint) -> None:
        self._api, self._endpoint = api, endpoint

    async def observe(self, ctx: DriverContext) -> Observation:
        owned = await self._owned(ctx)
        if not owned:
            return Observation()
        matches = True
        for domain, zone in owned.items():
            matches &= self._points_at_target(domain, await self._api.rrsets(zone, domain))
        return Observation(state={"names": sorted(owned), "recordsMatch": matches})

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        owned = await self._owned(ctx)
        zones = await self._zones()
        refused: list[str] = []
        reasons: set[str] = set()
        for domain in desired["names"]:
            zone = zone_for(domain, zones)
            if zone is None:
                refused.append(f"{domain}: the DNS server serves no zone it is in ({_listed(zones)})")
                reasons.add("ZoneNotServed")
                continue
            why = await self._write(ctx, domain, zone, mine=domain in owned)
            if why is not None:
                refused.append(f"{domain}: {why}")
                reasons.add("RecordNotOwned")
        for domain in sorted(set(owned) - set(desired["names"])):
            await self._api.change(owned[domain], removing(domain))
        if refused:
            reason = reasons.pop() if len(reasons) == 1 else "RecordsRefused"
            raise PermanentError("; ".join(refused) + "; every other name is written", reason=reason)

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        """Records are not data: they go with the Project whatever its deletionPolicy."""
        for domain, zone in (await self._owned(ctx)).items():
            await self._api.change(zone, removing(domain))

    async def _write(self, ctx: DriverContext, domain: str, zone: str, mine: bool) -> str | None:
        """Point ``domain`` at the Platform's Caddy, unless it is not the operator's to change (why not)."""
        present = await self._api.rrsets(zone, domain)
        if not mine:
            marks = await self._api.rrsets(zone, owner_name(domain), "TXT")
            if marks:
                return f"{absolute(owner_name(domain))} marks it as someone else's; it is left as it is"
            made_by_hand = sorted(r["type"] for r in present if r["type"] in ADDRESS_TYPES)
            if made_by_hand:
                return (f"it has {', '.join(made_by_hand)} records the operator did not make; they are left as "
                        "they are (remove them to let the operator manage the name)")  # fmt: skip
        beside = sorted(r["type"] for r in present if r["type"] not in ADDRESS_TYPES)
        if self._endpoint.target.cname is not None and beside:
            return f"a CNAME cannot sit beside its {', '.join(beside)} records; they are left as they are"
        if mine and self._points_at_target(domain, present):
            return None
        await self._api.change(zone, replacing(domain, self._endpoint, ctx.key, present))
        return None

    def _points_at_target(self, domain: str, present: list[dict[str, Any]]) -> bool:
        """Whether the address records at ``domain`` are exactly the ones the Platform's target asks for."""
        found = [r for r in present if r["type"] in ADDRESS_TYPES]
        return records_of(found) == records_of(address_rrsets(domain, self._endpoint))

    async def _owned(self, ctx: DriverContext) -> dict[str, str]:
        """The domains this Project's marks are on, with the zone each is in."""
        content = owner_content(self._endpoint, ctx.key)
        owned: dict[str, str] = {}
        for record in await self._api.search(owner_search(self._endpoint, ctx.key)):
            domain = domain_of_owner_name(str(record.get("name", "")))
            if record.get("type") == "TXT" and record.get("content") == content and domain is not None:
                owned[domain] = str(record.get("zone", "")).removesuffix(".")
        return owned

    async def _zones(self) -> list[str]:
        served = await self._api.zones()
        allowed = self._endpoint.zones
        return served if allowed is None else [zone for zone in served if zone in allowed]


def _listed(zones: list[str]) -> str:
    if not zones:
        return "it may write in none"
    shown = ", ".join(zones[:5])
    return f"zones: {shown}{', …' if len(zones) > 5 else ''}"
