"""The floor for bench/converge.py: a bare kopf operator that only patches status."""

from __future__ import annotations

from typing import Any

import kopf


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.codeb.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.codeb.dev")


@kopf.on.resume("codeb.dev", "v1alpha1", "projects")
@kopf.on.create("codeb.dev", "v1alpha1", "projects")
def ready(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    patch.status["phase"] = "Ready"
    patch.status["observedGeneration"] = body.metadata["generation"]
