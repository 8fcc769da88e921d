"""Infrastructure for providers vultr and lightsail: hosts made by Terraform, state in the cluster.

One workspace per Project under the operator's work directory: the provider's module
(copied from ``terraform/``), a root that passes the Project's inputs and keeps state in
the ``kubernetes`` backend (Secret ``tfstate-default-<namespace>.<name>`` and its lock
Lease, in the operator's namespace), and the files of the run in progress. The workspace
is a cache: deleting it loses nothing. What was applied is recorded in
``status.infrastructure`` as the hash of module + inputs (`controller.specs.terraform.config_hash`):
while it matches, a reconcile starts no Terraform process at all.

Runs (plan, apply, destroy) are detached from the operator (`TerraformRunner`): an
operator that restarts finds the run still going and waits for it rather than starting
another, and a Terraform that outlives a killed operator still finishes its apply and
writes its state. A lock whose holder is gone (the run died with its machine) is released
with an Event. Credentials come from ``servers.credentialsSecretRef`` into the run's
environment only.

``servers.apply``: auto applies; approve plans, records the plan (``status.infrastructure.plan``)
and applies that saved plan once ``servers.approvedPlan`` names it; observe plans again
every ``plan_interval`` and reports what differs, never applying.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh
import structlog
from python_terraform import IsFlagged, Terraform

from controller.clients.kube import KubeClient
from controller.clients.ssh import Login
from controller.drivers.hosts import ExistingHosts, login_for, report
from controller.drivers.workloads import SecretReader
from controller.errors import PermanentError, RetryableError
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, Observation, State, host_count, infrastructure_state
from controller.loop.secrets import redact
from controller.specs import terraform as tf
from schemas.project import (
    ApplyMode,
    InfrastructureOutputs,
    InfrastructureStatus,
    Provider,
    Runtime,
    Servers,
    TerraformRun,
)

log = structlog.get_logger("codeb.terraform")

RUN_DIR = "run"
PLAN_FILE = "plan.bin"
MODULE_DIR = "module"
INIT_MARK = ".terraform/codeb-init"
LOCK_ANNOTATION_GRACE = 120.0  # seconds past the run timeout before a lock of unknown origin counts as stale
OUTPUT_TAIL = 4000


@dataclass(frozen=True)
class TerraformSettings:
    binary: str
    work_root: Path
    modules: Path
    state_namespace: str
    kubeconfig: str | None  # None: in-cluster
    plugin_dir: Path | None  # providers installed once (a filesystem mirror); None: download into a shared cache
    concurrency: int = 4
    run_timeout: float = 3600.0
    wait: float = 20.0  # how long one reconcile waits for a run before reporting it as running
    plan_interval: float = 3600.0  # apply observe: how old a plan may get before the next


# ---------------------------------------------------------------- runs (the transport)


@dataclass(frozen=True)
class Run:
    """A Terraform process started in a workspace, as its ``run.json`` records it."""

    directory: Path
    operation: str
    pid: int
    ticks: str  # the process's start time in clock ticks: tells it from a later one with the same pid
    boot: str
    started: float
    config_hash: str
    plan_id: str | None = None

    @property
    def exit_code(self) -> int | None:
        try:
            return int((self.directory / "exit").read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        return self.exit_code is None and _process_ticks(self.pid) == self.ticks and _boot_id() == self.boot

    def lines(self) -> list[str]:
        try:
            return (self.directory / "stdout").read_text(errors="replace").splitlines()
        except OSError:
            return []

    def stderr(self) -> str:
        try:
            return (self.directory / "stderr").read_text(errors="replace")[-OUTPUT_TAIL:]
        except OSError:
            return ""


class TerraformRunner:
    """Every Terraform process the operator starts, in one place: arguments, environment, limits.

    Arguments are built by python-terraform (`Terraform.generate_cmd_string`, its flag
    conventions); the processes are started here because its ``cmd`` falls short for an
    operator: it blocks a thread in ``Popen.communicate`` with no timeout and no way to
    cancel, passes either the operator's whole environment or none (credentials per
    Project would have to go through ``os.environ``, shared by concurrent runs), and runs
    Terraform in the operator's process group, so what stops the operator stops it mid-apply.
    """

    def __init__(self, settings: TerraformSettings) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._watchers: set[asyncio.Task[None]] = set()
        self._mirror_lock = asyncio.Lock()  # one provider download per module version, never per init

    def argv(self, workspace: Path, command: str, *args: str, **flags: Any) -> list[str]:
        cli = Terraform(working_dir=str(workspace), terraform_bin_path=self.settings.binary,
                        is_env_vars_included=False)  # fmt: skip
        return [str(a) for a in cli.generate_cmd_string(command, *args, no_color=IsFlagged, **flags)]

    def environment(self, credentials: Mapping[str, str]) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        config = os.environ.get("TF_CLI_CONFIG_FILE")
        if config and Path(config).is_file():
            keep["TF_CLI_CONFIG_FILE"] = config
        return keep | {"TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", **credentials}

    async def run(self, workspace: Path, argv: list[str], env: Mapping[str, str], timeout: float = 120.0) -> Done:
        """A short command (init, show, output, force-unlock), waited for; killed on timeout or cancellation."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=workspace, env=dict(env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise RetryableError(f"cannot run {argv[0]} (CODEB_TERRAFORM): {exc.strerror}", reason="TerraformMissing",
                                 delay=60) from None  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise RetryableError(
                f"terraform {argv[1]} took longer than {timeout:.0f}s", reason="TerraformTimeout"
            ) from None
        log.debug("terraform", command=argv[1], code=proc.returncode)
        return Done(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))

    async def init(self, workspace: Path, env: Mapping[str, str]) -> Done:
        """``init`` from a plugin directory only: no download, so any number run at once."""
        plugins = await self.plugin_dir(workspace, env)
        flags: dict[str, Any] = {"input": False, "reconfigure": IsFlagged, "plugin_dir": str(plugins)}
        return await self.run(workspace, self.argv(workspace, "init", **flags), env, timeout=300)

    async def plugin_dir(self, workspace: Path, env: Mapping[str, str]) -> Path:
        """The configured plugin directory; else this module's providers, mirrored once into the work directory.

        Terraform's shared plugin cache is not safe for concurrent inits (which is why other
        controllers serialize ``init``); a mirror made once per module version is only read.
        """
        if self.settings.plugin_dir is not None:
            return self.settings.plugin_dir
        module = workspace / MODULE_DIR
        files = {p.name: p.read_bytes() for p in module.iterdir() if p.name.endswith((".tf", ".tf.json"))}
        target = self.settings.work_root / "providers" / tf.config_hash(files)[:16]
        async with self._mirror_lock:
            if not (target / ".complete").is_file():
                target.mkdir(parents=True, exist_ok=True)
                done = await self.run(module, self.argv(module, "providers mirror", str(target)), env, timeout=900)
                if done.code != 0:
                    raise RetryableError(f"terraform providers mirror failed: {_tail(done.stderr)}",
                                         reason="TerraformFailed", delay=60)  # fmt: skip
                (target / ".complete").write_text("")
        return target

    async def start(self, workspace: Path, operation: str, argv: list[str], env: Mapping[str, str],
                    config_hash: str, plan_id: str | None = None) -> Run:  # fmt: skip
        """A long run (plan, apply, destroy), detached: it survives an operator that dies meanwhile.

        Holds one of ``concurrency`` slots until it ends; a reconcile that cannot get one
        within ``wait`` seconds is told to come back.
        """
        try:
            await asyncio.wait_for(self._slots.acquire(), self.settings.wait)
        except TimeoutError:
            raise RetryableError(
                f"waiting for one of {self.settings.concurrency} Terraform slots", reason="TerraformQueued", delay=5
            ) from None
        try:
            return await self._spawn(workspace, operation, argv, env, config_hash, plan_id)
        except BaseException:
            self._slots.release()
            raise

    async def _spawn(self, workspace: Path, operation: str, argv: list[str], env: Mapping[str, str],
                     config_hash: str, plan_id: str | None) -> Run:  # fmt: skip
        directory = workspace / RUN_DIR
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        timeout = str(int(self.settings.run_timeout))
        # Terraform is interrupted (SIGINT: it stops cleanly, saves state, unlocks) at the timeout;
        # the exit status lands in a file, atomically, for whoever looks next.
        # Terraform starts only once run.json names it: an operator that dies before writing it
        # leaves no Terraform (and no lock) that nobody knows of; the shell gives up after 10 s.
        script = (f"i=0; until [ -f {RUN_DIR}/run.json ]; do i=$((i+1)); [ $i -gt 200 ] && exit 1; sleep 0.05; done; "
                  f'timeout -s INT -k 120 {timeout} "$@" >{RUN_DIR}/stdout 2>{RUN_DIR}/stderr; '
                  f"echo $? >{RUN_DIR}/exit.tmp && mv {RUN_DIR}/exit.tmp {RUN_DIR}/exit")  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", script, "sh", *argv, cwd=workspace, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        run = Run(directory, operation, proc.pid, _process_ticks(proc.pid) or "", _boot_id(), time.time(),
                  config_hash, plan_id)  # fmt: skip
        record = {k: v for k, v in run.__dict__.items() if k != "directory"}
        (directory / "run.json.tmp").write_text(json.dumps(record))
        (directory / "run.json.tmp").rename(directory / "run.json")
        log.info("terraform started", operation=operation, workspace=workspace.name, pid=proc.pid)
        self._watch(proc)
        return run

    def _watch(self, proc: asyncio.subprocess.Process) -> None:
        async def until_done() -> None:
            try:
                await proc.wait()
            finally:
                self._slots.release()

        task = asyncio.get_running_loop().create_task(until_done())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    def find(self, workspace: Path) -> Run | None:
        """The run recorded in the workspace (running, or ended and not yet read), if any."""
        directory = workspace / RUN_DIR
        try:
            record = json.loads((directory / "run.json").read_text())
        except (OSError, ValueError):
            return None
        return Run(directory=directory, **record)

    @staticmethod
    def forget(run: Run) -> None:
        """The run's result has been recorded in status: its files can go."""
        with contextlib.suppress(OSError):
            (run.directory / "run.json").unlink()

    async def wait(self, run: Run, timeout: float) -> bool:
        """True once the run has ended (its exit file, or its process gone); False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while run.alive():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
        return True


@dataclass(frozen=True)
class Done:
    code: int
    stdout: str
    stderr: str


def _process_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if fields[0] != "Z" else None  # starttime; a zombie has ended


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------- the driver


@dataclass(frozen=True)
class Workspace:
    """One Project's workspace as it should be: its files, and the hash of them."""

    directory: Path
    files: Mapping[str, bytes]
    config_hash: str
    env: Mapping[str, str] = field(repr=False)  # holds the credentials
    secret_values: frozenset[str] = field(repr=False)
    mode: ApplyMode
    servers: Servers
    login: Login = field(repr=False)  # the operator's key: the hosts get it, and it logs in to them

    def write(self) -> None:
        """Bring the files on disk in line (a module file no longer shipped goes)."""
        module = self.directory / MODULE_DIR
        for path in module.iterdir() if module.is_dir() else ():
            if f"{MODULE_DIR}/{path.name}" not in self.files:
                path.unlink()
        for name, content in self.files.items():
            path = self.directory / name
            if not path.is_file() or path.read_bytes() != content:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)

    def redact(self, text: str, cut: bool = False) -> str:
        return redact(text, self.secret_values, cut)


class TerraformHosts:
    component = Component.infrastructure

    def __init__(
        self,
        provider: Provider,
        runner: TerraformRunner,
        read_secret: SecretReader,
        kube: KubeClient,
        hosts: ExistingHosts | None = None,
    ) -> None:
        self.provider = provider
        self._hosts = hosts  # checks the hosts made, over SSH, for the quadlet workload
        self._runner = runner
        self._settings = runner.settings
        self._read_secret = read_secret
        self._kube = kube
        # What runs this process saw end, newer than status until status is written.
        self._records: dict[tuple[str, str], InfrastructureStatus] = {}
        self._module: dict[str, bytes] | None = None  # the provider's module files, read once

    # -- observe

    async def observe(self, ctx: DriverContext) -> Observation:
        space = await self._workspace(ctx)
        record = self._record(ctx)
        run = self._runner.find(space.directory)
        if run is not None and not run.alive():
            record = await self._harvest(ctx, space, run, record)
        elif run is not None:
            record = record.model_copy(update={"last_run": _running(run)})
        seen = self._observation(space, record, running=run is not None and run.alive())
        return await self._with_hosts(ctx, space, record, seen)

    async def _with_hosts(
        self, ctx: DriverContext, space: Workspace, record: InfrastructureStatus, seen: Observation
    ) -> Observation:
        """The hosts made, as the quadlet workload needs them: reachable over SSH, podman's facts.

        Not part of this component's health: hosts still booting are the workload's to wait for.
        """
        addresses = list(record.outputs.public_addresses)
        if self._hosts is None or not addresses or space.servers.runtime is not Runtime.quadlet:
            return seen
        checks = await self._hosts.check(space.login, addresses)
        # Terraform takes away the highest-numbered hosts: those past the count the spec asks for.
        staying = set(addresses[: host_count(space.servers)])
        usable = [dict(c.facts) for c in checks if c.facts is not None]
        outputs = {**seen.outputs, "report": [report(c) for c in checks],
                   "hosts": [h for h in usable if h["address"] in staying],
                   "departing": [h for h in usable if h["address"] not in staying]}  # fmt: skip
        return replace(seen, outputs=outputs)

    def _observation(self, space: Workspace, record: InfrastructureStatus, running: bool) -> Observation:
        outputs: State = {"terraform": record.model_dump(mode="json", by_alias=True)}
        last = record.last_run
        failed = last is not None and last.result == "Failed"
        detail = _run_detail(last)
        if record.applied_hash is None and record.plan is None:
            return Observation(state=None, healthy=not running and not failed, detail=detail, outputs=outputs)
        state = {**infrastructure_state(space.servers), "converged": self._converged(space, record)}
        if record.applied_hash is not None:
            state["count"] = len(record.outputs.public_addresses)  # what is there, for the planner to order by
        made = record.applied_hash is not None or space.mode is ApplyMode.observe
        return Observation(state=state, healthy=made and not running and not failed, detail=detail, outputs=outputs)

    def _converged(self, space: Workspace, record: InfrastructureStatus) -> bool:
        if space.mode is not ApplyMode.observe:
            return record.applied_hash == space.config_hash
        plan = record.plan
        return (
            plan is not None and plan.config_hash == space.config_hash and _no_changes(record)
            and not self._stale(record)
        )  # fmt: skip

    def _stale(self, record: InfrastructureStatus) -> bool:
        plan = record.plan
        return plan is None or (_now() - plan.planned_at).total_seconds() > self._settings.plan_interval

    # -- apply

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        space = await self._workspace(ctx)
        record = self._record(ctx)
        run = self._runner.find(space.directory)
        if run is not None and run.alive():
            raise _still_running(run)
        if run is not None:
            record = await self._harvest(ctx, space, run, record)
        step = self._next_step(space, record)
        if step is not None:
            await self._carry_out(ctx, space, record, step)

    async def _carry_out(
        self, ctx: DriverContext, space: Workspace, record: InfrastructureStatus, step: TerraformHosts._Step
    ) -> None:
        """Start the run (once the workspace is ready and no stale lock stands in the way) and see it end,
        or say that it is still running."""
        await self._prepare(space)
        await self._release_stale_lock(ctx, space)
        run = await self._runner.start(space.directory, step.operation, step.argv, space.env, space.config_hash,
                                       step.plan_id)  # fmt: skip
        if not await self._runner.wait(run, self._settings.wait):
            raise _still_running(run)
        record = await self._harvest(ctx, space, run, record)
        self._raise_unless_done(space, record)

    @dataclass(frozen=True)
    class _Step:
        operation: str
        argv: list[str]
        plan_id: str | None = None

    def _next_step(self, space: Workspace, record: InfrastructureStatus) -> TerraformHosts._Step | None:
        """What to run now for this mode, or None (raising when a person must act)."""
        argv = self._runner.argv
        where = space.directory
        if space.mode is ApplyMode.auto:
            if record.applied_hash == space.config_hash:
                return None
            return self._Step("apply", argv(where, "apply", input=False, auto_approve=IsFlagged, json=IsFlagged))
        plan = record.plan
        current = plan is not None and plan.config_hash == space.config_hash and not self._stale(record)
        if space.mode is ApplyMode.observe:
            if current:
                self._raise_unless_done(space, record)
                return None
            return self._Step("plan", argv(where, "plan", input=False, json=IsFlagged, out=PLAN_FILE))
        if record.applied_hash == space.config_hash:
            return None
        if plan is None or plan.config_hash != space.config_hash or not (where / PLAN_FILE).is_file():
            return self._Step("plan", argv(where, "plan", input=False, json=IsFlagged, out=PLAN_FILE))
        if space.servers.approved_plan != plan.id:
            raise _awaiting_approval(record)
        return self._Step("apply", argv(where, "apply", PLAN_FILE, input=False, json=IsFlagged), plan.id)

    def _raise_unless_done(self, space: Workspace, record: InfrastructureStatus) -> None:
        last = record.last_run
        if last is not None and last.result == "Failed":
            raise RetryableError(f"terraform {last.operation} failed: {last.message}", reason="TerraformFailed",
                                 delay=60)  # fmt: skip
        if space.mode is ApplyMode.observe and record.plan is not None and not _no_changes(record):
            raise RetryableError(f"the cloud differs from the spec ({_changes(record)}); apply observe changes "
                                 "nothing", reason="DriftDetected", delay=self._settings.plan_interval)  # fmt: skip
        if space.mode is ApplyMode.approve and record.applied_hash != space.config_hash:
            raise _awaiting_approval(record)

    async def _prepare(self, space: Workspace) -> None:
        """Files in place and ``terraform init`` done for them (again only when they changed)."""
        space.write()
        mark = space.directory / INIT_MARK
        if mark.is_file() and mark.read_text() == space.config_hash:
            return
        done = await self._runner.init(space.directory, space.env)
        if done.code != 0:
            raise RetryableError(f"terraform init failed: {_tail(space.redact(done.stderr))}", reason="TerraformFailed",
                                 delay=60)  # fmt: skip
        mark.write_text(space.config_hash)

    # -- results

    async def _harvest(self, ctx: DriverContext, space: Workspace, run: Run, record: InfrastructureStatus
                       ) -> InfrastructureStatus:  # fmt: skip
        """Read what an ended run did into the record; then the run's files can go."""
        code = run.exit_code
        started = datetime.fromtimestamp(run.started, UTC)
        finished = _run(run.operation, "Succeeded", started)
        if code != 0:
            why = tf.diagnostics(run.lines()) or _tail(run.stderr()) or "no output"
            if code is None:
                why = f"Terraform was killed before it finished ({why})"
            if run.plan_id is not None:
                # A saved plan that failed (stale: the state moved on) is made again, never retried as is.
                (space.directory / PLAN_FILE).unlink(missing_ok=True)
            record = record.model_copy(
                update={"last_run": _run(run.operation, "Failed", started, space.redact(why, cut=True))}
            )
        elif run.operation == "plan":
            record = await self._planned(space, run, record, finished)
        elif run.operation == "apply":
            record = await self._applied(space, run, record, finished)
        else:  # destroy
            record = InfrastructureStatus(last_run=finished)
        self._records[_id(ctx.key)] = record
        self._runner.forget(run)
        log.info("terraform ended", operation=run.operation, workspace=space.directory.name, code=code)
        return record

    async def _planned(self, space: Workspace, run: Run, record: InfrastructureStatus, finished: TerraformRun
                       ) -> InfrastructureStatus:  # fmt: skip
        shown = await self._show(space)
        summary = tf.summarize_plan(shown, run.config_hash, _now())
        update: dict[str, Any] = {"plan": summary, "last_run": finished}
        if space.mode is ApplyMode.approve and not summary.resources:
            # Nothing to approve: the config is what is there.
            update |= {"applied_hash": run.config_hash, "applied_at": _now(), "outputs": await self._outputs(space)}
        return record.model_copy(update=update)

    async def _applied(self, space: Workspace, run: Run, record: InfrastructureStatus, finished: TerraformRun
                       ) -> InfrastructureStatus:  # fmt: skip
        outputs = await self._outputs(space)
        return record.model_copy(update={"applied_hash": run.config_hash, "applied_at": _now(), "outputs": outputs,
                                         "plan": None, "last_run": finished})  # fmt: skip

    async def _show(self, space: Workspace) -> dict[str, Any]:
        done = await self._runner.run(space.directory, self._runner.argv(space.directory, "show", PLAN_FILE,
                                                                        json=IsFlagged), space.env)  # fmt: skip
        if done.code != 0:
            raise RetryableError(f"terraform show failed: {_tail(space.redact(done.stderr))}", reason="TerraformFailed")
        shown: dict[str, Any] = json.loads(done.stdout)
        return shown

    async def _outputs(self, space: Workspace) -> InfrastructureOutputs:
        argv = self._runner.argv(space.directory, "output", json=IsFlagged)
        done = await self._runner.run(space.directory, argv, space.env)
        if done.code != 0:
            raise RetryableError(f"terraform output failed: {_tail(space.redact(done.stderr))}",
                                 reason="TerraformFailed")  # fmt: skip
        return tf.read_outputs(json.loads(done.stdout or "{}"))

    # -- locks

    async def _release_stale_lock(self, ctx: DriverContext, space: Workspace) -> None:
        """A lock with no live run of ours behind it: released if its holder is gone, else waited for.

        The workspace must be initialised (``force-unlock`` goes through its backend)."""
        suffix = tf.state_suffix(ctx.key)
        lease = await self._kube.request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{self._settings.state_namespace}/leases/"
            f"lock-tfstate-default-{suffix}",
        )  # fmt: skip
        lock = tf.lock_info(lease)
        if lock is None:
            return
        if not self._holder_gone(lock):
            raise RetryableError(f"the state is locked by {lock.who} for {lock.operation} since {lock.created}; "
                                 "waiting for that run", reason="TerraformLocked", delay=15)  # fmt: skip
        argv = self._runner.argv(space.directory, "force-unlock", lock.id, force=IsFlagged)
        done = await self._runner.run(space.directory, argv, space.env)
        if done.code != 0:
            why = _tail(space.redact(done.stderr))
            raise RetryableError(f"could not release the stale state lock {lock.id}: {why}", reason="TerraformLocked",
                                 delay=30)  # fmt: skip
        message = (f"released the state lock {lock.id} left by {lock.who} ({lock.operation} since {lock.created}): "
                   "its run is gone")  # fmt: skip
        log.warning("terraform lock released", workspace=space.directory.name, lock=lock.id, who=lock.who)
        ctx.notify("TerraformLockReleased", message)

    def _holder_gone(self, lock: tf.LockInfo) -> bool:
        """Taken by a run of this machine, none of which is alive now; or older than any run may take.

        Terraform signs a lock ``user@hostname``; this operator's runs of a workspace are the only
        ones here, and the caller has found none alive. A lock from elsewhere (a replaced pod, a
        person) is trusted until the longest a run may take has passed.
        """
        if lock.who == _who():
            return True
        try:
            created = datetime.fromisoformat(lock.created.replace("Z", "+00:00"))
        except ValueError:
            return False
        return (_now() - created).total_seconds() > self._settings.run_timeout + LOCK_ANNOTATION_GRACE

    # -- delete

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        """Retain: stop managing (the hosts and their state Secret stay). Delete: destroy, then drop the state."""
        directory = self._settings.work_root / tf.state_suffix(ctx.key)
        run = self._runner.find(directory)
        if run is not None and run.alive():
            raise _still_running(run)  # what it is making is part of what is kept or destroyed
        if not retain:
            await self._destroy(ctx)
        shutil.rmtree(directory, ignore_errors=True)
        self._records.pop(_id(ctx.key), None)

    async def _destroy(self, ctx: DriverContext) -> None:
        space = await self._workspace(ctx)  # the provider's credentials are needed to destroy
        record = self._record(ctx)
        run = self._runner.find(space.directory)
        if run is not None:
            record = await self._harvest(ctx, space, run, record)
        if not _destroyed(record):
            argv = self._runner.argv(space.directory, "apply", input=False, destroy=IsFlagged,
                                     auto_approve=IsFlagged, json=IsFlagged)  # fmt: skip
            await self._carry_out(ctx, space, record, self._Step("destroy", argv))
        await self._drop_state(ctx.key)

    async def _drop_state(self, key: ProjectKey) -> None:
        namespace, suffix = self._settings.state_namespace, tf.state_suffix(key)
        await self._kube.request("DELETE", f"/api/v1/namespaces/{namespace}/secrets/tfstate-default-{suffix}")
        await self._kube.request(
            "DELETE", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/lock-tfstate-default-{suffix}"
        )

    # -- inputs

    def _record(self, ctx: DriverContext) -> InfrastructureStatus:
        return self._records.get(_id(ctx.key)) or ctx.recorded or InfrastructureStatus()

    async def _workspace(self, ctx: DriverContext) -> Workspace:
        servers = _servers(ctx)
        try:
            tf.check_servers(servers)  # before any Secret is read: the spec alone is wrong
        except tf.InputError as exc:
            raise PermanentError(str(exc), reason=exc.reason) from None
        credentials = await self._credentials(ctx, servers)
        login = await self._login(ctx, servers)
        inputs = tf.module_inputs(ctx.key, servers, ctx.allocations.port, _public_key(login))
        directory = self._settings.work_root / tf.state_suffix(ctx.key)
        backend = tf.backend_settings(self._settings.state_namespace, tf.state_suffix(ctx.key),
                                      self._settings.kubeconfig)  # fmt: skip
        root = json.dumps(tf.root_module(inputs, backend), indent=2, sort_keys=True).encode()
        files = {"main.tf.json": root, tf.INPUT_VALUES_FILE: tf.input_values(inputs), **self._module_files()}
        secrets = frozenset(v for v in credentials.values() if len(v) >= 6)
        return Workspace(directory, files, tf.config_hash(files), self._runner.environment(credentials), secrets,
                         servers.apply, servers, login)  # fmt: skip

    def _module_files(self) -> dict[str, bytes]:
        if self._module is None:
            module = self._settings.modules / self.provider.value
            self._module = {f"{MODULE_DIR}/{path.name}": path.read_bytes() for path in sorted(module.iterdir())
                            if path.name.endswith((".tf", ".tf.json"))}  # fmt: skip
        return self._module

    async def _login(self, ctx: DriverContext, servers: Servers) -> Login:
        if servers.ssh is None:
            raise PermanentError("spec.servers.ssh: name the Secret with the key the hosts get", reason="SSHKeyMissing")
        return await login_for(self._read_secret, ctx.key, servers.ssh)

    async def _credentials(self, ctx: DriverContext, servers: Servers) -> dict[str, str]:
        name = servers.credentials_secret_ref or ""
        data = await self._read_secret(ctx.key.namespace, name, ctx.key.name) if name else None
        wanted = CREDENTIALS[self.provider]
        missing = [key for key in wanted if not (data or {}).get(key)]
        if data is None or missing:
            what = "does not exist" if data is None else f"has no {', '.join(missing)}"
            raise RetryableError(f"Secret {ctx.key.namespace}/{name} (spec.servers.credentialsSecretRef) {what}",
                                 reason="CredentialsMissing", delay=30)  # fmt: skip
        return {variable: data[key] for key, variable in wanted.items()}


# The credentials Secret's keys, and the provider's environment variable for each.
CREDENTIALS: dict[Provider, dict[str, str]] = {
    Provider.vultr: {"apiKey": "VULTR_API_KEY"},
    Provider.lightsail: {"accessKeyId": "AWS_ACCESS_KEY_ID", "secretAccessKey": "AWS_SECRET_ACCESS_KEY"},
}


def _servers(ctx: DriverContext) -> Servers:
    if ctx.servers is None:
        raise RetryableError("the stored spec does not validate, so its servers are unknown; fix the spec",
                             reason="SpecInvalid", delay=60)  # fmt: skip
    return ctx.servers


def _public_key(login: Login) -> str:
    """What cloud-init puts in the hosts' authorized_keys, derived from the key the operator logs in with."""
    try:
        key = asyncssh.import_private_key(login.private_key)
    except (asyncssh.KeyImportError, ValueError):
        why = "privateKey is not an OpenSSH private key without passphrase"
        raise RetryableError(f"{login.key_source} (spec.servers.ssh.secretRef): {why}", reason="SSHKeyInvalid",
                             delay=30) from None  # fmt: skip
    # Type and key only: a comment is the key file author's text, and nothing of theirs goes to the hosts.
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def _id(key: ProjectKey) -> tuple[str, str]:
    return key.namespace, key.name


def _now() -> datetime:
    return datetime.now(UTC)


def _tail(text: str) -> str:
    return " ".join(text.split())[-600:]


def _run(operation: str, result: str, started: datetime, message: str = "") -> TerraformRun:
    finished = None if result == "Running" else _now()
    return TerraformRun(operation=operation, result=result, started_at=started, finished_at=finished,
                        message=message[:4000])  # fmt: skip


def _running(run: Run) -> TerraformRun:
    return _run(run.operation, "Running", datetime.fromtimestamp(run.started, UTC))


def _run_detail(last: TerraformRun | None) -> str | None:
    if last is None or last.result == "Succeeded":
        return None
    if last.result == "Running":
        return f"terraform {last.operation} running since {last.started_at:%H:%M:%S}"
    return f"terraform {last.operation} failed: {last.message}"


def _still_running(run: Run) -> RetryableError:
    since = datetime.fromtimestamp(run.started, UTC)
    return RetryableError(f"terraform {run.operation} running since {since:%H:%M:%S}", reason="TerraformRunning",
                          delay=10)  # fmt: skip


def _destroyed(record: InfrastructureStatus) -> bool:
    last = record.last_run
    return last is not None and last.operation == "destroy" and last.result == "Succeeded"


def _who() -> str:
    """What Terraform signs its locks with (``user@hostname``)."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _no_changes(record: InfrastructureStatus) -> bool:
    return record.plan is not None and not record.plan.resources


def _changes(record: InfrastructureStatus) -> str:
    plan = record.plan
    assert plan is not None
    by_resource = ", ".join(f"{c.action} {c.address}" for c in plan.resources[:10])
    return f"plan {plan.id}: {plan.add} to add, {plan.change} to change, {plan.destroy} to destroy: {by_resource}"


def _awaiting_approval(record: InfrastructureStatus) -> RetryableError:
    assert record.plan is not None
    return RetryableError(f"{_changes(record)}; set spec.servers.approvedPlan to {record.plan.id} to apply it",
                          reason="AwaitingApproval", delay=60)  # fmt: skip
