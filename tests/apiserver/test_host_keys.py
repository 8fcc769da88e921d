"""SSH host keys trusted on first use, recorded on the real API server: a host that later answers with
another key (a machine that took over the address) is refused before anything is sent to it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncssh
import pytest

from controller.errors import RetryableError
from controller.hostkeys import CONFIG_MAP, HostKeys
from controller.kube import KubeClient
from controller.ssh import HostAccess, SshPool


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _AnyoneIn(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: the test is about the server's key, not the client's


@asynccontextmanager
async def ssh_server(port: int, host_key: asyncssh.SSHKey, said: list[str]) -> AsyncIterator[None]:
    def run(process: asyncssh.SSHServerProcess[str]) -> None:
        said.append(str(process.command))
        process.stdout.write("done\n")
        process.exit(0)

    server = await asyncssh.create_server(_AnyoneIn, "127.0.0.1", port, server_host_keys=[host_key],
                                          process_factory=run)  # fmt: skip
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


def pool_for(keys: HostKeys) -> SshPool:
    """A pool as the operator makes it (a fresh one per step: a second replica, or a restarted operator)."""
    return SshPool(connect_timeout=3, allow_internal=True, host_keys=keys)


async def test_a_changed_host_key_is_refused_and_receives_nothing(kube: KubeClient, namespace: str) -> None:
    keys = HostKeys(kube, namespace)
    port = free_port()
    client_key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    access = HostAccess("127.0.0.1", "root", port, client_key, "", "Secret t/deploy-key")
    original, impostor = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(2))
    said: list[str] = []

    async with ssh_server(port, original, said):
        first = pool_for(keys)
        assert (await first.run(access, "echo first")).stdout == "done\n"
        await first.close()
    recorded = await keys.known("127.0.0.1", port)
    assert recorded is not None and recorded.split()[1] == original.export_public_key().decode().split()[1]
    stored = await kube.read_config_map(namespace, CONFIG_MAP)
    assert stored is not None and f"127.0.0.1:{port} ssh-ed25519" in next(iter(stored.data.values()))

    async with ssh_server(port, original, said):  # the same host again, from another replica: let in
        again = pool_for(keys)
        assert (await again.run(access, "echo again")).ok
        await again.close()

    async with ssh_server(port, impostor, said):  # another machine on the address
        pool = pool_for(keys)
        with pytest.raises(RetryableError) as refused:
            await pool.run(access, "cat > /etc/codeb/app.env")
        await pool.close()
    assert refused.value.reason == "HostKeyChanged" and "ssh-host-keys" in refused.value.message
    assert said == ["echo first", "echo again"]  # the impostor was sent nothing
