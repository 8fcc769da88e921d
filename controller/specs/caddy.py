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


def render_route(ctx: DriverContext, desired: State, dials: list[str] | None = None) -> dict[str, Any]:
    """The Caddy route for a Project (pure): upstreams dialled directly, or through ``dials`` (one
    per upstream, e.g. the `{file.*}` placeholders of `UpstreamFiles`)."""
    dials = dials if dials is not None else list(desired["upstreams"])
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
                                "upstreams": [{"dial": dial} for dial in dials],
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
