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
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from controller.errors import CodebError, PermanentError, RetryableError
from controller.loop import autoscaling, builds, naming
from controller.loop.autoscaling import LoadSource
from controller.loop.build_step import build_step
from controller.loop.interface import (
    Admission,
    Builder,
    Claims,
    Driver,
    DriverContext,
    Drivers,
    HookRunner,
    Notify,
    Placement,
    PlatformDomains,
)
from controller.loop.passes import Desired, Event, Outcome, Pass, ProjectInput, Teardown
from controller.loop.planner import (
    DEPENDS_ON,
    Action,
    Component,
    Observation,
    Plan,
    State,
    Verb,
    plan,
    plan_deletion,
)
from controller.loop.rollouts import engine, records
from controller.loop.rollouts.engine import DueHook, PassFacts, StaleHook
from controller.loop.status import set_condition
from controller.loop.summary import summarize
from schemas.project import (
    DeletionPolicy,
    HookRun,
    ManagementPolicy,
    Phase,
)

log = structlog.get_logger("codeb.reconcile")

# How soon to look again while waiting for something that is progressing (e.g. health).
PROGRESS_RECHECK_SECONDS = 5.0
BLOCKED_DELETE_RECHECK_SECONDS = 60.0


DriverSource = Callable[[Placement], Awaitable[Drivers]]
# Is a namespace being deleted (`KubeClient.namespace_terminating`)?
NamespaceLeaving = Callable[[str], Awaitable[bool]]
# Refusals that mean a Secret teardown needs is gone (SSH key, cloud credentials, kubeconfig).
SECRET_GONE = frozenset({"SSHKeyMissing", "CredentialsMissing", "KubeconfigMissing", "SecretMissing"})


class Reconciler:
    def __init__(self, drivers: Drivers | DriverSource, claims: Claims,
                 namespace_leaving: NamespaceLeaving | None = None,
                 load: LoadSource | None = None) -> None:  # fmt: skip
        self._drivers_for: DriverSource = drivers if callable(drivers) else _static(drivers)
        self._admission = drivers if isinstance(drivers, Admission) else None
        self._domains = drivers if isinstance(drivers, PlatformDomains) else None
        self.claims = claims
        self._namespace_leaving = namespace_leaving
        self._load = load  # what autoscaling reads (None: no Prometheus; the host count stays)
        # A rollout's start window runs out only while this operator watches it (`bluegreen.Facts`).
        self.watching_since = datetime.now(UTC)

    async def reconcile(self, project: ProjectInput, trigger: str = "event") -> Outcome:
        placement = Placement.of(project.spec, project.key.namespace)
        try:
            # A namespace its Platform does not allow (refused here), or one past its quota, claims nothing.
            drivers = await self._drivers_for(placement)
            if self._admission is not None:
                await self._admission.admit(placement, project.key)
            project = await self._routed(project, placement)
            scaled = await self._autoscale(project)
            if scaled is not None:  # carried out as a count changed by hand
                project = replace(project, spec=autoscaling.with_hosts(project.spec, scaled.status.hosts))
            spec = project.spec
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
                            health_timeout=spec.project.rollout.health_check.timeout_seconds,
                            drain_seconds=spec.project.rollout.drain_seconds,
                            backup=spec.backup)  # fmt: skip
        work = Pass(observed=await self._observe(drivers, ctx), events=notices)
        acting = not project.paused and spec.management_policy is ManagementPolicy.Manage
        now = datetime.now(UTC)
        builder = drivers.get(Component.workload)  # a runtime that cannot build refuses source.git itself
        built = await build_step(project, builder, ctx, work, acting, now)
        # With source.git: the last image built, never one building.
        deploying = builds.deployable(spec, built, builder.built_source) if isinstance(builder, Builder) else spec
        if deploying is None:
            work.observed[Component.workload] = builds.unbuilt(work.observed.get(Component.workload))
        desired = Desired(deploying or spec, allocations, drivers)
        wanted = desired.base(work.observed).get(Component.workload)  # None: suspended
        if wanted is not None and deploying is not None:
            facts = PassFacts(deploying, project.status, allocations, wanted, work.observed, now,
                              project.retry_rollout, self.watching_since)  # fmt: skip
            work.rollout = engine.start(facts)
        if work.rollout is not None:
            await self._follow_due_hook(project, drivers, ctx, work, acting)
            work.observed[Component.workload] = work.rollout.view()

        def desire(observed: Mapping[Component, Observation]) -> dict[Component, State]:
            return desired.of(observed, work.rollout)

        steps = plan(desire(work.observed), work.observed, spec.deletion_policy is DeletionPolicy.Retain, refused)
        if acting:
            await self._execute(drivers, ctx, steps, work, trigger, desire)
            work.settle()
        status = summarize(project, allocations, desire(work.observed), steps, work, acting)
        if spec.suspended and acting:
            status, notice = records.suspended(status, now)
            work.events += [Event(notice.type, notice.reason, notice.message)] if notice else []
        status = builds.reported(status.model_copy(update={"autoscaling": scaled.status if scaled else None}),
                                 built, project.generation)  # fmt: skip
        if scaled is not None and scaled.event is not None and acting:
            work.events.append(Event("Normal", *scaled.event))
        decided = work.decided if acting else None
        return Outcome(
            status=status,
            events=work.events,
            retry_after=_retry_after(work, steps),
            permanent_error=next((e.message for e in work.failed.values() if isinstance(e, PermanentError)), None),
            results=work.results,
            drift=[] if acting else steps.actions,
            wake_after=_earliest(decided.wake_after if decided is not None else None, work.observed, acting),
            rollout=decided,
            probe=_probe(work.observed.get(Component.workload)),
        )

    async def _autoscale(self, project: ProjectInput) -> autoscaling.Scaled | None:
        """The hosts the load asks for (with servers.min/max on hosts the operator makes); None: not autoscaled."""
        if not autoscaling.autoscaled(project.spec):
            return None
        domains = list(project.spec.environment.domains)
        load = await self._load.requests_per_second(domains) if self._load is not None else None
        return autoscaling.decide(project.spec, project.status.autoscaling, load, datetime.now(UTC))

    async def _routed(self, project: ProjectInput, placement: Placement) -> ProjectInput:
        """With no domains of its own, a Project is routed at the one its Platform's domain gives it."""
        if self._domains is None:
            return project
        return replace(project, spec=naming.routed(project.spec, await self._domains.platform_domain(placement)))

    async def _follow_due_hook(
        self, project: ProjectInput, drivers: Drivers, ctx: DriverContext, work: Pass, acting: bool
    ) -> None:
        """One step of the post-deploy hook that is due, if any: recorded first; started (or looked at)
        once status holds the record."""
        rollout, runner = work.rollout, drivers.get(Component.workload)
        if rollout is not None and acting and isinstance(runner, HookRunner):
            await self._stop_stale_hooks(runner, ctx, rollout.stale_hooks(), work)
        due = rollout.due_hook() if rollout is not None and acting else None
        if rollout is None or due is None or not isinstance(runner, HookRunner):
            return
        rollout.hook_stepped(await self._hook_step(project, runner, ctx.given(work.observed), due, work))

    @staticmethod
    async def _stop_stale_hooks(runner: HookRunner, ctx: DriverContext, stale: list[StaleHook], work: Pass) -> None:
        """Before the newer release goes where they ran: once, in the pass that ends their rollout (a kill
        before status is written ends it again next pass; stopping a stopped run does nothing)."""
        for hook in stale:
            try:
                await runner.stop_hook(ctx, hook.state, hook.run)
            except CodebError as exc:
                work.events.append(Event("Warning", "HookNotStopped", f"{hook.name} on {hook.colour}: its "
                                         f"rollout ended, but stopping it failed ({exc.message}); it ends at its "
                                         "own timeout"))  # fmt: skip
                continue
            work.events.append(Event("Normal", "HookStopped",
                                     f"{hook.name} on {hook.colour}: its rollout ended before it did"))  # fmt: skip

    async def _hook_step(
        self, project: ProjectInput, runner: HookRunner, ctx: DriverContext, due: DueHook, work: Pass
    ) -> HookRun:
        if due.run is None:
            return HookRun(name=due.name, result="Running", run_id=uuid.uuid4().hex[:12], started_at=due.now)
        if due.run.run_id not in project.recorded_runs:
            return due.run  # written by the last pass, not yet seen stored: started next pass
        run = await runner.follow_hook(ctx, due.state, due.endpoints, due.hook, due.run)
        if run.result != "Running":
            kind, reason = ("Normal", "HookSucceeded") if run.result == "Succeeded" else ("Warning", "HookFailed")
            work.events.append(Event(kind, reason, f"{due.name} on {due.colour}: {run.message or 'no output'}"))
        return run

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
                            recorded=teardown.status.infrastructure, notify=_collect(notices),
                            backup=teardown.spec.backup if teardown.spec else None)  # fmt: skip
        drivers = await self._teardown_drivers(teardown, notices)
        work = Pass(observed=await self._observe(drivers, ctx), events=notices)
        # A Project that built: its builds go with it, even when no workload ever ran (every build failed).
        if teardown.status.build is not None and Component.workload in work.observed:
            work.observed[Component.workload] = builds.with_builds_left(work.observed.get(Component.workload))
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

    async def _left_with_its_namespace(self, teardown: Teardown, work: Pass) -> bool:
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
        self, drivers: Drivers, ctx: DriverContext, steps: Plan, work: Pass, trigger: str, desire: Desire = None
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

    async def _look_again(self, driver: Driver, ctx: DriverContext, work: Pass, component: Component) -> None:
        """What a failed action left (a plan awaiting approval, a failed run's output) goes to status too."""
        with contextlib.suppress(CodebError):
            work.saw(component, await driver.observe(ctx.given(work.observed)))

    async def _run(self, driver: Driver, action: Action, ctx: DriverContext) -> None:
        if action.verb in (Verb.create, Verb.update):
            assert action.desired is not None
            await driver.apply(ctx, action.desired)
        else:
            await driver.delete(ctx, retain=action.verb in (Verb.release, Verb.stop))

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


# The Event reason of an action the spec asked for, done.
DONE = {Verb.create: "Created", Verb.update: "Updated", Verb.delete: "Deleted", Verb.release: "Released",
        Verb.stop: "Stopped"}  # fmt: skip

# Passes no spec change asked for (the drift timer's, a wake for a backup's news): what they repair was drift.
DRIFT_TRIGGERS = frozenset({"timer", "wake"})

# Recomputes desired states from what has been observed so far in this pass.
Desire = Callable[[Mapping[Component, Observation]], Mapping[Component, State]] | None


def _serving(seen: Observation | None) -> bool:
    return seen is not None and seen.state is not None and seen.healthy


def _refreshed(action: Action, desire: Desire, work: Pass) -> Action | None:
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
            reason = _success_reason(action, trigger)
            grouped.setdefault(reason, []).append(f"{action.component.value} {action.verb.value}: {action.reason}")
    return [Event("Normal", reason, "; ".join(lines)) for reason, lines in grouped.items()]


def _success_reason(action: Action, trigger: str) -> str:
    """What a successful action was: the spec's (Created, Updated…), or, in a pass no spec change asked for,
    backups' own upkeep (a scheduled run, a prune: routine, not drift) or drift repaired."""
    if trigger not in DRIFT_TRIGGERS:
        return DONE[action.verb]
    return "BackupsMaintained" if action.component is Component.backup else "DriftRepaired"


def is_drift_repair(action: Action, trigger: str) -> bool:
    return _success_reason(action, trigger) == "DriftRepaired"


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


def _earliest(rollout_wake: float | None, observed: Mapping[Component, Observation], acting: bool) -> float | None:
    """The next timed step: the rollout's, or a component's own (the next backup's start)."""
    wakes = [float(o.outputs["wakeAfter"]) for o in observed.values() if o.outputs.get("wakeAfter") is not None]
    wakes += [rollout_wake] if rollout_wake is not None else []
    return min(wakes) if wakes and acting else None


def _retry_after(work: Pass, steps: Plan) -> float | None:
    delays = [e.delay for e in work.failed.values() if isinstance(e, RetryableError)]
    # Waiting behind a component with no driver changes nothing: the drift timer is enough.
    if work.waiting or steps.progressing or _settling(work):
        delays.append(PROGRESS_RECHECK_SECONDS)
    return min(delays) if delays else None


def _settling(work: Pass) -> bool:
    """A component is as the spec asks but not healthy yet (Pods of a scale-up still starting): looked at again
    soon, with backoff, so that status says so once it is, not at the next drift check minutes later."""
    return any(seen.state is not None and not seen.healthy and seen.error is None and component not in work.failed
               for component, seen in work.observed.items())  # fmt: skip


def _probe(workload: Observation | None) -> State | None:
    """The serving colour's last probe, as the rollout's view of the workload carries it."""
    found = workload.outputs.get("probe") if workload is not None else None
    return dict(found) if isinstance(found, dict) else None
