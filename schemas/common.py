"""What every part of the manifest shares: the API's names, constrained scalar types and the enums."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from schemas.base import (
    DOMAIN,
    ENV_VAR_NAME,
    PRINTABLE,
)

# Why identity fields cannot change: every name the data lives under is derived from them.
RENAME_WHY = (
    "the database, Redis user, bucket and Secret are named after it; create a new Project "
    "for the new name (deletionPolicy Retain keeps the old data)"
)


API_GROUP = "codeb.dev"


API_VERSION = "v1alpha1"


KIND = "Project"


PLURAL = "projects"


# status.<this> holds kopf's bookkeeping, not ours: the status model leaves it alone.
KOPF_STATUS_FIELD = "kopf"


# Buckets the operator keeps for itself on a Platform's object storage start with this; no Project may name one.
OPERATOR_BUCKET_PREFIX = "codeb-"


# Long enough for real names, short enough that "<slug>_<env>_pr<N>_user" stays
# within PostgreSQL's 63-byte identifier limit and bucket names within 63 chars.
SLUG_MAX_LENGTH = 30


# Seven digits keep "<slug>-pr<N>" a DNS label and "<slug>_pr<N>_user" a PostgreSQL identifier.
PULL_REQUEST_MAX = 9_999_999


DomainName = Annotated[str, Field(pattern=DOMAIN, max_length=253)]


EnvVarName = Annotated[str, Field(pattern=ENV_VAR_NAME, max_length=128)]


# A value rendered into a file on a host (environment files, units).
FileText = Annotated[str, Field(pattern=PRINTABLE, max_length=4096)]


PortNumber = Annotated[int, Field(ge=1, le=65535)]


class Template(StrEnum):
    nextjs = "nextjs"
    nodejs = "nodejs"
    node = "node"  # the first spelling; the same as nodejs
    python = "python"
    static = "static"
    container = "container"


@dataclass(frozen=True)
class TemplateDefaults:
    """What a template presets: the settings a manifest leaves out (one it states always wins)."""

    container_port: int
    health_path: str


# Every application the seeds describe answers GET /api/health; a static site has only its pages.
TEMPLATE_DEFAULTS: dict[Template, TemplateDefaults] = {
    Template.nextjs: TemplateDefaults(3000, "/api/health"),  # `next start`'s port
    Template.nodejs: TemplateDefaults(3000, "/api/health"),
    Template.node: TemplateDefaults(3000, "/api/health"),
    Template.python: TemplateDefaults(8000, "/api/health"),  # gunicorn's and uvicorn's usual port
    Template.static: TemplateDefaults(8080, "/"),  # a static server: its index page is its health
    Template.container: TemplateDefaults(3000, "/api/health"),
}


class EnvironmentType(StrEnum):
    production = "production"
    staging = "staging"
    preview = "preview"


class Provider(StrEnum):
    vultr = "vultr"
    lightsail = "lightsail"
    existing = "existing"
    local = "local"


class Runtime(StrEnum):
    quadlet = "quadlet"
    kubernetes = "kubernetes"
    local = "local"


class DeletionPolicy(StrEnum):
    Retain = "Retain"
    Delete = "Delete"


class ManagementPolicy(StrEnum):
    Manage = "Manage"
    ObserveOnly = "ObserveOnly"


class ApplyMode(StrEnum):
    auto = "auto"
    approve = "approve"
    observe = "observe"


class RedisIsolation(StrEnum):
    # No "dbIndex": Redis ACLs cannot keep a user inside one numbered database.
    acl = "acl"


class BackupTarget(StrEnum):
    database = "database"
    storage = "storage"
    redis = "redis"


class Phase(StrEnum):
    Pending = "Pending"
    Provisioning = "Provisioning"
    Deploying = "Deploying"
    Ready = "Ready"
    Degraded = "Degraded"
    Failed = "Failed"
    Suspended = "Suspended"  # spec.suspended: stopped on purpose, its domains answer a maintenance page
    Deleting = "Deleting"


# Ports each environment may use, inclusive; the allocator draws from these too.
PORT_RANGES: dict[EnvironmentType, tuple[int, int]] = {
    EnvironmentType.production: (4000, 4499),
    EnvironmentType.staging: (4500, 4999),
    EnvironmentType.preview: (5000, 5999),
}
