"""Where credentials live: only in Secrets, never in status, Events, logs or exceptions.

Drivers write a project's credentials into its connection Secret *before* they
create the account that uses them, so a crash between the two leaves a Secret
whose password the next pass will give to the account — never an account whose
password nobody knows.
"""

from __future__ import annotations

import secrets as _random
from typing import Protocol

from controller.errors import PermanentError
from controller.loop.interface import DriverContext

# Label naming the Project a connection Secret belongs to (in the Project's namespace).
OWNER_LABEL = "codeb.dev/project"


class SecretStore(Protocol):
    """A Project's connection Secret (``ctx.allocations.connection_secret`` in its namespace).

    ``merge`` refuses a Secret of that name that is not this Project's (`not_owned`).
    """

    async def read(self, ctx: DriverContext) -> dict[str, str] | None: ...

    async def merge(self, ctx: DriverContext, data: dict[str, str]) -> None: ...


def not_owned(namespace: str, name: str) -> PermanentError:
    return PermanentError(
        f"Secret {namespace}/{name} exists but was not created by the operator for this Project; "
        "rename or delete it, or change spec.project.slug",
        reason="SecretNotOwned",
    )


class MemorySecrets:
    """A SecretStore in memory, for driver tests."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, str]] = {}
        self.owners: dict[tuple[str, str], str] = {}

    async def read(self, ctx: DriverContext) -> dict[str, str] | None:
        return self.stored(*_where(ctx))

    def stored(self, namespace: str, name: str) -> dict[str, str] | None:
        """What a test reads back: the Secret by namespace and name."""
        found = self.data.get((namespace, name))
        return dict(found) if found is not None else None

    async def merge(self, ctx: DriverContext, data: dict[str, str]) -> None:
        where = _where(ctx)
        if self.owners.setdefault(where, ctx.key.name) != ctx.key.name:
            raise not_owned(*where)
        self.data.setdefault(where, {}).update(data)


def _where(ctx: DriverContext) -> tuple[str, str]:
    return ctx.key.namespace, ctx.allocations.connection_secret or ""


def new_password() -> str:
    return _random.token_urlsafe(24)


async def ensure_password(store: SecretStore, ctx: DriverContext, key: str) -> str:
    """The password stored under ``key``, generating and storing one first if absent."""
    current = (await store.read(ctx)) or {}
    if current.get(key):
        return current[key]
    password = new_password()
    await store.merge(ctx, {key: password})
    return password
