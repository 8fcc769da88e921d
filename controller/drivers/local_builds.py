"""Builds of source.git for runtime local (its `Builder`): the checkout is the application's directory.

Runtime local runs trusted Projects' programs on the operator's machine (`docs/security.md`), so a
build there is what a developer does by hand: clone the commit, run the template's install steps
(``npm ci``, a virtual environment and ``pip install``), then run the template's command in that
directory (`controller.specs.builds.LOCAL_PRESETS`). Each build makes a directory of its own under
``<CODEB_LOCAL_ROOT>/.codeb-builds/<namespace>.<name>/<run id>``, so the serving colour's files never
change under it; the workload's ``workingDir`` is that directory (its context). The build runs
detached under `controller.jobs.hookruns.FOLLOW` in ``<state dir>/builds/<namespace>.<name>/<run id>``,
like a hook: recorded first, followed, found again after a restart, stopped at its timeout.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from controller.drivers.proctable import follow_local, tail_lines
from controller.drivers.workloads import SecretReader, read_git_credentials
from controller.errors import CodebError, PermanentError
from controller.jobs import hookruns
from controller.loop.interface import BuildSource, DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.secrets import clip
from controller.specs.builds import LOCAL_PRESETS, local_build_argv
from schemas.project import BuildStatus, GitSource, HookRun, Source, Template

CHECKOUTS = ".codeb-builds"  # under the local root, where workingDir may point
PLACE = "local"  # the one place a local build runs: this machine


class LocalBuilds:
    """Mixed into `LocalProcesses`: its root, its builds' state directory and its Secret reader."""

    _root: Path
    _builds_dir: Path
    _read_secret: SecretReader

    async def build_places(self, ctx: DriverContext) -> list[str]:
        return [PLACE]

    def build_target(self, key: ProjectKey, run_id: str, git: GitSource) -> str:
        """The directory the application runs in: its context in the run's own checkout."""
        return str(PurePosixPath(_checkout(key, run_id), git.context))

    def built_source(self, template: Template, built: str) -> Source:
        _, command = LOCAL_PRESETS.get(template, ("", []))
        return Source(command=command or ["false"], working_dir=built)

    async def follow_build(self, ctx: DriverContext, source: BuildSource, build: BuildStatus) -> list[HookRun]:
        run = next(iter(build.hosts), None)
        if run is None or run.result != "Running":
            return list(build.hosts)
        if source.template not in LOCAL_PRESETS:
            message = (f"runtime local builds templates {', '.join(t.value for t in LOCAL_PRESETS)} (a Containerfile "
                       "needs runtime quadlet): set spec.project.template")  # fmt: skip
            raise PermanentError(message, reason="TemplateNotBuildable")
        run_dir = self._build_runs(ctx.key) / hookruns.valid_run_id(run)
        files = await read_git_credentials(self._read_secret, ctx.key, source.git)
        credentials = self._deliver(run_dir, files) if files else ""
        git, run_id = source.git, hookruns.valid_run_id(run)  # never a path read from status
        argv = local_build_argv(git, source.commit, str(self._root / _checkout(ctx.key, run_id)),
                                self.build_target(ctx.key, run_id, git), source.template, credentials)  # fmt: skip
        secrets = frozenset(files.values())
        try:
            answer = await follow_local("follow", str(run_dir), git.timeout_seconds, argv, self._root,
                                        _build_environment())  # fmt: skip
            judged, overdue = hookruns.judge(run, git.timeout_seconds, answer, secrets)
            if overdue:
                await follow_local("stop", str(run_dir), 0, [], self._root, {})
        except CodebError as exc:
            return [run.model_copy(update={"message": clip(exc.message, secrets, 500)})]
        if judged.result != "Running":  # a run killed before its clone was done could not remove them itself
            shutil.rmtree(f"{run_dir}.git", ignore_errors=True)
        return [judged.model_copy(update={"name": run.name, "message": judged.message if judged is not run else ""})]

    async def stop_build(self, ctx: DriverContext, build: BuildStatus) -> None:
        for run in build.hosts:
            run_dir = self._build_runs(ctx.key) / hookruns.valid_run_id(run)
            if run.result == "Running" and run_dir.is_dir():
                await follow_local("stop", str(run_dir), 0, [], self._root, {})
            shutil.rmtree(f"{run_dir}.git", ignore_errors=True)

    async def build_log(self, ctx: DriverContext, build: BuildStatus, tail: int) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for run in build.hosts:
            output = self._build_runs(ctx.key) / hookruns.valid_run_id(run) / "output"
            try:
                found[f"build {build.run_id} on this machine"] = tail_lines(output, max(1, min(tail, 10000)))
            except OSError:
                found[f"build {build.run_id} on this machine"] = ["(no output: the build has not run here)"]
        return found

    async def forget_builds(self, key: ProjectKey) -> None:
        """A deleted Project's builds are stopped, and its checkouts and build runs go."""
        runs = self._build_runs(key)
        for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
            if hookruns.RUN_ID.match(run_dir.name):
                await follow_local("stop", str(run_dir), 0, [], runs, {})
        shutil.rmtree(self._root / CHECKOUTS / f"{key.namespace}.{key.name}", ignore_errors=True)
        shutil.rmtree(runs, ignore_errors=True)

    def _deliver(self, run_dir: Path, files: dict[str, str]) -> str:
        """The run's credentials, the operator's user's alone, written only before it starts (the run removes
        them once it checked out)."""
        where = Path(f"{run_dir}.git")
        if not run_dir.exists():
            where.mkdir(parents=True, mode=0o700, exist_ok=True)
            for name, value in files.items():
                descriptor = os.open(where / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "w") as out:
                    out.write(value)
        return str(where)

    def _build_runs(self, key: ProjectKey) -> Path:
        return self._builds_dir / f"{key.namespace}.{key.name}"


def _checkout(key: ProjectKey, run_id: str) -> str:
    return f"{CHECKOUTS}/{key.namespace}.{key.name}/{run_id}"


def _build_environment() -> dict[str, str]:
    """What a build runs with: the basics of the operator's environment (and a CA file it trusts for git), never
    its kubeconfig or keys; the build's HOME is a directory of its own (`controller.specs.builds.CLONE`)."""
    return {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ", "GIT_SSL_CAINFO") if k in os.environ}
