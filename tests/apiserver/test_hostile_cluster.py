"""A cluster a Project names cannot hold the operator: an endless answer is cut at a cap, one dripped a byte
at a time ends at a total deadline, and while they go on, the operator's own API calls are not starved."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import controller.drivers.clusters as clusters
from controller.clients.kube import KubeClient
from controller.drivers.clusters import ExistingCluster, TargetClusters
from controller.local.cluster import LocalCluster
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from schemas.project import Allocations, ProjectSpec
from tests.factories import project_spec


class HostileApiServer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.answering.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.server.mode == "endless":  # type: ignore[attr-defined]
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b'{"items": [' + b'"x", ' * 50000
            try:
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                self.server.hung_up.append(time.monotonic())  # type: ignore[attr-defined]
                return
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(100000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            self.server.hung_up.append(time.monotonic())  # type: ignore[attr-defined]
            return

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=["endless", "drip"])
def hostile(request: pytest.FixtureRequest) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostileApiServer)
    server.mode, server.hung_up, server.answering = request.param, [], []  # type: ignore[attr-defined]
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:%d"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


async def test_a_hostile_cluster_is_bounded_and_starves_nobody(
    cluster: LocalCluster,
    kube: KubeClient,
    namespace: str,
    hostile: ThreadingHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mode, port = hostile.mode, hostile.server_address[1]  # type: ignore[attr-defined]
    monkeypatch.setattr(clusters, "TARGET_DEADLINE_SECONDS", 3.0)
    cluster.kubectl("create", "secret", "generic", "target", "-n", namespace,
                    f"--from-literal=kubeconfig={KUBECONFIG % port}")  # fmt: skip
    spec = ProjectSpec.model_validate(project_spec(
        slug="shop", servers={"provider": "existing", "runtime": "kubernetes",
                              "cluster": {"kubeconfigSecretRef": "target"}},
        project={"slug": "shop", "source": {"image": "ghcr.io/acme/shop:1"}}))  # fmt: skip
    ctx = DriverContext(ProjectKey(namespace, "shop", str(uuid.uuid4())), Allocations(), servers=spec.servers)
    infrastructure = ExistingCluster(TargetClusters(kube, allow_internal=True))

    started = time.monotonic()
    hostile_calls = [asyncio.ensure_future(infrastructure.observe(ctx)) for _ in range(4)]
    await asyncio.sleep(0.5)
    own_started = time.monotonic()
    assert await kube.namespace_labels(namespace) is not None  # the operator's own API, meanwhile
    own_took = time.monotonic() - own_started
    seen = await asyncio.gather(*hostile_calls)
    took = time.monotonic() - started
    print(f"{mode}: the hostile cluster's observations ended after {took:.1f} s; an own call took {own_took:.2f} s")
    assert all(not s.healthy for s in seen)
    said = seen[0].detail or ""
    assert ("larger than" in said) if mode == "endless" else ("no whole answer within 3 s" in said), said
    assert own_took < 5 and took < 60
    # The operator hung up, in the thread that read: none is left reading (it would also hold up the
    # operator's exit, which joins its threads).
    answering, hung_up = hostile.answering, hostile.hung_up  # type: ignore[attr-defined]
    deadline = time.monotonic() + 15
    while len(hung_up) < len(answering) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert answering and len(hung_up) == len(answering), (answering, hung_up)
