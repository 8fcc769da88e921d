"""Rollouts on runtime kubernetes on plain data: each step, the rollback, and the worlds a crash leaves.

`Cluster` stands in for the Deployment controller with the few rules the state machine
relies on: a template applied becomes the newest ReplicaSet (an existing one with the
same template is reused, as Kubernetes does), a healthy template completes after one
look, a broken one stalls at the progress deadline. The real controller is exercised in
tests/apiserver/test_kubernetes_runtime.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from controller.loop.planner import State
from controller.loop.rollouts.rolling import Decision, DeploymentSeen, Facts, Progress, advance, merge, release_of
from schemas.project import Rollout, RolloutStatus, RolloutStep

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DEADLINE = 30
SETTINGS = Rollout.model_validate({"startTimeoutSeconds": DEADLINE})


def wanted(revision: str, replicas: int = 2) -> State:
    return {"instance": "shop", "image": f"shop:{revision}", "revision": revision, "replicas": replicas,
            "port": 4512, "heldBack": None, "environmentCurrent": True, "objectsMatch": True}  # fmt: skip


@dataclass
class Cluster:
    broken: set[str] = field(default_factory=set)  # revisions whose Pods never become ready
    sets: list[State] = field(default_factory=list)  # ReplicaSet templates, newest first
    deployment: State | None = None
    applied_at: datetime = T0
    looks: int = 0  # looks since the template was applied
    now: datetime = T0
    applies: list[str] = field(default_factory=list)

    def apply(self, state: State) -> None:
        if self.deployment == state:
            return
        changed = self.deployment is None or release_of(self.deployment) != release_of(state)
        self.deployment = dict(state)
        self.applies.append(str(state["revision"]))
        if changed:
            self.sets = [s for s in self.sets if release_of(s) != release_of(state)]
            self.sets.insert(0, dict(state))
            self.applied_at, self.looks = self.now, 0

    def seen(self) -> DeploymentSeen | None:
        if self.deployment is None:
            return None
        self.looks += 1
        broken = self.deployment["revision"] in self.broken
        if not broken and self.looks > 1:
            progress = Progress.complete
        elif broken and (self.now - self.applied_at).total_seconds() > DEADLINE:
            progress = Progress.stalled
        else:
            progress = Progress.progressing
        previous = self.sets[1] if len(self.sets) > 1 else None
        detail = "Pod shop-x CrashLoopBackOff" if broken else None
        return DeploymentSeen(state=self.deployment, progress=progress, detail=detail,
                              replica_set=f"shop-{self.deployment['revision']}", previous=previous,
                              serving=len(self.sets) > 1 or progress is Progress.complete)  # fmt: skip


def facts(cluster: Cluster, revision: str, before: Decision | None, retry: str | None = None, **spec: int) -> Facts:
    return Facts(wanted=wanted(revision, **spec), seen=cluster.seen(), settings=SETTINGS, now=cluster.now,
                 rollout=before.rollout if before else None, serving=before.serving if before else None,
                 history=tuple(before.history) if before else (), retry=retry)  # fmt: skip


def pass_(cluster: Cluster, revision: str, before: Decision | None, seconds: float = 5, **extra: object) -> Decision:
    """One reconcile pass: decide, apply the target, look again and record what is seen."""
    cluster.now += timedelta(seconds=seconds)
    first = advance(facts(cluster, revision, before, **extra))  # type: ignore[arg-type]
    cluster.apply(first.target)
    return merge(first, advance(facts(cluster, revision, first, **extra)))  # type: ignore[arg-type]


def until(cluster: Cluster, revision: str, decision: Decision | None, step: RolloutStep, **extra: object) -> Decision:
    for _ in range(20):
        decision = pass_(cluster, revision, decision, **extra)
        if decision.rollout is not None and decision.rollout.step is step:
            return decision
    raise AssertionError(f"never reached {step}: {decision}")


def test_a_first_deploy_is_recorded_and_serves_once_every_pod_is_available() -> None:
    cluster = Cluster()
    decision = pass_(cluster, "1", None)
    assert decision.rollout is not None and decision.rollout.step is RolloutStep.checking
    assert decision.serving is None and decision.notices == []  # a first deploy's steps go unsaid
    decision = until(cluster, "1", decision, RolloutStep.succeeded)
    assert decision.serving is not None and decision.serving.replica_set == "shop-1"
    assert decision.serving.colour is None and decision.serving.revision == "1"
    assert [(d.revision, d.result) for d in decision.history] == [("1", "Succeeded")]
    assert decision.finished is not None and decision.finished[0] == "Succeeded"


def test_a_new_revision_rolls_and_is_recorded_with_events() -> None:
    cluster = Cluster()
    decision = until(cluster, "1", None, RolloutStep.succeeded)
    decision = pass_(cluster, "2", decision)
    assert [n.reason for n in decision.notices] == ["RolloutStarted"]
    assert decision.rollout is not None and decision.rollout.step is RolloutStep.checking
    assert decision.serving is not None and decision.serving.revision == "1"  # the old Pods serve meanwhile
    decision = until(cluster, "2", decision, RolloutStep.succeeded)
    assert "RolloutSucceeded" in [n.reason for n in decision.notices]
    assert decision.serving is not None and decision.serving.revision == "2"
    assert [(d.revision, d.result) for d in decision.history] == [("2", "Succeeded"), ("1", "Succeeded")]
    assert decision.history[0].message == "revision 1 → 2"


def test_a_scale_is_not_a_rollout() -> None:
    cluster = Cluster()
    decision = until(cluster, "1", None, RolloutStep.succeeded)
    decision = pass_(cluster, "1", decision, replicas=5)
    assert decision.target["replicas"] == 5 and len(decision.history) == 1 and decision.notices == []


def test_a_revision_that_stalls_is_rolled_back_and_held_until_the_spec_or_a_retry_changes() -> None:
    cluster = Cluster(broken={"2"})
    decision = until(cluster, "1", None, RolloutStep.succeeded)
    decision = until(cluster, "2", decision, RolloutStep.failed)
    record = decision.rollout
    assert record is not None and "no progress within 30 s: Pod shop-x CrashLoopBackOff" in record.message
    assert decision.held_back is record
    assert [n.reason for n in decision.notices if n.type == "Warning"] == ["RolloutFailed"]
    # Rolled back: the Deployment runs revision 1 again, marked with what it holds back.
    assert cluster.deployment is not None and cluster.deployment["revision"] == "1"
    assert cluster.deployment["heldBack"] == record.release
    assert decision.serving is not None and decision.serving.revision == "1"
    assert (decision.history[0].result, decision.history[0].reason) == ("Failed", "RolloutFailed")
    # The same broken revision is not started again, however long one waits; a scale still applies.
    applied = len(cluster.applies)
    for _ in range(10):
        decision = pass_(cluster, "2", decision, seconds=60)
    decision = pass_(cluster, "2", decision, replicas=4)
    assert decision.held_back is not None and cluster.deployment["revision"] == "1"
    assert cluster.applies[applied:] == ["1"] and cluster.deployment["replicas"] == 4
    assert len(decision.history) == 2
    # A retry is another attempt: it rolls revision 2 again (and fails again).
    decision = pass_(cluster, "2", decision, retry="a")
    assert decision.rollout is not None and decision.rollout.step is RolloutStep.checking
    assert cluster.deployment["revision"] == "2" and cluster.deployment["heldBack"] is None
    decision = until(cluster, "2", decision, RolloutStep.failed, retry="a")
    assert cluster.deployment["revision"] == "1"
    # A new revision is a new rollout.
    cluster.broken.clear()
    decision = until(cluster, "3", decision, RolloutStep.succeeded, retry="a")
    assert decision.held_back is None and cluster.deployment["heldBack"] is None


def test_a_first_deploy_that_stalls_is_left_as_it_is_and_not_started_again() -> None:
    cluster = Cluster(broken={"1"})
    decision = until(cluster, "1", None, RolloutStep.failed)
    assert decision.serving is None and decision.held_back is not None
    assert [n.reason for n in decision.notices] == ["RolloutFailed"]  # its failure is said
    for _ in range(5):
        decision = pass_(cluster, "1", decision, seconds=60)
    assert len(decision.history) == 1 and cluster.deployment is not None and cluster.deployment["revision"] == "1"


def test_a_spec_change_while_pods_roll_supersedes_the_rollout() -> None:
    cluster = Cluster(broken={"2"})
    decision = until(cluster, "1", None, RolloutStep.succeeded)
    decision = pass_(cluster, "2", decision)
    decision = pass_(cluster, "3", decision)
    assert [(d.revision, d.result) for d in decision.history][:2] == [("3", "Progressing"), ("2", "Superseded")]
    decision = until(cluster, "3", decision, RolloutStep.succeeded)
    assert decision.serving is not None and decision.serving.revision == "3"


def test_a_rollout_that_ended_before_the_spec_changed_is_recorded_as_succeeded() -> None:
    """Its Pods all rolled and served, but no pass looked before the next revision came: not superseded."""
    cluster = Cluster()
    decision = until(cluster, "1", None, RolloutStep.succeeded)
    decision = pass_(cluster, "2", decision)
    assert decision.rollout is not None and decision.rollout.step is RolloutStep.checking
    cluster.looks += 1  # the Deployment controller finished revision 2 meanwhile
    decision = pass_(cluster, "3", decision)
    assert [(d.revision, d.result) for d in decision.history][:3] == [
        ("3", "Progressing"), ("2", "Succeeded"), ("1", "Succeeded")]  # fmt: skip
    assert "RolloutSucceeded" in [n.reason for n in decision.notices]
    decision = until(cluster, "3", decision, RolloutStep.succeeded)
    assert decision.serving is not None and decision.serving.revision == "3"


# ---------------------------------------------------------------- the worlds a crash leaves


def test_a_template_applied_but_never_recorded_is_followed_to_its_end() -> None:
    cluster = Cluster()
    done = until(cluster, "1", None, RolloutStep.succeeded)
    cluster.apply(wanted("2"))  # applied; the operator died before status said so
    decision = until(cluster, "2", done, RolloutStep.succeeded)
    assert [(d.revision, d.result) for d in decision.history] == [("2", "Succeeded"), ("1", "Succeeded")]


def test_a_stall_never_recorded_is_rolled_back_at_the_next_look() -> None:
    cluster = Cluster(broken={"2"})
    done = until(cluster, "1", None, RolloutStep.succeeded)
    cluster.apply(wanted("2"))
    cluster.now += timedelta(seconds=DEADLINE + 5)
    decision = pass_(cluster, "2", done)
    assert decision.rollout is not None and decision.rollout.step is RolloutStep.failed
    assert cluster.deployment is not None and cluster.deployment["revision"] == "1"


def test_a_rollback_applied_but_never_recorded_is_not_rolled_forward_again() -> None:
    cluster = Cluster(broken={"2"})
    decision = until(cluster, "1", None, RolloutStep.succeeded)
    rolling = pass_(cluster, "2", decision)
    assert rolling.rollout is not None and rolling.rollout.step is RolloutStep.checking
    # The operator applied the rollback, then died before it wrote the failed record.
    cluster.apply({**wanted("1"), "heldBack": rolling.rollout.release})
    applied = len(cluster.applies)
    decision = pass_(cluster, "2", rolling)
    assert decision.rollout is not None and decision.rollout.step is RolloutStep.failed
    assert cluster.applies[applied:] == [] and cluster.deployment is not None
    assert cluster.deployment["revision"] == "1"


def test_a_record_of_the_blue_green_runtimes_is_not_followed() -> None:
    foreign = RolloutStatus.model_validate(
        {"release": release_of(wanted("1")), "colour": "green", "step": "Checking", "startedAt": T0.isoformat()}
    )
    first = advance(Facts(wanted=wanted("1"), seen=None, settings=SETTINGS, now=T0, rollout=foreign))
    assert first.rollout is not None and first.rollout.colour is None and first.rollout is not foreign


def test_hooks_this_runtime_does_not_run_are_said_at_each_rollout() -> None:
    cluster = Cluster()
    said = advance(Facts(wanted=wanted("1"), seen=cluster.seen(), settings=SETTINGS, now=T0, hooks=("app-shop",)))
    assert [(n.type, n.reason) for n in said.notices] == [("Warning", "HooksNotRun")]
    assert "app-shop not run" in said.notices[0].message


def test_a_rollout_the_controller_never_times_out_fails_by_the_operators_count() -> None:
    """A template set back to an existing ReplicaSet keeps the old NewReplicaSetAvailable condition,
    which Kubernetes never turns into ProgressDeadlineExceeded."""
    cluster = Cluster()
    done = until(cluster, "1", None, RolloutStep.succeeded)
    started = pass_(cluster, "2", done)
    stuck = DeploymentSeen(state=wanted("2"), progress=Progress.progressing, previous=wanted("1"), serving=True)
    later = T0 + timedelta(seconds=DEADLINE) + (cluster.now - T0)

    def look(at: datetime, progressed: datetime | None) -> Decision:
        seen = DeploymentSeen(**{**stuck.__dict__, "progressed_at": progressed})
        return advance(Facts(wanted=wanted("2"), seen=seen, settings=SETTINGS, now=at, rollout=started.rollout,
                             serving=started.serving, history=tuple(started.history)))  # fmt: skip

    assert look(later - timedelta(seconds=1), None).rollout.step is RolloutStep.checking  # type: ignore[union-attr]
    # Pods that moved on recently are progress: the count starts again from there.
    moving = look(later + timedelta(seconds=5), later)
    assert moving.rollout is not None and moving.rollout.step is RolloutStep.checking
    failed = look(later + timedelta(seconds=5), None)
    assert failed.rollout is not None and failed.rollout.step is RolloutStep.failed
    assert failed.target["revision"] == "1"
