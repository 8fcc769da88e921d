"""Runtime ``local``: the workload as a supervised process on the operator's machine.

Each Project's ``source.command`` runs under `controller.local.supervise`, started in a
session of its own so it outlives the operator. The driver keeps no record of its
own: it finds a Project's processes again in ``/proc`` by the supervisor's command
line (``--workload <namespace>/<name>``), so a restarted operator adopts what runs
instead of starting it twice. What a process was launched with (its non-secret
settings and a digest of its credentials) travels in its own environment, which
cannot change while it lives; the driver compares that with the spec and with the
Secrets as they are now, so an edited variable or a rotated password is drift and
the process is replaced.

Health is observed, not assumed: the port must be held by this Project's process
(a foreign listener on it is named, never probed in its place) and
``monitoring.healthPath`` must answer 2xx. The route reads the endpoint from this
observation's outputs.

Processes are not colour-blind: each runs as a colour (``blue`` until blue-green
deploys start the other beside it), with its log and runtime state under
``<state dir>/workloads/<namespace>/<name>/<colour>.{log,json}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from controller.clients.http import Probe, probe_http, probe_sample
from controller.drivers.local_builds import LocalBuilds
from controller.drivers.proctable import (
    LAUNCH_ENV,
    alive,
    follow_local,
    group_of,
    launch_record,
    listeners,
    send_signal,
    signal_group,
    started_ticks,
    supervisor_options,
    supervisors,
    tail_lines,
)
from controller.drivers.workloads import SecretReader, install_app, read_credentials
from controller.errors import PermanentError, RetryableError
from controller.jobs import hookruns
from controller.jobs.hookruns import hook_run
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, Observation, State
from controller.loop.secrets import clip
from schemas.project import App, Hook, HookRun

SUPERVISOR = Path(__file__).resolve().parents[1] / "local" / "supervise.py"
LISTEN_HOST = "127.0.0.1"
# Handed to the application from the operator's own environment; nothing else leaks in.
# Not HOME: the operator's own (its kubeconfig, its keys) is no Project's; each gets a HOME of its own.
INHERITED = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH")
STOP_SECONDS = 15.0
OUTPUT_LINES = 3


@dataclass(frozen=True)
class Supervised:
    """One supervisor found in /proc, with what it was launched with."""

    pid: int
    colour: str
    directory: Path
    launch: Mapping[str, Any]

    @property
    def port(self) -> int:
        return int(self.launch["state"]["port"])


@dataclass(frozen=True)
class Environment:
    values: dict[str, str]
    digest: str  # of the credentials only: what a rotation changes
    secret_values: frozenset[str]


class LocalProcesses(LocalBuilds):
    component = Component.workload

    def __init__(
        self,
        read_secret: SecretReader,
        root: Path,
        state_dir: Path,
        health_timeout: float = 5.0,
        start_timeout: float = 15.0,
        client: httpx.AsyncClient | None = None,
        namespaces: frozenset[str] | None = None,
    ) -> None:
        self._read_secret = read_secret
        self._root = root.resolve()
        # Where Projects may run commands on this machine; None: every namespace.
        self._namespaces = namespaces
        self._state_dir = state_dir / "workloads"
        self._builds_dir = state_dir / "builds"
        self._start_timeout = start_timeout
        # One pool for every health probe; probes never follow redirects.
        self._client = client or httpx.AsyncClient(timeout=health_timeout)
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # supervisors this process started, to reap

    # ------------------------------------------------------------ observe

    async def observe(self, ctx: DriverContext) -> Observation:
        """Each colour's launched state, and its health in ``outputs["colours"]`` (see `loop.rollouts.bluegreen`)."""
        self._check_namespace(ctx)
        found = self._find(ctx.key)
        if not found:
            return Observation()
        looks = await asyncio.gather(*[self._look(ctx, colour, found) for colour in _colours(found)])
        states = {colour: state for colour, state, _ in looks}
        health = {colour: probe for colour, _, probe in looks}
        unhealthy = [f"{colour}: {probe['detail']}" for colour, probe in health.items() if not probe["healthy"]]
        return Observation(state={"colours": states}, healthy=not unhealthy, detail="; ".join(unhealthy) or None,
                           outputs={"colours": health})  # fmt: skip

    async def _look(self, ctx: DriverContext, colour: str, found: list[Supervised]) -> tuple[str, State, State]:
        mine = [p for p in found if p.colour == colour]
        current = mine[-1]
        launched = dict(current.launch["state"])
        environment = await self._environment(ctx, launched, missing_ok=True)
        # Two supervisors of one colour (a crash mid-replacement) is not what anyone asked for.
        current_env = len(mine) == 1 and environment.digest == current.launch["digest"]
        probe = await self._health(current, environment.secret_values, ctx.health_timeout)
        endpoint = f"{LISTEN_HOST}:{current.port}"
        health = {"healthy": probe.healthy, "detail": probe.detail, "answered": probe.answered, "endpoints": [endpoint],
                  **probe_sample([probe])}  # fmt: skip
        return colour, {**launched, "environmentCurrent": current_env}, health

    async def _health(self, process: Supervised, secret_values: frozenset[str], timeout: float | None) -> Probe:
        child = _child_state(process)
        if child.get("pid") is None or not alive(int(child["pid"])):
            exited = child.get("lastExit") is not None
            return Probe(False, _exited(process, child, secret_values), answered=exited)
        holders = listeners(process.port)
        if holders and not any(group_of(pid) == child["pid"] for pid in holders):
            holder = f" (pid {min(holders)})" if min(holders) > 0 else ""
            return Probe(False, f"port {process.port} is held by another process{holder}, not this Project's")
        path = process.launch["state"]["healthPath"]
        return await probe_http(self._client, LISTEN_HOST, process.port, path, secret_values, timeout)

    # ------------------------------------------------------------ apply

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        """Each colour made to run exactly its target; a colour with none is stopped. One colour's
        change never touches the other, so the serving colour keeps serving while the new one starts."""
        self._check_namespace(ctx)
        targets: Mapping[str, State] = desired["colours"]
        found = self._find(ctx.key)
        stale = [p for p in found if p.colour not in targets]
        if stale:
            await asyncio.to_thread(self._stop_all, stale)
        for colour, target in sorted(targets.items()):
            await self._converge_colour(ctx, colour, target, [p for p in found if p.colour == colour])

    async def _converge_colour(self, ctx: DriverContext, colour: str, target: State, found: list[Supervised]) -> None:
        wanted = {k: v for k, v in target.items() if k != "environmentCurrent"}
        environment = await self._environment(ctx, wanted, missing_ok=False)
        launch = {"state": wanted, "digest": environment.digest}
        if len(found) == 1 and dict(found[0].launch) == launch:
            return
        if target.get("environmentCurrent") is False and len(found) == 1 and found[0].launch["state"] == wanted:
            return  # kept exactly as it runs (the old colour during a rollout), stale credentials and all
        cwd, program = self._resolve(wanted)
        # Checked before the running process is stopped: a refused change leaves it serving.
        port = int(wanted["port"])
        own_groups = {_child_state(p).get("pid") for p in found}
        if any(group_of(pid) not in own_groups for pid in listeners(port)):
            raise RetryableError(
                f"port {port} is held by another process on this machine; stop it or set spec.resources.port",
                reason="PortTaken",
                delay=30,
            )
        await asyncio.to_thread(self._stop_all, found)
        env = {**environment.values, LAUNCH_ENV: json.dumps(launch)}
        self._spawn(ctx.key, colour, cwd, [program, *wanted["command"][1:]], env)
        await self._wait_started(ctx.key, colour)

    def _check_namespace(self, ctx: DriverContext) -> None:
        if self._namespaces is not None and ctx.key.namespace not in self._namespaces:
            raise PermanentError(
                f"runtime local is not allowed in namespace {ctx.key.namespace} (CODEB_LOCAL_RUNTIME_NAMESPACES); "
                "use runtime quadlet or kubernetes",
                reason="LocalRuntimeNotAllowed",
            )

    def _resolve(self, wanted: State) -> tuple[Path, str]:
        cwd = (self._root / (wanted["workingDir"] or ".")).resolve()
        if not cwd.is_relative_to(self._root):
            raise PermanentError(
                f"spec.project.source.workingDir: {wanted['workingDir']} leads out of the operator's local root "
                "(CODEB_LOCAL_ROOT); name a directory inside it",
                reason="WorkingDirNotAllowed",
            )
        if not cwd.is_dir():
            raise PermanentError(
                f"spec.project.source.workingDir: {cwd} is not a directory on the operator's machine",
                reason="WorkingDirMissing",
            )
        name = wanted["command"][0]
        program = shutil.which(name, path=os.environ.get("PATH")) if "/" not in name else str(cwd / name)
        if program is None or not os.access(program, os.X_OK):
            raise PermanentError(
                f"spec.project.source.command: {name} is not an executable program on the operator's machine",
                reason="CommandNotFound",
            )
        return cwd, program

    def _spawn(self, key: ProjectKey, colour: str, cwd: Path, command: list[str], env: dict[str, str]) -> None:
        directory = self._directory(key)
        directory.mkdir(parents=True, exist_ok=True)
        # The last run's exit code must not be read as the new run's.
        (directory / f"{colour}.json").unlink(missing_ok=True)
        args = [sys.executable, str(SUPERVISOR), "--workload", f"{key.namespace}/{key.name}", "--colour", colour,
                "--dir", str(directory), "--cwd", str(cwd), "--", *command]  # fmt: skip
        process = subprocess.Popen(args, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        self._children[process.pid] = process

    async def _wait_started(self, key: ProjectKey, colour: str) -> None:
        """Until the new process listens (or gives up): the first observation is then worth reading."""
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            found = [p for p in self._find(key) if p.colour == colour]
            if found:
                child = _child_state(found[-1])
                if child.get("lastExit") is not None or (child.get("pid") and listeners(found[-1].port)):
                    return
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------ hooks

    async def follow_hook(
        self, ctx: DriverContext, state: State, endpoints: tuple[str, ...], hook: Hook | App, run: HookRun
    ) -> HookRun:
        """A hook runs beside the new colour, as it does: same directory, same environment, detached
        (`controller.jobs.hookruns`); an app is installed through the colour's own endpoint."""
        wanted = {k: v for k, v in state.items() if k != "environmentCurrent"}
        environment = await self._environment(ctx, wanted, missing_ok=True)
        if isinstance(hook, App):
            return await install_app(self._client, endpoints[0], hook, environment.secret_values)
        cwd, _ = self._resolve(wanted)
        name = hook.command[0]
        program = shutil.which(name, path=environment.values.get("PATH")) if "/" not in name else str(cwd / name)
        if program is None:
            return hook_run(hook.name, False, f"{name}: no such program on the operator's machine", frozenset())
        run_dir = str(self._directory(ctx.key) / "hooks" / hookruns.valid_run_id(run))
        argv = [program, *hook.command[1:]]
        answer = await follow_local("follow", run_dir, hook.timeout_seconds, argv, cwd, environment.values)
        judged, overdue = hookruns.judge(run, hook.timeout_seconds, answer, environment.secret_values)
        if overdue:
            await follow_local("stop", run_dir, hook.timeout_seconds, [], cwd, environment.values)
        return judged

    async def stop_hook(self, ctx: DriverContext, state: State | None, run: HookRun) -> None:
        """The run's processes killed, by its run directory (its colour's state is not needed)."""
        hooks = self._directory(ctx.key) / "hooks"
        if hooks.is_dir():  # else no run ever started here
            await follow_local("stop", str(hooks / hookruns.valid_run_id(run)), 0, [], hooks, {})

    # ------------------------------------------------------------ delete

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        await asyncio.to_thread(self._stop_all, self._find(ctx.key))
        hooks = self._directory(ctx.key) / "hooks"
        for run_dir in sorted(hooks.iterdir()) if hooks.is_dir() else []:
            await follow_local("stop", str(run_dir), 0, [], hooks, {})  # a hook still running goes with the Project
        if not retain:  # suspended (retain): stopped, its home directory and checkouts there when it starts again
            shutil.rmtree(self._directory(ctx.key), ignore_errors=True)
            await self.forget_builds(ctx.key)

    def _stop_all(self, processes: Iterable[Supervised]) -> None:
        _stop(list(processes), self._running)

    def _running(self, pid: int) -> bool:
        spawned = self._children.get(pid)
        if spawned is not None and spawned.poll() is not None:
            del self._children[pid]
            return False
        return alive(pid)

    # ------------------------------------------------------------ the environment

    async def _environment(self, ctx: DriverContext, wanted: State, missing_ok: bool) -> Environment:
        """What the process gets: inherited basics, credentials, variables, PORT and HOST (in that order)."""
        credentials = await read_credentials(self._read_secret, ctx.key, wanted, missing_ok)
        inherited = {k: os.environ[k] for k in INHERITED if k in os.environ}
        home = self._directory(ctx.key) / "home"
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        values = {**inherited, "HOME": str(home), **credentials.values, **wanted.get("variables", {})}
        values |= {"PORT": str(wanted["port"]), "HOST": LISTEN_HOST, "CODEB_REVISION": wanted.get("revision") or ""}
        return Environment(values, credentials.digest, credentials.secret_values)

    async def logs(self, ctx: DriverContext, tail: int) -> dict[str, list[str]]:
        """Each colour's output (its log beside its state), credentials redacted."""
        wanted = {"connectionSecret": ctx.allocations.connection_secret}
        credentials = await read_credentials(self._read_secret, ctx.key, wanted, missing_ok=True)
        found = {}
        for path in sorted(self._directory(ctx.key).glob("*.log")):
            lines = tail_lines(path, tail)
            found[path.stem] = [credentials.redact(line) for line in lines]
        return found

    # ------------------------------------------------------------ finding processes

    def _directory(self, key: ProjectKey) -> Path:
        return self._state_dir / key.namespace / key.name

    def _find(self, key: ProjectKey) -> list[Supervised]:
        """This Project's supervisors, oldest first."""
        workload = f"{key.namespace}/{key.name}"
        found = []
        for pid, argv in supervisors():
            options = supervisor_options(argv)
            if options.get("--workload") != workload:
                continue
            launch = launch_record(pid)
            if launch is None:  # not ours to read: another user's process
                continue
            found.append((started_ticks(pid), Supervised(pid, options["--colour"], Path(options["--dir"]), launch)))
        return [s for _, s in sorted(found, key=lambda item: item[0])]


def _colours(found: list[Supervised]) -> list[str]:
    return sorted({p.colour for p in found})


def stop_everything_under(state_dir: Path) -> None:
    """Stop every local workload whose state lives under ``state_dir`` (``codeb up`` on its way out)."""
    root = str((state_dir / "workloads").resolve()) + "/"
    found = []
    for pid, argv in supervisors():
        options = supervisor_options(argv)
        if options.get("--dir", "").startswith(root):
            found.append(Supervised(pid, options["--colour"], Path(options["--dir"]), {}))
    _stop(found, alive)


def _stop(processes: list[Supervised], running: Callable[[int], bool]) -> None:
    """SIGTERM each supervisor (it stops its application's group); SIGKILL what outlives the grace."""
    for process in processes:
        send_signal(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while any(running(p.pid) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in processes:
        if running(process.pid):
            child = _child_state(process).get("pid")
            if child:
                signal_group(int(child), signal.SIGKILL)
            send_signal(process.pid, signal.SIGKILL)


def _child_state(process: Supervised) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((process.directory / f"{process.colour}.json").read_text())
    except (OSError, ValueError):
        return {}
    return state


def _exited(process: Supervised, child: Mapping[str, Any], secret_values: frozenset[str]) -> str:
    code = child.get("lastExit")
    if code is None:
        return "the process is starting"
    restarts = child.get("restarts", 0)
    try:
        lines = tail_lines(process.directory / f"{process.colour}.log", OUTPUT_LINES)
    except OSError:
        lines = []
    output = clip(" | ".join(lines[-OUTPUT_LINES:]), secret_values, 400, tail=True)
    return f"the process exited with code {code} (restarted {restarts} times); last output: {output or '(none)'}"
