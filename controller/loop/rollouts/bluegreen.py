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

from datetime import datetime, timedelta

from controller.loop.planner import State
from controller.loop.rollouts.colours import ACTIVE, BEFORE_SWITCH, PLACEMENT_KEYS, Decision, Facts
from controller.loop.rollouts.records import HISTORY, Notice, release_label, update_history, what_changed
from schemas.project import (
    Colour,
    DeploymentRecord,
    HookRun,
    ProjectSpec,
    RolloutStatus,
    RolloutStep,
    Runtime,
    ServingStatus,
)

# What status.serving says of the warm colour.
WARM_FIELDS = ("warm", "warm_release", "warm_revision", "warm_until")
# A check counts when at least this share of the interval has passed since the last one
# (passes triggered by other events in between do not count twice).
DUE_SHARE = 0.9
# How often a running post-deploy hook is looked at (one short command on its machine).
HOOK_FOLLOW_SECONDS = 3.0


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
        self.notice("Normal", "RolloutStarted", f"{release_label(record)} starts as {colour.value} on port "
                    f"{facts.ports.get(colour)}: {change}", record)  # fmt: skip
        seen = facts.seen.get(colour)
        if seen is not None and seen.release == release and seen.healthy and serving is not None:
            # Still warm from an earlier deploy and answering now: no new start, no hooks again.
            self.checks.append(True)
            self.notice("Normal", "WarmColour", f"{colour.value} still runs {release_label(record)}: switching back")
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
        message = f"{record.new_colour.value} serves {release_label(record)}; {old} drains for {drain:g} s"
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
            "Normal",
            "RolloutSucceeded",
            f"{release_label(record)} serves as {record.new_colour.value}; {after}",
            record,
        )
        self.closed = record
        return self._decision(targets, record.new_colour, record, wake=warm_for if old in targets else None)

    def _fail(self, record: RolloutStatus, reason: str, message: str) -> RolloutStatus:
        facts = self.facts
        record = record.model_copy(update={"step": RolloutStep.failed, "finished_at": facts.now, "message": message})
        self._update_history(record, result="Failed", reason=reason, finished_at=facts.now, message=message)
        self.finished = ("Failed", _seconds(facts.now, record.started_at))
        kept = f"{record.previous.value} keeps serving" if record.previous else "nothing serves yet"
        self.notice("Warning", reason, f"{release_label(record)} never took traffic ({kept}): {message}")
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
        self.notice("Normal", reason, f"{release_label(record)}: {message}")
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
        return what_changed(facts.seen[serving].state, facts.wanted, PLACEMENT_KEYS)

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


def abandoned_runs(stored: RolloutStatus | None, decided: RolloutStatus | None) -> list[HookRun]:
    """Hook runs the stored rollout had going that the decision no longer follows (it was superseded,
    rolled back, or ended): stopped now, not left running to their own timeout beside a newer release."""
    running = [run for run in (stored.hooks if stored is not None else []) if run.result == "Running" and run.run_id]
    if stored is None or not running:
        return []
    followed = (decided is not None and decided.step is RolloutStep.hooks
                and (decided.started_at, decided.release) == (stored.started_at, stored.release))  # fmt: skip
    return [] if followed else running


def hook_result(record: RolloutStatus, run: HookRun) -> RolloutStatus:
    """The record with this hook's run as it now stands (a restart finds it, and never starts it again)."""
    return record.model_copy(update={"hooks": [*(h for h in record.hooks if h.name != run.name), run]})


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def blue_green(spec: ProjectSpec) -> bool:
    """Runtimes whose colours run side by side on two ports: local (two processes) and quadlet
    (two units on every host). Kubernetes rolls Pods behind one Service instead, with the same
    health gate (`controller.loop.planner`)."""
    return spec.servers.runtime in (Runtime.local, Runtime.quadlet)
