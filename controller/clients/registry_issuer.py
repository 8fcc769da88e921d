"""The registry token issuer's keys: one Secret in the operator's own namespace, ``codeb-registry-issuer``.

It holds the key tokens are signed with, its certificate (the registry's ``rootcertbundle``) and the key
Projects' registry passwords derive from (`controller.specs.registry`). The first replica that needs it
makes it; of two that race, one makes it and both use it. Deleting it rotates everything: the next need
makes a new one (and the registry must be given its certificate).
"""

from __future__ import annotations

import base64
import secrets
import time
from datetime import UTC, datetime
from typing import Protocol

import structlog

from controller.errors import RetryableError
from controller.specs import registry

log = structlog.get_logger("codeb.registry")

ISSUER_SECRET = "codeb-registry-issuer"
KEYS = (registry.SIGNING_KEY, registry.CERTIFICATE, registry.CREDENTIALS_KEY)
ISSUER_SECONDS = 60.0  # how long a read of the Secret is used before it is read again (a rotation counts)


class IssuerStore(Protocol):
    async def read_secret(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None: ...

    async def create_secret(self, namespace: str, name: str, data: dict[str, str], record: str) -> bool: ...


class RegistryIssuer:
    def __init__(self, kube: IssuerStore, namespace: str) -> None:
        self._kube, self._namespace = kube, namespace
        self._cached: tuple[float, dict[str, str]] | None = None

    async def data(self) -> dict[str, str]:
        """The issuer Secret's data, made first if there is none."""
        if self._cached is not None and time.monotonic() - self._cached[0] < ISSUER_SECONDS:
            return self._cached[1]
        found = await self._kube.read_secret(self._namespace, ISSUER_SECRET)
        if found is None:
            made = registry.new_issuer(datetime.now(UTC), secrets.token_bytes(32))
            if await self._kube.create_secret(self._namespace, ISSUER_SECRET, made, record="registry-issuer"):
                log.info("registry token issuer made", secret=f"{self._namespace}/{ISSUER_SECRET}")
            found = await self._kube.read_secret(self._namespace, ISSUER_SECRET)
        if found is None or not all(k in found for k in KEYS):
            raise RetryableError(
                f"the Secret {self._namespace}/{ISSUER_SECRET} is not a registry issuer's; delete "
                "it and the operator makes a new one",
                reason="RegistryIssuerInvalid",
                delay=60,
            )
        self._cached = (time.monotonic(), found)
        return found

    async def password(self, namespace: str, name: str, uid: str) -> str:
        """The Project's registry password (what its hosts and pull Secrets are given)."""
        key = base64.b64decode((await self.data())[registry.CREDENTIALS_KEY])
        return registry.password(key, namespace, name, uid)
