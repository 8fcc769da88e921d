"""Runtime ``quadlet``: Podman Quadlet units on every host, delivered over SSH, one per colour.

The hosts, and what each supports, come from the infrastructure's outputs
(`controller.drivers.hosts`); the unit and the environment file are rendered by the
pure builders in `controller.specs.quadlet`. Credentials reach the host only in the
environment file (root-only, 0600), never in the unit.

Deploys are blue-green across every host (`controller.loop.rollouts.bluegreen`): each colour is a unit
(``…-blue``, ``…-green``) on every host, publishing the colour's own port, so the new
release starts beside the serving one, is checked on every host, and only then does
the route switch, all hosts at once. The driver's state is the rollout engine's
``{"colours": {...}}``; a colour not in the desired state is stopped everywhere.

The driver keeps no record of its own. Each unit carries what it was rendered from
(no credential: only the environment file's digest), so observing a host tells a
hand-edited unit (``unitsMatch``) from a rotated credential (``environmentCurrent``)
from a changed spec; either is a new release, rolled out like a new revision. Health
is observed per colour on every host: systemd's view of the service, podman's health
check, and a real HTTP request from the operator to the published port. A colour is
healthy when it serves on every host; the route reads its healthy hosts' endpoints.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from controller.clients.http import Probe, probe_http, probe_sample
from controller.clients.ssh import HostAccess, Login, SshPool
from controller.drivers.builds import HostBuilds, forget_builds_line
from controller.drivers.registry_pulls import RegistryPulls
from controller.drivers.workloads import Credentials, SecretReader, install_app, read_credentials
from controller.errors import CodebError, PermanentError, RetryableError
from controller.jobs import hookruns
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, Observation, State
from controller.loop.secrets import clip
from controller.specs.quadlet import (
    HostFacts,
    env_digest,
    env_path,
    legacy_cleanup,
    pull_line,
    render_env,
    render_unit,
    unit_name,
    unit_path,
)
from controller.specs.quadlet_view import (
    COLOURS,
    HostView,
    HostViews,
    host_view,
    unit_matches,
    view_script,
    view_sections,
)
from schemas.project import App, Colour, Hook, HookRun

# Fields of a colour's state that are judged, not launched: never part of a unit's record.
JUDGED = ("hosts", "environmentCurrent", "unitsMatch")
DRAIN_CAP = 10.0  # the longest a pass waits for requests in flight to a departing host
# Where hooks run on a host, a directory per unit and run (`controller.jobs.hookruns`).
HOOK_RUNS = "/var/lib/codeb/hooks"
# One step of following a hook (start it, or look at it) answers within this.
FOLLOW_SECONDS = 30.0


class QuadletUnits(HostBuilds):
    component = Component.workload

    def __init__(
        self,
        read_secret: SecretReader,
        ssh: SshPool,
        client: httpx.AsyncClient | None = None,
        start_timeout: float = 30.0,
        read_login: SecretReader | None = None,
        pulls: RegistryPulls | None = None,
    ) -> None:
        self._read_secret = read_secret
        self._pulls = pulls  # builds push to, and hosts pull with, the Project's credential for its registry
        self._read_login = read_login or read_secret  # the SSH key Secret (`KeptSecrets` in the operator)
        self._ssh = ssh
        self._client = client or httpx.AsyncClient(timeout=5.0)
        self._start_timeout = start_timeout

    # ------------------------------------------------------------ observe

    async def observe(self, ctx: DriverContext) -> Observation:
        """Each colour's launched state, and its health on every host in ``outputs["colours"]``."""
        hosts = _hosts(ctx)
        if hosts is None:
            return Observation()  # no infrastructure observed: nowhere to look
        login = await self._login(ctx)
        looked = [*hosts, *_departing(ctx)]
        views = await asyncio.gather(*(self._views(ctx.key, login.at(facts.address), facts) for facts in looked))
        colours = [c for c in COLOURS if any(v[c].launch is not None for v in views)]
        if not colours:
            return Observation()
        looks = await asyncio.gather(*(self._look(ctx, colour, views[: len(hosts)], views) for colour in colours))
        states = {colour: state for colour, state, _ in looks}
        health = {colour: verdict for colour, _, verdict in looks}
        unhealthy = [f"{colour}: {verdict['detail']}" for colour, verdict in health.items() if not verdict["healthy"]]
        return Observation(state={"colours": states}, healthy=not unhealthy, detail="; ".join(unhealthy) or None,
                           outputs={"colours": health})  # fmt: skip

    async def _look(
        self, ctx: DriverContext, colour: str, current: Sequence[HostViews], everywhere: Sequence[HostViews]
    ) -> tuple[str, State, State]:
        """One colour across the hosts: what it was launched with, and whether it serves on every current host."""
        present = [views[colour] for views in current if views[colour].launch is not None]
        found = [views[colour] for views in everywhere if views[colour].launch is not None]
        launched = dict((present or found)[0].launch["state"])  # type: ignore[index]
        credentials = await read_credentials(self._read_secret, ctx.key, launched, missing_ok=True)
        try:
            current_env: str | None = env_digest(self._env(ctx.key, launched, credentials))
        except ValueError:
            current_env = None  # the Secrets now hold what no env file can carry: apply names it
        state = {
            **launched,
            "hosts": sorted(v.facts.address for v in found),
            "environmentCurrent": all(v.env_sha == current_env == v.launch["env"] for v in present),  # type: ignore[index]
            "unitsMatch": all(unit_matches(ctx.key, v, launched) for v in present),
        }
        probes = await asyncio.gather(*(self._health(views[colour], credentials, ctx.health_timeout)
                                        for views in current))  # fmt: skip
        failing = [(views[colour].facts.address, probe) for views, probe in zip(current, probes, strict=True)
                   if not probe.healthy]  # fmt: skip
        verdict = {
            "healthy": bool(current) and not failing,
            "detail": "; ".join(f"{address}: {probe.detail}" for address, probe in failing) or None,
            # A host still starting is not a failed check yet; one that answered (or exited) is.
            "answered": any(probe.answered for _, probe in failing),
            "endpoints": [views[colour].endpoint for views, probe in zip(current, probes, strict=True)
                          if probe.healthy],
            **probe_sample(probes),
        }  # fmt: skip
        return colour, state, verdict

    async def logs(self, ctx: DriverContext, tail: int) -> dict[str, list[str]]:
        """Each colour's journal on each host (``blue on 10.0.0.2``), credentials redacted."""
        login = await self._login(ctx)
        hosts = _hosts(ctx) or []
        wanted = {"connectionSecret": ctx.allocations.connection_secret}
        credentials = await read_credentials(self._read_secret, ctx.key, wanted, missing_ok=True)
        found = {}
        for facts in hosts:
            for colour in COLOURS:
                unit = shlex.quote(f"{unit_name(ctx.key, colour)}.service")
                result = await self._ssh.run(login.at(facts.address),
                                             f"journalctl -u {unit} -n {int(tail)} --no-pager -o cat -q")  # fmt: skip
                lines = credentials.redact(result.stdout, cut=True).splitlines()  # SSH keeps the last MiB
                if lines:
                    found[f"{colour} on {facts.address}"] = lines
        return found

    async def _views(self, key: ProjectKey, access: HostAccess, facts: HostFacts,
                     colours: Sequence[str] = COLOURS) -> HostViews:  # fmt: skip
        """Every colour's unit, environment file, service and container on one host, in one SSH round trip."""
        result = await self._ssh.run(access, " ; ".join(view_script(key, colour) for colour in colours))
        sections = view_sections(result.stdout)
        return {colour: host_view(facts, colour, sections.get(colour, {})) for colour in colours}

    async def _health(self, view: HostView, credentials: Credentials, timeout: float | None) -> Probe:
        if view.launch is None:
            return Probe(False, f"no {view.colour} unit on the host", answered=False)
        service = view.service
        if service.get("ActiveState") != "active":
            restarts = service.get("NRestarts", "0")
            lines = clip(" | ".join(view.log.strip().splitlines()[-3:]), credentials.secret_values, 400, tail=True)
            detail = (
                f"service {service.get('ActiveState', 'unknown')}/{service.get('SubState', '')} "
                f"(result {service.get('Result', '?')}, {restarts} restarts); last output: {lines or '(none)'}"
            )
            # Exited at least once (a restart, a failure): that is an answer, not a slow start.
            exited = service.get("Result", "success") != "success" or restarts != "0"
            return Probe(False, detail, answered=exited)
        state = view.launch["state"]
        probe = await probe_http(self._client, view.facts.address, int(state["port"]), state["healthPath"],
                                 credentials.secret_values, timeout)  # fmt: skip
        if not probe.healthy:
            return probe
        # podman's own check runs inside the container; "starting" is its grace period, not a failure.
        if view.container_health == "unhealthy":
            return Probe(False, "podman's health check inside the container reports it unhealthy")
        return probe

    # ------------------------------------------------------------ apply

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        """Each colour made to run exactly its target on its hosts; a colour with none is stopped everywhere.
        One colour's change never touches the other, so the serving colour keeps serving meanwhile."""
        targets: Mapping[str, State] = desired["colours"]
        hosts = {h.address: h for h in _hosts(ctx) or []}
        login = await self._login(ctx)
        stale = [colour for colour in COLOURS if colour not in targets]
        if stale:
            await self._remove_from(ctx.key, login, list(hosts.values()), stale)
        for colour, target in sorted(targets.items()):
            await self._converge_colour(ctx, login, colour, target, hosts)
        await self._leave_departing(ctx, login)

    async def _leave_departing(self, ctx: DriverContext, login: Login) -> None:
        """Hosts being taken away (a scale-down) lose every unit once the others serve, before they go.

        The route stopped sending to them earlier in this pass (`planner._shrink_last` orders it first);
        what it had sent finishes within drainSeconds, waited here, capped at `DRAIN_CAP` so the pass
        stays short (a request longer than that is cut, as the host's destruction would cut it)."""
        holding = []
        for facts in _departing(ctx):
            paths = " ".join(shlex.quote(unit_path(ctx.key, colour)) for colour in COLOURS)
            found = await self._ssh.run(login.at(facts.address), f"ls {paths} 2>/dev/null | wc -l")
            if not found.ok or found.stdout.strip() != "0":
                holding.append(facts)
        if holding:
            await asyncio.sleep(min(ctx.drain_seconds, DRAIN_CAP))
            await self._remove_from(ctx.key, login, holding, COLOURS)

    async def _converge_colour(
        self, ctx: DriverContext, login: Login, colour: str, target: State, hosts: Mapping[str, HostFacts]
    ) -> None:
        launch = {k: v for k, v in target.items() if k not in JUDGED}
        if not launch.get("image"):
            raise PermanentError("spec.project.source: no image to run (set source.image or source.git)",
                                 reason="NoImage")  # fmt: skip
        credentials = await read_credentials(self._read_secret, ctx.key, launch, missing_ok=False)
        try:
            env_text = self._env(ctx.key, launch, credentials)
        except ValueError as exc:
            raise RetryableError(
                f"the Project's Secrets cannot be handed to a container: {credentials.redact(str(exc))}",
                reason="SecretInvalid",
                delay=60,
            ) from None
        addresses = [address for address in target.get("hosts", []) if address in hosts]
        if not addresses:
            raise RetryableError(
                "no usable host yet: waiting for the infrastructure's hosts to answer over SSH (see status.hosts)",
                reason="WaitingForHosts",
                delay=15,
            )
        # The old colour during a rollout is kept exactly as it runs, stale credentials or hand edits and all.
        keep = target.get("environmentCurrent") is False or target.get("unitsMatch") is False
        image = str(launch["image"])
        pull_auth = await self._pulls.auth_config(ctx, image) if self._pulls is not None else None
        unit = _Unit(ctx.key, colour, launch, env_text, keep, pull_auth)
        done = await asyncio.gather(*(self._converge_host(login.at(a), hosts[a], unit) for a in addresses),
                                    return_exceptions=True)  # fmt: skip
        failed = [result for result in done if isinstance(result, BaseException)]
        if failed:
            raise (
                failed[0]
                if isinstance(failed[0], CodebError)
                else RetryableError(f"{colour}: {type(failed[0]).__name__}: {credentials.redact(str(failed[0]))[:300]}")
            )

    async def _converge_host(self, access: HostAccess, facts: HostFacts, unit: _Unit) -> None:
        env_sha = env_digest(unit.env_text)
        unit_text = render_unit(unit.key, unit.colour, unit.launch, facts, env_sha)
        view = (await self._views(unit.key, access, facts, (unit.colour,)))[unit.colour]
        active = view.service.get("ActiveState") == "active"
        if active and view.unit_text == unit_text and view.env_sha == env_sha:
            return
        if unit.keep and view.launch is not None and dict(view.launch["state"]) == dict(unit.launch):
            return
        if view.launch is None:  # first time under this name: the unit of an earlier operator's naming goes
            await self._ssh.run(access, legacy_cleanup(unit.key, unit.colour))
        await self._refuse_taken_port(access, view, int(unit.launch["port"]))
        await self._ensure_image(access, str(unit.launch["image"]), unit.pull_auth)
        await self._ssh.write_file(access, env_path(unit.key, unit.colour), unit.env_text, mode="0600")
        await self._ssh.write_file(access, unit_path(unit.key, unit.colour), unit_text, mode="0600")
        service = shlex.quote(unit_name(unit.key, unit.colour) + ".service")
        # Stopped first, so whatever answers on the port afterwards is the new container. Started with
        # --no-block: with Notify=healthy (podman 4.7+) a start would wait out the health check, and
        # whether the colour serves is the rollout's health gate to judge, not this call's.
        queued = await self._ssh.run(access, f"systemctl daemon-reload && systemctl stop {service} && systemctl "
                                             f"reset-failed {service} 2>/dev/null; "
                                             f"systemctl start --no-block {service}")  # fmt: skip
        if not queued.ok:
            raise RetryableError(f"{facts.address}: the {unit.colour} unit could not be started: "
                                 f"{queued.stderr.strip()[:300]}", reason="StartFailed", delay=30)  # fmt: skip
        await self._wait_started(access, facts, unit)

    async def _wait_started(self, access: HostAccess, facts: HostFacts, unit: _Unit) -> None:
        """Until the new container answers on its port, or its service gives up (bounded): the next
        observation is then worth reading. Healthy or not is for the rollout to judge."""
        deadline = time.monotonic() + self._start_timeout
        port, path = int(unit.launch["port"]), str(unit.launch["healthPath"])
        while time.monotonic() < deadline:
            probe = await probe_http(self._client, facts.address, port, path, frozenset(), timeout=2.0)
            if probe.answered:
                return
            service = shlex.quote(unit_name(unit.key, unit.colour) + ".service")
            shown = await self._ssh.run(access, f"systemctl show -p ActiveState -p NRestarts {service}")
            state = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
            if state.get("ActiveState") == "failed" or state.get("NRestarts", "0") != "0":
                return
            await asyncio.sleep(0.5)

    async def _refuse_taken_port(self, access: HostAccess, view: HostView, port: int) -> None:
        """Before anything is started: a port held by something that is not this unit is refused."""
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

    async def _ensure_image(self, access: HostAccess, image: str, auth: str | None) -> None:
        """The image on the host: pulled if missing, with ``auth`` when it is the Project's own in its
        Platform's registry (`pull_line`)."""
        result = await self._ssh.run(access, pull_line(image, auth is not None), stdin=auth)
        if not result.ok:
            detail = " ".join(result.stderr.split())[-300:]
            raise RetryableError(
                f"{access.address}: image {image} is not on the host and could not be pulled ({detail}); "
                "check spec.project.source.image",
                reason="ImagePullFailed",
                delay=60,
            )

    # ------------------------------------------------------------ hooks

    async def follow_hook(
        self, ctx: DriverContext, state: State, endpoints: tuple[str, ...], hook: Hook | App, run: HookRun
    ) -> HookRun:
        """A hook runs inside the new colour's container on its first host (``podman exec``): same image,
        same environment, detached on the host (`controller.jobs.hookruns`). An app is installed
        through the new colour's own endpoint."""
        wanted = {k: v for k, v in state.items() if k not in JUDGED}
        credentials = await read_credentials(self._read_secret, ctx.key, wanted, missing_ok=True)
        if isinstance(hook, App):
            return await install_app(self._client, endpoints[0], hook, credentials.secret_values)
        # The colour is the one on the state's port (the engine hands over the colour's own state).
        colour = next((c for c in COLOURS if int(wanted["port"]) == _port_of(ctx, c)), COLOURS[0])
        address = sorted(state.get("hosts", []))[0]
        run_dir = f"{HOOK_RUNS}/{unit_name(ctx.key, colour)}/{hookruns.valid_run_id(run)}"
        # The run's id in the hook's environment: how a stop finds it inside the container (`hookruns.FOLLOW`).
        marker = f"CODEB_HOOK_RUN={hookruns.valid_run_id(run)}"
        command = ["podman", "exec", "--env", marker, unit_name(ctx.key, colour), *hook.command]
        login = (await self._login(ctx)).at(address)
        try:
            answer = await self._follow(login, "follow", run_dir, hook.timeout_seconds, command)
            judged, overdue = hookruns.judge(run, hook.timeout_seconds, answer, credentials.secret_values)
            if overdue:
                await self._follow(login, "stop", run_dir, hook.timeout_seconds, [])
        except CodebError as exc:
            return run.model_copy(update={"message": clip(f"{address}: {exc.message}", credentials.secret_values,
                                                          500)})  # fmt: skip
        return judged.model_copy(update={"message": clip(f"{address}: {judged.message}", frozenset(), 2048)})

    async def stop_hook(self, ctx: DriverContext, state: State | None, run: HookRun) -> None:
        """The run stopped on the host it runs on (its colour's first); with the colour gone, so is its
        container, and ``podman exec`` with it."""
        if state is None or not state.get("hosts") or "port" not in state:
            return
        colour = next((c for c in COLOURS if int(state["port"]) == _port_of(ctx, c)), COLOURS[0])
        run_dir = f"{HOOK_RUNS}/{unit_name(ctx.key, colour)}/{hookruns.valid_run_id(run)}"
        login = (await self._login(ctx)).at(sorted(state["hosts"])[0])
        await self._follow(login, "stop", run_dir, 0, [])

    async def _follow(self, login: HostAccess, mode: str, run_dir: str, timeout: int, command: list[str]) -> str:
        argv = hookruns.follow_argv(mode, run_dir, timeout, command, launcher="systemd-run")
        line = " ".join(shlex.quote(part) for part in argv)
        return (await self._ssh.run(login, line, timeout=FOLLOW_SECONDS)).stdout

    # ------------------------------------------------------------ delete

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        hosts = [*(_hosts(ctx) or []), *_departing(ctx)]
        if not hosts:
            return  # no host observed: nothing of ours can be reached (infrastructure keeps the finalizer)
        # Suspended (retain), its built images stay: starting again runs them. Deleted, its builds go too.
        pulled = await self._pulls.repository(ctx) if self._pulls is not None and not retain else None
        await self._remove_from(ctx.key, await self._login(ctx), hosts, COLOURS, forget_builds=not retain,
                                pulled=pulled)  # fmt: skip

    async def _remove_from(self, key: ProjectKey, login: Login, hosts: Sequence[HostFacts],
                           colours: Sequence[str], forget_builds: bool = False,
                           pulled: str | None = None) -> None:  # fmt: skip
        lines = [forget_builds_line(key, pulled)] if forget_builds else []
        for colour in colours:
            service = shlex.quote(unit_name(key, colour) + ".service")
            lines.append(f"systemctl stop {service} 2>/dev/null; rm -f {shlex.quote(unit_path(key, colour))} "
                         f"{shlex.quote(env_path(key, colour))}; "
                         f"podman rm -f -i {shlex.quote(unit_name(key, colour))} >/dev/null")  # fmt: skip
            lines.append(legacy_cleanup(key, colour))
            lines.append(hookruns.stop_all_line(f"{HOOK_RUNS}/{unit_name(key, colour)}"))
        line = "; ".join([*lines, "systemctl daemon-reload"])
        for facts in hosts:
            result = await self._ssh.run(login.at(facts.address), line)
            if not result.ok:
                raise RetryableError(f"{facts.address}: could not remove the units: {result.stderr.strip()[:300]}")

    # ------------------------------------------------------------ helpers

    def _env(self, key: ProjectKey, launch: State, credentials: Credentials) -> str:
        values = {**credentials.values, **launch.get("variables", {})}
        values |= {
            "PORT": str(launch["containerPort"]),
            "HOST": "0.0.0.0",  # inside the container; the host publishes one address only
            "CODEB_REVISION": launch.get("revision") or "",
        }
        return render_env(key, sorted(values.items()))


@dataclass(frozen=True)
class _Unit:
    """What one colour's unit on every host is made from."""

    key: ProjectKey
    colour: str
    launch: State
    env_text: str
    keep: bool  # leave a host's unit as it runs if it was launched with exactly this
    pull_auth: str | None = None  # the Project's credential for its image in its Platform's registry


def _hosts(ctx: DriverContext) -> list[HostFacts] | None:
    infrastructure = ctx.inputs.get(Component.infrastructure, {})
    if "hosts" not in infrastructure:
        return None
    return [HostFacts.of(host) for host in infrastructure["hosts"]]


def _departing(ctx: DriverContext) -> list[HostFacts]:
    """Hosts the infrastructure is about to take away (a scale-down): the workload leaves them first."""
    return [HostFacts.of(host) for host in ctx.inputs.get(Component.infrastructure, {}).get("departing", [])]


def _port_of(ctx: DriverContext, colour: str) -> int | None:
    allocations = ctx.allocations
    return allocations.port if colour == Colour.blue.value else allocations.alternate_port
