"""The floor for bench/converge.py: a bare kopf operator that only patches status.

It registers what CodeB registers (a delete handler, so kopf adds the finalizer, and a
timer at CodeB's drift tick) and logs at the same level, so the floor is the least any
kopf operator with teardown can do: finalizer, status, nothing else.

``CODEB_FLOOR_STORAGE=annotations`` (the default) keeps kopf's bookkeeping where kopf
keeps it by default, in annotations: a status patch plus an annotation patch per
Project. ``status`` puts it in status.kopf as CodeB does: one status patch per Project,
the least any kopf operator can write.
"""

from __future__ import annotations

import os
from typing import Any

import kopf


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    if os.environ.get("CODEB_FLOOR_STORAGE", "annotations") == "status":
        settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
        settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.lastHandledConfiguration")
    else:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.codeb.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.codeb.dev")


@kopf.on.resume("codeb.dev", "v1alpha1", "projects")
@kopf.on.create("codeb.dev", "v1alpha1", "projects")
def ready(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    patch.status["phase"] = "Ready"
    patch.status["observedGeneration"] = body.metadata["generation"]


# CodeB's drift tick with its default interval (180 s / 4): it never fires during a run.
@kopf.timer("codeb.dev", "v1alpha1", "projects", interval=45, initial_delay=45)
def drift(**_: Any) -> None:
    return None


@kopf.on.delete("codeb.dev", "v1alpha1", "projects")
def deleted(**_: Any) -> None:
    return None
