"""Infrastructure for provider ``existing``: machines someone else made, observed over SSH.

The operator creates nothing here. It checks that it can use each host in
``servers.hosts``: logs in with the key from ``servers.ssh.secretRef``, finds podman
with its quadlet generator, and reads what the host supports (podman's version, the
cgroup controllers that can enforce limits). Those facts, for the usable hosts only,
are this component's outputs: the quadlet driver renders each host's unit from them
and logs in the same way (`login_for`).

A host that cannot be used makes the component unhealthy with the host and the
cause named; nothing running on any host is touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.clients.ssh import HostAccess, Login, SshPool
from controller.drivers.workloads import SecretReader
from controller.errors import CodebError, RetryableError
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, Observation, State
from schemas.project import Provider, Servers, SshAccess

GENERATOR = "/usr/lib/systemd/system-generators/podman-system-generator"
# One round trip: podman's version, the cgroup controllers (v2 list, or v1 hierarchy names), quadlet.
PROBE = (
    "command -v podman >/dev/null || { echo no-podman; exit 0; }; "
    "podman --version | awk '{print $NF}'; "
    "cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null || ls /sys/fs/cgroup 2>/dev/null | tr '\\n' ' '; echo; "
    f"test -x {GENERATOR} && echo quadlet || echo no-quadlet"
)
PROBES_AT_ONCE = 10


@dataclass(frozen=True)
class HostCheck:
    address: str
    facts: Mapping[str, Any] | None = None  # None: unusable
    problem: str | None = None  # naming the host
    reason: str | None = None


async def login_for(read_secret: SecretReader, key: ProjectKey, ssh: SshAccess) -> Login:
    """The key from the Project's SSH Secret, with the user and port to log in with."""
    source = f"Secret {key.namespace}/{ssh.secret_ref}"
    data = await read_secret(key.namespace, ssh.secret_ref, key.name)
    if not data or not data.get("privateKey"):
        raise RetryableError(
            f"{source} (spec.servers.ssh.secretRef) does not exist or has no key privateKey",
            reason="SSHKeyMissing",
            delay=30,
        )
    return Login(ssh.user, ssh.port, data["privateKey"], data.get("knownHosts", ""), source)


class ExistingHosts:
    component = Component.infrastructure

    def __init__(self, read_secret: SecretReader, ssh: SshPool) -> None:
        self._read_secret = read_secret
        self._ssh = ssh

    async def observe(self, ctx: DriverContext) -> Observation:
        checks = await self._check_all(ctx)
        problems = [c.problem or c.address for c in checks if c.facts is None]
        usable = [dict(c.facts) for c in checks if c.facts is not None]
        return Observation(
            state={"provider": Provider.existing.value, "hosts": [c.address for c in checks], "usable": not problems},
            healthy=not problems,
            detail="; ".join(problems) or None,
            outputs={"hosts": usable, "report": [report(c) for c in checks]},
        )

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        """Nothing can be created on hosts we do not own: name what keeps each one unusable."""
        checks = await self._check_all(ctx)
        bad = [c for c in checks if c.facts is None]
        if bad:
            message = "; ".join(c.problem or c.address for c in bad)
            raise RetryableError(message, reason=bad[0].reason or "HostUnusable", delay=30)

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        """The hosts stay; but while one is unreachable, what runs there cannot have been removed."""
        if ctx.servers is not None:
            await self.apply(ctx, {})

    async def _check_all(self, ctx: DriverContext) -> list[HostCheck]:
        servers, ssh = servers_of(ctx)
        return await self.check(await login_for(self._read_secret, ctx.key, ssh), servers.hosts)

    async def check(self, login: Login, addresses: list[str]) -> list[HostCheck]:
        """Each address as the workload needs it (reachable, podman with quadlet), a few at a time."""
        gate = asyncio.Semaphore(PROBES_AT_ONCE)

        async def check(address: str) -> HostCheck:
            async with gate:
                return await self._check(login.at(address))

        return list(await asyncio.gather(*(check(address) for address in addresses)))

    async def _check(self, access: HostAccess) -> HostCheck:
        address = access.address
        try:
            result = await self._ssh.run(access, PROBE)
        except CodebError as exc:
            return HostCheck(address, problem=exc.message, reason=exc.reason)
        lines = [*result.stdout.splitlines(), "", "", ""]
        if lines[0] == "no-podman":
            return HostCheck(address, problem=f"{address}: podman is not installed", reason="PodmanMissing")
        if lines[2] != "quadlet":
            return HostCheck(
                address,
                problem=f"{address}: podman {lines[0]} has no quadlet generator at {GENERATOR} "
                "(podman 4.4 or later has one)",
                reason="QuadletMissing",
            )
        facts = {"address": address, "podman": lines[0], "controllers": sorted(set(lines[1].split()))}
        return HostCheck(address, facts=facts)


def report(check: HostCheck) -> dict[str, Any]:
    """One host as `status.hosts` shows it."""
    if check.facts is not None:
        return {"address": check.address, "usable": True, "podman": check.facts["podman"]}
    return {"address": check.address, "usable": False, "reason": check.reason, "message": check.problem}


def servers_of(ctx: DriverContext) -> tuple[Servers, SshAccess]:
    """The hosts' section of the spec, and how to log in to them."""
    if ctx.servers is None:
        raise RetryableError(
            "the stored spec does not validate, so its servers.hosts are unknown; fix the spec",
            reason="SpecInvalid",
            delay=60,
        )
    if ctx.servers.ssh is None:
        raise RetryableError("spec.servers.ssh: name the Secret with the hosts' SSH key", reason="SSHKeyMissing")
    return ctx.servers, ctx.servers.ssh
