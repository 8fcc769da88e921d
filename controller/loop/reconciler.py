"""One level-based reconcile for every trigger: read the world, converge, report.

`Reconciler.reconcile` never trusts the event that woke it: it claims allocations,
observes every component, asks the planner what to do, does it through the
drivers (unless paused or observe-only), and returns an `Outcome`: the status
to write, the Events to post, and whether to retry. The kopf layer maps the
Outcome to kopf; this module knows nothing of kopf.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import structlog

from controller.errors import CodebError, PermanentError, RetryableError
from controller.loop import naming
from controller.loop.interface import Admission, Claims, Driver, DriverContext, Drivers, HookRunner, Notify, Placement
from controller.loop.naming import ProjectKey
from controller.loop.planner import (
    DEPENDS_ON,
    Action,
    Component,
    Observation,
    Plan,
    State,
    Verb,
    desired_state,
    plan,
    plan_deletion,
)
from controller.loop.rollouts import bluegreen, rolling
from controller.loop.status import set_condition
from schemas.project import (
    Allocations,
    BackupTarget,
    Condition,
    DeletionPolicy,
    Endpoints,
    HookRun,
    HostReport,
    InfrastructureStatus,
    ManagementPolicy,
    Phase,
    ProjectSpec,
    ProjectStatus,
    RolloutStatus,
    RolloutStep,
    Runtime,
)

log = structlog.get_logger("codeb.reconcile")

PAUSED_ANNOTATION = "codeb.dev/paused"
# A new value starts the failed rollout of the same release again.
RETRY_ROLLOUT_ANNOTATION = "codeb.dev/retry-rollout"
# How soon to look again while waiting for something that is progressing (e.g. health).
PROGRESS_RECHECK_SECONDS = 5.0
BLOCKED_DELETE_RECHECK_SECONDS = 60.0


@dataclass(frozen=True)
class ProjectInput:
    key: ProjectKey
    generation: int
    spec: ProjectSpec
    status: ProjectStatus
    paused: bool = False
    retry_rollout: str | None = None
    # Hook runs the API server has stored (status as read, not as this process last wrote it):
    # only those may start, so a run always exists in status before it does on a machine.
    recorded_runs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Teardown:
    """What deleting a Project needs.

    From the spec when it validates; otherwise (an upgrade tightened a rule, say) from
    what status recorded and the few spec fields teardown reads, so the data is still
    torn down or released as the policy says, never just forgotten.
    """

    key: ProjectKey
    generation: int
    status: ProjectStatus
    placement: Placement
    allocations: Allocations | None  # None: derive from the spec and the claims held
    retain_data: bool
    final_dump: bool
    spec: ProjectSpec | None = None

    @classmethod
    def of(cls, project: ProjectInput) -> Teardown:
        spec = project.spec
        return cls(project.key, project.generation, project.status, Placement.of(spec, project.key.namespace), None,
                   spec.deletion_policy is DeletionPolicy.Retain, _wants_final_dump(spec), spec)  # fmt: skip


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    status: ProjectStatus
    events: list[Event] = field(default_factory=list)
    retry_after: float | None = None
    permanent_error: str | None = None
    results: list[tuple[Action, str]] = field(default_factory=list)  # (action, "ok" | "error")
    drift: list[Action] = field(default_factory=list)
    # Exactly when to look again for a timed step (the next health check, the end of a drain): no backoff.
    wake_after: float | None = None
    rollout: bluegreen.Decision | rolling.Decision | None = None


@dataclass
class _Pass:
    """Mutable bookkeeping of one reconcile pass."""

    observed: dict[Component, Observation]
    failed: dict[Component, CodebError] = field(default_factory=dict)
    waiting: dict[Component, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    results: list[tuple[Action, str]] = field(default_factory=list)
    # Blue-green: this pass's rollout decision, its facts, and the workload as its driver reported it.
    switching: bluegreen.Decision | None = None
    facts: bluegreen.Facts | None = None
    raw_workload: Observation | None = None
    # Runtime kubernetes: the Deployment's rolling update, as `controller.loop.rollouts.rolling` records it.
    updating: rolling.Decision | None = None
    updating_facts: rolling.Facts | None = None

    def saw(self, component: Component, seen: Observation) -> None:
        """Record an observation. A new look at the workload moves the rollout on (a colour that just
        started may pass its check, so the route can switch in this same pass), and the workload is
        seen through it: healthy and reachable as the serving colour is."""
        if component is Component.workload and self.switching is not None:
            self.raw_workload = seen
            self.advance()
            seen = bluegreen.view(seen, self.switching)
        elif component is Component.workload and self.updating is not None and self.updating_facts is not None:
            self.updating = _follow(self.updating_facts, self.updating, seen)
        self.observed[component] = seen

    @property
    def decided(self) -> bluegreen.Decision | rolling.Decision | None:
        """This pass's rollout decision, whichever runtime's."""
        return self.switching or self.updating

    def advance(self) -> None:
        if self.switching is None or self.facts is None or self.raw_workload is None:
            return
        route = self.observed.get(Component.route)
        facts = bluegreen.refresh(self.facts, self.switching, self.raw_workload, route, datetime.now(UTC))
        self.switching = bluegreen.merge(self.switching, bluegreen.advance(facts))


DriverSource = Callable[[Placement], Awaitable[Drivers]]
# Is a namespace being deleted (`KubeClient.namespace_terminating`)?
NamespaceLeaving = Callable[[str], Awaitable[bool]]
# Refusals that mean a Secret teardown needs is gone (SSH key, cloud credentials, kubeconfig).
SECRET_GONE = frozenset({"SSHKeyMissing", "CredentialsMissing", "KubeconfigMissing", "SecretMissing"})


class Reconciler:
    def __init__(self, drivers: Drivers | DriverSource, claims: Claims,
                 namespace_leaving: NamespaceLeaving | None = None) -> None:  # fmt: skip
        self._drivers_for: DriverSource = drivers if callable(drivers) else _static(drivers)
        self._admission = drivers if isinstance(drivers, Admission) else None
        self.claims = claims
        self._namespace_leaving = namespace_leaving
        # A rollout's start window runs out only while this operator watches it (`bluegreen.Facts`).
        self.watching_since = datetime.now(UTC)

    async def reconcile(self, project: ProjectInput, trigger: str = "event") -> Outcome:
        spec = project.spec
        placement = Placement.of(spec, project.key.namespace)
        try:
            # A namespace its Platform does not allow (refused here), or one past its quota, claims nothing.
            drivers = await self._drivers_for(placement)
            if self._admission is not None:
                await self._admission.admit(placement, project.key)
            recorded = project.status.allocations
            claimed = await self.claims.ensure(project.key, spec, recorded.port, recorded.alternate_port)
        except CodebError as exc:
            return self._failed_before_acting(project, exc)
        allocations = claimed.allocations
        conflict = claimed.domain_conflict
        refused = {Component.route: (conflict.reason, conflict.message)} if conflict else {}
        notices: list[Event] = []
        ctx = DriverContext(project.key, allocations, servers=spec.servers, recorded=project.status.infrastructure,
                            notify=_collect(notices),
                            health_timeout=spec.project.rollout.health_check.timeout_seconds)  # fmt: skip
        work = _Pass(observed=await self._observe(drivers, ctx), events=notices)
        acting = not project.paused and spec.management_policy is ManagementPolicy.Manage

        def desire(observed: Mapping[Component, Observation]) -> dict[Component, State]:
            states = desired_state(spec, allocations, {c: o.outputs for c, o in observed.items()})
            if work.switching is not None:
                states[Component.workload] = bluegreen.desired(work.switching)
            elif work.updating is not None:
                states[Component.workload] = work.updating.target
            return states

        if bluegreen.blue_green(spec):
            await self._decide_rollout(project, allocations, drivers, ctx, work, acting)
        elif spec.servers.runtime is Runtime.kubernetes:
            self._decide_rolling_update(project, allocations, work)
        desired = desire(work.observed)
        steps = plan(desired, work.observed, spec.deletion_policy is DeletionPolicy.Retain, refused)
        if acting:
            await self._execute(drivers, ctx, steps, work, trigger, desire)
            self._record_rollout(work)
            desired = desire(work.observed)
        status = summarize(project, allocations, desired, steps, work, acting)
        return Outcome(
            status=status,
            events=work.events,
            retry_after=_retry_after(work, steps),
            permanent_error=next((e.message for e in work.failed.values() if isinstance(e, PermanentError)), None),
            results=work.results,
            drift=[] if acting else steps.actions,
            wake_after=work.decided.wake_after if work.decided is not None and acting else None,
            rollout=work.decided if acting else None,
        )

    def _decide_rolling_update(self, project: ProjectInput, allocations: Allocations, work: _Pass) -> None:
        """Runtime kubernetes: where the Deployment's rolling update stands, and what it should run."""
        raw = work.observed.get(Component.workload)
        if raw is None or raw.error is not None or raw.unsupported is not None:
            return
        spec, status = project.spec, project.status
        wanted = desired_state(spec, allocations, {c: o.outputs for c, o in work.observed.items()})[Component.workload]
        facts = rolling.facts_for(spec, status, wanted, raw, datetime.now(UTC), project.retry_rollout)
        work.updating_facts, work.updating = facts, rolling.advance(facts)

    async def _decide_rollout(
        self,
        project: ProjectInput,
        allocations: Allocations,
        drivers: Drivers,
        ctx: DriverContext,
        work: _Pass,
        acting: bool,
    ) -> None:
        """Where the rollout stands, from what the colours and the route were seen doing; hooks that are due run."""
        raw = work.observed.get(Component.workload)
        if raw is None or raw.error is not None or raw.unsupported is not None or allocations.alternate_port is None:
            return
        spec = project.spec
        release = desired_state(spec, allocations, {c: o.outputs for c, o in work.observed.items()})[Component.workload]
        facts = bluegreen.facts_for(spec, project.status, allocations, release, raw, work.observed.get(Component.route),
                                  datetime.now(UTC), project.retry_rollout, self.watching_since)  # fmt: skip
        decision = bluegreen.advance(facts)
        runner = drivers[Component.workload]
        if acting and decision.run_hooks and decision.rollout is not None and isinstance(runner, HookRunner):
            record = await self._follow_hook(project, runner, ctx.given(work.observed), facts, decision.rollout,
                                             decision.run_hooks[0], work)  # fmt: skip
            again = replace(facts, rollout=record, serving=decision.serving, history=tuple(decision.history))
            decision = bluegreen.merge(decision, bluegreen.advance(again))
        work.facts, work.switching, work.raw_workload = facts, decision, raw
        work.observed[Component.workload] = bluegreen.view(raw, decision)

    async def _follow_hook(
        self,
        project: ProjectInput,
        runner: HookRunner,
        ctx: DriverContext,
        facts: bluegreen.Facts,
        record: RolloutStatus,
        name: str,
        work: _Pass,
    ) -> RolloutStatus:
        """One step of the due hook: recorded first; started (or looked at) once status holds the record."""
        run = next((h for h in record.hooks if h.name == name), None)
        if run is None:
            run_id = uuid.uuid4().hex[:12]
            return bluegreen.hook_result(record, HookRun(name=name, result="Running", run_id=run_id,
                                                       started_at=facts.now))  # fmt: skip
        if run.run_id not in project.recorded_runs:
            return record  # written by the last pass, not yet seen stored: started next pass
        seen = facts.seen[record.new_colour]
        run = await runner.follow_hook(ctx, seen.state, seen.endpoints, bluegreen.hook_named(project.spec, name), run)
        if run.result != "Running":
            kind, reason = ("Normal", "HookSucceeded") if run.result == "Succeeded" else ("Warning", "HookFailed")
            work.events.append(
                Event(kind, reason, f"{name} on {record.new_colour.value}: {run.message or 'no output'}")
            )
        return bluegreen.hook_result(record, run)

    def _record_rollout(self, work: _Pass) -> None:
        """After acting: what the route and the colours do now moves the rollout on (a switch seen is a switch)."""
        if work.switching is not None and work.raw_workload is not None:
            work.saw(Component.workload, work.raw_workload)
        if work.decided is not None:
            work.events.extend(Event(n.type, n.reason, n.message) for n in work.decided.notices)

    async def finalize(self, teardown: Teardown) -> Outcome:
        """Tear down in reverse order; release claims only when everything is gone."""
        allocations = teardown.allocations
        if allocations is None:
            assert teardown.spec is not None
            recorded = teardown.status.allocations
            ports = (recorded.port, recorded.alternate_port)
            allocations = await self.claims.allocations_for_teardown(teardown.key, teardown.spec, ports)
        notices: list[Event] = []
        ctx = DriverContext(teardown.key, allocations, teardown.final_dump,
                            servers=teardown.spec.servers if teardown.spec else None,
                            recorded=teardown.status.infrastructure, notify=_collect(notices))  # fmt: skip
        drivers = await self._teardown_drivers(teardown, notices)
        work = _Pass(observed=await self._observe(drivers, ctx), events=notices)
        steps = plan_deletion(work.observed, retain_data=teardown.retain_data)
        await self._execute(drivers, ctx, steps, work, "delete")
        status = teardown.status.model_copy(deep=True)
        status.phase = Phase.Deleting
        blocked = {**{c: e.message for c, e in work.failed.items()}, **work.waiting}
        if blocked and await self._left_with_its_namespace(teardown, work):
            message = "; ".join(f"{c.value}: {e.message}" for c, e in work.failed.items())
            released = await self.claims.release_all(teardown.key)
            work.events.append(Event("Warning", "TeardownAbandoned", (
                f"namespace {teardown.key.namespace} is being deleted and took the Secrets teardown needs "
                f"({message}); the Project is released without them, and what they reach is left as it is (hosts "
                "and their units, cloud resources: Terraform's state stays in the operator's namespace for a "
                f"destroy by hand); released {released} claims")))  # fmt: skip
            return Outcome(status, work.events, results=work.results)
        if blocked:
            message = "; ".join(f"{c.value}: {m}" for c, m in blocked.items())
            status.conditions = set_condition(
                status.conditions, "Synced", False, "DeleteBlocked", message, teardown.generation
            )
            # Even a permanent error must keep the finalizer: retry slowly, the condition says why.
            retry = _retry_after(work, steps) or BLOCKED_DELETE_RECHECK_SECONDS
            return Outcome(status, work.events, retry_after=retry, results=work.results)
        released = await self.claims.release_all(teardown.key)
        work.events.append(Event("Normal", "Deleted", f"torn down; released {released} claims"))
        return Outcome(status, work.events, results=work.results)

    async def _left_with_its_namespace(self, teardown: Teardown, work: _Pass) -> bool:
        """Blocked only because Secrets went with a namespace being deleted: waiting would never end (the
        namespace waits for this Project, and the Secrets are not coming back)."""
        reasons = {error.reason for error in work.failed.values()}
        if not reasons or not reasons <= SECRET_GONE or self._namespace_leaving is None:
            return False
        return await self._namespace_leaving(teardown.key.namespace)

    async def _teardown_drivers(self, teardown: Teardown, notices: list[Event]) -> Drivers:
        """The drivers to tear down with; a Platform that does not allow the namespace is not touched at all."""
        try:
            return await self._drivers_for(teardown.placement)
        except PermanentError as exc:
            if exc.reason != "PlatformNotAllowed":
                raise
            notices.append(Event("Warning", exc.reason, f"{exc.message}; nothing on it was deleted"))
            return await self._drivers_for(replace(teardown.placement, platform=None))

    async def _observe(self, drivers: Drivers, ctx: DriverContext) -> dict[Component, Observation]:
        observed: dict[Component, Observation] = {}
        for component, driver in drivers.items():
            try:
                observed[component] = await driver.observe(ctx.given(observed))
            except CodebError as exc:
                observed[component] = Observation(error=exc.message, error_reason=exc.reason)
        return observed

    async def _execute(
        self, drivers: Drivers, ctx: DriverContext, steps: Plan, work: _Pass, trigger: str, desire: Desire = None
    ) -> None:
        for planned in steps.actions:
            component = planned.component
            # What it depends on, and what it must wait for (a shrink waits for the workload), did not fail.
            after = (*DEPENDS_ON[component], *planned.requires_healthy)
            stuck = [d for d in after if d in work.failed or d in work.waiting]
            unhealthy = [d for d in planned.requires_healthy if not _serving(work.observed.get(d))]
            if stuck or unhealthy:
                work.waiting[component] = f"waiting for {', '.join(stuck + unhealthy)}"
                continue
            action = _refreshed(planned, desire, work)
            if action is None:
                continue
            try:
                await self._run(drivers[component], action, ctx.given(work.observed))
                work.saw(component, await drivers[component].observe(ctx.given(work.observed)))
            except CodebError as exc:
                work.failed[component] = exc
                work.results.append((action, "error"))
                await self._look_again(drivers[component], ctx, work, component)
                work.events.append(Event("Warning", f"{action.verb.value.capitalize()}Failed", _describe(action, exc)))
                log.warning("action failed", component=component.value, verb=action.verb.value, error=exc.message)
                continue
            work.results.append((action, "ok"))
            log.debug("action done", component=component.value, verb=action.verb.value, reason=action.reason)
        work.events.extend(_success_events(work.results, trigger))
        if work.results:
            log.info("reconciled", trigger=trigger, actions=[f"{a.component.value} {a.verb.value}" for a, _ in
                     work.results], reasons=[a.reason for a, _ in work.results])  # fmt: skip

    async def _look_again(self, driver: Driver, ctx: DriverContext, work: _Pass, component: Component) -> None:
        """What a failed action left (a plan awaiting approval, a failed run's output) goes to status too."""
        with contextlib.suppress(CodebError):
            work.saw(component, await driver.observe(ctx.given(work.observed)))

    async def _run(self, driver: Driver, action: Action, ctx: DriverContext) -> None:
        if action.verb in (Verb.create, Verb.update):
            assert action.desired is not None
            await driver.apply(ctx, action.desired)
        else:
            await driver.delete(ctx, retain=action.verb is Verb.release)

    def _failed_before_acting(self, project: ProjectInput, exc: CodebError) -> Outcome:
        status = project.status.model_copy(deep=True)
        status.observed_generation = project.generation
        status.last_error = exc.message
        gen = project.generation
        status.conditions = set_condition(status.conditions, "Synced", False, exc.reason, exc.message, gen)
        status.conditions = set_condition(status.conditions, "Ready", False, exc.reason, exc.message, gen)
        event = Event("Warning", exc.reason, exc.message)
        if isinstance(exc, RetryableError):
            return Outcome(status, [event], retry_after=exc.delay)
        status.phase = Phase.Failed
        return Outcome(status, [event], permanent_error=exc.message)


def _follow(facts: rolling.Facts, decided: rolling.Decision, seen: Observation) -> rolling.Decision:
    """The rolling update after a new look at the Deployment (a template just applied starts rolling)."""
    return rolling.merge(decided, rolling.advance(rolling.refresh(facts, decided, seen, datetime.now(UTC))))


# Recomputes desired states from what has been observed so far in this pass.
Desire = Callable[[Mapping[Component, Observation]], Mapping[Component, State]] | None


def _serving(seen: Observation | None) -> bool:
    return seen is not None and seen.state is not None and seen.healthy


def _refreshed(action: Action, desire: Desire, work: _Pass) -> Action | None:
    """The action with its desired state recomputed from outputs observed earlier in this pass.

    A dependent (the route) acts on the endpoints its dependency was just seen serving,
    not on the ones planned before that dependency changed; if that already matches
    what is there, nothing is left to do.
    """
    if desire is None or action.desired is None:
        return action
    want = desire(work.observed).get(action.component)
    if want is None:
        return action
    seen = work.observed.get(action.component)
    if seen is not None and seen.state is not None and dict(seen.state) == dict(want):
        return None
    return replace(action, desired=want)


def _success_events(results: list[tuple[Action, str]], trigger: str) -> list[Event]:
    """One Normal Event per reason per pass, naming every action it covers.

    NOTE: a new Project takes up to seven actions; one Event each would make Events
    the bulk of the operator's API traffic, for what reads better as one line. A first
    converge with no failure posts none at all: its status says the same, and at a
    thousand new Projects the Events would be a third of all writes.
    """
    if trigger == "create" and all(result == "ok" for _, result in results):
        return []
    grouped: dict[str, list[str]] = {}
    for action, result in results:
        if result == "ok":
            reason = "DriftRepaired" if trigger == "timer" else action.verb.value.capitalize() + "d"
            grouped.setdefault(reason, []).append(f"{action.component.value} {action.verb.value}: {action.reason}")
    return [Event("Normal", reason, "; ".join(lines)) for reason, lines in grouped.items()]


def _wants_final_dump(spec: ProjectSpec) -> bool:
    return spec.backup.enabled and BackupTarget.database in spec.backup.include


def _collect(events: list[Event]) -> Notify:
    def notify(reason: str, message: str) -> None:
        events.append(Event("Warning", reason, message))

    return notify


def _static(drivers: Drivers) -> DriverSource:
    async def source(placement: Placement) -> Drivers:
        return drivers

    return source


def _describe(action: Action, exc: CodebError) -> str:
    return f"{action.component.value} {action.verb.value} failed: {exc.message}"


def _retry_after(work: _Pass, steps: Plan) -> float | None:
    delays = [e.delay for e in work.failed.values() if isinstance(e, RetryableError)]
    # Waiting behind a component with no driver changes nothing: the drift timer is enough.
    if work.waiting or steps.progressing:
        delays.append(PROGRESS_RECHECK_SECONDS)
    return min(delays) if delays else None


def summarize(
    project: ProjectInput,
    allocations: Allocations,
    desired: Mapping[Component, State],
    steps: Plan,
    work: _Pass,
    acting: bool,
) -> ProjectStatus:
    """The status after a pass, pure: one condition per component, then Synced, Ready and phase."""
    gen = project.generation
    status = project.status.model_copy(deep=True)
    status.observed_generation = gen
    status.allocations = allocations
    kept = ("Ready", "Synced", "Serving") if work.decided is not None else ("Ready", "Synced")
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
    elif (
        work.decided is not None and work.decided.rollout is not None and work.decided.rollout.step in bluegreen.ACTIVE
    ):
        conditions = set_condition(conditions, "Synced", False, "Progressing", _describe_rollout(work.decided), gen)
    elif steps.unsupported:
        conditions = set_condition(conditions, "Synced", False, "NotImplemented", _unsupported(steps), gen)
    else:
        conditions = set_condition(conditions, "Synced", True, "Converged", "all components match the spec", gen)
    conditions = set_condition(conditions, "Ready", *_readiness(component_ok, steps, work.decided), gen)
    if work.decided is not None:
        conditions = _serving_condition(conditions, work.decided, gen)
        if acting:
            status.rollout, status.serving = work.decided.rollout, work.decided.serving
            status.deployments = work.decided.history
    status.conditions = conditions
    status.endpoints = _endpoints(project.spec, work.observed, component_ok)
    status.hosts = _hosts(work.observed, status.hosts)
    status.infrastructure = _infrastructure(work.observed, status.infrastructure)
    status.phase = _phase(project, component_ok, work)
    return status


def _unsupported(steps: Plan) -> str:
    return "; ".join(f"{c.value}: {m}" for c, m in steps.unsupported.items())


def _readiness(
    component_ok: Mapping[Component, bool],
    steps: Plan,
    decided: bluegreen.Decision | rolling.Decision | None = None,
) -> tuple[bool, str, str]:
    not_ready = [c for c, ok in component_ok.items() if not ok]
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
    component: Component, want: State, seen: Observation, work: _Pass, steps: Plan
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
    if component is Component.workload and work.switching is not None:
        return _rolling_condition(work.switching, seen)
    rolling = _updating_condition(work.updating, seen) if component is Component.workload and work.updating else None
    if rolling is not None:
        return rolling
    if seen.state is None:
        return False, "Missing", f"{component.value} does not exist"
    if dict(seen.state) != dict(want):
        return False, "Drifted", f"{component.value} differs from the spec"
    if not seen.healthy:
        return False, "Unhealthy", seen.detail or f"{component.value} is not healthy"
    return True, "Ready", f"{component.value} matches the spec"


def _rolling_condition(decision: bluegreen.Decision, seen: Observation) -> tuple[bool, str, str]:
    """The workload under blue-green: ready when the serving colour runs the spec's release, healthy."""
    failed = decision.held_back
    if failed is not None:
        reason = next((d.reason for d in decision.history if d.release == failed.release and d.reason), "RolloutFailed")
        return False, reason, failed.message
    if decision.serve is None:
        return False, "Deploying", bluegreen.describe(decision)
    if not seen.healthy:
        return False, "Unhealthy", seen.detail or f"the {decision.serve.value} colour is not healthy"
    record = decision.rollout
    if record is not None and record.step in bluegreen.BEFORE_SWITCH:
        return True, "RollingOut", bluegreen.describe(decision)
    return True, "Ready", bluegreen.describe(decision)


def _updating_condition(decision: rolling.Decision, seen: Observation) -> tuple[bool, str, str] | None:
    """The workload on kubernetes while a release is held back or rolls (ready as long as enough Pods
    serve); None otherwise: then it is judged as any component is."""
    failed = decision.held_back
    if failed is not None:
        return False, "RolloutFailed", failed.message
    record = decision.rollout
    if record is not None and record.step is RolloutStep.checking:
        rolled = rolling.seen_deployment(seen)
        if rolled is not None and rolled.serving and decision.serving is not None:
            return True, "RollingOut", rolling.describe(decision)
        return False, "Deploying", rolling.describe(decision)
    return None


def _describe_rollout(decision: bluegreen.Decision | rolling.Decision) -> str:
    if isinstance(decision, rolling.Decision):
        return rolling.describe(decision)
    return bluegreen.describe(decision)


def _serving_condition(
    conditions: list[Condition], decision: bluegreen.Decision | rolling.Decision, gen: int
) -> list[Condition]:
    """Which colour takes the traffic, by name (reason Blue or Green), and what runs warm beside it;
    on kubernetes, which ReplicaSet (reason ReplicaSet)."""
    if isinstance(decision, rolling.Decision):
        if decision.serving is None:
            return set_condition(conditions, "Serving", False, "NothingServes", rolling.describe(decision), gen)
        return set_condition(conditions, "Serving", True, "ReplicaSet", rolling.describe(decision), gen)
    if decision.serve is None:
        return set_condition(conditions, "Serving", False, "NothingServes", bluegreen.describe(decision), gen)
    return set_condition(
        conditions, "Serving", True, decision.serve.value.capitalize(), bluegreen.describe(decision), gen
    )


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


def _phase(project: ProjectInput, component_ok: Mapping[Component, bool], work: _Pass) -> Phase:
    if any(isinstance(e, PermanentError) for e in work.failed.values()):
        return Phase.Failed
    if all(component_ok.values()):
        return Phase.Ready
    if project.status.phase in (Phase.Ready, Phase.Degraded):
        return Phase.Degraded
    data = (Component.infrastructure, Component.database, Component.cache, Component.storage)
    if all(ok for c, ok in component_ok.items() if c in data):
        return Phase.Deploying
    return Phase.Provisioning
