"""Caddy: one HTTPS route per Project through the admin API.

Each route carries ``@id: codeb.<namespace>.<name>``, so the driver reads and
replaces exactly its own routes and never touches others. A namespace has no dot,
so no two Projects share an id (``a-b/c`` and ``a/b-c`` did with a dash). Which
Project may route a domain is decided cluster-wide by the domain ledger
(`controller.claims.store`), before this driver is asked. The route is rendered
by a pure function (`render_route`) and compared whole with what Caddy holds: a
route edited or deleted by hand, or lost in a Caddy restart, is drift and is
rewritten. Every change is one admin-API request, which Caddy applies atomically.
Caddy takes the first route that matches, so a route of exact names is inserted before
every other and one with a wildcard appended after them: even if the ledger's overlap
check were bypassed, ``*.example.com`` could not take ``shop.example.com``'s requests.

Every admin-API change is a config reload, and a reload rebinds Caddy's listeners: a few
connections that arrive just then are reset (`bench/caddy_reloads.py`: 14 to 102 failed
requests in 100 reloads under load; fewer with `net.ipv4.tcp_migrate_req=1`, never none). A
blue-green switch must drop nothing, so where the Platform names an ``upstreamDir`` (Caddy and
the operator on one machine) each
upstream's address lives in a file there that the route reads per request with Caddy's
``{file.*}`` placeholder: a switch is an atomic rename, and the route itself changes only
when its domains or the number of upstreams do. Where hosts autoscale the route lists a fixed
number of slots that cycle through the upstreams (`controller.loop.planner.upstream_slots`),
so scaling out or in is file renames too. (Why a reload drops some: Caddy binds each config's
listener anew with SO_REUSEPORT, and Go's server closes, unanswered, a request it reads once
its shutdown has begun: a connection the old config accepted just before is answered by no one.)
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from controller.clients.caddy import CaddyAdmin, admin_client
from controller.errors import RetryableError
from controller.loop.interface import DriverContext
from controller.loop.planner import Component, Observation, State
from controller.specs.caddy import (
    HTTP_METRICS,
    SERVER,
    SERVER_SETTINGS,
    redirects_of,
    render_route,
    render_server,
    route_id,
    slot_addresses,
)


class UpstreamFiles:
    """The files a route's upstreams are read from, one address each, in a directory Caddy reads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, ctx: DriverContext, index: int) -> Path:
        return self.directory / f"{route_id(ctx)}.{index}"

    def dial(self, ctx: DriverContext, index: int) -> str:
        return "{file." + str(self.path(ctx, index)) + "}"

    def read(self, dial: str) -> str:
        """The address a dial stands for: the file's content when it is one of ours, else the dial itself."""
        if not (dial.startswith("{file.") and dial.endswith("}")):
            return dial
        path = Path(dial[len("{file.") : -1])
        return _content(path) if path.parent == self.directory else dial

    def write(self, ctx: DriverContext, upstreams: list[str]) -> None:
        """Each address into its file by rename, so Caddy reads the old address or the new, never half."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for index, address in enumerate(upstreams):
            path = self.path(ctx, index)
            if _content(path) == address:
                continue
            partial = path.with_name(f".{path.name}.partial")
            partial.write_text(address)
            partial.chmod(0o644)
            os.replace(partial, path)

    def remove(self, ctx: DriverContext, keep: int = 0) -> None:
        """The files of upstreams at ``keep`` and beyond (a route that has fewer now, or none)."""
        prefix = f"{route_id(ctx)}."
        for path in self.directory.glob(f"{prefix}*"):
            # Exactly "<id>.<n>": Project "shop.x" (a name may hold dots) has "<ns>.shop.x.<n>", not ours.
            suffix = path.name.removeprefix(prefix)
            if suffix.isdigit() and int(suffix) >= keep:
                path.unlink(missing_ok=True)


def _content(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


class CaddyDriver:
    component = Component.route

    def __init__(
        self,
        admin_url: str,
        listen: list[str],
        client: httpx.AsyncClient | None = None,
        upstream_dir: Path | None = None,
    ) -> None:
        self._api = CaddyAdmin(admin_url, client or admin_client(10.0))
        self._request, self._checked = self._api.request, self._api.checked
        self._listen = listen
        self._files = UpstreamFiles(upstream_dir) if upstream_dir is not None else None

    def _dials(self, ctx: DriverContext, desired: State) -> list[str] | None:
        """Where the route dials each slot: its file when upstreams live in files, else None (directly)."""
        if self._files is None:
            return None
        return [self._files.dial(ctx, index) for index in range(len(slot_addresses(desired)))]

    async def observe(self, ctx: DriverContext) -> Observation:
        response = await self._request("GET", f"/id/{route_id(ctx)}")
        if response.status_code != 200 or response.json() is None:
            return Observation()
        route = response.json()
        hosts = [h for m in route.get("match", []) for h in m.get("host", [])]
        # Redirects first, then the route that serves (`render_route`).
        *redirecting, serving = route["handle"][0].get("routes", []) or [{}]
        handlers = serving.get("handle", [])
        proxies = [h for h in handlers if h["handler"] == "reverse_proxy"]
        dials = [u["dial"] for p in proxies for u in p.get("upstreams", [])]
        addresses = [self._files.read(d) for d in dials] if self._files is not None else dials
        maintenance = any(h["handler"] == "static_response" for h in handlers)
        # Each upstream once, in slot order: the slots after the first round repeat them.
        state = {"domains": hosts, "upstreams": list(dict.fromkeys(addresses)), "slots": len(dials),
                 "maintenance": maintenance, "redirects": redirects_of(redirecting)}  # fmt: skip
        rendered = route == render_route(ctx, state, self._dials(ctx, state))
        matches = rendered and all(addresses) and addresses == slot_addresses(state)
        return Observation(state={**state, "routeMatches": matches})

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        """Upstream files first (the switch itself), then the route only where it differs."""
        if self._files is not None:
            self._files.write(ctx, slot_addresses(desired))
        route = render_route(ctx, desired, self._dials(ctx, desired))
        existing = await self._request("GET", f"/id/{route_id(ctx)}")
        if existing.status_code == 200:
            if existing.json() != route:
                await self._ensure_server()
                await self._checked("PATCH", f"/id/{route_id(ctx)}", route)
        else:
            await self._ensure_server()
            routes = f"/config/apps/http/servers/{SERVER}/routes"
            if any(domain.startswith("*.") for domain in desired["domains"]):
                await self._checked("POST", routes, route)  # appended: after every exact route
            else:
                await self._checked("PUT", f"{routes}/0", route)  # inserted first: before every wildcard
        if self._files is not None:
            self._files.remove(ctx, keep=len(slot_addresses(desired)))

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        response = await self._request("DELETE", f"/id/{route_id(ctx)}")
        if response.status_code not in (200, 404) and "unknown object ID" not in response.text:
            raise RetryableError(f"Caddy answered {response.status_code} deleting the route", reason="RouteUnavailable")
        if self._files is not None:
            self._files.remove(ctx)

    async def _ensure_server(self) -> None:
        """Create the operator's server (and any missing parent), and turn on per-host request metrics, without
        touching anything else."""
        config = (await self._request("GET", "/config/")).json() or {}
        apps = config.get("apps")
        http = {"servers": {SERVER: render_server(self._listen)}, "metrics": HTTP_METRICS}
        if apps is None:
            await self._checked("POST", "/config/apps", {"http": http})
            return
        if "http" not in apps:
            await self._checked("POST", "/config/apps/http", http)
            return
        if apps["http"].get("metrics") != HTTP_METRICS:
            method = "PATCH" if "metrics" in apps["http"] else "PUT"
            await self._checked(method, "/config/apps/http/metrics", HTTP_METRICS)
        if SERVER not in apps["http"].get("servers", {}):
            await self._checked("POST", f"/config/apps/http/servers/{SERVER}", render_server(self._listen))
        else:  # a server made by an earlier release (its redirect off, its TLS implied): set as it is now
            server = apps["http"]["servers"][SERVER]
            for key, value in SERVER_SETTINGS.items():
                if server.get(key) != value:
                    method = "PATCH" if key in server else "PUT"  # Caddy: PATCH replaces, PUT creates
                    await self._checked(method, f"/config/apps/http/servers/{SERVER}/{key}", value)
