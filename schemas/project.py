"""The `Project` manifest (codeb.dev/v1alpha1): one declaration of a web application.

A Project has seven sections, mirroring the hand-run manifest it replaces:
``project``, ``environment``, ``servers``, ``resources``, ``features``,
``monitoring`` and ``backup``; plus two policies that govern the operator itself
(``deletionPolicy``, ``managementPolicy``). The status is typed too, so the operator
writes only what the CRD declares and ``kubectl get projects`` can print it.

Each section is defined in `schemas/sections/`, the status in `schemas/status.py` and what
they share in `schemas/common.py`; this module puts the spec together (`ProjectSpec`) and is
the one place the rest of the code imports the manifest from.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from schemas.base import (
    RESTART_TOKEN,
    CodebModel,
    Rule,
)
from schemas.common import (
    API_GROUP,
    API_VERSION,
    KIND,
    KOPF_STATUS_FIELD,
    OPERATOR_BUCKET_PREFIX,
    PLURAL,
    PORT_RANGES,
    PULL_REQUEST_MAX,
    RENAME_WHY,
    SLUG_MAX_LENGTH,
    TEMPLATE_DEFAULTS,
    ApplyMode,
    BackupTarget,
    DeletionPolicy,
    DomainName,
    EnvironmentType,
    EnvVarName,
    FileText,
    ManagementPolicy,
    Phase,
    PortNumber,
    Provider,
    RedisIsolation,
    Runtime,
    Template,
)
from schemas.sections.backup import (
    Backup,
)
from schemas.sections.environment import (
    Environment,
    SecretReference,
)
from schemas.sections.features import (
    App,
    Database,
    Features,
    Hook,
    ObjectStorage,
    Redis,
)
from schemas.sections.monitoring import (
    Alerts,
    Monitoring,
)
from schemas.sections.project import (
    GitSource,
    HealthGate,
    ProjectInfo,
    Rollout,
    Source,
)
from schemas.sections.resources import (
    Resources,
)
from schemas.sections.servers import (
    Firewall,
    HealthCheck,
    KubernetesCluster,
    LoadBalancer,
    Servers,
    SshAccess,
    VultrKubernetes,
)
from schemas.status import (
    Allocations,
    BackupFailure,
    BackupSummary,
    BuildStatus,
    BuiltImage,
    Colour,
    Condition,
    ConditionStatus,
    DeploymentRecord,
    Endpoints,
    HookRun,
    HostReport,
    InfrastructureOutputs,
    InfrastructureStatus,
    PlanSummary,
    ProjectStatus,
    ResourceChange,
    RolloutStatus,
    RolloutStep,
    ServingStatus,
    TerraformRun,
)


def _port_in_range(spec: ProjectSpec) -> bool:
    if spec.resources.port is None:
        return True
    low, high = PORT_RANGES[spec.environment.type]
    return low <= spec.resources.port <= high


def _port_range_cel() -> str:
    clauses = [
        f"(self.environment.type == '{env.value}' && self.resources.port >= {low} && self.resources.port <= {high})"
        for env, (low, high) in PORT_RANGES.items()
    ]
    return "!has(self.resources) || !has(self.resources.port) || " + " || ".join(clauses)


# Templates whose steps and command runtime local builds a checkout with (`controller.specs.builds.LOCAL_PRESETS`).
LOCAL_BUILD_TEMPLATES = ("nodejs", "node", "nextjs", "python", "static")
LOCAL_BUILD_TEMPLATES_CEL = "[" + ", ".join(f"'{t}'" for t in LOCAL_BUILD_TEMPLATES) + "]"


def _source_fits_runtime(spec: ProjectSpec) -> bool:
    source, local = spec.project.source, spec.servers.runtime is Runtime.local
    return local if source.command is not None else (not local or source.git is not None)


class ProjectSpec(CodebModel):
    rules = (
        Rule(
            cel=_port_range_cel(),
            message=(
                "resources.port must lie in the environment's range: production 4000-4499, "
                "staging 4500-4999, preview 5000-5999 (or omit it to have one allocated)"
            ),
            field_path=".resources.port",
            check=_port_in_range,
        ),
        Rule(
            cel="has(self.project.source.command) ? self.servers.runtime == 'local' : "
            "(self.servers.runtime != 'local' || has(self.project.source.git))",
            message=(
                "runtime local runs project.source.command (or a checkout of source.git) on the operator's machine, "
                "and only it runs a command: use source.command or source.git with runtime local, source.image or "
                "source.git (built on the hosts) with quadlet, source.image with kubernetes"
            ),
            field_path=".project.source.command",
            check=_source_fits_runtime,
        ),
        Rule(
            cel="!(self.servers.runtime == 'local' && has(self.project.source.git)) || "
            "(has(self.project.template) && self.project.template in " + LOCAL_BUILD_TEMPLATES_CEL + ")",
            message=(
                "runtime local runs a checkout of source.git with its template's steps and command: set "
                "project.template to nodejs, node, nextjs, python or static (a Containerfile needs runtime quadlet)"
            ),
            field_path=".project.template",
            check=lambda s: (
                not (s.servers.runtime is Runtime.local and s.project.source.git is not None)
                or s.project.template.value in LOCAL_BUILD_TEMPLATES
            ),
        ),
        Rule(
            cel="!(self.servers.runtime in ['local', 'quadlet']) || !has(self.resources) "
            "|| !has(self.resources.replicas) || self.resources.replicas == 1",
            message="runtimes local and quadlet run one instance per host on the allocated port: set "
            "resources.replicas to 1 (scale quadlet with servers.count, or use kubernetes for replicas)",
            field_path=".resources.replicas",
            check=lambda s: s.servers.runtime not in (Runtime.local, Runtime.quadlet) or s.resources.replicas == 1,
        ),
    )

    project: ProjectInfo = Field(description="What the application is and where its code comes from.")
    environment: Environment = Field(description="Which environment this is, its domains and its variables.")
    servers: Servers = Field(description="Where the application runs.")
    resources: Resources = Field(default_factory=Resources, description="Port, CPU, memory and replicas.")
    features: Features = Field(default_factory=Features, description="Database, Redis, bucket, apps and hooks.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Health checks, metrics and alerts.")
    backup: Backup = Field(default_factory=Backup, description="Backup schedule and retention.")
    deletion_policy: DeletionPolicy = Field(
        DeletionPolicy.Retain,
        description=(
            "What happens to data (database, bucket, backups) when the Project is deleted: "
            "Retain keeps it, Delete removes it."
        ),
    )
    management_policy: ManagementPolicy = Field(
        ManagementPolicy.Manage,
        description="Manage converges the world to this spec; ObserveOnly reports drift and changes nothing.",
    )
    suspended: bool = Field(
        False,
        description=(
            "Stop the application without deleting it (`codeb stop`): its processes, units or Pods stop, and its "
            "domains answer a maintenance page (503). Its data, ports, names and backups are kept; false starts it "
            "again (`codeb start`)."
        ),
    )
    restarted_at: str | None = Field(
        None,
        description=(
            "Set by `codeb restart` (a timestamp): a new value restarts the application as a new deploy of the same "
            "revision (blue-green or rolling, so it keeps serving), recorded in the deployment history."
        ),
        pattern=RESTART_TOKEN,
        max_length=64,
    )

    @property
    def container_port(self) -> int:
        """The port the application listens on: as stated, else its template's."""
        return self.resources.container_port or TEMPLATE_DEFAULTS[self.project.template].container_port

    @property
    def health_path(self) -> str:
        """The path its health is checked at: as stated, else its template's."""
        return self.monitoring.health_path or TEMPLATE_DEFAULTS[self.project.template].health_path


def spec_from_body(body: dict[str, Any]) -> ProjectSpec:
    """Validate a Project object's spec (raises pydantic.ValidationError)."""
    return ProjectSpec.model_validate(body.get("spec") or {})


# The manifest's public face: every section and the status, importable from here.
__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "KOPF_STATUS_FIELD",
    "OPERATOR_BUCKET_PREFIX",
    "PLURAL",
    "PORT_RANGES",
    "PULL_REQUEST_MAX",
    "RENAME_WHY",
    "SLUG_MAX_LENGTH",
    "Alerts",
    "Allocations",
    "App",
    "ApplyMode",
    "Backup",
    "BackupFailure",
    "BackupSummary",
    "BackupTarget",
    "BuildStatus",
    "BuiltImage",
    "Colour",
    "Condition",
    "ConditionStatus",
    "Database",
    "DeletionPolicy",
    "DeploymentRecord",
    "DomainName",
    "Endpoints",
    "EnvVarName",
    "Environment",
    "EnvironmentType",
    "Features",
    "FileText",
    "Firewall",
    "GitSource",
    "HealthCheck",
    "HealthGate",
    "Hook",
    "HookRun",
    "HostReport",
    "InfrastructureOutputs",
    "InfrastructureStatus",
    "KubernetesCluster",
    "LoadBalancer",
    "ManagementPolicy",
    "Monitoring",
    "ObjectStorage",
    "Phase",
    "PlanSummary",
    "PortNumber",
    "ProjectInfo",
    "ProjectSpec",
    "ProjectStatus",
    "Provider",
    "Redis",
    "RedisIsolation",
    "ResourceChange",
    "Resources",
    "Rollout",
    "RolloutStatus",
    "RolloutStep",
    "Runtime",
    "SecretReference",
    "Servers",
    "ServingStatus",
    "Source",
    "SshAccess",
    "Template",
    "TerraformRun",
    "VultrKubernetes",
    "spec_from_body",
]
