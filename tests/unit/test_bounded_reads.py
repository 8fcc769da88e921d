"""A Project's application cannot make the operator read without bound: a huge or never-ending answer,
or one dripped a byte at a time, ends within the probe's timeout with at most a capped body read."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncssh
import httpx
import pytest

from controller.clients.http import BODY_BYTES, probe_http
from controller.clients.kube import KubeClient
from controller.clients.kubeconfig import api_client_from_kubeconfig
from controller.clients.ssh import OUTPUT_BYTES, HostAccess, SshPool
from controller.drivers.proctable import tail_lines
from controller.errors import RetryableError
from controller.local.cluster import free_port
from tests.sshserver import ssh_server

SECRET = "hunter2-the-password"


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(500)
        if self.path == "/endless":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = (f"password={SECRET} " * 4000).encode()
            try:
                while True:  # 20 GB in the issue; here: until the operator hangs up
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                return
        elif self.path == "/drip":
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(1000000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)  # each read is quick; the whole answer would take days
            except OSError:
                return

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def hostile() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


async def test_an_endless_answer_is_read_up_to_the_cap_and_redacted(hostile: int) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        probe = await probe_http(client, "127.0.0.1", hostile, "/endless", frozenset({SECRET}), timeout=5)
    assert not probe.healthy and probe.detail is not None and "answered 500" in probe.detail
    assert SECRET not in probe.detail and len(probe.detail) < 300
    assert BODY_BYTES <= 1 << 20


async def test_an_answer_dripped_byte_by_byte_ends_at_the_probes_timeout(hostile: int) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        started = time.monotonic()
        probe = await probe_http(client, "127.0.0.1", hostile, "/drip", frozenset(), timeout=1.5)
        took = time.monotonic() - started
    assert not probe.healthy and probe.detail is not None and "timed out" in probe.detail
    assert took < 10, f"the probe took {took:.1f} s: its timeout bounds each read, not the whole answer"


async def test_a_hosts_endless_output_is_kept_to_its_last_megabyte() -> None:
    """A Project's host printing without end: the command's end (where a failure says why) is kept, capped."""

    def flood(process: asyncssh.SSHServerProcess[str]) -> None:
        process.stdout.write("x" * (5 * OUTPUT_BYTES) + "\nthe end\n")
        process.exit(3)

    port, said = free_port(), []
    async with ssh_server(port, asyncssh.generate_private_key("ssh-ed25519"), said, flood):
        pool = SshPool(connect_timeout=3, allow_internal=True)
        key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
        result = await pool.run(HostAccess("127.0.0.1", "root", port, key), "journalctl -f")
        await pool.close()
    assert result.exit_status == 3 and result.stdout.endswith("the end\n")
    assert len(result.stdout) <= OUTPUT_BYTES


def test_a_logs_last_lines_are_read_from_its_end_only(tmp_path: Path) -> None:
    log = tmp_path / "blue.log"
    log.write_text("".join(f"line {n}\n" for n in range(400_000)))  # about 5 MB
    assert tail_lines(log, 3) == ["line 399997", "line 399998", "line 399999"]
    assert tail_lines(log, 10**6)[0].startswith("line ") and len(tail_lines(log, 10**6)) < 40_000


class EndlessApiServer(BaseHTTPRequestHandler):
    """A Kubernetes API server of a Project's choosing that answers every GET with JSON that never ends."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.asked.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b'{"metadata": {"labels": {' + b'"k": "v", ' * 20000
        try:
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            return

    def log_message(self, *args: object) -> None:
        pass


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:%d"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


async def test_a_named_clusters_secret_and_namespace_reads_are_cut_at_the_cap() -> None:
    """The Secret and namespace reads the kubernetes runtime makes on a Project's own cluster go through
    the one bounded path, like every other call there (they were typed calls that read all)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), EndlessApiServer)
    server.daemon_threads, server.asked = True, []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = api_client_from_kubeconfig(KUBECONFIG % server.server_address[1], "test")
    kube = KubeClient(api, ThreadPoolExecutor(2), 5.0, cluster="theirs", deadline=20.0, max_bytes=1 << 20)
    try:
        with pytest.raises(RetryableError) as secret:
            await kube.read_secret("shop-team", "shop-credentials", "shop")
        with pytest.raises(RetryableError) as namespace:
            await kube.ensure_namespace("shop-team")
    finally:
        kube.close()
        server.shutdown()
    for refused in (secret.value, namespace.value):
        assert refused.reason == "APIUnavailable" and "larger than 1048576 bytes" in refused.message
    assert server.asked == ["/api/v1/namespaces/shop-team/secrets/shop-credentials",  # type: ignore[attr-defined]
                            "/api/v1/namespaces/shop-team"]  # fmt: skip
