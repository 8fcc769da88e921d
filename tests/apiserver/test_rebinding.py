"""A name that answers one address for the check and another for the connection (DNS rebinding) gets
nowhere: the operator connects to the address it checked, and still verifies the name (host key, TLS).

The SSH host listens on 198.51.100.77, an address added to this machine's loopback interface for the
test (outside 127/8, so the target check lets it through, as it would a real host's). The resolver
is this process's (the event loop's ``getaddrinfo``), made to answer that address the first time and
127.0.0.1 after, where a second server, the attacker's, waits for what it is sent.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import asyncssh
import pytest

from controller.clients.kube import KubeClient
from controller.clients.kubeconfig import api_client_from_kubeconfig
from controller.clients.ssh import HostAccess, SshPool, known_hosts_line
from controller.drivers.clusters import TargetClusters
from controller.errors import RetryableError
from controller.local.cluster import LocalCluster, free_port
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from schemas.project import Allocations, ProjectSpec
from tests.apiserver.test_kubernetes_runtime import flat_kubeconfig
from tests.factories import project_spec
from tests.sshserver import ssh_server

pytestmark = pytest.mark.apiserver

OUTSIDE = "198.51.100.77"  # TEST-NET-2: no real host has it


@pytest.fixture()
def outside_address() -> Iterator[str]:
    ip = shutil.which("ip")
    assert ip, "these tests add an address to the loopback interface with iproute2's ip (Debian: iproute2)"
    subprocess.run([ip, "addr", "add", f"{OUTSIDE}/32", "dev", "lo"], check=True, capture_output=True)
    try:
        yield OUTSIDE
    finally:
        subprocess.run([ip, "addr", "del", f"{OUTSIDE}/32", "dev", "lo"], check=False, capture_output=True)


def rebinding(monkeypatch: pytest.MonkeyPatch, name: str, first: str, then: str) -> list[str]:
    """Make ``name`` resolve to ``first`` once, then to ``then``; returns what it answered, in order."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    answered: list[str] = []

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return await real(host, port, *args, **kwargs)
        answered.append(first if not answered else then)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answered[-1], port or 0))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return answered


async def test_ssh_goes_to_the_address_checked_not_to_the_next_answer(
    monkeypatch: pytest.MonkeyPatch, outside_address: str
) -> None:
    name, port = "host.rebind.test", free_port()
    answered = rebinding(monkeypatch, name, outside_address, "127.0.0.1")
    host_key, attacker_key = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(2))
    known = known_hosts_line(name, port, host_key.export_public_key().decode().strip())
    client_key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    access = HostAccess(name, "root", port, client_key, known, "Secret t/deploy-key")
    said, stolen = [], []  # type: ignore[var-annotated]
    async with ssh_server(port, host_key, said, address=outside_address), ssh_server(port, attacker_key, stolen):
        pool = SshPool(connect_timeout=5, allow_internal=False)
        try:
            assert (await pool.run(access, "cat > /etc/app.env")).stdout == "done\n"
        finally:
            await pool.close()
    assert said == ["cat > /etc/app.env"] and stolen == []
    assert answered == [outside_address]  # resolved once: for the check, and that answer was used


async def test_the_host_key_is_still_the_names(monkeypatch: pytest.MonkeyPatch, outside_address: str) -> None:
    """Connecting to the address does not loosen the check: a key not known for the name is refused."""
    name, port = "host.rebind.test", free_port()
    rebinding(monkeypatch, name, outside_address, outside_address)
    expected, presented = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(2))
    known = known_hosts_line(name, port, expected.export_public_key().decode().strip())
    client_key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    said: list[str] = []
    async with ssh_server(port, presented, said, address=outside_address):
        pool = SshPool(connect_timeout=5, allow_internal=False)
        with pytest.raises(RetryableError) as refused:
            await pool.run(HostAccess(name, "root", port, client_key, known, "Secret t/deploy-key"), "true")
        await pool.close()
    assert refused.value.reason == "HostKeyMismatch" and said == []


async def test_a_cluster_client_connects_to_the_address_checked_and_verifies_the_name(
    monkeypatch: pytest.MonkeyPatch, cluster: LocalCluster, kube: KubeClient, namespace: str
) -> None:
    port = int(flat_kubeconfig(cluster).split("https://127.0.0.1:")[1].split()[0])
    as_named = flat_kubeconfig(cluster).replace("https://127.0.0.1:", "https://localhost:")
    # The server's certificate names localhost: connecting to 127.0.0.1 with that name verifies.
    pinned = api_client_from_kubeconfig(as_named, "test", connect_to="127.0.0.1")
    assert pinned.configuration.host == f"https://127.0.0.1:{port}"
    assert pinned.configuration.tls_server_name == "localhost"
    with KubeClientFor(pinned) as client:
        assert (await client.request("GET", "/version") or {}).get("major")
    # A name the certificate does not carry is refused, although the address is the server's.
    stranger = api_client_from_kubeconfig(as_named.replace("localhost", "cluster.rebind.test"), "test",
                                          connect_to="127.0.0.1")  # fmt: skip
    with KubeClientFor(stranger) as client, pytest.raises(RetryableError):
        await client.request("GET", "/version")

    # The driver resolves once, checks, and pins what it checked (a public answer, then loopback).
    answered = rebinding(monkeypatch, "cluster.rebind.test", "203.0.113.9", "127.0.0.1")
    kubeconfig = as_named.replace("localhost", "cluster.rebind.test")
    cluster.kubectl("create", "secret", "generic", "target", "-n", namespace, f"--from-literal=kubeconfig={kubeconfig}")
    spec = ProjectSpec.model_validate(
        project_spec(
            servers={"provider": "existing", "runtime": "kubernetes", "cluster": {"kubeconfigSecretRef": "target"}}
        )
    )
    ctx = DriverContext(ProjectKey(namespace, "shop", "uid-shop"), Allocations(), servers=spec.servers)
    target = await TargetClusters(kube, allow_internal=False).of(ctx)
    try:
        configuration = target.kube._api.configuration
        assert configuration.host == f"https://203.0.113.9:{port}"
        assert configuration.tls_server_name == "cluster.rebind.test" and answered == ["203.0.113.9"]
    finally:
        target.kube.close()


class KubeClientFor:
    """A bounded KubeClient over ``api`` for one block, as the driver makes for a Project's cluster."""

    def __init__(self, api: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._client = KubeClient(api, ThreadPoolExecutor(1), 5.0, cluster="test", deadline=10.0, max_bytes=1 << 20)

    def __enter__(self) -> KubeClient:
        return self._client

    def __exit__(self, *exc: object) -> None:
        self._client.close()
