"""Drivers: one per external system, each with the same small shape.

``observe`` reports what exists, ``apply`` makes it match a desired state,
``delete`` removes it (or, with ``retain``, stops managing it and keeps the data; for the
workload, whose data lives elsewhere, ``retain`` means suspended: stopped, with its files kept).
All three are idempotent and safe to repeat after a crash at any line. Drivers
raise `controller.errors` types only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, Observation, State
from schemas.project import (
    Allocations,
    App,
    Backup,
    BuildStatus,
    GitSource,
    Hook,
    HookRun,
    InfrastructureStatus,
    ProjectSpec,
    Provider,
    Runtime,
    Servers,
    Source,
    Template,
)

# Posts a Warning Event on the Project: (reason, message). For what a driver did on its own
# account that a person should hear of (a stale lock released), not for failures.
Notify = Callable[[str, str], None]


def _ignore(reason: str, message: str) -> None:
    return None


@dataclass(frozen=True)
class DriverContext:
    key: ProjectKey
    allocations: Allocations
    # Destroying data must first keep a last copy of it (backups on, deletionPolicy Delete).
    final_dump: bool = False
    # The spec's servers section: which existing hosts to look at, and how to log in.
    # None only while tearing down a Project whose stored spec no longer validates.
    servers: Servers | None = None
    # What the components observed before this one produced (`Observation.outputs`): the
    # workload driver finds its hosts, and how to reach them, in the infrastructure's.
    inputs: Mapping[Component, State] = field(default_factory=dict)
    # status.infrastructure as last written: what Terraform applied, planned and ran.
    recorded: InfrastructureStatus | None = None
    notify: Notify = _ignore
    # Seconds before a health probe counts as failed (project.rollout.healthCheck.timeoutSeconds).
    health_timeout: float | None = None
    # Seconds requests in flight get before the workload leaves a host the route stopped sending to
    # (project.rollout.drainSeconds).
    drain_seconds: float = 0.0
    # The spec's backup section: what to back up, when, for how long. None while tearing down.
    backup: Backup | None = None

    def given(self, observed: Mapping[Component, Observation]) -> DriverContext:
        return replace(self, inputs={c: o.outputs for c, o in observed.items()})


@dataclass(frozen=True)
class Placement:
    """Where a Project runs: what drivers are chosen by (`controller.drivers.registry`)."""

    provider: Provider
    runtime: Runtime
    platform: str | None = None
    # The Project's namespace: a Platform serves only the namespaces it allows.
    namespace: str | None = None

    @classmethod
    def of(cls, spec: ProjectSpec, namespace: str | None = None) -> Placement:
        return cls(spec.servers.provider, spec.servers.runtime, spec.servers.platform, namespace)


class Driver(Protocol):
    component: Component

    async def observe(self, ctx: DriverContext) -> Observation: ...

    async def apply(self, ctx: DriverContext, desired: State) -> None: ...

    async def delete(self, ctx: DriverContext, retain: bool) -> None: ...


@runtime_checkable
class Admission(Protocol):
    """A driver source that may refuse a Project before anything is claimed for it (a Platform's quota)."""

    async def admit(self, placement: Placement, key: ProjectKey) -> None:
        """Raises (``QuotaExceeded``) when the Project may not have what its Platform would give it."""
        ...


@runtime_checkable
class PlatformDomains(Protocol):
    """A driver source that knows the domain a Project's Platform names its Projects under."""

    async def platform_domain(self, placement: Placement) -> str | None:
        """The Platform's ``spec.domain`` (None: no Platform, or none set), as the drivers last read it."""
        ...


@runtime_checkable
class HookRunner(Protocol):
    """A workload driver that can run post-deploy hooks against one colour before it takes traffic."""

    async def follow_hook(
        self, ctx: DriverContext, state: State, endpoints: tuple[str, ...], hook: Hook | App, run: HookRun
    ) -> HookRun:
        """One step of ``run`` (recorded in status before this is called) against the colour started with
        ``state``: started if it never was, else looked at; stopped once past its timeout. The run as it
        now stands (``Running``, or its outcome with the output redacted). Never starts a run twice."""
        ...

    async def stop_hook(self, ctx: DriverContext, state: State | None, run: HookRun) -> None:
        """Stop ``run`` if it still goes (its rollout ended first); ``state``: the colour it runs beside, as
        seen (None: gone). Stopping a run that ended, or was never started, does nothing."""
        ...


@dataclass(frozen=True)
class BuildSource:
    """What a build builds: the repository, the commit ('' for the ref's head), the template's preset."""

    git: GitSource
    commit: str
    template: Template


@runtime_checkable
class Builder(Protocol):
    """A workload driver that builds source.git where its workload runs (`controller.loop.builds`)."""

    async def follow_build(self, ctx: DriverContext, source: BuildSource, build: BuildStatus) -> list[HookRun]:
        """One step of ``build`` (recorded in status before this is called) on each of its hosts: started
        where it never was, else looked at; stopped once past its timeout. Each host's run as it now stands.
        Never starts a run twice."""
        ...

    async def stop_build(self, ctx: DriverContext, build: BuildStatus) -> None:
        """Stop ``build`` on its hosts (a newer one supersedes it); one that ended, or never started, stays."""
        ...

    async def build_log(self, ctx: DriverContext, build: BuildStatus, tail: int) -> dict[str, list[str]]:
        """The last ``tail`` lines of ``build``'s output, by host (`codeb logs --build`)."""
        ...

    async def build_places(self, ctx: DriverContext) -> list[str]:
        """Where a build runs, by name (``ctx`` holds what the infrastructure observed): each of the workload's
        hosts, the operator's own machine, or the Platform's builder; none yet, no build. A `PermanentError`:
        this Project cannot build here, and why (its reason and message are the Project's)."""
        ...

    def build_target(self, key: ProjectKey, run_id: str, git: GitSource) -> str:
        """What run ``run_id`` of ``git`` makes (an image's tag, the directory to run in), recorded in status
        before it starts."""
        ...

    def built_source(self, template: Template, built: str) -> Source:
        """What the workload runs once ``built`` (a build's image, or the directory it made) succeeded."""
        ...


@runtime_checkable
class PushingBuilder(Protocol):
    """A `Builder` that pushes what it builds to the Project's own repository in its Platform's registry, when
    there is one: one place builds, every other pulls the image by digest."""

    async def push_repository(self, ctx: DriverContext) -> str | None:
        """The repository a build pushes to (``<registry host>/codeb/<namespace>/<name>``); None: no registry,
        each place builds for itself."""
        ...


@runtime_checkable
class WorkloadLogs(Protocol):
    """A workload driver that can show what the application itself wrote (`codeb logs`)."""

    async def logs(self, ctx: DriverContext, tail: int) -> dict[str, list[str]]:
        """The last ``tail`` lines of each running instance, by where they came from (a colour, a host, a Pod)."""
        ...


Drivers = Mapping[Component, Driver]
# Stores a final dump file under a name; returns where it went (for the Event).
DumpSink = Callable[[str, Path], Awaitable[str]]


@dataclass(frozen=True)
class Refusal:
    """Why a component may not have what it asked for, as a condition says it (not an error: the rest goes on)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Claimed:
    allocations: Allocations
    # Why the route may not have its domains (another Project's overlap, a public suffix), if so.
    domain_conflict: Refusal | None = None


class Claims(Protocol):
    """The allocation ledgers (`controller.claims.store.ClaimStore`), as the reconciler uses them."""

    async def ensure(
        self, key: ProjectKey, spec: ProjectSpec, current_port: int | None = None, current_alternate: int | None = None
    ) -> Claimed:
        """Claim everything the spec needs, release what it no longer does."""

    async def allocations_for_teardown(
        self, key: ProjectKey, spec: ProjectSpec, ports: tuple[int | None, int | None]
    ) -> Allocations:
        """What the Project holds, as allocations, claiming nothing."""

    async def release_all(self, key: ProjectKey) -> int:
        """Give back everything the Project holds; how many values that was."""

    async def setup(self) -> None:
        """Ready the ledgers at start (the operator's, not the reconciler's, to call)."""

    async def collect(self, living: Callable[[], Awaitable[set[str]]]) -> int:
        """Release what Projects that no longer exist hold; how many values that was."""
