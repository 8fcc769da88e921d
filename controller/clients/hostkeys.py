"""SSH host keys by trust on first use, recorded in the cluster.

A host a Project names without ``knownHosts`` (and every host Terraform makes: a fresh
cloud host's key is unknown in advance) is trusted the first time the operator reaches
it: its key is recorded in one ConfigMap in the operator's namespace, which no Project
author can write, and every later connection must present the same key. A host that
answers with another key (a machine that took over the address) is refused as
``HostKeyChanged`` and receives nothing, not the environment file with the Project's
credentials. A host rebuilt on purpose is let in again by removing its entry.

The record lives on the API server, not on the operator's disk, so a second replica or
a restarted operator knows the same keys; writes carry the resourceVersion read, so two
replicas meeting a new host at once agree on the first key recorded.
"""

from __future__ import annotations

import hashlib

from controller.clients.kube import MANAGED_BY, RECORD_LABEL, Conflict, KubeClient
from controller.errors import RetryableError

CONFIG_MAP = "ssh-host-keys"
LABEL = {MANAGED_BY: "codeb", RECORD_LABEL: "ssh-host-keys"}
ATTEMPTS = 5


def entry_key(address: str, port: int) -> str:
    """A ConfigMap key for a host: any address or name, any length, in the characters keys allow."""
    return hashlib.sha256(f"{address}:{port}".encode()).hexdigest()[:40]


class HostKeys:
    def __init__(self, kube: KubeClient, namespace: str) -> None:
        self._kube, self._namespace = kube, namespace

    async def known(self, address: str, port: int) -> str | None:
        stored = await self._kube.read_config_map(self._namespace, CONFIG_MAP)
        value = (stored.data if stored else {}).get(entry_key(address, port))
        return value.split(" ", 1)[1] if value else None

    async def remember(self, address: str, port: int, key: str) -> str:
        """Record ``key`` for the host unless one is recorded already; the key that is recorded now."""
        entry = entry_key(address, port)
        for _ in range(ATTEMPTS):
            stored = await self._kube.read_config_map(self._namespace, CONFIG_MAP)
            data = dict(stored.data) if stored else {}
            if entry in data:
                return data[entry].split(" ", 1)[1]
            data[entry] = f"{address}:{port} {key}"  # the host first, for a person reading the ConfigMap
            try:
                await self._kube.write_config_map(self._namespace, CONFIG_MAP, data, LABEL,
                                                  stored.resource_version if stored else None)  # fmt: skip
            except Conflict:
                continue
            return key
        raise RetryableError("the SSH host key record kept changing; will retry", reason="LedgerContention")
