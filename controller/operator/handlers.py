"""kopf handlers: thin shells around the reconciler.

Each handler validates the body into the model, awaits the same reconcile, and
writes the status it reports. A Project's own failures are never raised to kopf:
they are in its status, and a retryable one is retried by this process with
backoff and jitter (`controller.operator.retries`), so a retry costs no write unless what it
reports changed. This is the one place where our errors become kopf's, for the two
paths where kopf must retry: start-up and a blocked deletion (the finalizer stays).
Handlers are registered on a registry built from a `Runtime`, so clients and
configuration are passed in rather than living in module globals.
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

from controller.clients.kept_secrets import KeptSecrets
from controller.clients.kube import KubeClient
from controller.errors import CodebError, PermanentError, RetryableError
from controller.loop.interface import Placement
from controller.loop.naming import ProjectKey, connection_secret_name
from controller.loop.passes import PAUSED_ANNOTATION, RETRY_ROLLOUT_ANNOTATION, Outcome, ProjectInput, Teardown
from controller.loop.reconciler import (
    BLOCKED_DELETE_RECHECK_SECONDS,
    PROGRESS_RECHECK_SECONDS,
    Reconciler,
    is_drift_repair,
)
from controller.loop.status import format_validation_error, load_status, set_condition, status_patch
from controller.loop.summary import kstatus_conditions
from controller.operator.config import OperatorConfig
from controller.operator.expectations import Expected
from controller.operator.inbound import Inbound
from controller.operator.login import login
from controller.operator.metrics import Metrics
from controller.operator.notify import Notifier
from controller.operator.retries import Backoff, Retries
from controller.operator.runs import FailedBackups, Housekeeping, run_news, wake_its_project
from schemas.backups import BACKUP_PLURAL, RESTORE_PLURAL
from schemas.project import (
    API_GROUP,
    API_VERSION,
    KOPF_STATUS_FIELD,
    PLURAL,
    BackupTarget,
    DeletionPolicy,
    Phase,
    ProjectSpec,
    ProjectStatus,
    Provider,
)
from schemas.project import Runtime as Runtime_

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
FINALIZER = f"{API_GROUP}/finalizer"
log = structlog.get_logger("codeb.operator")


@dataclass
class Runtime:
    config: OperatorConfig
    reconciler: Reconciler
    metrics: Metrics
    kube: KubeClient | None = None
    retries: Retries = field(default_factory=lambda: Retries(Backoff()))
    # One reconcile at a time per Project: kopf runs timers beside event handlers, and retries run beside both.
    locks: defaultdict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    # When each Project's next drift check is due: spread, so a restart does not fire them all at once.
    drift_due: dict[str, float] = field(default_factory=dict)
    # Status each Project's last pass wrote, until a body shows it (`Expected`).
    expected: dict[str, Expected] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    # The last collection of ledger entries whose Projects are gone (`collect_claims`), and its task.
    collected_at: float = 0.0
    collecting: asyncio.Task[None] | None = None
    housekeeping: Housekeeping = field(default_factory=lambda: Housekeeping(None))
    # Copies of the Secrets teardown needs (`KeptSecrets`): a Project's go with it.
    kept: KeptSecrets | None = None
    notifier: Notifier | None = None  # deploy news to the Projects' receivers
    failed_backups: FailedBackups = field(default_factory=FailedBackups)  # which were told of
    inbound: Inbound | None = None  # Alertmanager's deliveries


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


def project_input(body: kopf.Body, stored: dict[str, Any] | None = None) -> ProjectInput:
    """Validate the body (with ``stored`` for its status, when given); raises InvalidSpec with the status to report."""
    generation = int(body.metadata.get("generation") or 0)
    status = load_status(stored if stored is not None else dict(body.get("status") or {}))
    try:
        spec = ProjectSpec.model_validate(dict(body.spec))
    except ValidationError as exc:
        message = format_validation_error(exc)
        status.phase, status.observed_generation, status.last_error = Phase.Failed, generation, message
        status.conditions = set_condition(status.conditions, "Synced", False, "InvalidSpec", message, generation)
        status.conditions = set_condition(status.conditions, "Ready", False, "InvalidSpec", message, generation)
        status.conditions = kstatus_conditions(status.conditions, ("InvalidSpec", message), generation)
        raise InvalidSpec(status, message) from None
    annotations = body.metadata.annotations or {}
    paused = annotations.get(PAUSED_ANNOTATION) == "true"
    return ProjectInput(_key(body), generation, spec, status, paused, annotations.get(RETRY_ROLLOUT_ANNOTATION),
                        recorded_runs(dict(body.get("status") or {})))  # fmt: skip


def recorded_runs(stored: dict[str, Any]) -> frozenset[str]:
    """The hook and build runs status holds as the API server stored it (the body, not what this process wrote
    since)."""
    hooks = (stored.get("rollout") or {}).get("hooks") or []
    build = stored.get("build") or {}
    built = {str(build["runId"])} if isinstance(build, dict) and build.get("runId") else set()
    return frozenset(str(run["runId"]) for run in hooks if isinstance(run, dict) and run.get("runId")) | built


def recorded_teardown(body: kopf.Body) -> Teardown:
    """Teardown for a Project whose spec no longer validates: from status and the fields teardown reads."""
    raw = dict(body.spec)
    servers, backup = _section(raw, "servers"), _section(raw, "backup")
    try:
        placement = Placement(Provider(str(servers.get("provider"))), Runtime_(str(servers.get("runtime"))),
                              str(servers["platform"]) if servers.get("platform") else None,
                              body.metadata.namespace)  # fmt: skip
        retain = DeletionPolicy(raw.get("deletionPolicy", DeletionPolicy.Retain.value)) is DeletionPolicy.Retain
    except ValueError:
        raise PermanentError(
            "the stored spec is invalid and names no valid servers.provider, servers.runtime or deletionPolicy, "
            "so what to tear down is unknown; fix those fields (or remove the finalizer by hand)",
            reason="InvalidSpec",
        ) from None
    include = backup.get("include") or [BackupTarget.database.value]
    status = load_status(dict(body.get("status") or {}))
    key = _key(body)
    final_dump = backup.get("enabled", True) is not False and BackupTarget.database.value in include
    return Teardown(key, int(body.metadata.get("generation") or 0), status, placement, status.allocations,
                    retain, final_dump)  # fmt: skip


def _section(spec: dict[str, Any], name: str) -> dict[str, Any]:
    value = spec.get(name)
    return value if isinstance(value, dict) else {}


def _key(body: kopf.Body) -> ProjectKey:
    return ProjectKey(body.metadata.namespace or "", body.metadata.name or "", body.metadata.uid or "")


def post_events(runtime: Runtime, body: kopf.Body, outcome: Outcome, status_changed: bool, trigger: str) -> None:
    for event in outcome.events:
        # A failure that repeats unchanged on every retry or drift tick was already
        # said once; repeating it would be a write per tick for nothing new.
        if event.type == "Normal" or status_changed:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    for action, result in outcome.results:
        runtime.metrics.actions.labels(action.component.value, action.verb.value, result).inc()
        if result == "ok" and is_drift_repair(action, trigger):
            runtime.metrics.drift_repairs.labels(action.component.value).inc()
    uid, namespace, name = body.metadata.uid or "", body.metadata.namespace or "", body.metadata.name or ""
    if outcome.rollout is not None:
        runtime.metrics.record_rollout(outcome.rollout.checks, outcome.rollout.finished, uid, namespace, name)
    if runtime.notifier is not None:
        runtime.notifier.tell(_key(body), dict(body.get("spec") or {}), outcome)
    runtime.metrics.set_phase(uid, outcome.status.phase)
    runtime.metrics.record_backup(uid, namespace, name, outcome.status.backup)
    runtime.metrics.record_status(uid, namespace, name, outcome.status)
    runtime.metrics.record_probe(uid, namespace, name, outcome.probe)


async def reconcile_body(runtime: Runtime, body: kopf.Body, trigger: str) -> dict[str, Any] | None:
    """One reconcile of this body; the status changes to write (None: nothing changed).

    Never raises for the Project's own failures: they are in the status, and a
    retryable one schedules our own retry (`controller.operator.retries`), not kopf's.
    """
    uid = body.metadata.uid or ""
    with structlog.contextvars.bound_contextvars(namespace=body.metadata.namespace, project=body.metadata.name):
        started = time.perf_counter()
        async with runtime.locks[uid]:
            # Read under the lock: the pass that held it may have written status this body predates.
            stored = Expected.status(runtime, uid, dict(body.get("status") or {}), time.monotonic())
            try:
                project = project_input(body, stored)
            except InvalidSpec as exc:
                runtime.retries.reset(uid)
                changes = status_patch(stored, exc.status)
                if changes:
                    Expected.wrote(runtime, uid, changes, time.monotonic())
                    kopf.event(body, type="Warning", reason="InvalidSpec", message=exc.message)
                return changes
            try:
                outcome = await asyncio.wait_for(
                    runtime.reconciler.reconcile(project, trigger), runtime.config.reconcile_timeout_seconds
                )
            except TimeoutError:
                # Every step is safe to cut at any line; the next pass picks up where this one stopped.
                log.warning("reconcile timed out", seconds=runtime.config.reconcile_timeout_seconds)
                if runtime.kube is not None:
                    runtime.retries.schedule(uid, PROGRESS_RECHECK_SECONDS, lambda: retry(runtime, project.key))
                return None
            changes = status_patch(stored, outcome.status)
            if changes:
                Expected.wrote(runtime, uid, changes, time.monotonic())
        runtime.metrics.reconcile_seconds.labels(trigger).observe(time.perf_counter() - started)
        post_events(runtime, body, outcome, changes is not None, trigger)
        schedule_next(runtime, project.key, outcome)
        return changes


def schedule_next(runtime: Runtime, key: ProjectKey, outcome: Outcome) -> None:
    """A timed step (the next health check) at its time; a failure or a wait with backoff; else nothing."""
    uid = key.uid
    if outcome.retry_after is None and outcome.wake_after is None:
        runtime.retries.reset(uid)
    elif runtime.kube is None:
        return
    elif outcome.wake_after is not None and (outcome.retry_after is None or outcome.wake_after <= outcome.retry_after):
        runtime.retries.wake(uid, outcome.wake_after, lambda: retry(runtime, key))
    elif outcome.retry_after is not None:
        delay = runtime.retries.schedule(uid, outcome.retry_after, lambda: retry(runtime, key))
        log.info("retry scheduled", delay=round(delay, 1), reason=outcome.status.last_error or "waiting")


async def retry(runtime: Runtime, key: ProjectKey, trigger: str = "retry") -> None:
    """A scheduled retry: read the Project as it is now, reconcile, write status only if it changed."""
    assert runtime.kube is not None
    try:
        raw = await runtime.kube.read_project(key.namespace, key.name)
        if raw is None or raw["metadata"].get("uid") != key.uid or raw["metadata"].get("deletionTimestamp"):
            runtime.retries.reset(key.uid)
            return  # gone, replaced or being deleted: the delete handler owns it now
        body = kopf.Body(cast(kopf.RawBody, raw))
        changes = await reconcile_body(runtime, body, trigger)
        if changes:
            await runtime.kube.patch_project_status(key.namespace, key.name, changes)
    except CodebError as exc:
        # The API server itself is unavailable: look again later, on the same schedule.
        log.warning("retry failed", project=str(key), error=exc.message)
        runtime.retries.schedule(key.uid, 5.0, lambda: retry(runtime, key))


async def run_reconcile(runtime: Runtime, body: kopf.Body, patch: kopf.Patch, trigger: str) -> None:
    changes = await reconcile_body(runtime, body, trigger)
    if changes:
        patch.status.update(changes)


async def run_finalize(runtime: Runtime, body: kopf.Body, patch: kopf.Patch, attempt: int = 0) -> None:
    uid = body.metadata.uid or ""
    runtime.retries.reset(uid)
    with structlog.contextvars.bound_contextvars(namespace=body.metadata.namespace, project=body.metadata.name):
        async with runtime.locks[uid]:
            try:
                try:
                    project: ProjectInput | None = project_input(body)
                except InvalidSpec:
                    project = None  # teardown from what status recorded
                teardown = Teardown.of(project) if project is not None else recorded_teardown(body)
                outcome = await runtime.reconciler.finalize(teardown)
            except CodebError as exc:
                # Whatever the error, the finalizer stays until teardown has really finished.
                floor = exc.delay if isinstance(exc, RetryableError) else BLOCKED_DELETE_RECHECK_SECONDS
                delay = runtime.retries.backoff.delay(attempt, floor, runtime.rng)
                raise kopf.TemporaryError(f"deletion blocked: {exc.message}", delay=delay) from None
        changes = status_patch(dict(body.get("status") or {}), outcome.status)
        if changes:
            patch.status.update(changes)
        post_events(runtime, body, outcome, changes is not None, "delete")
        if outcome.retry_after is not None:
            delay = runtime.retries.backoff.delay(attempt, outcome.retry_after, runtime.rng)
            raise kopf.TemporaryError(f"deletion blocked: {outcome.status.last_error or 'waiting'}", delay=delay)
        if not teardown.retain_data and runtime.kube is not None:
            # Retained data keeps its credentials; destroyed data needs none.
            secret = teardown.status.allocations.connection_secret
            if project is not None:
                secret = secret or connection_secret_name(project.spec)
            if secret:
                await runtime.kube.delete_secret(teardown.key.namespace, secret, teardown.key.name)
        if runtime.kept is not None:
            await runtime.kept.forget(teardown.key)
        runtime.metrics.set_phase(uid, None)
        runtime.locks.pop(uid, None)
        runtime.drift_due.pop(uid, None)
        runtime.expected.pop(uid, None)


# How often the ledgers are swept for entries of Projects that no longer exist.
COLLECT_SECONDS = 600.0


def collect_claims(runtime: Runtime, now: float) -> None:
    """Start a sweep of the ledgers if one is due (from the drift timer: kopf pauses it on a standby)."""
    kube = runtime.kube
    if kube is None or now - runtime.collected_at < COLLECT_SECONDS:
        return
    if runtime.collecting is not None and not runtime.collecting.done():
        return
    runtime.collected_at = now

    async def sweep() -> None:
        try:
            released = await runtime.reconciler.claims.collect(kube.project_uids)
            if runtime.kept is not None:
                released += await runtime.kept.collect()
        except CodebError as exc:
            log.warning("ledger sweep failed", retry_in=COLLECT_SECONDS, error=exc.message)
            return
        if released:
            log.info("released ledger entries of Projects that no longer exist", entries=released)

    runtime.collecting = asyncio.create_task(sweep())


def drift_due(runtime: Runtime, uid: str, now: float) -> bool:
    """Whether this Project's drift check is due; the first one lands anywhere in the first interval."""
    interval = runtime.config.drift_interval_seconds
    due = runtime.drift_due.setdefault(uid, now + runtime.rng.uniform(0, interval))
    if now < due:
        return False
    runtime.drift_due[uid] = now + interval * runtime.rng.uniform(0.9, 1.1)
    return True


async def start_up(runtime: Runtime, settings: kopf.OperatorSettings) -> None:
    """kopf's start-up handler; safe to run again when kopf retries it after a failure."""
    config = runtime.config
    # Progress and diff-base live in status (the CRD preserves status.kopf), so the
    # status patch after a reconcile carries them: one write, not a second one for
    # annotations on the object itself.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field=f"status.{KOPF_STATUS_FIELD}.progress")
    settings.persistence.diffbase_storage = StatusDiffBase(field=f"status.{KOPF_STATUS_FIELD}.lastHandledConfiguration")
    settings.persistence.finalizer = FINALIZER
    # kopf would post its own log lines (each retry, each failure) as Events: a write
    # each. Our Events say what happened, once. (posting.enabled would silence ours too.)
    settings.posting.loggers = False
    settings.execution.max_workers = config.max_workers
    if config.peering:
        settings.peering.name = config.peering
        settings.peering.mandatory = True
        # Equal priorities make kopf pause every replica; distinct ones make the
        # highest act while the others stand by until its keep-alive lapses.
        priority = config.peering_priority
        settings.peering.priority = priority if priority is not None else random.randint(1, 1_000_000)
        # A killed replica counts as alive until its record's lifetime has passed: that is the takeover
        # time. kopf renews it every lifetime minus 5-10 s, so a short one costs a PATCH every few seconds.
        settings.peering.lifetime = config.peering_lifetime_seconds
    runtime.metrics.serve(config.metrics_port)  # binds once, however often this runs
    if runtime.inbound is not None:
        await runtime.inbound.start(config.inbound_port)  # once, too
    try:
        await runtime.reconciler.claims.setup()
    except RetryableError as exc:
        raise kopf.TemporaryError(exc.message, delay=exc.delay) from None
    except PermanentError as exc:
        raise kopf.PermanentError(exc.message) from None


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    config = runtime.config

    kopf.on.login(registry=registry)(login)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        await start_up(runtime, settings)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if runtime.inbound is not None:
            await runtime.inbound.stop()

    @kopf.on.resume(*RESOURCE, registry=registry)
    @kopf.on.create(*RESOURCE, registry=registry)
    @kopf.on.update(*RESOURCE, registry=registry)
    async def changed(body: kopf.Body, patch: kopf.Patch, reason: str, **_: Any) -> None:
        await run_reconcile(runtime, body, patch, reason)

    # Ticks four times per drift interval; each Project acts only when its own, jittered turn is due.
    tick = max(1.0, config.drift_interval_seconds / 4)

    @kopf.timer(*RESOURCE, interval=tick, initial_delay=tick, registry=registry)
    async def drift(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        collect_claims(runtime, time.monotonic())
        runtime.housekeeping.tick(time.monotonic())
        if drift_due(runtime, body.metadata.uid or "", time.monotonic()):
            await run_reconcile(runtime, body, patch, "timer")

    def news(body: kopf.Body, type: str | None, **_: Any) -> bool:
        return run_news(body, type)

    def wake(key: ProjectKey) -> None:
        # A pass no spec change asked for: what it repairs is drift.
        runtime.retries.wake(key.uid, 1.0, lambda: retry(runtime, key, "wake"))

    @kopf.on.event(API_GROUP, API_VERSION, BACKUP_PLURAL, registry=registry, when=news)
    @kopf.on.event(API_GROUP, API_VERSION, RESTORE_PLURAL, registry=registry, when=news)
    async def run_changed(body: kopf.Body, **_: Any) -> None:
        if runtime.kube is None:
            return
        found = await wake_its_project(runtime.kube, body, wake)
        failed = runtime.failed_backups.news(body) if found else None
        if found and failed and runtime.notifier is not None:
            runtime.notifier.announce(*found, [failed])

    @kopf.on.delete(*RESOURCE, registry=registry)
    async def deleted(body: kopf.Body, patch: kopf.Patch, retry: int, **_: Any) -> None:
        await run_finalize(runtime, body, patch, retry)

    return registry
