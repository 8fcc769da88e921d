"""The Caddy route of a Project, rendered from plain data and compared whole (no Caddy here)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from controller.clients.caddy import CaddyAdmin
from controller.drivers.caddy import UpstreamFiles
from controller.errors import RetryableError
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.specs.caddy import SECURITY_HEADERS, render_route, render_server, route_id
from schemas.project import Allocations

CTX = DriverContext(ProjectKey("shop-team", "shop", "uid-1"), Allocations(port=4512))
DESIRED = {"domains": ["shop.example.com", "www.shop.example.com"], "upstreams": ["127.0.0.1:4512", "10.0.0.2:4512"]}


def proxy(route: dict[str, object]) -> dict[str, object]:
    handlers = route["handle"][0]["routes"][0]["handle"]  # type: ignore[index]
    return next(h for h in handlers if h["handler"] == "reverse_proxy")  # type: ignore[no-any-return]


def test_route_dials_upstreams_directly_by_default() -> None:
    route = render_route(CTX, DESIRED)
    assert route["@id"] == "codeb.shop-team.shop" == route_id(CTX)
    assert route["match"] == [{"host": ["shop.example.com", "www.shop.example.com"]}]
    assert route["terminal"] is True
    assert proxy(route) == {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": "127.0.0.1:4512"}, {"dial": "10.0.0.2:4512"}],
    }
    headers = route["handle"][0]["routes"][0]["handle"][0]
    assert headers == {"handler": "headers", "response": {"set": SECURITY_HEADERS, "deferred": True}}


def test_route_through_upstream_files_changes_only_with_the_number_of_upstreams(tmp_path: Path) -> None:
    """A blue-green switch rewrites the files, not the route: the rendered route does not depend on addresses."""
    files = UpstreamFiles(tmp_path)
    dials = [files.dial(CTX, i) for i in range(2)]
    before = render_route(CTX, DESIRED, dials)
    switched = render_route(CTX, {**DESIRED, "upstreams": ["127.0.0.1:4513", "10.0.0.2:4513"]}, dials)
    assert before == switched
    assert proxy(before)["upstreams"] == [{"dial": "{file." + str(tmp_path / f"codeb.shop-team.shop.{i}") + "}"}
                                          for i in range(2)]  # fmt: skip


def test_ids_of_two_projects_never_meet() -> None:
    """A namespace has no dot, so `a-b/c` and `a/b-c` get different ids (they met when a dash joined them)."""
    first = DriverContext(ProjectKey("a-b", "c", "u1"), Allocations())
    second = DriverContext(ProjectKey("a", "b-c", "u2"), Allocations())
    assert route_id(first) != route_id(second)


def test_server_leaves_caddys_http_to_https_redirect_on() -> None:
    server = render_server([":8443"])
    assert server["listen"] == [":8443"] and server["routes"] == []
    assert not server["automatic_https"].get("disable") and not server["automatic_https"].get("disable_redirects")


async def test_a_failed_change_says_what_caddy_said() -> None:
    """Caddy refuses a whole config load for one listener in use; the status shows that reason."""

    def handler(request: httpx.Request) -> httpx.Response:
        error = "loading new config: http app module: start: listening on 127.0.0.1:4443: bind: address already in use"
        return httpx.Response(500, json={"error": error})

    api = CaddyAdmin("http://caddy.test", httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    with pytest.raises(RetryableError) as failed:
        await api.checked("POST", "/config/apps/http/servers/codeb", {})
    assert str(failed.value) == (
        "Caddy answered 500 to POST /config/apps/http/servers/codeb: loading new config: http app module: "
        "start: listening on 127.0.0.1:4443: bind: address already in use"
    )
