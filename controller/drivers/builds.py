"""Builds of source.git on the Project's own hosts over SSH (runtime quadlet's `Builder`).

Each host builds the same commit into the same tag (`controller.loop.builds.build_image`) with
podman, so its units find the image locally: no registry between the build and the hosts. A build
runs detached on each host in a directory named by its run id (``/var/lib/codeb/builds/…``),
followed by `controller.jobs.hookruns.FOLLOW` exactly as a post-deploy hook is: started once,
found again after a restart, stopped at its timeout. What it runs is `controller.specs.builds`.
"""

from __future__ import annotations

import asyncio
import base64
import shlex
from dataclasses import dataclass

from controller.clients.ssh import HostAccess, Login, SshPool
from controller.drivers.hosts import login_for, servers_of
from controller.drivers.registry_pulls import RegistryPulls
from controller.drivers.workloads import SecretReader, read_git_credentials
from controller.errors import CodebError, RetryableError
from controller.jobs import hookruns
from controller.loop.builds import build_image
from controller.loop.interface import BuildSource, DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component
from controller.loop.secrets import clip
from controller.specs import registry
from controller.specs.builds import build_argv, storage_options
from schemas.project import BuildStatus, GitSource, HookRun, Source, Template

BUILD_RUNS = "/var/lib/codeb/builds"
# A run's git credentials: on the host's tmpfs (never on its disk), root's alone, for the clone only (the
# build removes them once it checked out; one killed before that leaves them until the next run's sweep).
GIT_CREDENTIALS = "/run/codeb/git"
CREDENTIALS_MINUTES = 4 * 60 + 10  # the longest timeoutSeconds, and a margin
FOLLOW_SECONDS = 30.0  # one step of following a build (start it, or look at it) answers within this


def run_dir(ctx: DriverContext, build: BuildStatus) -> str:
    run = HookRun(name="build", result=build.result, run_id=build.run_id)
    return f"{BUILD_RUNS}/{ctx.key.namespace}.{ctx.key.name}/{hookruns.valid_run_id(run)}"


def credentials_dir(ctx: DriverContext, build: BuildStatus) -> str:
    return f"{GIT_CREDENTIALS}/{ctx.key.namespace}.{ctx.key.name}.{run_dir(ctx, build).rsplit('/', 1)[1]}"


def _credentials_gone(ctx: DriverContext, build: BuildStatus) -> str:
    """What follows a stop: the run's credentials removed (a run killed before its clone was done left them)."""
    return f"; rm -rf {shlex.quote(credentials_dir(ctx, build))}"


def forget_builds_line(key: ProjectKey, pulled: str | None = None, store: str = "") -> str:
    """A shell line that stops a Project's builds on a host and removes their runs and images, and those it
    pulled from ``pulled`` (its repository in its Platform's registry), from the image storage in ``store``
    ('' for the host's own): it is deleted."""
    credentials = shlex.quote(f"{GIT_CREDENTIALS}/{key.namespace}.{key.name}.")
    podman = f"podman {storage_options(store)}" if store else "podman"
    remove = f"{podman} images -q --filter reference={{}} | xargs -r {podman} rmi -f >/dev/null 2>&1"
    built = f"localhost/codeb/{key.namespace}/{key.name}"
    removals = [remove.format(shlex.quote(repository)) for repository in (built, pulled) if repository]
    return "; ".join([hookruns.stop_all_line(f"{BUILD_RUNS}/{key.namespace}.{key.name}"), f"rm -rf {credentials}*",
                      *removals])  # fmt: skip


def deliver_line(run: str, credentials: str) -> str:
    """A shell line that writes a run's credentials (stdin: ``name base64`` lines) unless the run started
    already (then it reads them no more, and may have removed them), and sweeps those of runs long gone."""
    run, credentials, root = shlex.quote(run), shlex.quote(credentials), shlex.quote(GIT_CREDENTIALS)
    return (
        f"[ -d {run} ] || (umask 077; mkdir -p {root} && find {root} -mindepth 1 -maxdepth 1 "
        f"-mmin +{CREDENTIALS_MINUTES} -exec rm -rf {{}} +; mkdir -p {credentials} && "
        f'while read -r name value; do printf %s "$value" | base64 -d >{credentials}/"$name"; done) && '
    )


@dataclass(frozen=True)
class Start:
    """What a run that has not started yet is given before it starts: its git credentials' files, and where."""

    where: str
    files: dict[str, str]
    secrets: frozenset[str] = frozenset()  # never in a run's recorded output


class HostBuilds:
    """Builds on the hosts a Project's workload runs on; mixed into the quadlet driver, whose SSH it shares."""

    _ssh: SshPool
    _read_login: SecretReader
    _pulls: RegistryPulls | None  # the Project's own repository in its Platform's registry, and its credential

    async def push_repository(self, ctx: DriverContext) -> str | None:
        return await self._pulls.repository(ctx) if self._pulls is not None else None

    async def follow_build(self, ctx: DriverContext, source: BuildSource, build: BuildStatus) -> list[HookRun]:
        login = await self._login(ctx)
        running = any(r.result == "Running" for r in build.hosts)
        files = await read_git_credentials(self._read_login, ctx.key, source.git) if running else {}
        secrets = set(files.values())
        if running and build.pushed_to is not None:
            files["registryAuth"], password = await self._push_credential(ctx, build)
            secrets |= {files["registryAuth"], password}
        where = credentials_dir(ctx, build) if files else ""
        push = build.pushed_to is not None
        command = build_argv(source.git, source.commit, build.image, source.template, where, push, self._store(ctx))
        start = Start(where, files, frozenset(secrets))
        steps = [self._follow_one(login.at(run.name), ctx, build, run, source.git.timeout_seconds, command, start)
                 for run in build.hosts]  # fmt: skip
        return list(await asyncio.gather(*steps))

    async def build_places(self, ctx: DriverContext) -> list[str]:
        """The hosts the workload runs on: each builds its own image, or (with a registry) the first of them
        builds it for all (`controller.loop.builds.due`)."""
        return [str(host["address"]) for host in ctx.inputs.get(Component.infrastructure, {}).get("hosts", [])]

    def build_target(self, key: ProjectKey, run_id: str, git: GitSource) -> str:
        return build_image(key, run_id)

    def built_source(self, template: Template, built: str) -> Source:
        return Source(image=built)

    async def stop_build(self, ctx: DriverContext, build: BuildStatus) -> None:
        login = await self._login(ctx)
        gone = _credentials_gone(ctx, build)
        await asyncio.gather(*(self._step(login.at(run.name), "stop", run_dir(ctx, build), 0, [], after=gone)
                               for run in build.hosts if run.result == "Running"))  # fmt: skip

    async def build_log(self, ctx: DriverContext, build: BuildStatus, tail: int) -> dict[str, list[str]]:
        login = await self._login(ctx)
        output = shlex.quote(f"{run_dir(ctx, build)}/output")
        count = max(1, min(tail, 10000))

        async def one(address: str) -> list[str]:
            result = await self._ssh.run(login.at(address), f"tail -n {count} {output} 2>/dev/null | tail -c 1048576")
            return result.stdout.splitlines() or ["(no output on this host: the build has not run here, or was "
                                                  "cleaned up after 7 days)"]  # fmt: skip

        found = await asyncio.gather(*(one(run.name) for run in build.hosts))
        return {f"build {build.run_id} on {run.name}": said for run, said in zip(build.hosts, found, strict=True)}

    async def _push_credential(self, ctx: DriverContext, build: BuildStatus) -> tuple[str, str]:
        """The Project's registry credential for the repository ``build`` pushes to, as podman reads it."""
        found = await self._pulls.credential(ctx, build.image) if self._pulls is not None else None
        if found is None:  # the Platform's registry changed since the build was recorded
            raise RetryableError(f"{build.pushed_to} is no longer the Project's repository in its Platform's "
                                 "registry; a newer build goes where the Platform now says", delay=30)  # fmt: skip
        host, user, password = found
        return registry.auth_config(host, user, password), password

    async def _follow_one(self, access: HostAccess, ctx: DriverContext, build: BuildStatus, run: HookRun,
                          timeout: int, command: list[str], start: Start) -> HookRun:  # fmt: skip
        if run.result != "Running":
            return run
        directory = run_dir(ctx, build)
        secrets = start.secrets
        try:
            answer = await self._step(access, "follow", directory, timeout, command, start)
            judged, overdue = hookruns.judge(run, timeout, answer, secrets)
            if overdue:  # killed: its credentials (if its clone had not removed them yet) go too
                await self._step(access, "stop", directory, timeout, [], after=_credentials_gone(ctx, build))
        except CodebError as exc:  # this look failed; the run is looked at again next pass
            return run.model_copy(update={"message": clip(exc.message, secrets, 500)})
        return judged.model_copy(update={"name": run.name, "message": judged.message if judged is not run else ""})

    async def _step(self, access: HostAccess, mode: str, directory: str, timeout: int, command: list[str],
                      start: Start | None = None, after: str = "") -> str:  # fmt: skip
        argv = hookruns.follow_argv(mode, directory, timeout, command, launcher="systemd-run")
        line = " ".join(shlex.quote(part) for part in argv) + after
        stdin = None
        if start is not None and start.files:
            # The content on stdin, never in the command line (a host's ps shows that).
            line = deliver_line(directory, start.where) + line
            stdin = "".join(f"{name} {base64.b64encode(value.encode()).decode()}\n" for name, value in
                            start.files.items())  # fmt: skip
        return (await self._ssh.run(access, line, stdin=stdin, timeout=FOLLOW_SECONDS)).stdout

    async def _login(self, ctx: DriverContext) -> Login:
        _, ssh = servers_of(ctx)
        return await login_for(self._read_login, ctx.key, ssh)

    def _store(self, ctx: DriverContext) -> str:
        """The image storage a build runs in: the host's own (its units run what it builds)."""
        return ""
