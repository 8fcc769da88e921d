"""The Caddy JSON of a Project's route and of the server that holds every route (pure).

The route carries ``@id: codeb.<namespace>.<name>`` (`route_id`) so the driver
(`controller.drivers.caddy`) replaces exactly its own; it sets the security headers,
compresses, and proxies to each upstream, dialled directly or through a placeholder.
"""

from __future__ import annotations

from typing import Any

from controller.loop.interface import DriverContext
from controller.loop.planner import State

SERVER = "codeb"


SECURITY_HEADERS = {
    "Strict-Transport-Security": ["max-age=31536000; includeSubDomains"],
    "X-Frame-Options": ["DENY"],
    "X-Content-Type-Options": ["nosniff"],
    "Referrer-Policy": ["strict-origin-when-cross-origin"],
}


def route_id(ctx: DriverContext) -> str:
    return f"codeb.{ctx.key.namespace}.{ctx.key.name}"


# What a suspended Project's domains answer: the same page for every Project (nothing a manifest says is
# in it), never cached, and a hint to come back in a while.
MAINTENANCE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Temporarily unavailable</title></head>
<body><h1>Temporarily unavailable</h1><p>This site is paused for maintenance. Please come back later.</p></body>
</html>
"""
MAINTENANCE_RESPONSE: dict[str, Any] = {
    "handler": "static_response",
    "status_code": 503,
    "headers": {
        "Content-Type": ["text/html; charset=utf-8"],
        "Cache-Control": ["no-store"],
        "Retry-After": ["600"],
    },
    "body": MAINTENANCE_PAGE,
}


def slot_addresses(desired: State) -> list[str]:
    """The address in each of the route's slots (`controller.loop.planner.upstream_slots`): the
    upstreams in turn, as many times round as the slots take."""
    upstreams = list(desired["upstreams"])
    slots = max(int(desired.get("slots", 0)), len(upstreams)) if upstreams else 0
    return [upstreams[index % len(upstreams)] for index in range(slots)]


def render_route(ctx: DriverContext, desired: State, dials: list[str] | None = None) -> dict[str, Any]:
    """The Caddy route for a Project (pure): each slot's upstream dialled directly, or through ``dials``
    (one per slot, e.g. the `{file.*}` placeholders of `UpstreamFiles`); a suspended Project's
    (``maintenance``) answers the maintenance page instead."""
    dials = dials if dials is not None else slot_addresses(desired)
    answer = (
        MAINTENANCE_RESPONSE
        if desired.get("maintenance")
        else {"handler": "reverse_proxy", "upstreams": [{"dial": dial} for dial in dials]}
    )
    main = {
        "handle": [
            {"handler": "headers", "response": {"set": SECURITY_HEADERS, "deferred": True}},
            {"handler": "encode", "encodings": {"zstd": {}, "gzip": {}}, "prefer": ["zstd", "gzip"]},
            answer,
        ]
    }
    redirects = [_redirect(www, to) for www, to in sorted(desired.get("redirects", {}).items())]
    return {
        "@id": route_id(ctx),
        "match": [{"host": list(desired["domains"])}],
        "handle": [{"handler": "subroute", "routes": [*redirects, main]}],
        "terminal": True,
    }


# Where a redirected name sends a request: the same path and query on the name it redirects to.
REDIRECT_TARGET = "https://{to}{{http.request.uri}}"


def _redirect(www: str, to: str) -> dict[str, Any]:
    location = REDIRECT_TARGET.format(to=to)
    answer = {"handler": "static_response", "status_code": 308, "headers": {"Location": [location]}}
    return {"match": [{"host": [www]}], "terminal": True, "handle": [answer]}


def redirects_of(routes: list[dict[str, Any]]) -> dict[str, str]:
    """The redirects a route's subroutes answer (``render_route``'s, read back), by the name redirected."""
    found = {}
    for route in routes:
        hosts = [h for m in route.get("match", []) for h in m.get("host", [])]
        for handler in route.get("handle", []):
            location = (handler.get("headers") or {}).get("Location", [""])[0]
            if handler.get("handler") == "static_response" and handler.get("status_code") == 308 and len(hosts) == 1:
                found[hosts[0]] = location.removeprefix("https://").removesuffix("{http.request.uri}")
    return found


# The operator's server, beside its routes. TLS on every listener, said outright: Caddy
# would assume it only for listeners on its https_port, and a local Caddy listens on
# another port (8443) while https_port stays 443, so that its redirects name the port.
# Automatic HTTPS left on: plain HTTP for every routed name (on the http app's http_port)
# answers a permanent redirect to HTTPS, so nothing a Project serves goes in the clear.
SERVER_SETTINGS: dict[str, Any] = {"automatic_https": {}, "tls_connection_policies": [{}]}


# Caddy's request metrics, per host: each Project's traffic as its users see it, what its alert rules
# (`controller.specs.alerts`) read. A setting of the http app, so of every server of that Caddy.
HTTP_METRICS: dict[str, Any] = {"per_host": True}


def render_server(listen: list[str]) -> dict[str, Any]:
    return {"listen": listen, "routes": [], **SERVER_SETTINGS}
