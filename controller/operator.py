"""kopf handlers: thin shells around the reconciler.

Each handler validates the body into the model, awaits the same reconcile, and
maps the Outcome to kopf — this is the one place where our errors become
``kopf.TemporaryError`` / ``kopf.PermanentError``. Handlers are registered on a
registry built from a `Runtime`, so clients and configuration are passed in rather
than living in module globals.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
import structlog
from pydantic import ValidationError

from controller.config import OperatorConfig
from controller.errors import CodebError, RetryableError
from controller.kube import KubeClient
from controller.metrics import Metrics
from controller.naming import ProjectKey, connection_secret_name
from controller.reconcile import BLOCKED_DELETE_RECHECK_SECONDS, PAUSED_ANNOTATION, Outcome, ProjectInput, Reconciler
from controller.status import format_validation_error, load_status, set_condition, status_patch
from schemas.project import (
    API_GROUP,
    API_VERSION,
    KOPF_STATUS_FIELD,
    PLURAL,
    DeletionPolicy,
    Phase,
    ProjectSpec,
    ProjectStatus,
)

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
FINALIZER = f"{API_GROUP}/finalizer"
log = structlog.get_logger("codeb.operator")


@dataclass
class Runtime:
    config: OperatorConfig
    reconciler: Reconciler
    metrics: Metrics
    kube: KubeClient | None = None
    # One reconcile at a time per Project: kopf runs timers beside event handlers.
    locks: defaultdict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))


class StatusDiffBase(kopf.StatusDiffBaseStorage):
    """kopf's diff-base in status, built without deep-copying what it then throws away.

    kopf builds the essence (spec, labels, annotations) by deep-copying the whole
    body and deleting metadata and status; for a Project those are most of the
    object (conditions, managedFields), on every watch event. Same essence, less work.
    """

    def build(self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None) -> kopf.BodyEssence:
        if extra_fields:
            return super().build(body=body, extra_fields=extra_fields)  # may name status fields
        metadata = body.get("metadata", {})
        lean = {key: value for key, value in body.items() if key not in ("metadata", "status")}
        lean["metadata"] = {key: metadata[key] for key in ("labels", "annotations") if key in metadata}
        return super().build(body=kopf.Body(cast(kopf.RawBody, lean)))


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


def write_status(body: kopf.Body, patch: kopf.Patch, status: ProjectStatus) -> bool:
    """Stage a status patch if anything changed; True if it did."""
    changes = status_patch(dict(body.get("status") or {}), status)
    if changes:
        patch.status.update(changes)
    return changes is not None


def apply_outcome(runtime: Runtime, body: kopf.Body, patch: kopf.Patch, outcome: Outcome, trigger: str) -> None:
    changed = write_status(body, patch, outcome.status)
    for event in outcome.events:
        # A failure that repeats unchanged on every retry or drift tick was already
        # said once; repeating it would be a write per tick for nothing new.
        if event.type == "Normal" or changed:
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
            try:
                outcome = await runtime.reconciler.finalize(project)
            except CodebError as exc:
                # Whatever the error, the finalizer stays until teardown has really finished.
                delay = exc.delay if isinstance(exc, RetryableError) else BLOCKED_DELETE_RECHECK_SECONDS
                raise kopf.TemporaryError(f"deletion blocked: {exc.message}", delay=delay) from None
        apply_outcome(runtime, body, patch, outcome, "delete")
        if outcome.retry_after is not None:
            raise kopf.TemporaryError(
                f"deletion blocked: {outcome.status.last_error or 'waiting'}", delay=outcome.retry_after
            )
        if project.spec.deletion_policy is DeletionPolicy.Delete and runtime.kube is not None:
            # Retained data keeps its credentials; destroyed data needs none.
            secret = outcome.status.allocations.connection_secret or connection_secret_name(project.spec)
            await runtime.kube.delete_secret(project.key.namespace, secret, project.key.name)
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
        # Progress and diff-base live in status (the CRD preserves status.kopf), so the
        # status patch after a reconcile carries them: one write, not a second one for
        # annotations on the object itself.
        settings.persistence.progress_storage = kopf.StatusProgressStorage(field=f"status.{KOPF_STATUS_FIELD}.progress")
        settings.persistence.diffbase_storage = StatusDiffBase(
            field=f"status.{KOPF_STATUS_FIELD}.lastHandledConfiguration"
        )
        settings.persistence.finalizer = FINALIZER
        settings.execution.max_workers = config.max_workers
        if config.peering:
            settings.peering.name = config.peering
            settings.peering.mandatory = True
            # Equal priorities make kopf pause every replica; distinct ones make the
            # highest act while the others stand by until its keep-alive lapses.
            priority = config.peering_priority
            settings.peering.priority = priority if priority is not None else random.randint(1, 1_000_000)
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
