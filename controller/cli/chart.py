"""The operator's Helm chart (deploy/operator/chart), made from the kustomize base (manifests/).

One set of objects, two ways to install them: the chart's CRDs are the base's, and its templates
are the base's operator manifests with the namespace the release goes to and the image its values
name. Comments stay, so each RBAC rule still says what needs it. `codeb generate` writes them and
a test fails on drift; another renders both installations and compares them object by object.
"""

from __future__ import annotations

import re
from pathlib import Path

from controller.local.cluster import REPO_ROOT

BASE = REPO_ROOT / "manifests"
CHART = REPO_ROOT / "deploy" / "operator" / "chart"
# The base's objects, in the namespace the release is installed to (the namespace itself is the release's).
TEMPLATED = ("rbac.yaml", "team-roles.yaml", "deployment.yaml")
HEADER = "# Made by `codeb generate` from manifests/operator/{name}: change that file, not this one.\n"


def chart_files(crds: dict[Path, str]) -> dict[Path, str]:
    """The chart's generated files, from ``crds`` (the base's CRDs, as `codeb generate` renders them)."""
    files = {CHART / "crds" / path.name: text for path, text in crds.items()}
    peering = BASE / "crd" / "kopf-peering.yaml"
    files[CHART / "crds" / peering.name] = peering.read_text()
    for name in TEMPLATED:
        manifest = (BASE / "operator" / name).read_text()
        files[CHART / "templates" / name] = HEADER.format(name=name) + _templated(manifest)
    return files


NAMESPACE = (re.compile(r"^(\s*)namespace: codeb-system$", re.M), r"\1namespace: {{ .Release.Namespace }}")
IMAGE = (re.compile(r"^(\s*)image: codeb-operator:\S+$", re.M),
         r'\1image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"')  # fmt: skip


REPLICAS = (re.compile(r"^(\s*)replicas: 1$", re.M), r"\1replicas: {{ .Values.replicas }}")


def _templated(manifest: str) -> str:
    for pattern, replacement in (NAMESPACE, IMAGE, REPLICAS):
        manifest = pattern.sub(replacement, manifest)
    return manifest
