"""Builds from git, decided (pure): when a build is due, what it makes, and what the workload runs meanwhile.

A Project with ``source.git`` runs the image of its last build that succeeded, never one still
building or one that failed: `deployable` turns the spec into the same spec with that image, so
the rollout starts only once a build has made its image on every host (or, with a registry, pushed it
there: one host builds, the others pull it by digest). A build is recorded in
status before it starts (`due`: a new record, followed from the next pass once the API server holds
it), so a restarted operator finds it again and never starts it twice; a newer revision, a changed
source supersedes it (the old run is stopped first). A host that joins after a success gets a new
build; one that leaves changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, Observation
from controller.loop.status import set_condition
from schemas.project import (
    BuildStatus,
    BuiltImage,
    GitSource,
    HookRun,
    ProjectSpec,
    ProjectStatus,
    Source,
    Template,
)

# A project.revision that names a commit: that commit of the ref is built.
COMMIT = re.compile(r"^[0-9a-f]{7,40}$")
# The last line of a build that succeeded (`controller.specs.builds.BUILD`).
BUILT_LINE = re.compile(r"^built \S+ from commit ([0-9a-f]{40})$", re.MULTILINE)
# The line before it when the build was pushed to a registry: the digest the registry holds it by.
PUSHED_LINE = re.compile(r"^pushed (sha256:[0-9a-f]{64})$", re.MULTILINE)


@dataclass(frozen=True)
class BuildStep:
    """What this pass does about builds: the record to write, the run to follow, the run to stop first."""

    status: BuildStatus | None
    follow: BuildStatus | None = None  # recorded (and stored) while running: follow it on every host
    stop: BuildStatus | None = None  # superseded while it ran: stopped before anything else


def built_from_git(spec: ProjectSpec) -> bool:
    return spec.project.source.git is not None


def build_inputs(spec: ProjectSpec) -> str:
    """Digest of everything a build is made from: a change to any of them is a new build."""
    git = spec.project.source.git
    assert git is not None
    what = {"git": git.model_dump(mode="json", by_alias=True), "revision": spec.project.revision,
            "template": spec.project.template.value, "restartedAt": spec.restarted_at}  # fmt: skip
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def build_image(key: ProjectKey, run_id: str) -> str:
    """The tag a build makes on each host: the Project's own repository (namespace and name apart), by run."""
    return f"localhost/codeb/{key.namespace}/{key.name}:{run_id}"


def wanted_commit(spec: ProjectSpec) -> str:
    """The commit to check out, or '' for the ref's head."""
    revision = spec.project.revision or ""
    return revision if COMMIT.match(revision) else ""


def due(spec: ProjectSpec, key: ProjectKey, recorded: BuildStatus | None, hosts: list[str], now: datetime,
        target: Callable[[ProjectKey, str, GitSource], str] | None = None,
        repository: str | None = None) -> BuildStep:  # fmt: skip
    """The build step of a pass, from the spec, the stored record and the places it builds in (the hosts the
    workload runs on); ``target`` names what a run makes (`Builder.build_target`). With ``repository`` (the
    Project's own in its Platform's registry) the first place alone builds, and pushes its image there."""
    if not built_from_git(spec) or not hosts:
        return BuildStep(recorded)
    inputs = build_inputs(spec)
    git = spec.project.source.git
    assert git is not None
    # A host that joined since needs the image too, unless it is in a registry it pulls from; one that left
    # (or does not answer for a while) does not make the others build again, nor the workload roll out anew.
    joined = (recorded is not None and recorded.result == "Succeeded" and recorded.pushed_to is None
              and bool(set(hosts) - _built_on(recorded)))  # fmt: skip
    # One still running for a registry the Platform no longer names has nowhere to push: it is built anew.
    moved = recorded is not None and recorded.result == "Running" and recorded.pushed_to != repository
    if recorded is not None and recorded.inputs == inputs and not joined and not moved:
        return BuildStep(recorded, follow=recorded if recorded.result == "Running" else None)
    run_id = uuid.uuid4().hex[:12]
    image = f"{repository}:{run_id}" if repository else (target or _tagged)(key, run_id, git)
    places = sorted(hosts)[:1] if repository else sorted(hosts)
    fresh = BuildStatus(inputs=inputs, revision=spec.project.revision, run_id=run_id, image=image,
                        pushed_to=repository, result="Running", started_at=now,
                        hosts=[HookRun(name=h, result="Running", run_id=run_id, started_at=now) for h in places],
                        message="recorded; starts once the record is stored",
                        last_succeeded=recorded.last_succeeded if recorded else None)  # fmt: skip
    running = recorded is not None and recorded.result == "Running"
    return BuildStep(fresh, stop=recorded if running else None)


def _tagged(key: ProjectKey, run_id: str, git: GitSource) -> str:
    return build_image(key, run_id)


def _built_on(build: BuildStatus) -> set[str]:
    return {run.name for run in build.hosts}


def followed(build: BuildStatus, runs: list[HookRun], now: datetime) -> BuildStatus:
    """The build once every host's run was looked at: Succeeded when all did, Failed when any did."""
    failed = [r for r in runs if r.result == "Failed"]
    done = all(r.result == "Succeeded" for r in runs)
    if not failed and not done:
        running = [r for r in runs if r.result == "Running"]
        waits = next((f"; {r.name}: {r.message}" for r in running if r.message), "")  # a Secret it needs, a host
        message = f"building on {', '.join(r.name for r in running)}{waits}"[:2048]
        return build.model_copy(update={"hosts": runs, "message": message})
    if failed:
        first = failed[0]
        message = f"{first.name}: {first.message}"[-2048:]
        return build.model_copy(update={"hosts": runs, "result": "Failed", "finished_at": now, "message": message})
    # The script's own line is the last one: the repository's steps print before it, and may print lookalikes.
    commit = next((found[-1] for r in runs if (found := BUILT_LINE.findall(r.message))), None)
    digest = next((found[-1] for r in runs if (found := PUSHED_LINE.findall(r.message))), None)
    if build.pushed_to is not None and digest is None:  # its run said it built, not where the registry keeps it
        message = f"{runs[0].name}: the build did not report the digest it pushed"
        return build.model_copy(update={"hosts": runs, "result": "Failed", "finished_at": now, "message": message})
    image = f"{build.pushed_to}@{digest}" if build.pushed_to is not None and digest else build.image
    built = BuiltImage(revision=build.revision, image=image, commit=commit)
    return build.model_copy(update={"hosts": runs, "result": "Succeeded", "finished_at": now, "commit": commit,
                                    "message": f"built {image}", "last_succeeded": built})  # fmt: skip


def deployable(spec: ProjectSpec, build: BuildStatus | None,
               source_of: Callable[[Template, str], Source] = lambda _, image: Source(image=image),
               ) -> ProjectSpec | None:  # fmt: skip
    """The spec the workload deploys: its source what the last build made (``source_of``: the runtime's
    `Builder.built_source`), its revision that build's; None while no build has succeeded. Any other spec is
    returned as it is."""
    if not built_from_git(spec):
        return spec
    if build is None or build.last_succeeded is None:
        return None
    last = build.last_succeeded
    source = source_of(spec.project.template, last.image)
    project = spec.project.model_copy(update={"source": source, "revision": last.revision})
    return spec.model_copy(update={"project": project})


def condition(build: BuildStatus) -> tuple[bool, str, str]:
    """BuildReady: (ok, reason, message)."""
    if build.result == "Succeeded":
        return True, "Built", f"{build.revision or 'the ref'}: {build.message}"
    if build.result == "Failed":
        serving = build.last_succeeded
        keeps = f"; {serving.revision or serving.image} keeps serving" if serving else ""
        return False, "BuildFailed", f"{build.revision or 'the ref'} did not build{keeps}: {build.message}"[:4096]
    return False, "Building", f"{build.revision or 'the ref'}: {build.message}"


def unbuilt(seen: Observation | None) -> Observation:
    """The workload before any build succeeded: nothing to run yet, so it (and the route) waits."""
    if seen is not None and seen.error is not None:
        return seen
    return Observation(state=seen.state if seen else None, error="waiting for the first build of source.git",
                       error_reason="Building")  # fmt: skip


def with_builds_left(seen: Observation | None) -> Observation:
    """The workload as teardown sees it when the Project has built: its builds are left where they ran (runs,
    images) even when no workload ever ran, so its driver's delete runs and removes them."""
    seen = seen or Observation()
    return replace(seen, leftovers=(*seen.leftovers, "builds of source.git"))


def reported(status: ProjectStatus, build: BuildStatus | None, generation: int) -> ProjectStatus:
    """The status with the build record and its BuildReady condition (none without source.git)."""
    conditions = [c for c in status.conditions if c.type != Component.build.condition]
    if build is not None:
        conditions = set_condition(conditions, Component.build.condition, *condition(build), generation)
    return status.model_copy(update={"build": build, "conditions": conditions})
