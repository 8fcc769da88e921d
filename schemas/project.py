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
            cel="(self.servers.runtime == 'local') == has(self.project.source.command)",
            message=(
                "runtime local runs project.source.command on the operator's machine, and only it does: "
                "use source.command with runtime local, source.image (or source.git, built on the hosts) with "
                "quadlet, source.image with kubernetes"
            ),
            field_path=".project.source.command",
            check=lambda s: (s.servers.runtime is Runtime.local) == (s.project.source.command is not None),
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
    "spec_from_body",
]
