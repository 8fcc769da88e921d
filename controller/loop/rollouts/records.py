"""What both rollout engines record: the deploy history, the notices a pass posts, how a release
is named to people, and which hooks a release runs."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.project import (
    App,
    DeploymentRecord,
    Hook,
    ProjectSpec,
    ProjectStatus,
    RolloutStatus,
    RolloutStep,
)

HISTORY = 20


@dataclass(frozen=True)
class Notice:
    type: str  # Normal | Warning
    reason: str
    message: str


def update_history(history: list[DeploymentRecord], record: RolloutStatus, **changes: object) -> None:
    """The history entry of ``record`` (same release, same start), changed in place."""
    for index, entry in enumerate(history):
        if entry.release == record.release and entry.started_at == record.started_at:
            history[index] = entry.model_copy(update=changes)
            return


def what_changed(before: Mapping[str, Any], wanted: Mapping[str, Any], ignored: Collection[str] = ()) -> str:
    """A new release in words: its revision, a restart (`codeb restart`), or the settings that differ."""
    if before.get("revision") != wanted.get("revision"):
        return f"revision {before.get('revision')} → {wanted.get('revision')}"
    keys = sorted(k for k in before.keys() | wanted.keys() if k not in ignored and before.get(k) != wanted.get(k))
    if keys == ["restartedAt"]:
        return f"restart ({wanted.get('restartedAt')})"
    return "differs in " + ", ".join(keys)


# Steps after which the new release serves: a rollout that a suspension ends there has succeeded.
SWITCHED = frozenset({RolloutStep.draining})
ENDED = frozenset({RolloutStep.succeeded, RolloutStep.failed, RolloutStep.superseded})


def suspended(status: ProjectStatus, now: datetime) -> tuple[ProjectStatus, Notice | None]:
    """The status once the Project is suspended: nothing serves, and a rollout under way ends (superseded
    before its switch, succeeded after it), so that starting again begins from what runs, not from a
    half-done rollout whose windows ran out while it was stopped."""
    status = status.model_copy(deep=True)
    status.serving = None
    record = status.rollout
    if record is None or record.step in ENDED:
        return status, None
    done = record.step in SWITCHED
    step, reason = (RolloutStep.succeeded, "RolloutSucceeded") if done else (RolloutStep.superseded, "Suspended")
    message = "suspended after the switch" if done else "suspended before the switch"
    status.rollout = record.model_copy(update={"step": step, "finished_at": now, "message": message})
    update_history(status.deployments, record, result=step.value, reason=reason, finished_at=now, message=message)
    return status, Notice("Normal", reason, f"{release_label(record)}: {message}")


def release_label(record: RolloutStatus) -> str:
    return revision_label(record.revision, record.release)


def hook_names(spec: ProjectSpec) -> tuple[str, ...]:
    """Every hook due once per release, in the order they run: the apps, then the post-deploy hooks."""
    return tuple(f"app-{app.name}" for app in spec.features.apps) + tuple(
        hook.name for hook in spec.features.post_deploy_hooks
    )


def hook_named(spec: ProjectSpec, name: str) -> Hook | App:
    apps = {f"app-{app.name}": app for app in spec.features.apps}
    return apps.get(name) or next(hook for hook in spec.features.post_deploy_hooks if hook.name == name)


def revision_label(revision: str | None, release: str) -> str:
    """How a release is named to people: its revision, else the start of its digest."""
    return f"revision {revision}" if revision else f"release {release[:8]}"


def rollback_target(history: list[DeploymentRecord], serving: str | None, to: str | None) -> DeploymentRecord:
    """The deploy to go back to: ``to`` if it ever succeeded, else the newest success before what serves.

    Raises ValueError saying what the history holds when there is none.
    """
    succeeded = [d for d in history if d.result == "Succeeded" and d.revision]
    if to is not None:
        found = next((d for d in succeeded if d.revision == to), None)
        if found is None:
            known = ", ".join(sorted({d.revision for d in succeeded if d.revision})) or "none"
            raise ValueError(f"revision {to} never deployed successfully here (succeeded: {known})")
        return found
    older = [d for d in succeeded if d.revision != serving]
    if not older:
        raise ValueError(f"no earlier successful revision than {serving} in status.deployments")
    return older[0]
