"""The credential a workload pulls its image with, when the image is in its Platform's registry.

A Project's image in its own repository of the registry its Platform names (``spec.registry``:
``<host>/codeb/<namespace>/<name>:<tag>`` or ``@<digest>``) is pulled with the Project's own
credential (`controller.specs.registry`), which the registry's token issuer, the operator, accepts for
that repository alone. Any other image is pulled as the runtime pulls it without one.
"""

from __future__ import annotations

from typing import Any, Protocol

from controller.clients.registry_issuer import RegistryIssuer
from controller.loop.interface import DriverContext
from controller.specs import registry


class PlatformReader(Protocol):
    async def read_platform(self, name: str) -> dict[str, Any] | None: ...


class RegistryPulls:
    def __init__(self, kube: PlatformReader, issuer: RegistryIssuer) -> None:
        self._kube, self._issuer = kube, issuer

    async def credential(self, ctx: DriverContext, image: str) -> tuple[str, str, str] | None:
        """(registry host, user, password) for ``image``, or None when it is not the Project's own in its
        Platform's registry."""
        platform = ctx.servers.platform if ctx.servers is not None else None
        body = await self._kube.read_platform(platform) if platform else None
        host = (((body or {}).get("spec") or {}).get("registry") or {}).get("host")
        if not isinstance(host, str) or not host:
            return None
        namespace, name = ctx.key.namespace, ctx.key.name
        own = f"{host}/{registry.repository(namespace, name)}"
        if not image.startswith((own + ":", own + "@")):
            return None
        return host, registry.username(namespace, name), await self._issuer.password(namespace, name, ctx.key.uid)
