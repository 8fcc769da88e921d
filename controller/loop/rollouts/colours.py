"""Blue-green on plain data: what each colour was seen running and answering, the facts of a
pass and the decision it reaches.

The state machine that moves a rollout on is `controller.loop.rollouts.bluegreen`; this
module holds what it reads and returns, and how a decision looks from outside (`view`,
`desired`, `describe`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from controller.loop.planner import Observation, State
from controller.loop.rollouts.records import Notice, hook_names, release_label, revision_label
from schemas.project import (
    Allocations,
    Colour,
    DeploymentRecord,
    ProjectSpec,
    ProjectStatus,
    Rollout,
    RolloutStatus,
    RolloutStep,
    ServingStatus,
)

ACTIVE = frozenset({RolloutStep.checking, RolloutStep.hooks, RolloutStep.switching, RolloutStep.draining})


BEFORE_SWITCH = frozenset({RolloutStep.checking, RolloutStep.hooks, RolloutStep.switching})


# Keys of a colour's state that are where it runs, not what it runs: a host added or taken
# away moves the serving colour, it is not a new release.
PLACEMENT_KEYS = frozenset({"port", "hosts"})


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
    probe: State = field(default_factory=dict)  # the driver's probe sample: httpStatus, probeSeconds

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


def view(raw: Observation, decision: Decision) -> Observation:
    """The workload as the planner sees it: the colours, healthy and reachable as the serving one is."""
    colours = seen_colours(raw)
    chosen = colours.get(decision.serve) if decision.serve is not None else None
    if chosen is None:
        detail = raw.detail or "no colour serves yet"
        return Observation(state=raw.state, healthy=False, detail=detail, outputs={"endpoints": []})
    # The serving colour's last probe, for the operator's per-Project series (`Outcome.probe`).
    probe = {"up": chosen.healthy, **chosen.probe}
    outputs = {"endpoints": list(chosen.endpoints), "probe": probe}
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
            probe={k: looked.get(k) for k in ("httpStatus", "probeSeconds")},
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
        parts.append(f"{release_label(record)} as {record.new_colour.value}: {_progress(record)}")
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
