"""A Project's Terraform workspace, and how its runs are recorded in ``status.infrastructure``.

`Workspace` is the workspace as it should be (files, their hash, the run's environment).
A run is recorded when it starts (``Running``) and when it ends, with the tail of what
Terraform said; `still_running` and `awaiting_approval` are the reasons a reconcile waits.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from controller.clients.ssh import Login
from controller.errors import RetryableError
from controller.jobs.terraform import MODULE_DIR, Run
from controller.loop.secrets import redact
from schemas.project import (
    ApplyMode,
    InfrastructureStatus,
    Servers,
    TerraformRun,
)


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
    login: Login | None = field(repr=False)  # the operator's key: hosts get it, and it logs in to them (no cluster)

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


def utc_now() -> datetime:
    return datetime.now(UTC)


def run_record(operation: str, result: str, started: datetime, message: str = "") -> TerraformRun:
    finished = None if result == "Running" else utc_now()
    return TerraformRun(operation=operation, result=result, started_at=started, finished_at=finished,
                        message=message[:4000])  # fmt: skip


def running_record(run: Run) -> TerraformRun:
    return run_record(run.operation, "Running", datetime.fromtimestamp(run.started, UTC))


def run_detail(last: TerraformRun | None) -> str | None:
    if last is None or last.result == "Succeeded":
        return None
    if last.result == "Running":
        return f"terraform {last.operation} running since {last.started_at:%H:%M:%S}"
    return f"terraform {last.operation} failed: {last.message}"


def still_running(run: Run) -> RetryableError:
    since = datetime.fromtimestamp(run.started, UTC)
    return RetryableError(f"terraform {run.operation} running since {since:%H:%M:%S}", reason="TerraformRunning",
                          delay=10)  # fmt: skip


def destroyed(record: InfrastructureStatus) -> bool:
    last = record.last_run
    return last is not None and last.operation == "destroy" and last.result == "Succeeded"


def who_runs() -> str:
    """What Terraform signs its locks with (``user@hostname``)."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def no_changes(record: InfrastructureStatus) -> bool:
    return record.plan is not None and not record.plan.resources


def changes_of(record: InfrastructureStatus) -> str:
    plan = record.plan
    assert plan is not None
    by_resource = ", ".join(f"{c.action} {c.address}" for c in plan.resources[:10])
    return f"plan {plan.id}: {plan.add} to add, {plan.change} to change, {plan.destroy} to destroy: {by_resource}"


def awaiting_approval(record: InfrastructureStatus) -> RetryableError:
    assert record.plan is not None
    return RetryableError(f"{changes_of(record)}; set spec.servers.approvedPlan to {record.plan.id} to apply it",
                          reason="AwaitingApproval", delay=60)  # fmt: skip
