"""The blue-green state machine on plain data: each step, each failure, and the worlds a crash leaves."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.loop.planner import State
from controller.loop.rollouts.bluegreen import HOOK_FOLLOW_SECONDS, abandoned_runs, advance, hook_result
from controller.loop.rollouts.colours import ColourSeen, Decision, Facts, merge, release_of
from schemas.project import Colour, HookRun, Rollout, RolloutStep

BLUE, GREEN = Colour.blue, Colour.green
PORTS = {BLUE: 4500, GREEN: 4501}
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
FAST = Rollout.model_validate(
    {"healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1, "healthyThreshold": 2, "unhealthyThreshold": 3},
     "startTimeoutSeconds": 30, "drainSeconds": 5, "keepWarmSeconds": 60}
)  # fmt: skip


def release(revision: str) -> State:
    return {"revision": revision, "command": ["app"], "variables": {}}


@dataclass
class World:
    """Colours and a route as drivers would report them; `run` carries a decision out like the reconciler."""

    health: dict[str, bool | None] = field(default_factory=dict)  # revision -> healthy (None: never answers)
    colours: dict[Colour, State] = field(default_factory=dict)
    routed: Colour | None = None
    now: datetime = T0
    facts: Facts | None = None

    def seen(self) -> dict[Colour, ColourSeen]:
        found = {}
        for colour, state in self.colours.items():
            healthy = self.health.get(state["revision"], True)
            detail, endpoint = None if healthy else "answered 503", f"127.0.0.1:{state['port']}"
            found[colour] = ColourSeen(state=state, healthy=bool(healthy), detail=detail, endpoints=(endpoint,),
                                       answered=healthy is not None)  # fmt: skip
        return found

    def look(self, wanted: str, decision: Decision | None = None, **changes: Any) -> Facts:
        previous = decision
        facts = Facts(
            wanted=release(wanted), ports=PORTS, seen=self.seen(), routed=self.routed, settings=FAST, now=self.now,
            rollout=previous.rollout if previous else None, serving=previous.serving if previous else None,
            history=tuple(previous.history) if previous else (),
        )  # fmt: skip
        return replace(facts, **changes)

    def run(self, decision: Decision) -> None:
        """Carry out a decision whole: the colours, then the route."""
        self.colours = {colour: dict(state) for colour, state in decision.targets.items()}
        self.route(decision)

    def route(self, decision: Decision) -> None:
        serve = decision.serve
        if serve is not None and serve in self.colours and self.seen()[serve].healthy:
            self.routed = serve

    def pass_(self, wanted: str, decision: Decision | None, seconds: float = 1.0, **changes: Any) -> Decision:
        """One reconcile pass as the reconciler runs it: decide; start and stop colours; look again
        (the rollout moves on); route to the colour that serves now; look once more to record it."""
        self.now += timedelta(seconds=seconds)
        first = advance(self.look(wanted, decision, **changes))
        self.colours = {colour: dict(state) for colour, state in first.targets.items()}
        second = advance(self.look(wanted, first, **changes))
        self.route(second)
        return merge(merge(first, second), advance(self.look(wanted, second, **changes)))


def deployed(world: World, revision: str) -> Decision:
    decision = world.pass_(revision, None)
    assert decision.rollout is not None and decision.rollout.step is RolloutStep.succeeded
    return decision


def test_a_first_deploy_serves_once_healthy_and_says_nothing_on_the_way() -> None:
    world = World()
    decision = deployed(world, "r1")
    assert world.routed is BLUE and set(world.colours) == {BLUE}
    assert decision.serving is not None and decision.serving.colour is BLUE and decision.serving.revision == "r1"
    assert [d.result for d in decision.history] == ["Succeeded"] and decision.notices == []


def test_a_new_revision_starts_green_passes_the_gate_switches_drains_and_keeps_blue_warm() -> None:
    world = World()
    d = deployed(world, "r1")
    d = world.pass_("r2", d)
    assert d.rollout is not None and d.rollout.colour is GREEN and d.rollout.step is RolloutStep.checking
    assert world.colours[GREEN]["port"] == 4501 and world.colours[BLUE]["revision"] == "r1"
    assert world.routed is BLUE and d.rollout.healthy_checks == 1  # one check: not yet
    d = world.pass_("r2", d, seconds=0.2)
    assert d.rollout is not None and d.rollout.healthy_checks == 1  # not due: the interval has not passed
    d = world.pass_("r2", d, seconds=1.0)
    assert d.rollout is not None and d.rollout.step is RolloutStep.draining and world.routed is GREEN
    assert set(world.colours) == {BLUE, GREEN}  # blue drains
    d = world.pass_("r2", d, seconds=5.0)
    assert d.rollout is not None and d.rollout.step is RolloutStep.succeeded
    assert d.serving is not None and d.serving.colour is GREEN and d.serving.warm is BLUE
    assert [n.reason for n in d.notices] == ["RolloutSucceeded"]
    d = world.pass_("r2", d, seconds=60)
    assert set(world.colours) == {GREEN} and d.serving is not None and d.serving.warm is None
    assert [(h.revision, h.result) for h in d.history] == [("r2", "Succeeded"), ("r1", "Succeeded")]


def test_a_host_added_or_taken_away_moves_the_serving_colour_and_is_no_new_release() -> None:
    """Hosts are where a colour runs, like its port: a scale-up or scale-down reaches the serving colour
    in place (the route follows its healthy hosts); only what runs there starts a rollout."""
    world = World()
    two = {"hosts": ["10.0.0.1", "10.0.0.2"]}
    d = world.pass_("r1", None, placement=two)
    assert world.colours[BLUE]["hosts"] == two["hosts"] and world.routed is BLUE
    for hosts in (["10.0.0.1"], ["10.0.0.1", "10.0.0.3", "10.0.0.4"]):
        d = world.pass_("r1", d, placement={"hosts": hosts})
        assert set(world.colours) == {BLUE} and world.colours[BLUE]["hosts"] == hosts
        assert d.rollout is not None and d.rollout.step is RolloutStep.succeeded and len(d.history) == 1
    d = world.pass_("r2", d, placement={"hosts": ["10.0.0.1"]})
    assert d.rollout is not None and d.rollout.colour is GREEN and world.colours[GREEN]["hosts"] == ["10.0.0.1"]
    assert world.colours[BLUE]["hosts"] == ["10.0.0.1", "10.0.0.3", "10.0.0.4"]  # left exactly as it runs


def test_a_broken_revision_never_takes_traffic_and_is_not_retried_in_a_loop() -> None:
    world = World(health={"bad": False})
    d = deployed(world, "r1")
    for _ in range(3):
        d = world.pass_("bad", d)
        assert world.routed is BLUE
    assert d.rollout is not None and d.rollout.step is RolloutStep.failed and d.held_back is d.rollout
    assert "failed 3 consecutive health checks: answered 503" in d.rollout.message
    assert set(world.colours) == {BLUE} and d.serve is BLUE  # green stopped, blue serves on
    assert [(n.type, n.reason) for n in d.notices] == [("Warning", "RolloutFailed")]
    d = world.pass_("bad", d, seconds=100)
    assert set(world.colours) == {BLUE} and d.rollout is not None and d.rollout.step is RolloutStep.failed
    # The retry annotation starts it once more; so does a new spec.
    # Set back to the serving release: healthy again, the failure is history.
    assert world.pass_("r1", d).held_back is None
    d = world.pass_("bad", d, retry="2026-11-24T12:05")
    assert d.rollout is not None and d.rollout.step is RolloutStep.checking and GREEN in world.colours


def test_a_revision_that_passes_then_fails_before_the_switch_never_takes_traffic() -> None:
    world = World()
    d = deployed(world, "r1")
    d = world.pass_("flaky", d)  # one healthy check
    world.health["flaky"] = False
    for _ in range(3):
        d = world.pass_("flaky", d)
        assert world.routed is BLUE
    assert d.rollout is not None and d.rollout.step is RolloutStep.failed and d.rollout.healthy_checks == 0


def test_a_colour_still_starting_is_not_failed_until_the_start_timeout() -> None:
    world = World(health={"slow": None})
    d = deployed(world, "r1")
    for _ in range(5):
        d = world.pass_("slow", d)
    assert d.rollout is not None and d.rollout.step is RolloutStep.checking and d.rollout.unhealthy_checks == 0
    d = world.pass_("slow", d, seconds=30)
    assert d.rollout is not None and d.rollout.step is RolloutStep.failed
    assert "did not pass the health gate within 30 s" in d.rollout.message


def test_setting_the_revision_back_switches_to_the_warm_colour_in_one_pass() -> None:
    world = World()
    d = deployed(world, "r1")
    for seconds in (1, 1, 5):
        d = world.pass_("r2", d, seconds=seconds)
    green_pid_stand_in = dict(world.colours[GREEN])
    d = world.pass_("r1", d)
    assert world.routed is BLUE and d.rollout is not None and d.rollout.step is RolloutStep.draining
    assert world.colours[GREEN] == green_pid_stand_in  # the colour being left drains, untouched
    assert [n.reason for n in d.notices] == ["RolloutStarted", "WarmColour", "TrafficSwitched"]


def test_a_spec_change_before_the_switch_supersedes_the_rollout() -> None:
    world = World()
    d = deployed(world, "r1")
    d = world.pass_("r2", d)
    d = world.pass_("r3", d)
    assert d.rollout is not None and d.rollout.revision == "r3" and world.colours[GREEN]["revision"] == "r3"
    assert [(h.revision, h.result) for h in d.history][:2] == [("r3", "Progressing"), ("r2", "Superseded")]


def test_a_spec_change_while_draining_waits_for_the_drain() -> None:
    world = World()
    d = deployed(world, "r1")
    d = world.pass_("r2", d)
    d = world.pass_("r2", d)
    assert d.rollout is not None and d.rollout.step is RolloutStep.draining
    d = world.pass_("r3", d)
    assert world.colours[BLUE]["revision"] == "r1" and world.routed is GREEN  # blue's requests finish first
    d = world.pass_("r3", d, seconds=5)
    d = world.pass_("r3", d)
    assert d.rollout is not None and d.rollout.revision == "r3" and world.colours[BLUE]["revision"] == "r3"


def test_hooks_run_once_after_the_gate_and_a_failed_hook_fails_the_rollout() -> None:
    world = World()
    d = deployed(world, "r1")
    d = world.pass_("r2", d, hooks=("migrate", "seed"))
    d = advance(world.look("r2", d, hooks=("migrate", "seed"), now=world.now + timedelta(seconds=1)))
    assert d.rollout is not None and d.rollout.step is RolloutStep.hooks and d.run_hooks == ("migrate",)  # in order
    running = hook_result(d.rollout, HookRun(name="migrate", result="Running", run_id="0123456789ab", started_at=T0))
    still = advance(world.look("r2", replace(d, rollout=running), hooks=("migrate", "seed"), now=world.now))
    assert still.run_hooks == ("migrate",) and still.serve is BLUE  # followed to its end; nothing switches
    assert still.wake_after == HOOK_FOLLOW_SECONDS
    ran = hook_result(running, HookRun(name="migrate", result="Succeeded", finished_at=T0))
    again = advance(world.look("r2", replace(d, rollout=ran), hooks=("migrate", "seed"), now=world.now))
    assert again.run_hooks == ("seed",)  # a finished hook is not run again
    failed = hook_result(ran, HookRun(name="seed", result="Failed", finished_at=T0, message="exit 1"))
    d = advance(world.look("r2", replace(d, rollout=failed), hooks=("migrate", "seed"), now=world.now))
    assert d.rollout is not None and d.rollout.step is RolloutStep.failed and d.serve is BLUE
    assert d.history[0].reason == "HookFailed" and "hook seed failed: exit 1" in d.rollout.message


# ---------------------------------------------------------------- crashes between two steps


def test_a_switch_status_never_recorded_is_found_in_the_route() -> None:
    world = World()
    d = deployed(world, "r1")
    d = world.pass_("r2", d)
    before_switch = d
    world.now += timedelta(seconds=1)
    world.run(advance(world.look("r2", before_switch)))  # the route moved; then the operator died
    assert world.routed is GREEN
    resumed = advance(world.look("r2", before_switch))  # status still says Checking
    assert resumed.rollout is not None and resumed.rollout.step is RolloutStep.draining and resumed.serve is GREEN


def test_a_colour_started_before_status_recorded_the_rollout_is_adopted_not_restarted() -> None:
    world = World()
    d = deployed(world, "r1")
    world.now += timedelta(seconds=1)
    world.run(advance(world.look("r2", d)))  # green started; status never written
    green = dict(world.colours[GREEN])
    resumed = advance(world.look("r2", d, now=world.now + timedelta(seconds=1)))
    assert resumed.targets[GREEN] == green and resumed.rollout is not None
    assert resumed.rollout.colour is GREEN and resumed.rollout.healthy_checks == 1


def test_status_lost_entirely_the_route_says_who_serves() -> None:
    world = World()
    deployed(world, "r1")
    d = advance(world.look("r1"))
    assert d.serve is BLUE and d.targets == {BLUE: world.colours[BLUE]} and d.rollout is None


def test_every_crash_point_of_a_rollout_ends_in_one_colour_serving_the_wanted_release() -> None:
    """Stop after each half-pass (acting, or only deciding), forget what was decided, resume."""
    for crash_after in range(12):
        world = World()
        d = deployed(world, "r1")
        record: Decision | None = d
        for step in range(crash_after):
            world.now += timedelta(seconds=1.5)
            decision = advance(world.look("r2", record))
            world.run(decision)
            record = decision if step % 2 else record  # every other status write is lost
        for _ in range(12):
            record = world.pass_("r2", record, seconds=2)
        assert record is not None and world.routed is GREEN, crash_after
        assert release_of(world.colours[GREEN]) == release_of(release("r2"))
        assert record.rollout is not None and record.rollout.step is RolloutStep.succeeded


def test_a_start_window_that_ran_out_while_nobody_watched_is_counted_again() -> None:
    """`codeb up` stopped mid-rollout (everything with it) and came back a day later: green is started
    and judged afresh, not failed and held for a timeout no operator was there to see."""
    world = World()
    before = deployed(world, "r1")
    started = world.pass_("r2", before)  # green starts
    assert started.rollout is not None and started.rollout.step is RolloutStep.checking
    world.colours, world.routed = {}, None  # the machine stopped: nothing runs, nothing is routed
    world.now += timedelta(days=1)
    came_back = world.now  # the operator that starts then
    back = world.pass_("r2", started, watching_since=came_back)
    assert back.rollout is not None and back.rollout.step is not RolloutStep.failed, back.rollout
    assert GREEN in back.targets
    for _ in range(5):
        back = world.pass_("r2", back, watching_since=came_back)
    assert back.rollout is not None and back.rollout.step is RolloutStep.succeeded and world.routed is GREEN
    # The same outage with the operator watching throughout is still a failure.
    failed = world.pass_("r3", back)
    world.colours = {c: s for c, s in world.colours.items() if s["revision"] != "r3"}
    world.now += timedelta(seconds=60)
    failed = advance(world.look("r3", failed))
    assert failed.rollout is not None and failed.rollout.step is RolloutStep.failed


def test_a_serving_colour_found_stopped_is_started_again_not_deployed_anew() -> None:
    world = World()
    steady = deployed(world, "r1")
    history = [(d.revision, d.result) for d in steady.history]
    world.colours = {}  # stopped with everything else
    again = world.pass_("r1", steady)
    assert world.routed is BLUE and set(world.colours) == {BLUE}
    assert [(d.revision, d.result) for d in again.history] == history  # no second "first deploy"
    assert again.serving is not None and again.serving.colour is BLUE


def test_the_warm_record_never_names_the_serving_colour() -> None:
    world = World()
    steady = deployed(world, "r1")
    assert steady.serving is not None
    stale = steady.serving.model_copy(update={"warm": BLUE, "warm_release": steady.serving.release,
                                              "warm_until": world.now + timedelta(hours=1)})  # fmt: skip
    decision = advance(replace(world.look("r1", steady), serving=stale))
    assert decision.serving is not None and decision.serving.colour is BLUE and decision.serving.warm is None


def test_a_hook_running_when_its_rollout_is_superseded_is_named_for_stopping() -> None:
    world = World()
    d = deployed(world, "r1")
    d = world.pass_("r2", d)
    assert d.rollout is not None
    running = HookRun(name="migrate", result="Running", run_id="0123456789ab", started_at=world.now)
    stored = d.rollout.model_copy(update={"step": RolloutStep.hooks, "hooks": [running]})
    # Still the rollout it belongs to, at its hooks: followed, not stopped.
    assert abandoned_runs(stored, stored) == []
    # The spec moved on: that rollout is closed and another starts; its run is left behind.
    d = world.pass_("r3", replace(d, rollout=stored))
    assert d.rollout is not None and d.rollout.revision == "r3"
    assert abandoned_runs(stored, d.rollout) == [running]
    assert abandoned_runs(stored, None) == [running]  # rolled back, or nothing rolls any more
    finished = running.model_copy(update={"result": "Succeeded"})
    assert abandoned_runs(stored.model_copy(update={"hooks": [finished]}), d.rollout) == []  # nothing left going
