"""Rollouts on runtime kubernetes: the Deployment's rolling update, recorded as blue-green's are.

Kubernetes already runs the health gate: a new Pod takes traffic only once its readiness
probe (``healthCheck``) passes, an old one goes only when a new one is ready
(``maxUnavailable: 0``), and a rollout that makes no progress for
``progressDeadlineSeconds`` (``startTimeoutSeconds``) is marked
``ProgressDeadlineExceeded``. What Kubernetes does not do is give up: it leaves the
broken Pods trying and the template pointing at them. This module adds what the issue
asks of every runtime, from what the Deployment and its ReplicaSets say:

* ``status.rollout`` and ``status.deployments`` record the rollout (the same records as
  blue-green's, with no colour): started when the Pod template changes, succeeded when
  every Pod is updated and available, failed at the progress deadline (the controller's
  ``ProgressDeadlineExceeded``, or the operator's own count of it, see `_Draft._stalled`);
* a failed release is rolled back: the Deployment gets the template of the ReplicaSet
  that ran before (Kubernetes scales that ReplicaSet back, its Pods never went away) and
  keeps it until the spec changes or ``codeb.dev/retry-rollout`` gets a new value; the
  Deployment is marked ``codeb.dev/held-back``, so a crash before the status write loses nothing;
* ``status.serving`` names the ReplicaSet whose Pods serve.

`advance` is pure, as `bluegreen.advance` is: facts in, a `Decision` out (what
the Deployment should run and the new records), no I/O and no clock. A release here is
the Pod template (what a change of it rolls); replicas, the Service port and the
deadline are not part of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from controller.loop.planner import Observation, State
from controller.loop.rollouts.records import HISTORY, Notice, hook_names, revision_label, update_history, what_changed
from schemas.project import (
    DeploymentRecord,
    ProjectSpec,
    ProjectStatus,
    Rollout,
    RolloutStatus,
    RolloutStep,
    ServingStatus,
)

# Keys of the workload state that are not the Pod template: changing them rolls no Pod.
OUTSIDE_TEMPLATE = frozenset({"port", "replicas", "autoscaling", "progressDeadlineSeconds", "objectsMatch", "heldBack"})
# Looking again while Pods roll: Kubernetes moves on by itself, the record follows it.
LOOK_AGAIN_SECONDS = 5.0


class Progress(StrEnum):
    complete = "Complete"  # every Pod runs the template and is available; no old Pod is left
    progressing = "Progressing"  # Pods are rolling, or the template is not yet seen by the controller
    stalled = "Stalled"  # ProgressDeadlineExceeded


def release_of(state: State) -> str:
    """Digest of the Pod template part of a workload state."""
    body = {k: v for k, v in state.items() if k not in OUTSIDE_TEMPLATE}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DeploymentSeen:
    """The Deployment as the workload driver observed it."""

    state: State  # what its template (and spec) say
    progress: Progress
    detail: str | None = None
    replica_set: str | None = None  # the ReplicaSet of its template
    previous: State | None = None  # the state of the ReplicaSet that ran before: the rollback
    serving: bool = False  # enough Pods are available to serve the replica count
    progressed_at: datetime | None = None  # when the controller last saw its Pods move on

    @property
    def release(self) -> str:
        return release_of(self.state)


@dataclass(frozen=True)
class Facts:
    wanted: State
    seen: DeploymentSeen | None
    settings: Rollout
    now: datetime
    rollout: RolloutStatus | None = None
    serving: ServingStatus | None = None
    history: tuple[DeploymentRecord, ...] = ()
    retry: str | None = None
    hooks: tuple[str, ...] = ()  # declared hooks, which this runtime does not run (said, not hidden)

    @property
    def release(self) -> str:
        return release_of(self.wanted)


@dataclass
class Decision:
    target: State  # what the Deployment should run
    rollout: RolloutStatus | None
    serving: ServingStatus | None
    history: list[DeploymentRecord]
    notices: list[Notice] = field(default_factory=list)
    wake_after: float | None = None
    finished: tuple[str, float] | None = None
    wanted: str = ""
    checks: list[bool] = field(default_factory=list)  # none: the kubelet counts readiness checks here

    @property
    def held_back(self) -> RolloutStatus | None:
        """The failed rollout of the release the spec still asks for: what Degraded reports."""
        r = self.rollout
        return r if r is not None and r.step is RolloutStep.failed and r.release == self.wanted else None


def seen_deployment(raw: Observation) -> DeploymentSeen | None:
    """The Deployment's state (``raw.state``) and progress (``raw.outputs["rollout"]``) as the driver reports them."""
    progress = raw.outputs.get("rollout")
    if raw.state is None or progress is None:
        return None
    previous = progress.get("previous")
    progressed = progress.get("progressedAt")
    return DeploymentSeen(
        state=raw.state,
        progress=Progress(progress["progress"]),
        detail=raw.detail,
        replica_set=progress.get("replicaSet"),
        previous=dict(previous) if previous is not None else None,
        serving=bool(progress.get("serving")),
        progressed_at=datetime.fromisoformat(progressed.replace("Z", "+00:00")) if progressed else None,
    )


def advance(facts: Facts) -> Decision:
    draft = _Draft(facts)
    record = facts.rollout
    if record is not None and record.colour is None and record.step is RolloutStep.checking:
        if record.release == facts.release:
            return draft.watch(record)
        seen = facts.seen
        if seen is not None and seen.release == record.release and seen.progress is Progress.complete:
            # It ended before this pass looked: it succeeded (its Pods served), and the new one starts from it.
            draft.succeed(record, seen)
        else:
            draft.close(record, RolloutStep.superseded, "Superseded", "the spec changed again before the rollout ended")
    return draft.settle()


def facts_for(
    spec: ProjectSpec, status: ProjectStatus, wanted: State, raw: Observation, now: datetime, retry: str | None
) -> Facts:
    """The facts of one pass, from the spec, the status as stored and the Deployment as seen (pure)."""
    return Facts(wanted=wanted, seen=seen_deployment(raw), settings=spec.project.rollout, now=now,
                 rollout=status.rollout, serving=status.serving, history=tuple(status.deployments),
                 retry=retry, hooks=hook_names(spec))  # fmt: skip


def refresh(facts: Facts, decision: Decision, raw: Observation, now: datetime) -> Facts:
    """The facts after this pass acted: the Deployment as it is now, and the decision's records."""
    return replace(facts, seen=seen_deployment(raw), rollout=decision.rollout, serving=decision.serving,
                   history=tuple(decision.history), now=now)  # fmt: skip


def merge(first: Decision, then: Decision) -> Decision:
    """A second decision in the same pass, keeping what the first one said."""
    return replace(then, notices=first.notices + then.notices, finished=then.finished or first.finished)


def describe(decision: Decision) -> str:
    """Which ReplicaSet serves and what is under way, in one line."""
    serving, record = decision.serving, decision.rollout
    parts = []
    if serving is not None:
        parts.append(f"ReplicaSet {serving.replica_set} serves {revision_label(serving.revision, serving.release)}")
    else:
        parts.append("nothing serves yet")
    if record is not None and record.step is RolloutStep.checking:
        parts.append(f"{revision_label(record.revision, record.release)} rolling: {record.message or 'starting'}")
    return "; ".join(parts)


class _Draft:
    def __init__(self, facts: Facts) -> None:
        self.facts = facts
        self.history = list(facts.history)
        self.serving = facts.serving if facts.serving is not None and facts.serving.colour is None else None
        self.notices: list[Notice] = []
        self.finished: tuple[str, float] | None = None
        self.closed = facts.rollout

    def settle(self) -> Decision:
        """No rollout under way: keep what runs the wanted release, hold a failed one back, or start one."""
        facts, seen = self.facts, self.facts.seen
        failed = self.closed
        if (
            failed is not None
            and failed.step is RolloutStep.failed
            and (failed.release, failed.retry) == (facts.release, facts.retry)
        ):
            return self._hold(failed)
        if seen is not None and seen.release == facts.release:
            if seen.progress is Progress.complete:
                self._now_serving(seen)
                return self._decision(facts.wanted, self.closed)
            if self.serving is not None and self.serving.release == facts.release:
                return self._decision(facts.wanted, self.closed)  # it served; now it is unhealthy, not rolling
        return self.watch(self._start())

    def _start(self) -> RolloutStatus:
        facts = self.facts
        record = RolloutStatus(release=facts.release, revision=facts.wanted.get("revision"),
                               image=facts.wanted.get("image"), step=RolloutStep.checking, started_at=facts.now,
                               retry=facts.retry)  # fmt: skip
        change = self._what_changed()
        entry = DeploymentRecord(revision=record.revision, image=record.image, release=record.release,
                                 started_at=facts.now, result="Progressing", message=change)  # fmt: skip
        self.history.insert(0, entry)
        del self.history[HISTORY:]
        self.notice("Normal", "RolloutStarted", f"{_label(record)} rolls out: {change}")
        if facts.hooks:
            self.notices.append(Notice("Warning", "HooksNotRun", f"{', '.join(facts.hooks)} not run: runtime "
                                       "kubernetes does not run features.apps or postDeployHooks yet (runtimes "
                                       "local and quadlet do)"))  # fmt: skip
        return record

    def watch(self, record: RolloutStatus) -> Decision:
        """The Deployment rolls the wanted template: follow it to the end, or roll back at its deadline."""
        facts, seen = self.facts, self.facts.seen
        if seen is not None and seen.state.get("heldBack") == _held(record):
            # Rolled back already by an operator that stopped before it could record the failure.
            return self._hold(self._fail(record, "was rolled back at its progress deadline"))
        if seen is None or seen.release != record.release:
            if (facts.now - record.started_at).total_seconds() > facts.settings.start_timeout_seconds:
                return self._hold(self._fail(record, "was never applied to the Deployment (see WorkloadReady)"))
            return self._decision(facts.wanted, record, wake=LOOK_AGAIN_SECONDS)  # being applied in this pass
        if seen.progress is Progress.complete:
            return self.succeed(record, seen)
        if seen.progress is Progress.stalled or self._stalled(record, seen):
            message = f"no progress within {facts.settings.start_timeout_seconds:g} s: {seen.detail or 'no detail'}"
            return self._hold(self._fail(record, message))
        record = record.model_copy(update={"message": seen.detail or "Pods rolling"})
        return self._decision(facts.wanted, record, wake=LOOK_AGAIN_SECONDS)

    def _stalled(self, record: RolloutStatus, seen: DeploymentSeen) -> bool:
        """No progress for the deadline since the rollout started or the Pods last moved on, by this
        operator's count (a template of an existing ReplicaSet is one the controller never times out)."""
        since = max(record.started_at, seen.progressed_at or record.started_at)
        return (self.facts.now - since).total_seconds() > self.facts.settings.start_timeout_seconds

    def succeed(self, record: RolloutStatus, seen: DeploymentSeen) -> Decision:
        facts = self.facts
        first = self.serving is None
        done = {"step": RolloutStep.succeeded, "switched_at": facts.now, "finished_at": facts.now,
                "message": f"ReplicaSet {seen.replica_set} serves"}  # fmt: skip
        record = record.model_copy(update=done)
        self._update_history(record, result="Succeeded", switched_at=facts.now, finished_at=facts.now)
        self.finished = ("Succeeded", (facts.now - record.started_at).total_seconds())
        self._now_serving(seen)
        if not first:
            self.notice("Normal", "RolloutSucceeded", f"{_label(record)} serves: every Pod updated and available")
        self.closed = record
        return self._decision(facts.wanted, record)

    def _fail(self, record: RolloutStatus, message: str) -> RolloutStatus:
        facts = self.facts
        record = record.model_copy(update={"step": RolloutStep.failed, "finished_at": facts.now, "message": message})
        self._update_history(record, result="Failed", reason="RolloutFailed", finished_at=facts.now, message=message)
        self.finished = ("Failed", (facts.now - record.started_at).total_seconds())
        back = "rolled back to what served before" if self.serving is not None else "nothing served before it"
        self.notice("Warning", "RolloutFailed", f"{_label(record)} {message}; {back}")
        self.closed = record
        return record

    def _hold(self, failed: RolloutStatus) -> Decision:
        """A failed release is not run again: the Deployment runs what served before it (or is left as it is)."""
        facts, seen = self.facts, self.facts.seen
        if seen is None:
            return self._decision(facts.wanted, failed)  # nothing exists any more: start it, without a new record
        rollback = self._rollback(failed)
        if rollback is not None:
            return self._decision(self._placed(rollback, failed), failed)
        if seen.progress is Progress.complete and seen.release != failed.release:
            self._now_serving(seen)
        return self._decision(self._placed(seen.state, failed), failed)

    def _rollback(self, failed: RolloutStatus) -> State | None:
        """The ReplicaSet before the failed one, while the Deployment still runs the failed template."""
        seen = self.facts.seen
        if seen is None or seen.release != failed.release or seen.previous is None:
            return None
        return seen.previous if release_of(seen.previous) != failed.release else None

    def _placed(self, template: State, failed: RolloutStatus) -> State:
        """A held template with what the spec says outside of it (replicas, port, deadline), and the
        failed release named on the Deployment."""
        wanted = self.facts.wanted
        kept = {k: v for k, v in template.items() if k not in OUTSIDE_TEMPLATE}
        outside = {k: v for k, v in wanted.items() if k in OUTSIDE_TEMPLATE}
        return {**kept, **outside, "environmentCurrent": True, "heldBack": _held(failed)}

    def close(self, record: RolloutStatus, step: RolloutStep, reason: str, message: str) -> None:
        record = record.model_copy(update={"step": step, "finished_at": self.facts.now, "message": message})
        self._update_history(record, result=step.value, reason=reason, finished_at=self.facts.now)
        self.notice("Normal", reason, f"{_label(record)}: {message}")
        self.closed = record

    # ------------------------------------------------------------ bookkeeping

    def _now_serving(self, seen: DeploymentSeen) -> None:
        record = self.serving
        if record is not None and (record.release, record.replica_set) == (seen.release, seen.replica_set):
            return
        self.serving = ServingStatus(release=seen.release, revision=seen.state.get("revision"),
                                     replica_set=seen.replica_set, since=self.facts.now)  # fmt: skip

    def _update_history(self, record: RolloutStatus, **changes: object) -> None:
        update_history(self.history, record, **changes)

    def _what_changed(self) -> str:
        facts, seen = self.facts, self.facts.seen
        if seen is None or self.serving is None:
            return "first deploy"
        return what_changed(seen.state, facts.wanted, OUTSIDE_TEMPLATE)

    def notice(self, type_: str, reason: str, message: str) -> None:
        # A first deploy's steps go unsaid (its status says them); its failure is said.
        if type_ == "Normal" and self.facts.serving is None and self.serving is None:
            return
        self.notices.append(Notice(type_, reason, message))

    def _decision(self, target: State, record: RolloutStatus | None, wake: float | None = None) -> Decision:
        return Decision(target=dict(target), rollout=record, serving=self.serving, history=self.history,
                        notices=self.notices, wake_after=wake, finished=self.finished,
                        wanted=self.facts.release)  # fmt: skip


def _held(record: RolloutStatus) -> str:
    """What the Deployment is marked with when this attempt fails: a retry is another attempt."""
    return f"{record.release}/{record.retry}" if record.retry else record.release


def _label(record: RolloutStatus) -> str:
    return revision_label(record.revision, record.release)
