"""Generate the CustomResourceDefinition from the pydantic models.

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3
schema: every node typed, no ``$ref``, no ``anyOf`` around ``null``, no
``additionalProperties`` beside ``properties``. `to_structural` does that translation
and refuses anything it does not know how to translate, so a new model feature
cannot slip into the CRD half-converted.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from schemas.backups import (
    BACKUP_KIND,
    BACKUP_PLURAL,
    RESTORE_KIND,
    RESTORE_PLURAL,
    BackupRunSpec,
    BackupRunStatus,
    RestoreSpec,
    RestoreStatus,
)
from schemas.platform import PLATFORM_KIND, PLATFORM_PLURAL, PlatformSpec
from schemas.project import API_GROUP, API_VERSION, KIND, KOPF_STATUS_FIELD, PLURAL, ProjectSpec, ProjectStatus

# JSON Schema keywords that carry over to OpenAPI v3 unchanged.
_KEPT = {
    "type",
    "description",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "format",
    "default",
    "items",
    "properties",
    "required",
    "additionalProperties",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}
_DROPPED = {"title", "$defs"}

Schema = dict[str, Any]


class SchemaTranslationError(ValueError):
    """A model uses a JSON Schema feature the CRD generator cannot express."""


def _resolve(node: Schema, defs: Schema) -> Schema:
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Schema = copy.deepcopy(defs[ref.rsplit("/", 1)[-1]])
    # Keywords beside $ref (description, default) refine the referenced schema.
    target.update({k: v for k, v in node.items() if k != "$ref"})
    return target


def _strip_null(node: Schema) -> Schema:
    """`X | None` becomes X: optional fields are simply not required."""
    for key in ("anyOf", "oneOf"):
        if key not in node:
            continue
        options = [o for o in node[key] if o.get("type") != "null"]
        if len(options) != 1:
            raise SchemaTranslationError(f"union of several types is not structural: {node[key]}")
        merged = {k: v for k, v in node.items() if k != key}
        merged = {**options[0], **merged}
        if merged.get("default", ...) is None:
            del merged["default"]
        return merged
    return node


def to_structural(node: Schema, defs: Schema, path: str = "") -> Schema:
    # Resolve twice: `X | None` may wrap a $ref, and a $ref may point at a union.
    node = _strip_null(_resolve(_strip_null(_resolve(node, defs)), defs))
    unknown = set(node) - _KEPT - _DROPPED - {"$ref", "anyOf", "oneOf"}
    if unknown:
        raise SchemaTranslationError(f"{path or '<root>'}: unsupported keywords {sorted(unknown)}")
    out: Schema = {k: v for k, v in node.items() if k in _KEPT}
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {
            name: to_structural(child, defs, f"{path}.{name}") for name, child in node["properties"].items()
        }
        # extra="forbid" shows up as additionalProperties: false, which a structural
        # schema must not carry; unknown fields are refused by strict field validation.
        out.pop("additionalProperties", None)
    elif isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_structural(node["additionalProperties"], defs, f"{path}.*")
    if "items" in node:
        out["items"] = to_structural(node["items"], defs, f"{path}[]")
    if "type" not in out:
        raise SchemaTranslationError(f"{path or '<root>'}: no type")
    return _ordered(out)


def _ordered(node: Schema) -> Schema:
    """type and description first, the rest alphabetically: a stable, readable diff."""
    head = [k for k in ("type", "description") if k in node]
    return {k: node[k] for k in head + sorted(k for k in node if k not in head)}


class _FactoryDefaults(GenerateJsonSchema):
    """Publish default_factory values too, so the API server defaults what the operator would.

    A sub-model's default is its full dump rather than ``{}``: the API server checks
    CEL rules against the default itself, before nested defaulting fills it in.
    """

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
            schema = {**schema, "default": value}
            schema.pop("default_factory")
        return super().default_schema(schema)


def model_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_FactoryDefaults)
    return to_structural(raw, raw.get("$defs", {}))


def _status_schema() -> Schema:
    schema = model_schema(ProjectStatus)
    # Only the operator writes status, always in full; API-server defaults there
    # would only blur "not yet reconciled" with "Pending".
    for prop in schema["properties"].values():
        prop.pop("default", None)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    # kopf keeps its handler bookkeeping (retry progress, the last handled spec) here,
    # beside our status, so that one status write carries both.
    schema["properties"][KOPF_STATUS_FIELD] = {
        "type": "object",
        "description": "kopf's handler bookkeeping (retry progress, last handled spec); not an API.",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    return schema


PRINTER_COLUMNS = [
    {"name": "Env", "type": "string", "jsonPath": ".spec.environment.type"},
    {"name": "Runtime", "type": "string", "jsonPath": ".spec.servers.runtime"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "URL", "type": "string", "jsonPath": ".status.endpoints.url"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _crd(
    kind: str,
    plural: str,
    scope: str,
    description: str,
    spec: Schema,
    status: Schema | None,
    columns: list[dict[str, str]],
    short_names: list[str],
) -> Schema:
    properties: Schema = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": spec,
    }
    version: Schema = {"name": API_VERSION, "served": True, "storage": True}
    if status is not None:
        properties["status"] = status
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    version["schema"] = {
        "openAPIV3Schema": {
            "type": "object",
            "description": description,
            "required": ["spec"],
            "properties": properties,
        }
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["codeb"],
            },
            "versions": [version],
        },
    }


def project_crd() -> Schema:
    spec = model_schema(ProjectSpec)
    spec["description"] = "Desired state of the project: seven sections plus deletion and management policies."
    status = _status_schema()
    status["description"] = "Observed state, written by the operator."
    # Until the operator's first pass writes status, the API server answers observedGeneration 0: kstatus
    # (Flux's wait, kubectl wait --for) reads a generation not yet observed as in progress, where an absent
    # status would read as current (reconciled) before anything was done.
    status["default"] = {"observedGeneration": 0}
    description = "A web application, declared once, converged by the CodeB operator."
    return _crd(KIND, PLURAL, "Namespaced", description, spec, status, PRINTER_COLUMNS, ["proj", "cbp"])


def platform_crd() -> Schema:
    spec = model_schema(PlatformSpec)
    spec["description"] = "Where the shared services are, with admin credentials by Secret reference."
    columns = [
        {"name": "Postgres", "type": "string", "jsonPath": ".spec.postgres.host"},
        {"name": "Redis", "type": "string", "jsonPath": ".spec.redis.host"},
        {"name": "S3", "type": "string", "jsonPath": ".spec.objectStorage.endpoint"},
        {"name": "Caddy", "type": "string", "jsonPath": ".spec.caddy.adminUrl"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    description = "Shared infrastructure (PostgreSQL, Redis, MinIO, Caddy) that Projects land on."
    return _crd(PLATFORM_KIND, PLATFORM_PLURAL, "Cluster", description, spec, None, columns, ["cplat"])


def _run_crd(kind: str, plural: str, models: tuple[type[BaseModel], type[BaseModel]], what: str,
             columns: list[dict[str, str]], short: str) -> Schema:  # fmt: skip
    """A record of one run (a Backup, a Restore): its spec fixed once made, its status the operator's."""
    spec = model_schema(models[0])
    spec["description"] = f"{what}; fixed once made."
    # A run's record cannot be pointed at another Project (or backup) once it exists.
    spec["x-kubernetes-validations"] = [{"rule": "self == oldSelf", "message": f"spec is immutable: a {kind} "
                                         "records one run"}]  # fmt: skip
    status = model_schema(models[1])
    for prop in status["properties"].values():
        prop.pop("default", None)
    status["description"] = "The run as the operator recorded it."
    started = [{"name": "Started", "type": "date", "jsonPath": ".status.startedAt"},
               {"name": "Seconds", "type": "number", "jsonPath": ".status.durationSeconds"}]  # fmt: skip
    description = f"One {kind.lower()} run of one Project's data, recorded before it starts."
    return _crd(kind, plural, "Namespaced", description, spec, status, columns + started, [short])


def backup_crd() -> Schema:
    columns = [
        {"name": "Project", "type": "string", "jsonPath": ".spec.project"},
        {"name": "Target", "type": "string", "jsonPath": ".spec.target"},
        {"name": "Trigger", "type": "string", "jsonPath": ".spec.trigger"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Size", "type": "integer", "jsonPath": ".status.sizeBytes"},
    ]
    models = (BackupRunSpec, BackupRunStatus)
    return _run_crd(BACKUP_KIND, BACKUP_PLURAL, models, "Which Project's data is backed up, and why", columns, "cbb")


def restore_crd() -> Schema:
    columns = [
        {"name": "Project", "type": "string", "jsonPath": ".spec.project"},
        {"name": "Backup", "type": "string", "jsonPath": ".spec.backup"},
        {"name": "To", "type": "string", "jsonPath": ".spec.targetTime"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Restored", "type": "integer", "jsonPath": ".status.bytesRestored"},
    ]
    models = (RestoreSpec, RestoreStatus)
    return _run_crd(RESTORE_KIND, RESTORE_PLURAL, models, "Which backup overwrites which Project's database",
                    columns, "cbr")  # fmt: skip


HEADER = "# Generated by `codeb generate` from schemas/. Do not edit by hand.\n"


def render_yaml(document: Schema) -> str:
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=120)
