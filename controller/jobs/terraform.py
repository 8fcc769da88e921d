"""Terraform runs outside the reconcile pass: started detached, recorded in their workspace, found again.

Every Terraform process the operator starts goes through `TerraformRunner`: its arguments,
environment and limits. A run writes ``run.json`` (pid, start ticks, boot id) before it
starts and its exit code when it ends, so an operator that restarts finds it still going
(`Run.alive`) and waits for it rather than starting another, and a Terraform that outlives
a killed operator still finishes its apply and writes its state. The driver that decides
which run to start is `controller.drivers.terraform`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from python_terraform import IsFlagged, Terraform

from controller.errors import RetryableError
from controller.specs import terraform as tf

log = structlog.get_logger("codeb.terraform")

RUN_DIR = "run"
MODULE_DIR = "module"


PLAN_FILE = "plan.bin"


INIT_MARK = ".terraform/codeb-init"


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
                    raise RetryableError(f"terraform providers mirror failed: {tail_of(done.stderr)}",
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


def tail_of(text: str) -> str:
    """The end of a Terraform message, on one line: enough to say why, short enough for a condition."""
    return " ".join(text.split())[-600:]
