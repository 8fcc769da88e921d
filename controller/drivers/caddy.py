"""Caddy: one HTTPS route per Project through the admin API.

Each route carries ``@id: codeb.<namespace>.<name>``, so the driver reads and
replaces exactly its own routes and never touches others. A namespace has no dot,
so no two Projects share an id (``a-b/c`` and ``a/b-c`` did with a dash). Which
Project may route a domain is decided cluster-wide by the domain ledger
(`controller.claims`), before this driver is asked. The route is rendered
by a pure function (`render_route`) and compared whole with what Caddy holds: a
route edited or deleted by hand, or lost in a Caddy restart, is drift and is
rewritten. Every change is one admin-API request, which Caddy applies atomically.
"""

from __future__ import annotations

from typing import Any

import httpx

from controller.drivers import DriverContext
from controller.errors import PermanentError, RetryableError
from controller.planner import Component, Observation, State

SERVER = "codeb"
SECURITY_HEADERS = {
    "Strict-Transport-Security": ["max-age=31536000; includeSubDomains"],
    "X-Frame-Options": ["DENY"],
    "X-Content-Type-Options": ["nosniff"],
    "Referrer-Policy": ["strict-origin-when-cross-origin"],
}


def route_id(ctx: DriverContext) -> str:
    return f"codeb.{ctx.key.namespace}.{ctx.key.name}"


def render_route(ctx: DriverContext, desired: State) -> dict[str, Any]:
    """The Caddy route for a Project (pure)."""
    return {
        "@id": route_id(ctx),
        "match": [{"host": list(desired["domains"])}],
        "handle": [
            {
                "handler": "subroute",
                "routes": [
                    {
                        "handle": [
                            {"handler": "headers", "response": {"set": SECURITY_HEADERS, "deferred": True}},
                            {"handler": "encode", "encodings": {"zstd": {}, "gzip": {}}, "prefer": ["zstd", "gzip"]},
                            {
                                "handler": "reverse_proxy",
                                "upstreams": [{"dial": u} for u in desired["upstreams"]],
                            },
                        ]
                    }
                ],
            }
        ],
        "terminal": True,
    }


def render_server(listen: list[str]) -> dict[str, Any]:
    return {"listen": listen, "routes": [], "automatic_https": {"disable_redirects": True}}


class CaddyDriver:
    component = Component.route

    def __init__(self, admin_url: str, listen: list[str], client: httpx.AsyncClient | None = None) -> None:
        self._admin = admin_url.rstrip("/")
        self._listen = listen
        # Caddy's admin API checks Origin/Host; a plain client with our base URL passes.
        self._client = client or httpx.AsyncClient(timeout=10)

    async def _request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        try:
            response = await self._client.request(method, f"{self._admin}{path}", json=body)
        except httpx.TransportError:
            raise RetryableError(
                f"Caddy admin API at {self._admin} is unreachable", reason="RouteUnavailable"
            ) from None
        if response.status_code >= 500 and "unknown object ID" not in response.text:
            raise RetryableError(f"Caddy answered {response.status_code} to {method} {path}", reason="RouteUnavailable")
        if response.status_code == 400:
            raise PermanentError(f"Caddy refused the route: {response.text[:300]}", reason="RouteRejected")
        return response

    async def observe(self, ctx: DriverContext) -> Observation:
        response = await self._request("GET", f"/id/{route_id(ctx)}")
        if response.status_code != 200 or response.json() is None:
            return Observation()
        route = response.json()
        hosts = [h for m in route.get("match", []) for h in m.get("host", [])]
        proxies = [
            h for r in route["handle"][0].get("routes", []) for h in r["handle"] if h["handler"] == "reverse_proxy"
        ]
        upstreams = [u["dial"] for p in proxies for u in p.get("upstreams", [])]
        state = {"domains": hosts, "upstreams": upstreams}
        return Observation(state={**state, "routeMatches": route == render_route(ctx, state)})

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        route = render_route(ctx, desired)
        existing = await self._request("GET", f"/id/{route_id(ctx)}")
        if existing.status_code == 200:
            await self._checked("PATCH", f"/id/{route_id(ctx)}", route)
            return
        await self._ensure_server()
        await self._checked("POST", f"/config/apps/http/servers/{SERVER}/routes", route)

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        response = await self._request("DELETE", f"/id/{route_id(ctx)}")
        if response.status_code not in (200, 404) and "unknown object ID" not in response.text:
            raise RetryableError(f"Caddy answered {response.status_code} deleting the route", reason="RouteUnavailable")

    async def _ensure_server(self) -> None:
        """Create the operator's server (and any missing parent) without touching anything else."""
        config = (await self._request("GET", "/config/")).json() or {}
        apps = config.get("apps")
        if apps is None:
            await self._checked("POST", "/config/apps", {"http": {"servers": {SERVER: render_server(self._listen)}}})
        elif "http" not in apps:
            await self._checked("POST", "/config/apps/http", {"servers": {SERVER: render_server(self._listen)}})
        elif SERVER not in apps["http"].get("servers", {}):
            await self._checked("POST", f"/config/apps/http/servers/{SERVER}", render_server(self._listen))

    async def _checked(self, method: str, path: str, body: Any) -> None:
        response = await self._request(method, path, body)
        if response.status_code >= 300:
            raise RetryableError(f"Caddy answered {response.status_code} to {method} {path}", reason="RouteUnavailable")
