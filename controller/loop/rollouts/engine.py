"""One rollout interface for both engines: facts → decision → desired workload → view of the workload.

The reconciler picks an engine once per pass (`start`: blue-green for runtimes local and
quadlet, the Deployment's rolling update for kubernetes) and then only talks to a
`Rollout`: what the workload should run (`desired`), how the workload looks to the planner
and to status (`view`, `workload_condition`, `serving_condition`, `describe`), a new look
at the workload (`saw`), and the one post-deploy hook that is due (`due_hook`,
`hook_stepped`). The state machines themselves (`bluegreen.advance`, `rolling.advance`)
stay pure; this module only carries one pass's facts and decision between their calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from controller.loop.planner import Component, Observation, State
from controller.loop.rollouts import bluegreen, colours, rolling
from controller.loop.rollouts.records import Notice, hook_named
from schemas.project import (
    Allocations,
    App,
    DeploymentRecord,
    Hook,
    HookRun,
    ProjectSpec,
    ProjectStatus,
    RolloutStatus,
    RolloutStep,
    Runtime,
    ServingStatus,
)

# (ok, reason, message), as a condition says it.
Verdict = tuple[bool, str, str]


class Decided(Protocol):
    """What either engine decided in a pass, as status and metrics read it."""

    rollout: RolloutStatus | None
    serving: ServingStatus | None
    history: list[DeploymentRecord]
    notices: list[Notice]
    wake_after: float | None
    checks: list[bool]  # health checks counted in this pass
    finished: tuple[str, float] | None  # (result, seconds) of a rollout that ended in this pass

    @property
    def held_back(self) -> RolloutStatus | None: ...


@dataclass(frozen=True)
class PassFacts:
    """What the reconciler knows when a pass starts, for whichever engine the runtime takes."""

    spec: ProjectSpec
    status: ProjectStatus  # as stored
    allocations: Allocations
    wanted: State  # the workload's desired state, before any rollout decides what each colour runs
    observed: Mapping[Component, Observation]
    now: datetime
    retry: str | None  # the codeb.dev/retry-rollout annotation
    watching_since: datetime  # when this operator started watching (blue-green's start windows)


@dataclass(frozen=True)
class DueHook:
    """The post-deploy hook to run or follow now, against the new colour as it was seen."""

    name: str
    hook: Hook | App
    run: HookRun | None  # as recorded; None: not recorded yet (record it before starting it)
    state: State
    endpoints: tuple[str, ...]
    colour: str
    now: datetime


@dataclass(frozen=True)
class StaleHook:
    """A hook run the stored rollout had going that this pass's decision no longer follows: to be stopped."""

    name: str
    run: HookRun
    state: State | None  # the colour it runs beside, as seen (None: that colour is gone)
    colour: str


class Rollout(Protocol):
    """One pass of one Project's rollout, whichever engine runs it."""

    @property
    def decision(self) -> Decided: ...

    def desired(self) -> State:
        """What the workload should run now."""

    def view(self) -> Observation:
        """The workload as the planner and status see it (blue-green: as the serving colour is)."""

    def saw(self, seen: Observation, observed: Mapping[Component, Observation], now: datetime) -> None:
        """A new look at the workload (with the rest as seen so far): the rollout moves on."""

    def settle(self, observed: Mapping[Component, Observation], now: datetime) -> None:
        """After acting: what the route does now moves the rollout on (a switch seen is a switch)."""

    def describe(self) -> str: ...

    def workload_condition(self, seen: Observation) -> Verdict | None:
        """The workload's condition while this engine decides it; None: judge it as any component."""

    def serving_condition(self) -> Verdict: ...

    def due_hook(self) -> DueHook | None: ...

    def hook_stepped(self, run: HookRun) -> None:
        """The due hook's run as it now stands: recorded, and the rollout moved on from it."""

    def stale_hooks(self) -> list[StaleHook]:
        """Runs of a rollout this pass ended or replaced that may still be going."""


def start(facts: PassFacts) -> Rollout | None:
    """The engine for this Project's runtime, once the workload could be looked at; None: no rollout."""
    raw = facts.observed.get(Component.workload)
    if raw is None or raw.error is not None or raw.unsupported is not None:
        return None
    if bluegreen.blue_green(facts.spec):
        return BlueGreenRollout.begin(facts, raw) if facts.allocations.alternate_port is not None else None
    if facts.spec.servers.runtime is Runtime.kubernetes:
        return RollingRollout.begin(facts, raw)
    return None


def in_progress(decision: Decided) -> bool:
    return decision.rollout is not None and decision.rollout.step in colours.ACTIVE


class BlueGreenRollout:
    """Two colours behind the route (`controller.loop.rollouts.bluegreen`)."""

    def __init__(self, facts: colours.Facts, decision: colours.Decision, raw: Observation, spec: ProjectSpec,
                 stored: RolloutStatus | None = None) -> None:  # fmt: skip
        self.facts, self.decision, self.raw, self.spec = facts, decision, raw, spec
        self._stale = self._abandoned(stored)

    @classmethod
    def begin(cls, facts: PassFacts, raw: Observation) -> BlueGreenRollout:
        known = colours.facts_for(facts.spec, facts.status, facts.allocations, facts.wanted, raw,
                                  facts.observed.get(Component.route), facts.now, facts.retry,
                                  facts.watching_since)  # fmt: skip
        return cls(known, bluegreen.advance(known), raw, facts.spec, facts.status.rollout)

    def _abandoned(self, stored: RolloutStatus | None) -> list[StaleHook]:
        runs = bluegreen.abandoned_runs(stored, self.decision.rollout)
        if stored is None or not runs:
            return []
        seen = self.facts.seen.get(stored.new_colour)
        return [StaleHook(run.name, run, seen.state if seen else None, stored.new_colour.value) for run in runs]

    def stale_hooks(self) -> list[StaleHook]:
        return self._stale

    def desired(self) -> State:
        return colours.desired(self.decision)

    def view(self) -> Observation:
        return colours.view(self.raw, self.decision)

    def saw(self, seen: Observation, observed: Mapping[Component, Observation], now: datetime) -> None:
        self.raw = seen
        self.settle(observed, now)

    def settle(self, observed: Mapping[Component, Observation], now: datetime) -> None:
        route = observed.get(Component.route)
        self.facts = colours.refresh(self.facts, self.decision, self.raw, route, now)
        self.decision = colours.merge(self.decision, bluegreen.advance(self.facts))

    def describe(self) -> str:
        return colours.describe(self.decision)

    def workload_condition(self, seen: Observation) -> Verdict:
        """Ready when the serving colour runs the spec's release, healthy."""
        decision = self.decision
        failed = decision.held_back
        if failed is not None:
            history = decision.history
            reason = next((d.reason for d in history if d.release == failed.release and d.reason), "RolloutFailed")
            return False, reason, failed.message
        if decision.serve is None:
            return False, "Deploying", self.describe()
        if not seen.healthy:
            return False, "Unhealthy", seen.detail or f"the {decision.serve.value} colour is not healthy"
        record = decision.rollout
        if record is not None and record.step in colours.BEFORE_SWITCH:
            return True, "RollingOut", self.describe()
        return True, "Ready", self.describe()

    def serving_condition(self) -> Verdict:
        """Which colour takes the traffic, by name (reason Blue or Green), and what runs warm beside it."""
        if self.decision.serve is None:
            return False, "NothingServes", self.describe()
        return True, self.decision.serve.value.capitalize(), self.describe()

    def due_hook(self) -> DueHook | None:
        record = self.decision.rollout
        if not self.decision.run_hooks or record is None:
            return None
        name = self.decision.run_hooks[0]
        seen = self.facts.seen[record.new_colour]
        run = next((h for h in record.hooks if h.name == name), None)
        return DueHook(name, hook_named(self.spec, name), run, seen.state, seen.endpoints, record.new_colour.value,
                       self.facts.now)  # fmt: skip

    def hook_stepped(self, run: HookRun) -> None:
        record = self.decision.rollout
        assert record is not None, "a hook is due only during a rollout"
        decision = self.decision
        again = replace(self.facts, rollout=bluegreen.hook_result(record, run), serving=decision.serving,
                        history=tuple(decision.history))  # fmt: skip
        self.decision = colours.merge(decision, bluegreen.advance(again))


class RollingRollout:
    """The Deployment's own rolling update (`controller.loop.rollouts.rolling`)."""

    def __init__(self, facts: rolling.Facts, decision: rolling.Decision, raw: Observation) -> None:
        self.facts, self.decision, self.raw = facts, decision, raw

    @classmethod
    def begin(cls, facts: PassFacts, raw: Observation) -> RollingRollout:
        known = rolling.facts_for(facts.spec, facts.status, facts.wanted, raw, facts.now, facts.retry)
        return cls(known, rolling.advance(known), raw)

    def desired(self) -> State:
        return self.decision.target

    def view(self) -> Observation:
        return self.raw

    def saw(self, seen: Observation, observed: Mapping[Component, Observation], now: datetime) -> None:
        """A template just applied starts rolling: the record follows the Deployment."""
        self.raw = seen
        self.facts = rolling.refresh(self.facts, self.decision, seen, now)
        self.decision = rolling.merge(self.decision, rolling.advance(self.facts))

    def settle(self, observed: Mapping[Component, Observation], now: datetime) -> None:
        """Nothing to do: the Deployment routes its own traffic, and `saw` followed every look at it."""

    def describe(self) -> str:
        return rolling.describe(self.decision)

    def workload_condition(self, seen: Observation) -> Verdict | None:
        """Ready as long as enough Pods serve while a release rolls; None when nothing rolls or is held back."""
        failed = self.decision.held_back
        if failed is not None:
            return False, "RolloutFailed", failed.message
        record = self.decision.rollout
        if record is None or record.step is not RolloutStep.checking:
            return None
        rolled = rolling.seen_deployment(seen)
        if rolled is not None and rolled.serving and self.decision.serving is not None:
            return True, "RollingOut", self.describe()
        return False, "Deploying", self.describe()

    def serving_condition(self) -> Verdict:
        """Which ReplicaSet serves (reason ReplicaSet)."""
        if self.decision.serving is None:
            return False, "NothingServes", self.describe()
        return True, "ReplicaSet", self.describe()

    def due_hook(self) -> DueHook | None:
        return None  # this runtime runs no hooks (a HooksNotRun notice says so when some are declared)

    def hook_stepped(self, run: HookRun) -> None:
        raise AssertionError("no hook is ever due on a rolling update")

    def stale_hooks(self) -> list[StaleHook]:
        return []  # no hook runs on a rolling update
