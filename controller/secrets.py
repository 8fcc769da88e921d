"""Where credentials live: only in Secrets, never in status, Events, logs or exceptions.

Drivers write a project's credentials into its connection Secret *before* they
create the account that uses them, so a crash between the two leaves a Secret
whose password the next pass will give to the account — never an account whose
password nobody knows.
"""

from __future__ import annotations

import secrets as _random
from typing import Protocol


class SecretStore(Protocol):
    async def read(self, namespace: str, name: str) -> dict[str, str] | None: ...

    async def merge(self, namespace: str, name: str, data: dict[str, str]) -> None: ...


class MemorySecrets:
    """A SecretStore in memory, for the local drivers and driver tests."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, str]] = {}

    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.data.get((namespace, name))
        return dict(found) if found is not None else None

    async def merge(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.data.setdefault((namespace, name), {}).update(data)


def new_password() -> str:
    return _random.token_urlsafe(24)


async def ensure_password(store: SecretStore, namespace: str, name: str, key: str) -> str:
    """The password stored under ``key``, generating and storing one first if absent."""
    current = (await store.read(namespace, name)) or {}
    if current.get(key):
        return current[key]
    password = new_password()
    await store.merge(namespace, name, {key: password})
    return password
