"""One pass's step of a build from git, through the workload driver's `Builder` (decisions: `builds`).

Recorded first: a new build is only written to status in the pass that decides it, and started on
its hosts from the first pass that reads it back from the API server (``recorded_runs``), so an
operator killed in between starts it once, after its restart. A superseded build is stopped before
the newer one is recorded. While it runs the Project is progressing (looked at again in seconds); a
failed one makes it not Ready (BuildFailed) and Stalled until the spec changes. The last good image
keeps serving either way.
"""

from __future__ import annotations

from datetime import datetime

from controller.errors import CodebError, PermanentError
from controller.loop import builds
from controller.loop.interface import Builder, BuildSource, DriverContext, PushingBuilder
from controller.loop.passes import Event, Pass, ProjectInput
from controller.loop.planner import Component
from schemas.project import BuildStatus


async def build_step(project: ProjectInput, builder: object, ctx: DriverContext, work: Pass, acting: bool,
                     now: datetime) -> BuildStatus | None:  # fmt: skip
    """The build record after this pass (None: the Project does not build from git)."""
    spec, recorded = project.spec, project.status.build
    git = spec.project.source.git
    if git is None or not isinstance(builder, Builder):
        return None if git is None else recorded  # a runtime that cannot build: its workload driver says why
    try:
        hosts = sorted(await builder.build_places(ctx.given(work.observed)))
    except PermanentError as exc:  # no build can run where this Project runs: until its spec or Platform changes
        work.build_failed = (exc.reason, exc.message)
        return recorded
    except CodebError as exc:
        work.waiting[Component.build] = f"where builds run could not be read: {exc.message}"
        return recorded
    try:
        repository = await _push_repository(builder, ctx) if hosts else None
    except CodebError as exc:  # a new build would go to the wrong place: none is decided this pass
        work.waiting[Component.build] = f"where builds are pushed could not be read: {exc.message}"
        return recorded
    step = builds.due(spec, project.key, recorded, hosts, now, builder.build_target, repository)
    if not acting:
        return recorded
    if step.stop is not None:
        try:
            await builder.stop_build(ctx, step.stop)
        except CodebError as exc:
            work.events.append(Event("Warning", "BuildNotStopped", f"{step.stop.revision}: {exc.message}; it "
                                     "ends at its own timeout"))  # fmt: skip
    build = step.status
    if step.follow is not None and step.follow.run_id in project.recorded_runs:
        source = BuildSource(git, builds.wanted_commit(spec), spec.project.template)
        try:
            runs = await builder.follow_build(ctx.given(work.observed), source, step.follow)
        except CodebError as exc:  # not started, or not looked at, this pass (a Secret it needs, a host): again
            runs = [run.model_copy(update={"message": exc.message}) for run in step.follow.hosts]
        build = builds.followed(step.follow, runs, now)
        if build.result == "Succeeded":
            work.events.append(Event("Normal", "Built", f"{build.revision}: {build.image} from {build.commit}"))
        elif build.result == "Failed":
            work.events.append(Event("Warning", "BuildFailed", f"{build.revision}: {build.message}"[:1024]))
    if build is None:
        return None
    _, reason, message = builds.condition(build)
    if build.result == "Running":
        work.waiting[Component.build] = message
    elif build.result == "Failed":
        work.build_failed = (reason, message)
    return build


async def _push_repository(builder: Builder, ctx: DriverContext) -> str | None:
    """Where the builder pushes a new build: the Project's repository in its Platform's registry (None: each
    place keeps its own)."""
    return await builder.push_repository(ctx) if isinstance(builder, PushingBuilder) else None
