"""kopf handlers: thin shells that validate the body and hand it to the reconciler.

Every trigger (create, update, resume, drift timer) runs the same level-based
reconcile; the handlers only translate between kopf and it.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from pydantic import ValidationError

from controller.status import dump_status, format_validation_error, load_status, set_condition, status_patch
from schemas.project import API_GROUP, API_VERSION, PLURAL, Phase, ProjectSpec, ProjectStatus

RESOURCE = (API_GROUP, API_VERSION, PLURAL)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress and diff-base live in annotations, not in status: the status schema
    # is ours and structural, so anything kopf wrote there would be pruned.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    # kopf's own per-handler "succeeded" Events would be one write per reconcile.
    settings.posting.level = logging.WARNING
    settings.peering.standalone = True


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # kopf's own loaders read KUBECONFIG when called; the kubernetes client's
    # auto-login captures it at import time, which breaks `codeb up` and tests.
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def validated_status(body: kopf.Body) -> ProjectStatus:
    """Status after validating the spec: Synced tells whether the spec is acceptable."""
    generation = body.metadata.get("generation")
    status = load_status(dict(body.get("status") or {}))
    status.observed_generation = generation
    try:
        ProjectSpec.model_validate(dict(body.spec))
    except ValidationError as exc:
        message = format_validation_error(exc)
        status.phase = Phase.Failed
        status.last_error = message
        status.conditions = set_condition(status.conditions, "Synced", False, "InvalidSpec", message, generation)
        status.conditions = set_condition(status.conditions, "Ready", False, "InvalidSpec", message, generation)
        return status
    status.last_error = None
    status.conditions = set_condition(status.conditions, "Synced", True, "SpecValid", "spec accepted", generation)
    if status.phase in (Phase.Failed, Phase.Pending):
        status.phase = Phase.Pending
        status.conditions = set_condition(
            status.conditions, "Ready", False, "Pending", "waiting for the reconciler", generation
        )
    return status


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
def project_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    desired = validated_status(body)
    changes = status_patch(dict(body.get("status") or {}), desired)
    if changes:
        patch.status.update(changes)
    if desired.phase is Phase.Failed:
        raise kopf.PermanentError(desired.last_error)


__all__ = ["RESOURCE", "dump_status", "project_changed"]
