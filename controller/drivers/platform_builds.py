"""Builds of source.git for runtime kubernetes: on the Platform's builder host, pushed to its registry.

A cluster's nodes only run what their kubelet pulls; nothing builds there (a build Pod would need
privileges for steps that are hostile input). The Platform names a machine for builds instead
(``spec.builder``): the operator logs in with the Platform's key and runs the same build a quadlet
host runs (`controller.drivers.builds.HostBuilds`, `controller.specs.builds.BUILD`), pushed to the
Project's own repository in the Platform's registry with the Project's own credential; the
Deployment then runs it by digest, pulled with its pull Secret (`controller.drivers.kubernetes`).

The builder is shared by every namespace the Platform allows, so each namespace builds in an image
storage of its own there (``/var/lib/containers/codeb-builds/<namespace>``): a Containerfile's ``FROM``
cannot name an image another tenant built, nor its layers be reused as a cache by another. A
Project on no Platform, or on one without a builder, cannot build here and is told the way that
works: build in CI, push, set source.image.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import ValidationError

from controller.clients.ssh import Login
from controller.drivers.builds import FOLLOW_SECONDS, HostBuilds, forget_builds_line
from controller.errors import CodebError, PermanentError, RetryableError
from controller.loop.interface import DriverContext
from schemas.platform import BuildHost

# Beside podman's own storage, on the filesystem made for it (overlay cannot stack on an overlay root).
BUILD_STORAGE = "/var/lib/containers/codeb-builds"


class PlatformReader(Protocol):
    async def read_platform(self, name: str) -> dict[str, Any] | None: ...

    async def read_secret(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None: ...


def build_storage(namespace: str) -> str:
    """Where a namespace's images are built and kept on the Platform's builder (a DNS label: no quoting)."""
    return f"{BUILD_STORAGE}/{namespace}"


class PlatformBuilds(HostBuilds):
    """Runtime kubernetes' `Builder`: builds on its Platform's builder host; mixed into the kubernetes driver."""

    _platforms: PlatformReader | None  # None: this operator builds nothing for runtime kubernetes

    async def build_places(self, ctx: DriverContext) -> list[str]:
        return [(await self._builder(ctx))[1].host]

    def _store(self, ctx: DriverContext) -> str:
        return build_storage(ctx.key.namespace)

    async def _login(self, ctx: DriverContext) -> Login:
        return await self._login_to(*await self._builder(ctx))

    async def _login_to(self, platform: str, builder: BuildHost) -> Login:
        """How to log in to ``platform``'s ``builder``: with the key its admin put in the Platform's Secret."""
        assert self._platforms is not None  # `_builder` found the Platform through it
        ref = builder.ssh_secret_ref
        data = await self._platforms.read_secret(ref.namespace, ref.name)
        source = f"Platform {platform}'s builder key (spec.builder.sshSecretRef)"
        if not data or not data.get("privateKey"):
            raise RetryableError(f"{source} does not exist or has no key privateKey: the Platform's admin sets it",
                                 reason="SSHKeyMissing", delay=30)  # fmt: skip
        return Login(builder.user, builder.port, data["privateKey"], data.get("knownHosts", ""), source)

    async def forget_platform_builds(self, ctx: DriverContext) -> None:
        """The Project is deleted: its runs and images on its Platform's builder go (the registry keeps its
        repository, as on quadlet hosts). Best effort: a builder that cannot be reached keeps them, said in a
        Warning, and never holds the Project's deletion."""
        try:
            platform, builder = await self._builder(ctx)
            login = await self._login_to(platform, builder)
            pulled = await self._pulls.repository(ctx) if self._pulls is not None else None
            line = forget_builds_line(ctx.key, pulled, self._store(ctx))
            await self._ssh.run(login.at(builder.host), line, timeout=FOLLOW_SECONDS)
        except PermanentError:  # no builder: nothing was built for it
            return
        except CodebError as exc:
            ctx.notify("BuildsNotRemoved", f"this Project's builds on its Platform's builder were not removed "
                                           f"({exc.message}); its admin removes them there")  # fmt: skip

    async def _builder(self, ctx: DriverContext) -> tuple[str, BuildHost]:
        """(Platform name, its builder); a `PermanentError` naming the way that works when there is none."""
        name = ctx.servers.platform if ctx.servers is not None else None
        body = await self._platforms.read_platform(name) if name and self._platforms is not None else None
        if name and self._platforms is not None and body is None:
            raise RetryableError(f"Platform {name} (spec.servers.platform) does not exist", reason="PlatformMissing",
                                 delay=30)  # fmt: skip
        spec = (body or {}).get("spec") or {}
        if not spec.get("builder") or not spec.get("registry"):
            raise PermanentError(await self._unbuildable(ctx, name), reason="SourceNotBuildable")
        try:
            return str(name), BuildHost.model_validate(spec["builder"])
        except ValidationError:
            raise PermanentError(f"Platform {name}'s spec.builder is invalid: its admin fixes it (kubectl explain "
                                 "platform.spec.builder)", reason="PlatformInvalid") from None  # fmt: skip

    async def _unbuildable(self, ctx: DriverContext, platform: str | None) -> str:
        """Why source.git cannot build here, and the ways that work: a Platform with a builder, or the image built
        elsewhere (a team's CI), pushed to the Project's own repository of its Platform's registry when there is
        one."""
        repository = await self._pulls.repository(ctx) if self._pulls is not None else None
        where = f" to {repository}:<tag> (with the Project's registry credential)" if repository else ""
        on = f"Platform {platform} names no builder and registry" if platform else "spec.servers.platform names none"
        return (f"spec.project.source.git: runtime kubernetes builds on its Platform's builder, and {on} "
                f"(spec.builder, spec.registry); or build the image in CI, push it{where} and set "
                "spec.project.source.image")  # fmt: skip
