"""Runtime ``quadlet``: one Podman Quadlet unit per host, delivered over SSH.

The hosts, and what each supports, come from the infrastructure's outputs
(`controller.drivers.hosts`); the unit and the environment file are rendered by the
pure builders in `controller.quadlet`. Credentials reach the host only in the
environment file (root-only, 0600), never in the unit.

The driver keeps no record of its own. Each unit carries what it was rendered from
(no credential: only the environment file's digest), so observing a host tells a
hand-edited unit (``unitsMatch``) from a rotated credential (``environmentCurrent``)
from a changed spec. Health is observed on every host: systemd's view of the
service, podman's health check, and a real HTTP request from the operator to the
published port. The route reads the healthy hosts' endpoints from the outputs.

Changes roll one host at a time, each checked healthy before the next: a new image
that does not pull is refused before anything is touched, and one that does not
start stops the roll while the other hosts keep serving. Units are colour-named
(``…-blue``) so blue-green deploys can run a second colour beside the first.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from controller.drivers import DriverContext
from controller.drivers.hosts import login_for, servers_of
from controller.drivers.workloads import Credentials, SecretReader, probe_http, read_credentials
from controller.errors import PermanentError, RetryableError
from controller.naming import ProjectKey
from controller.planner import Component, Observation, State
from controller.quadlet import (
    HostFacts,
    env_digest,
    env_path,
    launch_of,
    render_env,
    render_unit,
    unit_name,
    unit_path,
)
from controller.ssh import HostAccess, Login, SshPool

COLOUR = "blue"
# Fields of the workload state that are judged, not launched: never part of a unit's record.
JUDGED = ("hosts", "environmentCurrent", "unitsMatch")
LOG_LINES = 5


@dataclass
class HostView:
    """One host as observed: its unit (if any), what it was launched with, and its health."""

    facts: HostFacts
    unit_text: str | None = None
    launch: Mapping[str, Any] | None = None
    env_sha: str | None = None
    service: dict[str, str] = field(default_factory=dict)
    container_health: str = ""
    log: str = ""

    @property
    def endpoint(self) -> str:
        return f"{self.facts.address}:{self.launch['state']['port']}" if self.launch else ""


class QuadletUnits:
    component = Component.workload

    def __init__(
        self,
        read_secret: SecretReader,
        ssh: SshPool,
        client: httpx.AsyncClient | None = None,
        healthy_timeout: float = 180.0,
    ) -> None:
        self._read_secret = read_secret
        self._ssh = ssh
        self._client = client or httpx.AsyncClient(timeout=5.0)
        self._healthy_timeout = healthy_timeout

    # ------------------------------------------------------------ observe

    async def observe(self, ctx: DriverContext) -> Observation:
        hosts = _hosts(ctx)
        if hosts is None:
            return Observation()  # no infrastructure observed: nowhere to look
        login = await self._login(ctx)
        looked = [*hosts, *_departing(ctx)]
        views = await asyncio.gather(*(self._view(ctx.key, login.at(facts.address), facts) for facts in looked))
        leaving = [v for v in views[len(hosts) :] if v.launch is not None]
        present = [v for v in views[: len(hosts)] if v.launch is not None]
        if not present and not leaving:
            return Observation()
        if not present:
            # Only on hosts being taken away: what runs there is to be removed, not served.
            return Observation(state={"hosts": sorted(v.facts.address for v in leaving)}, healthy=False)
        launched = dict(present[0].launch["state"])  # type: ignore[index]
        credentials = await read_credentials(self._read_secret, ctx.key.namespace, launched, missing_ok=True)
        try:
            current_env: str | None = env_digest(self._env(ctx.key, launched, credentials))
        except ValueError:
            current_env = None  # the Secrets now hold what no env file can carry: apply names it
        state = {
            **launched,
            "hosts": sorted(v.facts.address for v in [*present, *leaving]),
            "environmentCurrent": all(v.env_sha == current_env == v.launch["env"] for v in present),  # type: ignore[index]
            "unitsMatch": all(_unit_matches(ctx.key, v, launched) for v in present),
        }
        verdicts = await asyncio.gather(*(self._health(v, credentials) for v in present))
        problems = [f"{v.facts.address}: {why}" for v, (ok, why) in zip(present, verdicts, strict=True) if not ok]
        endpoints = [v.endpoint for v, (ok, _) in zip(present, verdicts, strict=True) if ok]
        return Observation(
            state=state, healthy=not problems, detail="; ".join(problems) or None, outputs={"endpoints": endpoints}
        )

    async def logs(self, ctx: DriverContext, tail: int) -> dict[str, list[str]]:
        """The unit's journal on each host, credentials redacted."""
        login = await self._login(ctx)
        unit = f"{unit_name(ctx.key, COLOUR)}.service"
        hosts = _hosts(ctx) or []
        journals = await asyncio.gather(*(self._ssh.run(login.at(facts.address),
                                                        f"journalctl -u {unit} -n {int(tail)} --no-pager -o cat")
                                          for facts in hosts))  # fmt: skip
        wanted = {"connectionSecret": ctx.allocations.connection_secret}
        credentials = await read_credentials(self._read_secret, ctx.key.namespace, wanted, missing_ok=True)
        return {facts.address: credentials.redact(result.stdout).splitlines() for facts, result in
                zip(hosts, journals, strict=True)}  # fmt: skip

    async def _view(self, key: ProjectKey, access: HostAccess, facts: HostFacts) -> HostView:
        result = await self._ssh.run(access, _view_script(key))
        sections = _sections(result.stdout)
        view = HostView(facts)
        if sections.get("unit"):
            view.unit_text = sections["unit"]
            view.launch = launch_of(view.unit_text)
        view.env_sha = sections.get("env", "").split(" ")[0].strip() or None
        view.service = dict(line.split("=", 1) for line in sections.get("service", "").splitlines() if "=" in line)
        view.container_health = sections.get("health", "").strip()
        view.log = sections.get("log", "")
        return view

    async def _health(self, view: HostView, credentials: Credentials) -> tuple[bool, str | None]:
        service = view.service
        if service.get("ActiveState") != "active":
            restarts = service.get("NRestarts", "0")
            lines = " | ".join(view.log.strip().splitlines()[-3:])[-400:]
            return False, (
                f"service {service.get('ActiveState', 'unknown')}/{service.get('SubState', '')} "
                f"(result {service.get('Result', '?')}, {restarts} restarts); last output: "
                f"{credentials.redact(lines) or '(none)'}"
            )
        state = view.launch["state"]  # type: ignore[index]
        probe = await probe_http(
            self._client, view.facts.address, int(state["port"]), state["healthPath"], credentials.secret_values
        )
        if not probe.healthy:
            return False, probe.detail
        # podman's own check runs inside the container; "starting" is its grace period, not a failure.
        if view.container_health == "unhealthy":
            return False, "podman's health check inside the container reports it unhealthy"
        return True, None

    # ------------------------------------------------------------ apply

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        launch = {k: v for k, v in desired.items() if k not in JUDGED}
        if not launch.get("image"):
            raise PermanentError(
                "spec.project.source: runtime quadlet runs images; building from git is not supported yet",
                reason="NotImplemented",
            )
        hosts = {h.address: h for h in _hosts(ctx) or []}
        credentials = await read_credentials(self._read_secret, ctx.key.namespace, launch, missing_ok=False)
        try:
            env_text = self._env(ctx.key, launch, credentials)
        except ValueError as exc:
            raise RetryableError(
                f"the Project's Secrets cannot be handed to a container: {credentials.redact(str(exc))}",
                reason="SecretInvalid",
                delay=60,
            ) from None
        if not desired.get("hosts"):
            raise RetryableError(
                "no usable host yet: waiting for the infrastructure's hosts to answer over SSH (see status.hosts)",
                reason="WaitingForHosts",
                delay=15,
            )
        login = await self._login(ctx)
        for address in desired.get("hosts", []):
            if address in hosts:
                await self._converge_host(ctx.key, login.at(address), hosts[address], launch, env_text, credentials)
        # Hosts being taken away (a scale-down) lose the unit once the others serve, before they go.
        await self._remove_from(ctx.key, login, _departing(ctx))

    async def _converge_host(
        self,
        key: ProjectKey,
        access: HostAccess,
        facts: HostFacts,
        launch: State,
        env_text: str,
        credentials: Credentials,
    ) -> None:
        env_sha = env_digest(env_text)
        unit_text = render_unit(key, COLOUR, launch, facts, env_sha)
        view = await self._view(key, access, facts)
        if view.unit_text == unit_text and view.env_sha == env_sha and view.service.get("ActiveState") == "active":
            return
        await self._refuse_taken_port(access, view, int(launch["port"]))
        await self._ensure_image(access, str(launch["image"]))
        await self._ssh.write_file(access, env_path(key, COLOUR), env_text, mode="0600")
        await self._ssh.write_file(access, unit_path(key, COLOUR), unit_text, mode="0600")
        service = shlex.quote(unit_name(key, COLOUR) + ".service")
        started = await self._ssh.run(
            access,
            f"systemctl daemon-reload && systemctl reset-failed {service} 2>/dev/null; systemctl restart {service}",
        )
        if not started.ok:
            view = await self._view(key, access, facts)
            _, why = await self._health(view, credentials)
            raise RetryableError(f"{facts.address}: the unit did not start: {why}", reason="StartFailed", delay=30)
        await self._wait_healthy(key, access, facts, credentials)

    async def _refuse_taken_port(self, access: HostAccess, view: HostView, port: int) -> None:
        """Before anything is stopped: a port held by something that is not this unit is refused."""
        if view.service.get("ActiveState") == "active":
            return  # ours holds it; the restart hands it over
        result = await self._ssh.run(access, f"ss -Htln 'sport = :{port}' 2>/dev/null")
        if result.stdout.strip():
            raise RetryableError(
                f"{access.address}: port {port} is already held by another process on the host; free it or set "
                "spec.resources.port",
                reason="PortTaken",
                delay=30,
            )

    async def _ensure_image(self, access: HostAccess, image: str) -> None:
        quoted = shlex.quote(image)
        result = await self._ssh.run(access, f"podman image exists {quoted} || podman pull -q {quoted}")
        if not result.ok:
            detail = " ".join(result.stderr.split())[-300:]
            raise RetryableError(
                f"{access.address}: image {image} is not on the host and could not be pulled ({detail}); "
                "check spec.project.source.image",
                reason="ImagePullFailed",
                delay=60,
            )

    async def _wait_healthy(
        self, key: ProjectKey, access: HostAccess, facts: HostFacts, credentials: Credentials
    ) -> None:
        """The roll goes on to the next host only once this one serves."""
        deadline = time.monotonic() + self._healthy_timeout
        why: str | None = None
        while time.monotonic() < deadline:
            view = await self._view(key, access, facts)
            healthy, why = await self._health(view, credentials)
            if healthy:
                return
            if view.service.get("ActiveState") == "failed":
                break
            await asyncio.sleep(1.0)
        raise RetryableError(
            f"{facts.address}: not healthy after the change ({why}); the other hosts were left as they were",
            reason="Unhealthy",
            delay=30,
        )

    # ------------------------------------------------------------ delete

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        hosts = [*(_hosts(ctx) or []), *_departing(ctx)]
        if not hosts:
            return  # no host observed: nothing of ours can be reached (infrastructure keeps the finalizer)
        await self._remove_from(ctx.key, await self._login(ctx), hosts)

    async def _remove_from(self, key: ProjectKey, login: Login, hosts: list[HostFacts]) -> None:
        service = shlex.quote(unit_name(key, COLOUR) + ".service")
        line = (
            f"systemctl stop {service} 2>/dev/null; rm -f {shlex.quote(unit_path(key, COLOUR))} "
            f"{shlex.quote(env_path(key, COLOUR))}; systemctl daemon-reload; "
            f"podman rm -f -i {shlex.quote(unit_name(key, COLOUR))} >/dev/null"
        )
        for facts in hosts:
            result = await self._ssh.run(login.at(facts.address), line)
            if not result.ok:
                raise RetryableError(f"{facts.address}: could not remove the unit: {result.stderr.strip()[:300]}")

    # ------------------------------------------------------------ helpers

    async def _login(self, ctx: DriverContext) -> Login:
        _, ssh = servers_of(ctx)
        return await login_for(self._read_secret, ctx.key.namespace, ssh)

    def _env(self, key: ProjectKey, launch: State, credentials: Credentials) -> str:
        values = {**credentials.values, **launch.get("variables", {})}
        values |= {
            "PORT": str(launch["containerPort"]),
            "HOST": "0.0.0.0",  # inside the container; the host publishes one address only
            "CODEB_REVISION": launch.get("revision") or "",
        }
        return render_env(key, sorted(values.items()))


def _hosts(ctx: DriverContext) -> list[HostFacts] | None:
    infrastructure = ctx.inputs.get(Component.infrastructure, {})
    if "hosts" not in infrastructure:
        return None
    return [HostFacts.of(host) for host in infrastructure["hosts"]]


def _departing(ctx: DriverContext) -> list[HostFacts]:
    """Hosts the infrastructure is about to take away (a scale-down): the workload leaves them first."""
    return [HostFacts.of(host) for host in ctx.inputs.get(Component.infrastructure, {}).get("departing", [])]


def _unit_matches(key: ProjectKey, view: HostView, launched: Mapping[str, Any]) -> bool:
    """The unit on the host is exactly what its own record renders to, and launched like the others."""
    record = view.launch
    if record is None or dict(record["state"]) != dict(launched):
        return False
    return view.unit_text == render_unit(key, COLOUR, record["state"], view.facts, record["env"])


def _view_script(key: ProjectKey) -> str:
    name = unit_name(key, COLOUR)
    service = shlex.quote(name + ".service")
    return "; ".join(
        [
            "echo '--unit'",
            f"cat {shlex.quote(unit_path(key, COLOUR))} 2>/dev/null",
            "echo '--env'",
            f"sha256sum {shlex.quote(env_path(key, COLOUR))} 2>/dev/null",
            "echo '--service'",
            f"systemctl show -p ActiveState -p SubState -p Result -p NRestarts {service}",
            "echo '--health'",
            f"podman inspect --format '{{{{.State.Health.Status}}}}' {shlex.quote(name)} 2>/dev/null",
            "echo '--log'",
            f"journalctl -u {service} -n {LOG_LINES} --no-pager -o cat 2>/dev/null",
            "true",
        ]
    )


def _sections(output: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines(keepends=True):
        marker = line.strip()
        if marker.startswith("--") and marker[2:] in ("unit", "env", "service", "health", "log"):
            current = sections.setdefault(marker[2:], [])
        elif current is not None:
            current.append(line)
    return {name: "".join(lines) for name, lines in sections.items()}
