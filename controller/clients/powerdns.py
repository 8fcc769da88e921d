"""PowerDNS's HTTP API: the few calls the DNS driver makes, with timeouts and one translation of errors.

The API key goes in a header only; no message carries it. PowerDNS is the Platform's, set up by
its administrator, but an answer is still read within the client's timeout and at most
`ANSWER_BYTES`, so a server that misbehaves cannot hold a pass or fill the operator's memory.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx

from controller.clients.http import read_bounded
from controller.errors import PermanentError, RetryableError
from controller.specs.dns import absolute

# A zone listing of a few thousand zones fits; anything bigger is not an answer this driver needs.
ANSWER_BYTES = 8 * 1024 * 1024
# At most this many of a Project's marks are looked for (it routes at most 20 domains, with room to spare
# for what an earlier spec left).
SEARCH_MAX = 200


class PowerDns:
    """One PowerDNS server's API at ``api_url`` (``/api/v1/servers/<server_id>``)."""

    def __init__(self, api_url: str, server_id: str, api_key: str, client: httpx.AsyncClient) -> None:
        self.url = api_url.rstrip("/")
        self._base = f"{self.url}/api/v1/servers/{quote(server_id)}"
        self._client = client
        self._headers = {"X-API-Key": api_key}

    async def zones(self) -> list[str]:
        """The zones the server serves, without their trailing dots."""
        found = await self._json("GET", "/zones")
        return sorted(str(zone["name"]).removesuffix(".") for zone in found or [])

    async def rrsets(self, zone: str, name: str, kind: str | None = None) -> list[dict[str, Any]]:
        """The rrsets at ``name`` in ``zone`` (of ``kind`` only, when given)."""
        params = {"rrset_name": absolute(name), **({"rrset_type": kind} if kind else {})}
        found = await self._json("GET", f"/zones/{quote(absolute(zone))}", params=params)
        return [r for r in (found or {}).get("rrsets", []) if r.get("name") == absolute(name)]

    async def change(self, zone: str, rrsets: list[dict[str, Any]]) -> None:
        """One PATCH of the zone: PowerDNS applies all of ``rrsets`` in one transaction, or none."""
        await self._json("PATCH", f"/zones/{quote(absolute(zone))}", body={"rrsets": rrsets})

    async def search(self, term: str) -> list[dict[str, Any]]:
        """Records whose name or content matches ``term`` (``*`` matches anything)."""
        found = await self._json("GET", "/search-data", params={"q": term, "max": str(SEARCH_MAX),
                                                                 "object_type": "record"})  # fmt: skip
        return list(found or [])

    async def _json(self, method: str, path: str, params: dict[str, str] | None = None, body: Any = None) -> Any:
        url = str(httpx.URL(f"{self._base}{path}", params=params))
        what = f"PowerDNS at {self.url}"
        try:
            status, text = await read_bounded(self._client, method, url, None, lambda _: True, body, self._headers,
                                              ANSWER_BYTES)  # fmt: skip
        except httpx.HTTPError:
            raise RetryableError(f"{what} is unreachable or did not answer in time", reason="DnsUnavailable") from None
        if status in (401, 403):
            raise RetryableError(f"{what} refused the Platform's API key (spec.dns.apiKeySecretRef)",
                                 reason="DnsCredentialsRejected", delay=60)  # fmt: skip
        if status in (400, 422):
            raise PermanentError(f"{what} refused the change: {_error(text)}", reason="DnsRejected")
        if status >= 300:
            raise RetryableError(f"{what} answered {status} to {method} {path.split('?')[0]}", reason="DnsUnavailable")
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            raise RetryableError(f"{what} answered something that is not JSON", reason="DnsUnavailable") from None


def _error(text: str) -> str:
    try:
        return str(json.loads(text).get("error", ""))[:300]
    except (ValueError, AttributeError):
        return text[:300]
