"""SSH host keys trusted on first use, recorded on the real API server: a host that later answers with
another key (a machine that took over the address) is refused before anything is sent to it."""

from __future__ import annotations

import asyncssh
import pytest

from controller.clients.hostkeys import CONFIG_MAP, HostKeys
from controller.clients.kube import KubeClient
from controller.clients.ssh import HostAccess, SshPool
from controller.errors import RetryableError
from controller.local.cluster import free_port
from tests.sshserver import ssh_server


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
