"""Blue-green rollouts as a pure state machine, persisted in the Project's own status.

A release is everything a colour runs with (revision, image or command, settings,
credentials' digest), so a new revision, an edited variable and a rotated password
all roll out the same way: the other colour starts on its own port, must pass
``healthyThreshold`` consecutive checks of ``monitoring.healthPath`` (one per
``intervalSeconds``) within ``startTimeoutSeconds``, runs the post-deploy hooks, and
only then does the route switch to it, in one atomic Caddy change. The old colour
drains for ``drainSeconds`` and then stops, or stays warm for ``keepWarmSeconds`` so
setting the revision back switches straight back to it.

`advance` takes the facts of one reconcile pass (the wanted release, what each
colour was seen running and answering, which colour the route was seen sending to,
the rollout as status last recorded it) and returns a `Decision`: what each colour
should run, which one the route should serve, and the new status. It does no I/O and
reads no clock, so every step, and every world a crash leaves between two steps, is
tested with plain data. Facts win over the record: a route found already switched
means the switch happened, whatever status says, so an operator killed at any line
resumes without two colours serving or none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from controller.loop.planner import Observation, State
from schemas.project import (
    Allocations,
    App,
    Colour,
    DeploymentRecord,
    Hook,
    HookRun,
    ProjectSpec,
    ProjectStatus,
    Rollout,
    RolloutStatus,
    RolloutStep,
    Runtime,
    ServingStatus,
)

ACTIVE = frozenset({RolloutStep.checking, RolloutStep.hooks, RolloutStep.switching, RolloutStep.draining})
BEFORE_SWITCH = frozenset({RolloutStep.checking, RolloutStep.hooks, RolloutStep.switching})
HISTORY = 20
# What status.serving says of the warm colour.
WARM_FIELDS = ("warm", "warm_release", "warm_revision", "warm_until")
# Keys of a colour's state that are where it runs, not what it runs: a host added or taken
# away moves the serving colour, it is not a new release.
PLACEMENT_KEYS = frozenset({"port", "hosts"})
# A check counts when at least this share of the interval has passed since the last one
# (passes triggered by other events in between do not count twice).
DUE_SHARE = 0.9
# How often a running post-deploy hook is looked at (one short command on its machine).
HOOK_FOLLOW_SECONDS = 3.0


def release_of(state: State) -> str:
    """Digest of what a colour runs, whichever port it runs on."""
    body = {k: v for k, v in state.items() if k not in PLACEMENT_KEYS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ColourSeen:
    """One colour as the workload driver observed it."""

    state: State  # what it was started with, port included
    healthy: bool
    detail: str | None = None
    endpoints: tuple[str, ...] = ()
    # It answered at all: an HTTP status, or its process exited. False while it boots.
    answered: bool = True

    @property
    def release(self) -> str:
        return release_of(self.state)


@dataclass(frozen=True)
class Facts:
    wanted: State  # the workload's desired state, without a port
    ports: Mapping[Colour, int]
    seen: Mapping[Colour, ColourSeen]
    routed: Colour | None  # the colour whose endpoints the route was seen sending to
    settings: Rollout
    now: datetime
    rollout: RolloutStatus | None = None
    serving: ServingStatus | None = None
    history: tuple[DeploymentRecord, ...] = ()
    hooks: tuple[str, ...] = ()  # every hook due once per release, in order
    retry: str | None = None  # the codeb.dev/retry-rollout annotation
    placement: State = field(default_factory=dict)  # where every colour runs, but its port (the hosts)
    # Since when this operator has been watching: a start window that ran out while no operator (or no
    # machine) was there to start the colour is counted again from here, not failed.
    watching_since: datetime | None = None

    @property
    def release(self) -> str:
        return release_of(self.wanted)

    def wanted_with(self, colour: Colour) -> State:
        return {**self.wanted, **self.placement, "port": self.ports[colour]}

    def runs(self, colour: Colour, release: str) -> bool:
        seen = self.seen.get(colour)
        return seen is not None and seen.release == release


@dataclass(frozen=True)
class Notice:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    targets: dict[Colour, State]  # what each colour should run; a colour not here is stopped
    serve: Colour | None  # where the route sends traffic (None: nothing may serve yet)
    rollout: RolloutStatus | None
    serving: ServingStatus | None
    history: list[DeploymentRecord]
    notices: list[Notice] = field(default_factory=list)
    run_hooks: tuple[str, ...] = ()  # hooks to run now against rollout.colour
    wake_after: float | None = None  # when the next step is due (a check, the end of the drain)
    checks: list[bool] = field(default_factory=list)  # health checks counted in this pass
    finished: tuple[str, float] | None = None  # (result, seconds) of a rollout that ended in this pass
    wanted: str = ""  # the release the spec asks for

    @property
    def held_back(self) -> RolloutStatus | None:
        """The failed rollout of the release the spec still asks for: what Degraded reports."""
        r = self.rollout
        return r if r is not None and r.step is RolloutStep.failed and r.release == self.wanted else None


def advance(facts: Facts) -> Decision:
    draft = _Draft(facts)
    record = facts.rollout
    if record is not None and record.step in ACTIVE:
        if record.step in BEFORE_SWITCH and facts.routed is record.new_colour:
            record = draft.switched(record)  # the route moved before status could say so
        if record.step is RolloutStep.draining or record.release == facts.release:
            return draft.carry_on(record)
        draft.close(record, RolloutStep.superseded, "Superseded", "the spec changed again before the switch")
    return draft.settle()


def view(raw: Observation, decision: Decision) -> Observation:
    """The workload as the planner sees it: the colours, healthy and reachable as the serving one is."""
    colours = seen_colours(raw)
    chosen = colours.get(decision.serve) if decision.serve is not None else None
    if chosen is None:
        detail = raw.detail or "no colour serves yet"
        return Observation(state=raw.state, healthy=False, detail=detail, outputs={"endpoints": []})
    outputs = {"endpoints": list(chosen.endpoints)}
    return Observation(state=raw.state, healthy=chosen.healthy, detail=chosen.detail, outputs=outputs)


def desired(decision: Decision) -> State:
    return {"colours": {colour.value: state for colour, state in sorted(decision.targets.items())}}


def seen_colours(raw: Observation) -> dict[Colour, ColourSeen]:
    """Each colour's state (from ``raw.state``) and health (from ``raw.outputs``), as a driver reports them."""
    states = (raw.state or {}).get("colours", {})
    health = raw.outputs.get("colours", {})
    found = {}
    for name, state in states.items():
        looked = health.get(name, {})
        found[Colour(name)] = ColourSeen(
            state=state,
            healthy=bool(looked.get("healthy")),
            detail=looked.get("detail"),
            endpoints=tuple(looked.get("endpoints", ())),
            answered=bool(looked.get("answered", True)),
        )
    return found


def routed_colour(
    route: Observation | None, seen: Mapping[Colour, ColourSeen], ports: Mapping[Colour, int]
) -> Colour | None:
    """The colour whose endpoints the route was seen sending to: by its observed endpoints, else by port."""
    upstreams = list((route.state or {}).get("upstreams", [])) if route is not None else []
    if not upstreams:
        return None
    for colour, looked in seen.items():
        if looked.endpoints and sorted(looked.endpoints) == sorted(upstreams):
            return colour
    for colour, port in ports.items():
        if all(u.rsplit(":", 1)[-1] == str(port) for u in upstreams):
            return colour
    return None


class _Draft:
    """One pass's decision, built step by step."""

    def __init__(self, facts: Facts) -> None:
        self.facts = facts
        self.serving = facts.serving
        self.history = list(facts.history)
        self.notices: list[Notice] = []
        self.checks: list[bool] = []
        self.finished: tuple[str, float] | None = None
        self.closed: RolloutStatus | None = facts.rollout

    # ------------------------------------------------------------ steady state

    def settle(self) -> Decision:
        """No rollout under way: serve what runs the wanted release, or start one."""
        facts = self.facts
        serving = self._serving_colour()
        if serving is not None and facts.runs(serving, facts.release):
            return self._steady(serving, facts.wanted_with(serving))
        stopped = self._stopped_serving_colour()
        if serving is None and stopped is not None:
            # Everything was stopped (the machine, `codeb up`): what served is started again as it
            # was, not deployed anew, whatever the rollout record says.
            return self._steady(stopped, facts.wanted_with(stopped))
        failed = self.closed
        if (
            failed is not None
            and failed.step is RolloutStep.failed
            and (failed.release, failed.retry) == (facts.release, facts.retry)
        ):
            # The same broken release is not started again: a new spec, or the retry annotation.
            keep = facts.seen[serving].state if serving is not None and serving in facts.seen else None
            return self._steady(serving, keep)
        return self.carry_on(self._start(serving))

    def _stopped_serving_colour(self) -> Colour | None:
        """The colour status says serves the wanted release, when it no longer runs at all."""
        facts, record = self.facts, self.facts.serving
        if record is None or record.colour is None or record.release != facts.release:
            return None
        return record.colour if record.colour not in facts.seen and record.colour in facts.ports else None

    def _serving_colour(self) -> Colour | None:
        facts = self.facts
        if facts.routed is not None and facts.routed in facts.seen:
            return facts.routed
        recorded = facts.serving.colour if facts.serving is not None else None
        return recorded if recorded in facts.seen else None

    def _steady(self, serving: Colour | None, serving_state: State | None) -> Decision:
        facts = self.facts
        targets: dict[Colour, State] = {}
        wake = None
        if serving is not None and serving_state is not None:
            targets[serving] = serving_state
            self._now_serving(serving, since=None)
            warm = self._warm(serving)
            if warm is not None:
                targets[warm] = facts.seen[warm].state
                wake = (
                    _seconds(self.serving.warm_until, facts.now) if self.serving and self.serving.warm_until else None
                )
            elif self.serving is not None and self.serving.warm is not None:
                self.serving = self.serving.model_copy(update=dict.fromkeys(WARM_FIELDS))
        return self._decision(targets, serving, self.closed, wake=wake)

    def _warm(self, serving: Colour) -> Colour | None:
        facts, record = self.facts, self.serving
        if record is None or record.warm is None or record.warm is serving or record.warm_until is None:
            return None
        if facts.now >= record.warm_until or record.warm_release is None:
            return None
        return record.warm if facts.runs(record.warm, record.warm_release) else None

    # ------------------------------------------------------------ a rollout

    def _start(self, serving: Colour | None) -> RolloutStatus:
        facts = self.facts
        release = facts.release
        already = [c for c in Colour if c is not serving and facts.runs(c, release)]
        colour = already[0] if already else (serving.other if serving is not None else Colour.blue)
        record = RolloutStatus(
            release=release, revision=facts.wanted.get("revision"), image=facts.wanted.get("image"), colour=colour,
            previous=serving, step=RolloutStep.checking, started_at=facts.now, retry=facts.retry,
        )  # fmt: skip
        change = self._what_changed(serving)
        self.history.insert(0, DeploymentRecord(
            revision=record.revision, image=record.image, release=release, colour=colour, started_at=facts.now,
            result="Progressing", reason="", message=change,
        ))  # fmt: skip
        del self.history[HISTORY:]
        self.notice("Normal", "RolloutStarted", f"{_label(record)} starts as {colour.value} on port "
                    f"{facts.ports.get(colour)}: {change}", record)  # fmt: skip
        seen = facts.seen.get(colour)
        if seen is not None and seen.release == release and seen.healthy and serving is not None:
            # Still warm from an earlier deploy and answering now: no new start, no hooks again.
            self.checks.append(True)
            self.notice("Normal", "WarmColour", f"{colour.value} still runs {_label(record)}: switching back")
            return record.model_copy(update={"step": RolloutStep.switching, "healthy_checks": 1, "answered": True,
                                             "checked_at": facts.now, "message": "warm and healthy"})  # fmt: skip
        return record

    def carry_on(self, record: RolloutStatus) -> Decision:
        if record.step is RolloutStep.draining:
            return self._drain(record)
        record = self._check(record)
        if record.step is RolloutStep.failed:
            return self._steady_after_failure(record)
        if record.step is RolloutStep.checking and record.healthy_checks >= self._threshold(record):
            record = record.model_copy(update={"step": RolloutStep.hooks})
            self.notice("Normal", "HealthGatePassed", f"{record.new_colour.value} passed {record.healthy_checks} "
                        "consecutive health checks", record)  # fmt: skip
        due: tuple[str, ...] = ()
        if record.step is RolloutStep.hooks:
            record, due = self._hooks(record)
            if record.step is RolloutStep.failed:
                return self._steady_after_failure(record)
        targets = self._rolling_targets(record)
        serve = record.new_colour if record.step is RolloutStep.switching else record.previous
        return self._decision(targets, serve, record, run_hooks=due, wake=self._next_check(record))

    def _threshold(self, record: RolloutStatus) -> int:
        """Healthy checks before the switch. A first deploy has nothing to protect: healthy once is enough."""
        return self.facts.settings.health_check.healthy_threshold if record.previous is not None else 1

    def _check(self, record: RolloutStatus) -> RolloutStatus:
        """Count one health check of the new colour, when one is due; fail on the thresholds or the timeout."""
        facts, gate = self.facts, self.facts.settings.health_check
        seen = facts.seen.get(record.new_colour)
        window_start = max(record.started_at, facts.watching_since or record.started_at)
        elapsed = _seconds(facts.now, window_start)
        if seen is None or seen.release != record.release:
            if elapsed > facts.settings.start_timeout_seconds:
                return self._fail(record, "RolloutFailed", f"{record.new_colour.value} did not start within "
                                  f"{facts.settings.start_timeout_seconds:g} s")  # fmt: skip
            return record  # being started in this pass
        if record.checked_at is not None and _seconds(facts.now, record.checked_at) < gate.interval_seconds * DUE_SHARE:
            return record
        update: dict[str, object] = {"checked_at": facts.now, "message": seen.detail or "healthy"}
        if seen.healthy:
            self.checks.append(True)
            update |= {"healthy_checks": record.healthy_checks + 1, "unhealthy_checks": 0, "answered": True}
        elif seen.answered or record.answered:
            self.checks.append(False)
            update |= {"healthy_checks": 0, "unhealthy_checks": record.unhealthy_checks + 1, "answered": True}
        record = record.model_copy(update=update)
        if record.unhealthy_checks >= gate.unhealthy_threshold:
            return self._fail(record, "RolloutFailed", f"{record.new_colour.value} failed {record.unhealthy_checks} "
                              f"consecutive health checks: {seen.detail}")  # fmt: skip
        if record.step is RolloutStep.checking and elapsed > facts.settings.start_timeout_seconds:
            detail = seen.detail or "healthy too briefly"
            return self._fail(record, "RolloutFailed", f"{record.new_colour.value} did not pass the health gate within "
                              f"{facts.settings.start_timeout_seconds:g} s: {detail}")  # fmt: skip
        return record

    def _hooks(self, record: RolloutStatus) -> tuple[RolloutStatus, tuple[str, ...]]:
        """The hook to follow now: one at a time, in order; a run recorded ``Running`` is followed to its end."""
        failed = next((run for run in record.hooks if run.result == "Failed"), None)
        if failed is not None:
            return self._fail(record, "HookFailed", f"hook {failed.name} failed: {failed.message}"), ()
        done = {run.name for run in record.hooks if run.result == "Succeeded"}
        due = next((name for name in self.facts.hooks if name not in done), None)
        if due is not None:
            return record, (due,)
        return record.model_copy(update={"step": RolloutStep.switching}), ()

    def _rolling_targets(self, record: RolloutStatus) -> dict[Colour, State]:
        """The new colour runs the release; the one serving is left exactly as it runs."""
        facts = self.facts
        targets = {record.new_colour: facts.wanted_with(record.new_colour)}
        if record.previous is not None and record.previous in facts.seen:
            targets[record.previous] = facts.seen[record.previous].state
        return targets

    def switched(self, record: RolloutStatus) -> RolloutStatus:
        facts = self.facts
        record = record.model_copy(update={"step": RolloutStep.draining, "switched_at": facts.now})
        self._update_history(record, switched_at=facts.now)
        drain, old = facts.settings.drain_seconds, record.previous.value if record.previous else "nothing"
        message = f"{record.new_colour.value} serves {_label(record)}; {old} drains for {drain:g} s"
        self.notice("Normal", "TrafficSwitched", message, record)
        self._now_serving(record.new_colour, since=facts.now, release=record.release, revision=record.revision)
        return record

    def _drain(self, record: RolloutStatus) -> Decision:
        facts, settings = self.facts, self.facts.settings
        switched = record.switched_at or facts.now
        old = record.previous
        targets: dict[Colour, State] = {}
        if record.new_colour in facts.seen:
            targets[record.new_colour] = facts.seen[record.new_colour].state
        elif facts.release == record.release:
            targets[record.new_colour] = facts.wanted_with(record.new_colour)
        # Nothing served before a first deploy: nothing to drain.
        left = settings.drain_seconds - _seconds(facts.now, switched) if old is not None else 0.0
        if left > 0:
            if old is not None and old in facts.seen:
                targets[old] = facts.seen[old].state
            return self._decision(targets, record.new_colour, record, wake=left)
        record = record.model_copy(update={"step": RolloutStep.succeeded, "finished_at": facts.now,
                                           "message": f"{record.new_colour.value} serves"})  # fmt: skip
        self._update_history(record, result="Succeeded", finished_at=facts.now)
        self.finished = ("Succeeded", _seconds(facts.now, record.started_at))
        warm_for = settings.keep_warm_seconds - _seconds(facts.now, switched)
        if old is not None and old in facts.seen and warm_for > 0:
            targets[old] = facts.seen[old].state
            assert self.serving is not None
            self.serving = self.serving.model_copy(update={
                "warm": old, "warm_release": facts.seen[old].release,
                "warm_revision": facts.seen[old].state.get("revision"), "warm_until": switched + timedelta(
                    seconds=settings.keep_warm_seconds),
            })  # fmt: skip
        after = f"{old.value} stays warm for {warm_for:.0f} s" if old in targets else "the old colour stopped"
        self.notice(
            "Normal", "RolloutSucceeded", f"{_label(record)} serves as {record.new_colour.value}; {after}", record
        )
        self.closed = record
        return self._decision(targets, record.new_colour, record, wake=warm_for if old in targets else None)

    def _fail(self, record: RolloutStatus, reason: str, message: str) -> RolloutStatus:
        facts = self.facts
        record = record.model_copy(update={"step": RolloutStep.failed, "finished_at": facts.now, "message": message})
        self._update_history(record, result="Failed", reason=reason, finished_at=facts.now, message=message)
        self.finished = ("Failed", _seconds(facts.now, record.started_at))
        kept = f"{record.previous.value} keeps serving" if record.previous else "nothing serves yet"
        self.notice("Warning", reason, f"{_label(record)} never took traffic ({kept}): {message}")
        self.closed = record
        return record

    def _steady_after_failure(self, record: RolloutStatus) -> Decision:
        facts = self.facts
        serving = record.previous if record.previous in facts.seen else None
        keep = facts.seen[serving].state if serving is not None else None
        return self._steady(serving, keep)

    def close(self, record: RolloutStatus, step: RolloutStep, reason: str, message: str) -> None:
        record = record.model_copy(update={"step": step, "finished_at": self.facts.now, "message": message})
        self._update_history(record, result=step.value, reason=reason, finished_at=self.facts.now)
        self.notice("Normal", reason, f"{_label(record)}: {message}")
        self.closed = record

    # ------------------------------------------------------------ bookkeeping

    def _now_serving(self, colour: Colour, since: datetime | None, release: str | None = None,
                     revision: str | None = None) -> None:  # fmt: skip
        facts, record = self.facts, self.serving
        seen = facts.seen.get(colour)
        release = release or (seen.release if seen is not None else facts.release)
        if revision is None and seen is not None:
            revision = seen.state.get("revision")
        if (record is not None and since is None and (record.colour, record.release) == (colour, release)
                and record.warm is not colour):  # fmt: skip
            return  # already so
        # A new colour serving starts with nothing warm; the same one keeps what it had (never itself).
        warm = {} if record is None or since is not None else {k: getattr(record, k) for k in WARM_FIELDS}
        if warm.get("warm") is colour:
            warm = dict.fromkeys(WARM_FIELDS)
        self.serving = ServingStatus(colour=colour, release=release, revision=revision, since=since or facts.now,
                                     **warm)  # fmt: skip

    def _update_history(self, record: RolloutStatus, **changes: object) -> None:
        update_history(self.history, record, **changes)

    def _what_changed(self, serving: Colour | None) -> str:
        facts = self.facts
        if serving is None or serving not in facts.seen:
            return "first deploy"
        before = {k: v for k, v in facts.seen[serving].state.items() if k not in PLACEMENT_KEYS}
        if before.get("revision") != facts.wanted.get("revision"):
            return f"revision {before.get('revision')} → {facts.wanted.get('revision')}"
        keys = sorted(k for k in before.keys() | facts.wanted.keys() if before.get(k) != facts.wanted.get(k))
        return "differs in " + ", ".join(keys)

    def notice(self, type_: str, reason: str, message: str, record: RolloutStatus | None = None) -> None:
        # A first deploy's steps go unsaid (its status says them): at a thousand new Projects,
        # four Events each would be most of the operator's writes. Its failure is said.
        if type_ == "Normal" and record is not None and record.previous is None:
            return
        self.notices.append(Notice(type_, reason, message))

    def _next_check(self, record: RolloutStatus) -> float:
        interval = self.facts.settings.health_check.interval_seconds
        if record.step is RolloutStep.hooks:
            # A hook just recorded starts in the next pass; one running is looked at every few seconds.
            running = any(run.result == "Running" for run in record.hooks)
            return HOOK_FOLLOW_SECONDS if running else min(interval, 1.0)
        if record.step is RolloutStep.switching:
            # The switch happens in the pass that decides it; one still pending waits on the route
            # (refused, Caddy down), whose own retry comes sooner: look again at the next check.
            return interval
        if record.checked_at is None:
            return min(interval, 1.0)
        return max(0.05, interval - _seconds(self.facts.now, record.checked_at))

    def _decision(self, targets: dict[Colour, State], serve: Colour | None, record: RolloutStatus | None,
                  run_hooks: tuple[str, ...] = (), wake: float | None = None) -> Decision:  # fmt: skip
        return Decision(targets, serve, record, self.serving, self.history, self.notices, run_hooks, wake,
                        self.checks, self.finished, self.facts.release)  # fmt: skip


def update_history(history: list[DeploymentRecord], record: RolloutStatus, **changes: object) -> None:
    """The history entry of ``record`` (same release, same start), changed in place."""
    for index, entry in enumerate(history):
        if entry.release == record.release and entry.started_at == record.started_at:
            history[index] = entry.model_copy(update=changes)
            return


def hook_result(record: RolloutStatus, run: HookRun) -> RolloutStatus:
    """The record with this hook's run as it now stands (a restart finds it, and never starts it again)."""
    return record.model_copy(update={"hooks": [*(h for h in record.hooks if h.name != run.name), run]})


def _label(record: RolloutStatus) -> str:
    return revision_label(record.revision, record.release)


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def blue_green(spec: ProjectSpec) -> bool:
    """Runtimes whose colours run side by side on two ports: local (two processes) and quadlet
    (two units on every host). Kubernetes rolls Pods behind one Service instead, with the same
    health gate (`controller.loop.planner`)."""
    return spec.servers.runtime in (Runtime.local, Runtime.quadlet)


def hook_names(spec: ProjectSpec) -> tuple[str, ...]:
    """Every hook due once per release, in the order they run: the apps, then the post-deploy hooks."""
    return tuple(f"app-{app.name}" for app in spec.features.apps) + tuple(
        hook.name for hook in spec.features.post_deploy_hooks
    )


def hook_named(spec: ProjectSpec, name: str) -> Hook | App:
    apps = {f"app-{app.name}": app for app in spec.features.apps}
    return apps.get(name) or next(hook for hook in spec.features.post_deploy_hooks if hook.name == name)


def facts_for(
    spec: ProjectSpec,
    status: ProjectStatus,
    allocations: Allocations,
    release: State,
    raw: Observation,
    route: Observation | None,
    now: datetime,
    retry: str | None,
    watching_since: datetime | None = None,
) -> Facts:
    """The facts of one pass, from the spec, the status as stored and what the drivers saw (pure)."""
    allocated = {Colour.blue: allocations.port, Colour.green: allocations.alternate_port}
    ports = {colour: port for colour, port in allocated.items() if port is not None}
    seen = seen_colours(raw)
    return Facts(
        wanted={k: v for k, v in release.items() if k not in PLACEMENT_KEYS},
        placement={k: v for k, v in release.items() if k in PLACEMENT_KEYS and k != "port"},
        ports=ports,
        seen=seen,
        routed=routed_colour(route, seen, ports),
        settings=spec.project.rollout,
        now=now,
        # A record of another runtime's rollout (kubernetes names no colour) is not this one's.
        rollout=status.rollout if status.rollout is not None and status.rollout.colour is not None else None,
        serving=status.serving if status.serving is not None and status.serving.colour is not None else None,
        history=tuple(status.deployments),
        hooks=hook_names(spec),
        retry=retry,
        watching_since=watching_since,
    )


def refresh(facts: Facts, decision: Decision, raw: Observation, route: Observation | None, now: datetime) -> Facts:
    """The facts after this pass acted: what the colours and the route are now, and the decision's record."""
    seen = seen_colours(raw)
    return replace(facts, seen=seen, routed=routed_colour(route, seen, facts.ports), rollout=decision.rollout,
                   serving=decision.serving, history=tuple(decision.history), now=now)  # fmt: skip


def merge(first: Decision, then: Decision) -> Decision:
    """A second decision in the same pass, keeping what the first one said and counted."""
    return replace(then, notices=first.notices + then.notices, checks=first.checks + then.checks,
                   finished=then.finished or first.finished)  # fmt: skip


def describe(decision: Decision) -> str:
    """Where traffic goes and what is under way, in one line (the Serving condition, Synced's message)."""
    serving, record = decision.serving, decision.rollout
    parts = []
    if decision.serve is not None and serving is not None and serving.colour is decision.serve:
        parts.append(f"{serving.colour.value} serves {revision_label(serving.revision, serving.release)}")
    elif decision.serve is None:
        parts.append("nothing serves yet")
    if record is not None and record.step in ACTIVE:
        parts.append(f"{_label(record)} as {record.new_colour.value}: {_progress(record)}")
    if serving is not None and serving.warm is not None and serving.warm_until is not None:
        parts.append(f"{serving.warm.value} ({revision_label(serving.warm_revision, serving.warm_release or '')}) warm "
                     f"until {serving.warm_until.isoformat(timespec='seconds')}")  # fmt: skip
    return "; ".join(parts)


def _progress(record: RolloutStatus) -> str:
    if record.step is RolloutStep.checking:
        return f"{record.healthy_checks} healthy checks so far ({record.message or 'starting'})"
    if record.step is RolloutStep.hooks:
        return f"running hooks ({len(record.hooks)} done)"
    return record.step.value.lower()


def revision_label(revision: str | None, release: str) -> str:
    """How a release is named to people: its revision, else the start of its digest."""
    return f"revision {revision}" if revision else f"release {release[:8]}"


def rollback_target(history: list[DeploymentRecord], serving: str | None, to: str | None) -> DeploymentRecord:
    """The deploy to go back to: ``to`` if it ever succeeded, else the newest success before what serves.

    Raises ValueError saying what the history holds when there is none.
    """
    succeeded = [d for d in history if d.result == "Succeeded" and d.revision]
    if to is not None:
        found = next((d for d in succeeded if d.revision == to), None)
        if found is None:
            known = ", ".join(sorted({d.revision for d in succeeded if d.revision})) or "none"
            raise ValueError(f"revision {to} never deployed successfully here (succeeded: {known})")
        return found
    older = [d for d in succeeded if d.revision != serving]
    if not older:
        raise ValueError(f"no earlier successful revision than {serving} in status.deployments")
    return older[0]
