"""The status after a pass, pure: one condition per component, then Synced, Ready, Serving and the phase."""

from __future__ import annotations

from collections.abc import Mapping

from controller.errors import PermanentError
from controller.loop import naming
from controller.loop.passes import Pass, ProjectInput
from controller.loop.planner import (
    Component,
    Observation,
    Plan,
    State,
)
from controller.loop.rollouts.engine import Decided, Rollout, in_progress
from controller.loop.status import set_condition
from schemas.project import (
    Allocations,
    BackupSummary,
    Condition,
    ConditionStatus,
    Endpoints,
    HostReport,
    InfrastructureStatus,
    Phase,
    ProjectSpec,
    ProjectStatus,
)


def summarize(
    project: ProjectInput,
    allocations: Allocations,
    desired: Mapping[Component, State],
    steps: Plan,
    work: Pass,
    acting: bool,
) -> ProjectStatus:
    """The status after a pass, pure: one condition per component, then Synced, Ready and phase."""
    gen = project.generation
    status = project.status.model_copy(deep=True)
    status.observed_generation = gen
    status.allocations = allocations
    kept = ("Ready", "Synced", "Reconciling", "Stalled", *(("Serving",) if work.decided is not None else ()))
    conditions = [c for c in status.conditions if c.type in kept or _is_wanted(c.type, desired)]
    component_ok: dict[Component, bool] = {}
    for component, want in desired.items():
        seen = work.observed.get(component, Observation())
        ok, reason, message = _component_condition(component, want, seen, work, steps)
        component_ok[component] = ok
        conditions = set_condition(conditions, component.condition, ok, reason, message, gen)
    errors = [f"{c.value}: {e.message}" for c, e in work.failed.items()]
    status.last_error = "; ".join(errors) or None
    if not acting:
        reason = "Paused" if project.paused else "ObserveOnly"
        drift = ", ".join(f"{a.component.value} {a.verb.value}" for a in steps.actions)
        message = f"not acting ({reason}); drift: {drift}" if drift else f"not acting ({reason}); no drift"
        conditions = set_condition(conditions, "Synced", not steps.actions, reason, message, gen)
    elif errors:
        conditions = set_condition(conditions, "Synced", False, "ReconcileError", status.last_error or "", gen)
    elif work.waiting or steps.progressing:
        waiting = "; ".join(f"{c.value}: {m}" for c, m in {**steps.blocked, **work.waiting}.items())
        conditions = set_condition(conditions, "Synced", False, "Progressing", waiting, gen)
    elif work.rollout is not None and in_progress(work.rollout.decision):
        conditions = set_condition(conditions, "Synced", False, "Progressing", work.rollout.describe(), gen)
    elif steps.unsupported:
        conditions = set_condition(conditions, "Synced", False, "NotImplemented", _unsupported(steps), gen)
    else:
        conditions = set_condition(conditions, "Synced", True, "Converged", "all components match the spec", gen)
    readiness = _suspended(_readiness(component_ok, steps, work.decided, work.build_failed), project.spec)
    conditions = set_condition(conditions, "Ready", *readiness, gen)
    if work.rollout is not None:
        conditions = set_condition(conditions, "Serving", *work.rollout.serving_condition(), gen)
        if acting:
            decision = work.rollout.decision
            status.rollout, status.serving, status.deployments = decision.rollout, decision.serving, decision.history
    status.conditions = conditions
    status.endpoints = _endpoints(project.spec, work.observed, component_ok)
    status.hosts = _hosts(work.observed, status.hosts)
    status.infrastructure = _infrastructure(work.observed, status.infrastructure)
    status.backup = _backup(work.observed, status.backup, Component.backup in desired)
    status.phase = _phase(project, component_ok, work)
    if readiness[1] == SUSPENDED:
        status.phase = Phase.Suspended
    stalled = _stalled(status, work, steps, readiness, acting)
    status.conditions = kstatus_conditions(status.conditions, stalled, gen)
    return status


# Why a Project will not get Ready by waiting: only a change (to the spec, the operator, or outside) helps.
STALLED_READY_REASONS = frozenset({"NotImplemented", "RolloutFailed", "BuildFailed", "SourceNotBuildable"})


def _stalled(status: ProjectStatus, work: Pass, steps: Plan, readiness: tuple[bool, str, str],
             acting: bool) -> tuple[str, str] | None:  # fmt: skip
    """(reason, message) when waiting will not converge the Project; None while it may (or it has)."""
    ready, reason, message = readiness
    synced = next(c for c in status.conditions if c.type == "Synced")
    if not acting and synced.status is not ConditionStatus.true:
        return synced.reason, synced.message  # paused or observe-only with drift: nothing is done about it
    if ready:
        return None
    permanent = next((e for e in work.failed.values() if isinstance(e, PermanentError)), None)
    if permanent is not None:
        return permanent.reason, status.last_error or permanent.message
    refused = next(iter(steps.refused.values()), None)  # a name another Project holds, a quota: not by waiting
    if refused is not None:
        return refused
    if reason in STALLED_READY_REASONS:
        return reason, message
    return None


def kstatus_conditions(conditions: list[Condition], stalled: tuple[str, str] | None, gen: int | None
                       ) -> list[Condition]:  # fmt: skip
    """kstatus' abnormal-true conditions, present only while true: ``Stalled`` while waiting will not help,
    else ``Reconciling`` while the Project is not Ready or not yet Synced (a new revision rolling out while
    the old one serves, Ready all along). Tools such as Flux's ``wait`` read these: ``Ready`` alone would
    look reconciled the moment it first appears, and before a new revision serves."""
    if stalled is not None:
        return set_condition([c for c in conditions if c.type != "Reconciling"], "Stalled", True, *stalled, gen)
    unstalled = [c for c in conditions if c.type != "Stalled"]
    behind = next((c for t in ("Synced", "Ready") for c in conditions
                   if c.type == t and c.status is not ConditionStatus.true), None)  # fmt: skip
    if behind is not None:
        return set_condition(unstalled, "Reconciling", True, behind.reason, behind.message, gen)
    return [c for c in unstalled if c.type != "Reconciling"]


# Ready's reason while spec.suspended holds and the Project is as suspended as asked. Ready stays True: the
# world is as the spec asks (nothing runs, the maintenance page is served), and a Ready=False would read as
# in progress forever to kstatus, so a GitOps commit that suspends a Project would never finish syncing.
# The phase (Suspended) and Argo CD's health (Suspended) say it does not serve.
SUSPENDED = "Suspended"
SUSPENDED_MESSAGE = ("suspended as asked (spec.suspended): nothing runs and its domains answer a maintenance page; "
                     "its data, ports and names are kept (`codeb start` starts it again)")  # fmt: skip


def _suspended(readiness: tuple[bool, str, str], spec: ProjectSpec) -> tuple[bool, str, str]:
    if not spec.suspended or not readiness[0]:
        return readiness
    return True, SUSPENDED, SUSPENDED_MESSAGE


def _unsupported(steps: Plan) -> str:
    return "; ".join(f"{c.value}: {m}" for c, m in steps.unsupported.items())


def _readiness(
    component_ok: Mapping[Component, bool],
    steps: Plan,
    decided: Decided | None = None,
    build_failed: tuple[str, str] | None = None,
) -> tuple[bool, str, str]:
    not_ready = [c for c, ok in component_ok.items() if not ok]
    if build_failed is not None:  # what the spec asks for did not build (the last good build serves, if any)
        reason, failed_message = build_failed
        return False, reason, failed_message + (f"; not ready: {', '.join(c.value for c in not_ready)}"
                                                if not_ready else "")  # fmt: skip
    if not not_ready:
        return True, "AllComponentsReady", "all components ready"
    message = "not ready: " + ", ".join(c.value for c in not_ready)
    failed = decided.held_back if decided is not None else None
    if failed is not None and not_ready == [Component.workload]:
        # The old colour may well serve: what is not ready is the revision the spec asks for.
        return False, "RolloutFailed", f"{message}; {failed.message}"
    if all(c in steps.unsupported or c in steps.parked for c in not_ready):
        missing = ", ".join(c.value for c in steps.unsupported)
        return False, "NotImplemented", f"{message}; no driver yet for {missing} (see their conditions)"
    return False, "ComponentsNotReady", message


def _is_wanted(condition_type: str, desired: Mapping[Component, State]) -> bool:
    return any(component.condition == condition_type for component in desired)


def _component_condition(
    component: Component, want: State, seen: Observation, work: Pass, steps: Plan
) -> tuple[bool, str, str]:
    if component in steps.refused:
        return (False, *steps.refused[component])
    if seen.unsupported is not None:
        return False, "NotImplemented", seen.unsupported
    if component in work.failed:
        exc = work.failed[component]
        return False, exc.reason, exc.message
    if seen.error is not None:
        return False, seen.error_reason or "ObserveFailed", seen.error
    if component in steps.blocked or component in work.waiting:
        return False, "Waiting", steps.blocked.get(component) or work.waiting[component]
    verdict = _rollout_verdict(component, work.rollout, seen)
    if verdict is not None:
        return verdict
    if seen.state is None:
        return False, "Missing", f"{component.value} does not exist"
    if dict(seen.state) != dict(want):
        return False, "Drifted", f"{component.value} differs from the spec"
    if not seen.healthy:
        return False, seen.reason or "Unhealthy", seen.detail or f"{component.value} is not healthy"
    return True, "Ready", f"{component.value} matches the spec"


def _rollout_verdict(component: Component, rollout: Rollout | None, seen: Observation) -> tuple[bool, str, str] | None:
    """The workload's condition while a rollout decides it (the engine knows what ready means then)."""
    if component is not Component.workload or rollout is None:
        return None
    return rollout.workload_condition(seen)


def _endpoints(
    spec: ProjectSpec, observed: Mapping[Component, Observation], component_ok: Mapping[Component, bool]
) -> Endpoints:
    """Only what was observed serving: a URL whose route is not ready would be a promise, not a fact."""
    if not component_ok.get(Component.route):
        return Endpoints()
    route = observed[Component.route].state or {}
    return Endpoints(url=naming.primary_url(spec), internal=list(route.get("upstreams", [])))


def _hosts(observed: Mapping[Component, Observation], before: list[HostReport]) -> list[HostReport]:
    """The hosts as the infrastructure last reported them (kept while it could not look)."""
    seen = observed.get(Component.infrastructure)
    if seen is None or seen.error is not None or seen.unsupported is not None:
        return before
    return [HostReport.model_validate(host) for host in seen.outputs.get("report", [])]


def _infrastructure(
    observed: Mapping[Component, Observation], before: InfrastructureStatus | None
) -> InfrastructureStatus | None:
    """What Terraform applied, planned and ran, as the infrastructure driver last recorded it."""
    seen = observed.get(Component.infrastructure)
    record = seen.outputs.get("terraform") if seen is not None else None
    return InfrastructureStatus.model_validate(record) if record is not None else before


def _backup(observed: Mapping[Component, Observation], before: BackupSummary | None,
            wanted: bool) -> BackupSummary | None:  # fmt: skip
    """The backup block as its driver last saw the records (kept while it could not look; gone with backups)."""
    if not wanted:
        return None
    seen = observed.get(Component.backup)
    summary = seen.outputs.get("summary") if seen is not None else None
    return BackupSummary.model_validate(summary) if summary is not None else before


def _phase(project: ProjectInput, component_ok: Mapping[Component, bool], work: Pass) -> Phase:
    if any(isinstance(e, PermanentError) for e in work.failed.values()):
        return Phase.Failed
    if all(component_ok.values()) and work.build_failed is None:
        return Phase.Ready
    if project.status.phase in (Phase.Ready, Phase.Degraded):
        return Phase.Degraded
    data = (Component.infrastructure, Component.database, Component.cache, Component.storage)
    if all(ok for c, ok in component_ok.items() if c in data):
        return Phase.Deploying
    return Phase.Provisioning
