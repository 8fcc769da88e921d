"""kopf handlers: thin shells around the reconciler.

Each handler validates the body into the model, awaits the same reconcile, and
maps the Outcome to kopf — this is the one place where our errors become
``kopf.TemporaryError`` / ``kopf.PermanentError``. Handlers are registered on a
registry built from a `Runtime`, so clients and configuration are passed in rather
than living in module globals.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import kopf
import structlog
from pydantic import ValidationError

from controller.config import OperatorConfig
from controller.metrics import Metrics
from controller.naming import ProjectKey
from controller.reconcile import PAUSED_ANNOTATION, Outcome, ProjectInput, Reconciler
from controller.status import format_validation_error, load_status, set_condition, status_patch
from schemas.project import API_GROUP, API_VERSION, PLURAL, Phase, ProjectSpec, ProjectStatus

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
FINALIZER = f"{API_GROUP}/finalizer"
log = structlog.get_logger("codeb.operator")


@dataclass
class Runtime:
    config: OperatorConfig
    reconciler: Reconciler
    metrics: Metrics
    # One reconcile at a time per Project: kopf runs timers beside event handlers.
    locks: defaultdict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))


class InvalidSpec(Exception):
    def __init__(self, status: ProjectStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def project_input(body: kopf.Body) -> ProjectInput:
    """Validate the body; raises InvalidSpec with the status to report."""
    generation = int(body.metadata.get("generation") or 0)
    status = load_status(dict(body.get("status") or {}))
    try:
        spec = ProjectSpec.model_validate(dict(body.spec))
    except ValidationError as exc:
        message = format_validation_error(exc)
        status.phase, status.observed_generation, status.last_error = Phase.Failed, generation, message
        status.conditions = set_condition(status.conditions, "Synced", False, "InvalidSpec", message, generation)
        status.conditions = set_condition(status.conditions, "Ready", False, "InvalidSpec", message, generation)
        raise InvalidSpec(status, message) from None
    key = ProjectKey(body.metadata.namespace or "", body.metadata.name or "", body.metadata.uid or "")
    paused = (body.metadata.annotations or {}).get(PAUSED_ANNOTATION) == "true"
    return ProjectInput(key, generation, spec, status, paused)


def write_status(body: kopf.Body, patch: kopf.Patch, status: ProjectStatus) -> None:
    changes = status_patch(dict(body.get("status") or {}), status)
    if changes:
        patch.status.update(changes)


def apply_outcome(runtime: Runtime, body: kopf.Body, patch: kopf.Patch, outcome: Outcome, trigger: str) -> None:
    write_status(body, patch, outcome.status)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    for action, result in outcome.results:
        runtime.metrics.actions.labels(action.component.value, action.verb.value, result).inc()
        if trigger == "timer" and result == "ok":
            runtime.metrics.drift_repairs.labels(action.component.value).inc()
    runtime.metrics.set_phase(body.metadata.uid or "", outcome.status.phase)


async def run_reconcile(runtime: Runtime, body: kopf.Body, patch: kopf.Patch, trigger: str) -> None:
    with structlog.contextvars.bound_contextvars(namespace=body.metadata.namespace, project=body.metadata.name):
        try:
            project = project_input(body)
        except InvalidSpec as exc:
            write_status(body, patch, exc.status)
            raise kopf.PermanentError(exc.message) from None
        started = time.perf_counter()
        async with runtime.locks[project.key.uid]:
            outcome = await runtime.reconciler.reconcile(project, trigger)
        runtime.metrics.reconcile_seconds.labels(trigger).observe(time.perf_counter() - started)
        apply_outcome(runtime, body, patch, outcome, trigger)
        if outcome.permanent_error and trigger != "timer":
            # A timer must keep ticking: the conflict may clear when another Project goes.
            raise kopf.PermanentError(outcome.permanent_error)
        if outcome.retry_after is not None:
            raise kopf.TemporaryError(outcome.status.last_error or "waiting", delay=outcome.retry_after)


async def run_finalize(runtime: Runtime, body: kopf.Body, patch: kopf.Patch) -> None:
    with structlog.contextvars.bound_contextvars(namespace=body.metadata.namespace, project=body.metadata.name):
        try:
            project = project_input(body)
        except InvalidSpec:
            # Nothing valid was ever converged for it: only its claims can exist.
            key = ProjectKey(body.metadata.namespace or "", body.metadata.name or "", body.metadata.uid or "")
            await runtime.reconciler.claims.release_all(key)
            return
        async with runtime.locks[project.key.uid]:
            outcome = await runtime.reconciler.finalize(project)
        apply_outcome(runtime, body, patch, outcome, "delete")
        if outcome.retry_after is not None:
            raise kopf.TemporaryError(
                f"deletion blocked: {outcome.status.last_error or 'waiting'}", delay=outcome.retry_after
            )
        runtime.metrics.set_phase(project.key.uid, None)
        runtime.locks.pop(project.key.uid, None)


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    config = runtime.config

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # kopf's own loaders read KUBECONFIG when called; the kubernetes client's
        # auto-login captures it at import time.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Progress and diff-base live in annotations: the status schema is ours and
        # structural, so anything kopf wrote there would be pruned.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=API_GROUP, key="last-handled-configuration"
        )
        settings.persistence.finalizer = FINALIZER
        settings.execution.max_workers = config.max_workers
        if config.peering:
            settings.peering.name = config.peering
            settings.peering.mandatory = True
        runtime.metrics.serve(config.metrics_port)
        await runtime.reconciler.claims.setup()

    @kopf.on.resume(*RESOURCE, registry=registry)
    @kopf.on.create(*RESOURCE, registry=registry)
    @kopf.on.update(*RESOURCE, registry=registry)
    async def changed(body: kopf.Body, patch: kopf.Patch, reason: str, **_: Any) -> None:
        await run_reconcile(runtime, body, patch, reason)

    @kopf.timer(*RESOURCE, interval=config.drift_interval_seconds, initial_delay=config.drift_interval_seconds,
                registry=registry)  # fmt: skip
    async def drift(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await run_reconcile(runtime, body, patch, "timer")

    @kopf.on.delete(*RESOURCE, registry=registry)
    async def deleted(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await run_finalize(runtime, body, patch)

    return registry
