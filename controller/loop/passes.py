"""What one reconcile pass reads and returns: the Project as given, what it saw and did, and the Outcome."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controller.errors import CodebError
from controller.loop.interface import Placement
from controller.loop.naming import ProjectKey
from controller.loop.planner import (
    OPTIONAL,
    Action,
    Component,
    Observation,
    State,
    desired_state,
)
from controller.loop.rollouts.engine import Decided, Rollout
from schemas.project import (
    Allocations,
    BackupTarget,
    DeletionPolicy,
    ProjectSpec,
    ProjectStatus,
)

PAUSED_ANNOTATION = "codeb.dev/paused"
# A new value starts the failed rollout of the same release again.
RETRY_ROLLOUT_ANNOTATION = "codeb.dev/retry-rollout"


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
    rollout: Decided | None = None
    # The serving colour's last health probe (up, httpStatus, probeSeconds) where the operator probes it.
    probe: State | None = None


@dataclass
class Pass:
    """Mutable bookkeeping of one reconcile pass: what was seen, what failed or waits, what was done."""

    observed: dict[Component, Observation]
    failed: dict[Component, CodebError] = field(default_factory=dict)
    waiting: dict[Component, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    results: list[tuple[Action, str]] = field(default_factory=list)
    rollout: Rollout | None = None  # this pass's rollout, whichever engine the runtime takes
    # (reason, message) when the spec's build failed: the last good build serves, but not what the spec asks.
    build_failed: tuple[str, str] | None = None

    def saw(self, component: Component, seen: Observation) -> None:
        """Record an observation. A new look at the workload moves the rollout on (a colour that just
        started may pass its check, so the route can switch in this same pass), and the workload is
        seen through it (blue-green: healthy and reachable as the serving colour is)."""
        if component is Component.workload and self.rollout is not None:
            self.rollout.saw(seen, self.observed, datetime.now(UTC))
            seen = self.rollout.view()
        self.observed[component] = seen

    def settle(self) -> None:
        """After acting: what the route and the colours do now moves the rollout on; its notices become Events."""
        if self.rollout is None:
            return
        self.rollout.settle(self.observed, datetime.now(UTC))
        self.observed[Component.workload] = self.rollout.view()
        self.events.extend(Event(n.type, n.reason, n.message) for n in self.rollout.decision.notices)

    @property
    def decided(self) -> Decided | None:
        return self.rollout.decision if self.rollout is not None else None


class Desired:
    """The desired state of every component, computed once per set of observed outputs.

    A dependent (the route) is desired from what its dependencies were seen serving, so a pass
    recomputes it after each look; the rollout, if any, decides what the workload runs.
    """

    def __init__(self, spec: ProjectSpec, allocations: Allocations, drivers: Collection[Component]) -> None:
        self._spec, self._allocations = spec, allocations
        # Optional components (DNS, alert rules) are desired only where there is a driver for them.
        self._skipped = OPTIONAL - set(drivers)
        self._outputs: dict[Component, Mapping[str, Any]] | None = None
        self._states: dict[Component, State] = {}

    def base(self, observed: Mapping[Component, Observation]) -> dict[Component, State]:
        """What the spec asks for, before any rollout decides the workload."""
        outputs = {c: o.outputs for c, o in observed.items()}
        if outputs != self._outputs:
            states = desired_state(self._spec, self._allocations, outputs)
            self._outputs, self._states = outputs, {c: s for c, s in states.items() if c not in self._skipped}
        return dict(self._states)

    def of(self, observed: Mapping[Component, Observation], rollout: Rollout | None) -> dict[Component, State]:
        states = self.base(observed)
        if rollout is not None:
            states[Component.workload] = rollout.desired()
        return states


def _wants_final_dump(spec: ProjectSpec) -> bool:
    return spec.backup.enabled and BackupTarget.database in spec.backup.include
