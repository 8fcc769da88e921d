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

    async def repository(self, ctx: DriverContext) -> str | None:
        """The Project's own repository in its Platform's registry (``<host>/codeb/<namespace>/<name>``), or None
        when its Platform names no registry."""
        platform = ctx.servers.platform if ctx.servers is not None else None
        body = await self._kube.read_platform(platform) if platform else None
        host = (((body or {}).get("spec") or {}).get("registry") or {}).get("host")
        if not isinstance(host, str) or not host:
            return None
        return f"{host}/{registry.repository(ctx.key.namespace, ctx.key.name)}"

    async def credential(self, ctx: DriverContext, image: str) -> tuple[str, str, str] | None:
        """(registry host, user, password) for ``image``, or None when it is not the Project's own in its
        Platform's registry."""
        own = await self.repository(ctx)
        if own is None or not image.startswith((own + ":", own + "@")):
            return None
        namespace, name = ctx.key.namespace, ctx.key.name
        host = own.split("/", 1)[0]
        return host, registry.username(namespace, name), await self._issuer.password(namespace, name, ctx.key.uid)

    async def auth_config(self, ctx: DriverContext, image: str) -> str | None:
        """``image``'s credential as podman's ``--authfile`` reads it, or None (`credential`)."""
        found = await self.credential(ctx, image)
        return registry.auth_config(*found) if found is not None else None
