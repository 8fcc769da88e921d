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

import json
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncssh
import structlog
from python_terraform import IsFlagged

from controller.clients.kube import KubeClient
from controller.clients.ssh import Login
from controller.drivers.hosts import ExistingHosts, login_for, report
from controller.drivers.workloads import SecretReader
from controller.errors import PermanentError, RetryableError
from controller.jobs.terraform import INIT_MARK, MODULE_DIR, PLAN_FILE, Run, TerraformRunner, tail_of
from controller.jobs.terraform_records import (
    Workspace,
    awaiting_approval,
    changes_of,
    destroyed,
    no_changes,
    run_detail,
    run_record,
    running_record,
    still_running,
    utc_now,
    who_runs,
)
from controller.jobs.terraform_state import StateStore
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, Observation, State, host_count, infrastructure_state
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

LOCK_ANNOTATION_GRACE = 120.0  # seconds past the run timeout before a lock of unknown origin counts as stale


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
        self.module = provider.value  # the directory of its module under the modules root
        self.outputs: tuple[str, ...] = tf.OUTPUTS  # what the root passes on from it
        self._hosts = hosts  # checks the hosts made, over SSH, for the quadlet workload
        self._runner = runner
        self._settings = runner.settings
        self._read_secret = read_secret
        # What runs this process saw end, newer than status until status is written.
        self._records: dict[tuple[str, str], InfrastructureStatus] = {}
        self._module: dict[str, bytes] | None = None  # the provider's module files, read once
        self._state = StateStore(kube, runner.settings.state_namespace)

    # -- observe

    async def observe(self, ctx: DriverContext) -> Observation:
        space = await self._workspace(ctx)
        record = self._record(ctx)
        run = self._runner.find(space.directory)
        if run is not None and not run.alive():
            record = await self._harvest(ctx, space, run, record)
        elif run is not None:
            record = record.model_copy(update={"last_run": running_record(run)})
        seen = self._observation(space, record, running=run is not None and run.alive())
        return await self._with_hosts(ctx, space, record, seen)

    async def _with_hosts(
        self, ctx: DriverContext, space: Workspace, record: InfrastructureStatus, seen: Observation
    ) -> Observation:
        """The hosts made, as the quadlet workload needs them: reachable over SSH, podman's facts.

        Not part of this component's health: hosts still booting are the workload's to wait for.
        """
        addresses = list(record.outputs.public_addresses)
        if self._hosts is None or not addresses or space.servers.runtime is not Runtime.quadlet or not space.login:
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
        detail = run_detail(last)
        if record.applied_hash is None and record.plan is None:
            return Observation(state=None, healthy=not running and not failed, detail=detail, outputs=outputs)
        state = {**infrastructure_state(space.servers), "converged": self._converged(space, record)}
        if record.applied_hash is not None and "count" in state:
            state["count"] = len(record.outputs.public_addresses)  # what is there, for the planner to order by
        made = record.applied_hash is not None or space.mode is ApplyMode.observe
        return Observation(state=state, healthy=made and not running and not failed, detail=detail, outputs=outputs)

    def _converged(self, space: Workspace, record: InfrastructureStatus) -> bool:
        if space.mode is not ApplyMode.observe:
            return record.applied_hash == space.config_hash
        plan = record.plan
        return (
            plan is not None and plan.config_hash == space.config_hash and no_changes(record)
            and not self._stale(record)
        )  # fmt: skip

    def _stale(self, record: InfrastructureStatus) -> bool:
        plan = record.plan
        return plan is None or (utc_now() - plan.planned_at).total_seconds() > self._settings.plan_interval

    # -- apply

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        space = await self._workspace(ctx)
        record = self._record(ctx)
        run = self._runner.find(space.directory)
        if run is not None and run.alive():
            raise still_running(run)
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
            raise still_running(run)
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
            raise awaiting_approval(record)
        return self._Step("apply", argv(where, "apply", PLAN_FILE, input=False, json=IsFlagged), plan.id)

    def _raise_unless_done(self, space: Workspace, record: InfrastructureStatus) -> None:
        last = record.last_run
        if last is not None and last.result == "Failed":
            raise RetryableError(f"terraform {last.operation} failed: {last.message}", reason="TerraformFailed",
                                 delay=60)  # fmt: skip
        if space.mode is ApplyMode.observe and record.plan is not None and not no_changes(record):
            raise RetryableError(f"the cloud differs from the spec ({changes_of(record)}); apply observe changes "
                                 "nothing", reason="DriftDetected", delay=self._settings.plan_interval)  # fmt: skip
        if space.mode is ApplyMode.approve and record.applied_hash != space.config_hash:
            raise awaiting_approval(record)

    async def _prepare(self, space: Workspace) -> None:
        """Files in place and ``terraform init`` done for them (again only when they changed)."""
        space.write()
        mark = space.directory / INIT_MARK
        if mark.is_file() and mark.read_text() == space.config_hash:
            return
        done = await self._runner.init(space.directory, space.env)
        if done.code != 0:
            why = tail_of(space.redact(done.stderr))
            raise RetryableError(f"terraform init failed: {why}", reason="TerraformFailed", delay=60)
        mark.write_text(space.config_hash)

    # -- results

    async def _harvest(self, ctx: DriverContext, space: Workspace, run: Run, record: InfrastructureStatus
                       ) -> InfrastructureStatus:  # fmt: skip
        """Read what an ended run did into the record; then the run's files can go."""
        code = run.exit_code
        started = datetime.fromtimestamp(run.started, UTC)
        finished = run_record(run.operation, "Succeeded", started)
        if code != 0:
            why = tf.diagnostics(run.lines()) or tail_of(run.stderr()) or "no output"
            if code is None:
                why = f"Terraform was killed before it finished ({why})"
            if run.plan_id is not None:
                # A saved plan that failed (stale: the state moved on) is made again, never retried as is.
                (space.directory / PLAN_FILE).unlink(missing_ok=True)
            record = record.model_copy(
                update={"last_run": run_record(run.operation, "Failed", started, space.redact(why, cut=True))}
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
        summary = tf.summarize_plan(shown, run.config_hash, utc_now())
        update: dict[str, Any] = {"plan": summary, "last_run": finished}
        if space.mode is ApplyMode.approve and not summary.resources:
            # Nothing to approve: the config is what is there.
            update |= {"applied_hash": run.config_hash, "applied_at": utc_now(), "outputs": await self._outputs(space)}
        return record.model_copy(update=update)

    async def _applied(self, space: Workspace, run: Run, record: InfrastructureStatus, finished: TerraformRun
                       ) -> InfrastructureStatus:  # fmt: skip
        outputs = await self._outputs(space)
        return record.model_copy(update={"applied_hash": run.config_hash, "applied_at": utc_now(), "outputs": outputs,
                                         "plan": None, "last_run": finished})  # fmt: skip

    async def _show(self, space: Workspace) -> dict[str, Any]:
        done = await self._runner.run(space.directory, self._runner.argv(space.directory, "show", PLAN_FILE,
                                                                        json=IsFlagged), space.env)  # fmt: skip
        if done.code != 0:
            raise RetryableError(
                f"terraform show failed: {tail_of(space.redact(done.stderr))}", reason="TerraformFailed"
            )
        shown: dict[str, Any] = json.loads(done.stdout)
        return shown

    async def _outputs(self, space: Workspace) -> InfrastructureOutputs:
        argv = self._runner.argv(space.directory, "output", json=IsFlagged)
        done = await self._runner.run(space.directory, argv, space.env)
        if done.code != 0:
            raise RetryableError(f"terraform output failed: {tail_of(space.redact(done.stderr))}",
                                 reason="TerraformFailed")  # fmt: skip
        return tf.read_outputs(json.loads(done.stdout or "{}"))

    # -- locks

    async def _release_stale_lock(self, ctx: DriverContext, space: Workspace) -> None:
        """A lock with no live run of ours behind it: released if its holder is gone, else waited for.

        The workspace must be initialised (``force-unlock`` goes through its backend)."""
        lock = await self._state.lock(ctx.key)
        if lock is None:
            return
        if not self._holder_gone(lock):
            raise RetryableError(f"the state is locked by {lock.who} for {lock.operation} since {lock.created}; "
                                 "waiting for that run", reason="TerraformLocked", delay=15)  # fmt: skip
        argv = self._runner.argv(space.directory, "force-unlock", lock.id, force=IsFlagged)
        done = await self._runner.run(space.directory, argv, space.env)
        if done.code != 0:
            why = tail_of(space.redact(done.stderr))
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
        if lock.who == who_runs():
            return True
        try:
            created = datetime.fromisoformat(lock.created.replace("Z", "+00:00"))
        except ValueError:
            return False
        return (utc_now() - created).total_seconds() > self._settings.run_timeout + LOCK_ANNOTATION_GRACE

    # -- delete

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        """Retain: stop managing (the hosts and their state Secret stay). Delete: destroy, then drop the state."""
        directory = self._settings.work_root / tf.state_suffix(ctx.key)
        run = self._runner.find(directory)
        if run is not None and run.alive():
            raise still_running(run)  # what it is making is part of what is kept or destroyed
        if not retain:
            await self._destroy(ctx)
        shutil.rmtree(directory, ignore_errors=True)
        self._records.pop(_id(ctx.key), None)
        self._state.forget(ctx.key)

    async def _destroy(self, ctx: DriverContext) -> None:
        space = await self._workspace(ctx)  # the provider's credentials are needed to destroy
        record = self._record(ctx)
        run = self._runner.find(space.directory)
        if run is not None:
            record = await self._harvest(ctx, space, run, record)
        if not destroyed(record):
            argv = self._runner.argv(space.directory, "apply", input=False, destroy=IsFlagged,
                                     auto_approve=IsFlagged, json=IsFlagged)  # fmt: skip
            await self._carry_out(ctx, space, record, self._Step("destroy", argv))
        await self._state.drop(ctx.key)

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
        name = await self._state.resource_name(ctx.key)
        login, inputs = await self._inputs(ctx, servers, name)
        directory = self._settings.work_root / tf.state_suffix(ctx.key)
        backend = tf.backend_settings(self._settings.state_namespace, tf.state_suffix(ctx.key),
                                      self._settings.kubeconfig)  # fmt: skip
        root = json.dumps(tf.root_module(inputs, backend, outputs=self.outputs), indent=2, sort_keys=True).encode()
        files = {"main.tf.json": root, tf.INPUT_VALUES_FILE: tf.input_values(inputs), **self._module_files()}
        secrets = frozenset(v for v in credentials.values() if len(v) >= 6)
        return Workspace(directory, files, tf.config_hash(files), self._runner.environment(credentials), secrets,
                         servers.apply, servers, login)  # fmt: skip

    async def _inputs(self, ctx: DriverContext, servers: Servers, name: str) -> tuple[Login | None, dict[str, Any]]:
        """The module's variables, and the operator's login its hosts get."""
        login = await self._login(ctx, servers)
        return login, tf.module_inputs(ctx.key, servers, ctx.allocations.port, _public_key(login), name)

    def _module_files(self) -> dict[str, bytes]:
        if self._module is None:
            module = self._settings.modules / self.module
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
