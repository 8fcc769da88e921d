"""The `Project` manifest (codeb.dev/v1alpha1): one declaration of a web application.

A Project has seven sections, mirroring the hand-run manifest it replaces:
``project``, ``environment``, ``servers``, ``resources``, ``features``,
``monitoring`` and ``backup``; plus two policies that govern the operator itself
(``deletionPolicy``, ``managementPolicy``). The status is typed too, so the operator
writes only what the CRD declares and ``kubectl get projects`` can print it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from schemas.base import (
    CONTAINER_IMAGE,
    CONTAINER_IMAGE_MAX_LENGTH,
    CPU_QUANTITY,
    CRON,
    DNS_LABEL,
    DOMAIN,
    ENV_VAR_NAME,
    EXTENSION_NAME,
    HOST,
    HTTP_PATH,
    MEMORY_QUANTITY,
    PRINTABLE,
    REVISION,
    CodebModel,
    Rule,
    immutable,
    matches,
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
    node = "node"
    static = "static"
    container = "container"


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
    Deleting = "Deleting"


# Ports each environment may use, inclusive; the allocator draws from these too.
PORT_RANGES: dict[EnvironmentType, tuple[int, int]] = {
    EnvironmentType.production: (4000, 4499),
    EnvironmentType.staging: (4500, 4999),
    EnvironmentType.preview: (5000, 5999),
}


# ---------------------------------------------------------------- project


class GitSource(CodebModel):
    url: str = Field(
        description="Git repository to build from, https:// or ssh (git@host:org/repo.git).",
        pattern=r"^(https://|ssh://|git@)[^\s\x00-\x1f\x7f]+$",
        max_length=512,
    )
    ref: str = Field(
        "main",
        description="Branch, tag or commit to build.",
        pattern=r"^[A-Za-z0-9._/-]+$",
        max_length=255,
    )


class Source(CodebModel):
    rules = (
        Rule(
            cel="[has(self.image), has(self.git), has(self.command)].filter(x, x).size() == 1",
            message="set exactly one of source.image, source.git or source.command",
            field_path="",
            check=lambda s: [s.image is not None, s.git is not None, s.command is not None].count(True) == 1,
        ),
        Rule(
            cel="!has(self.workingDir) || has(self.command)",
            message="workingDir goes with command (the directory the command runs in)",
            field_path=".workingDir",
            check=lambda s: s.working_dir is None or s.command is not None,
        ),
    )

    image: str | None = Field(
        None,
        description="Container image to run, e.g. ghcr.io/acme/shop:1.4.2 (runtimes quadlet and kubernetes).",
        pattern=CONTAINER_IMAGE,
        max_length=CONTAINER_IMAGE_MAX_LENGTH,
    )
    git: GitSource | None = Field(None, description="Git source to build. Exclusive with image and command.")
    command: list[Annotated[str, Field(pattern=PRINTABLE, min_length=1, max_length=1024)]] | None = Field(
        None,
        description=(
            "Program and arguments run as a supervised process on the operator's machine (runtime local), "
            "e.g. [python3, app.py]. It receives the connection Secret as environment and PORT to listen on."
        ),
        min_length=1,
        max_length=64,
    )
    working_dir: str | None = Field(
        None,
        description=(
            "Directory the command runs in; a relative path is taken from the operator's local root "
            "(CODEB_LOCAL_ROOT, by default the directory the operator started in)."
        ),
        pattern=PRINTABLE,
        min_length=1,
        max_length=1024,
    )


class HealthGate(CodebModel):
    rules = (
        Rule(
            cel="self.timeoutSeconds <= self.intervalSeconds",
            message="timeoutSeconds must not be longer than intervalSeconds",
            field_path=".timeoutSeconds",
            check=lambda h: h.timeout_seconds <= h.interval_seconds,
        ),
    )

    # A check a second, three healthy in a row: a healthy release takes traffic about three seconds after its
    # port opens (kamal-proxy checks every second; the seeds ask for three successes), while a failing one
    # never does.
    interval_seconds: float = Field(1, description="Seconds between health checks of a new colour.", ge=0.1, le=300)
    timeout_seconds: float = Field(1, description="Seconds before a check counts as failed.", ge=0.1, le=120)
    healthy_threshold: int = Field(
        3, description="Consecutive healthy checks before the new colour takes traffic.", ge=1, le=20
    )
    unhealthy_threshold: int = Field(
        3, description="Consecutive failed checks (after the first answer) that fail the deploy.", ge=1, le=20
    )


class Rollout(CodebModel):
    health_check: HealthGate = Field(
        default_factory=HealthGate,
        description="The gate a new colour passes before the switch; it probes monitoring.healthPath.",
    )
    start_timeout_seconds: float = Field(
        300, description="Seconds the new colour has to pass the gate before the deploy fails.", ge=1, le=3600
    )
    drain_seconds: float = Field(
        30, description="Seconds the old colour keeps running after the switch, for requests in flight.", ge=0,
        le=3600,
    )  # fmt: skip
    keep_warm_seconds: float = Field(
        3600,
        description=(
            "Seconds the old colour stays running after the switch (at least drainSeconds): setting revision "
            "back within them switches back without a new start. 0 stops it once drained."
        ),
        ge=0,
        le=7 * 24 * 3600,
    )


class ProjectInfo(CodebModel):
    rules = (immutable("slug", RENAME_WHY),)

    slug: str = Field(
        description=(
            "Short DNS-label name of the application (lowercase letters, digits, '-'). "
            "PostgreSQL, Redis and bucket names are derived from it, "
            f"so it is at most {SLUG_MAX_LENGTH} characters."
        ),
        pattern=DNS_LABEL,
        min_length=2,
        max_length=SLUG_MAX_LENGTH,
    )
    display_name: str | None = Field(None, description="Human-readable name.", pattern=PRINTABLE, max_length=128)
    team: str | None = Field(
        None, description="Owning team (DNS label), for grouping and alerts.", pattern=DNS_LABEL, max_length=63
    )
    template: Template = Field(Template.container, description="How the application is built and run.")
    source: Source = Field(description="Where the application comes from: a container image or a git repository.")
    revision: str | None = Field(
        None,
        description=(
            "Revision to deploy (image tag, commit or release name: letters, digits, '.', '_', '-'); "
            "changing it starts a new deploy."
        ),
        pattern=REVISION,
        max_length=128,
    )
    rollout: Rollout = Field(
        default_factory=Rollout,
        description=(
            "How a new revision replaces the running one (runtimes local and quadlet; kubernetes rolls its Pods "
            "under the same health gate): it starts as the other colour on its own port, on every host, passes "
            "the health gate and the post-deploy hooks, then takes the traffic."
        ),
    )


# ---------------------------------------------------------------- environment


class SecretReference(CodebModel):
    name: str = Field(description="Name of a Secret in the Project's namespace.", pattern=DNS_LABEL, max_length=253)
    optional: bool = Field(False, description="Deploy even when the Secret does not exist.")


class Environment(CodebModel):
    rules = (
        immutable("type", RENAME_WHY),
        immutable("pullRequest", RENAME_WHY),
        Rule(
            cel="self.type != 'preview' || has(self.pullRequest)",
            message="a preview environment needs pullRequest (the PR number it previews)",
            field_path=".pullRequest",
            check=lambda e: e.type != EnvironmentType.preview or e.pull_request is not None,
        ),
        Rule(
            cel="self.type == 'preview' || !has(self.pullRequest)",
            message="pullRequest is only allowed when type is preview",
            field_path=".pullRequest",
            check=lambda e: e.type == EnvironmentType.preview or e.pull_request is None,
        ),
        Rule(
            cel="!has(self.variables) || self.variables.all(k, k.matches('" + ENV_VAR_NAME + "'))",
            message="variable names must match [A-Za-z_][A-Za-z0-9_]* (letters, digits, underscore)",
            field_path=".variables",
            check=lambda e: all(matches(ENV_VAR_NAME, k) for k in e.variables),
        ),
    )

    type: EnvironmentType = Field(
        description=(
            "Environment kind; selects the port range (production 4000-4499, staging 4500-4999, preview 5000-5999)."
        )
    )
    domains: list[DomainName] = Field(
        default_factory=list,
        description="Public hostnames routed to the application (HTTPS certificates are issued automatically).",
        max_length=20,
    )
    pull_request: int | None = Field(
        None, description="Pull request number; required for preview.", ge=1, le=PULL_REQUEST_MAX
    )
    variables: dict[str, FileText] = Field(
        default_factory=dict,
        description=(
            "Plain environment variables for the application (no control characters: they are written to an "
            "environment file). Put credentials in secretRefs instead."
        ),
        max_length=200,
    )
    secret_refs: list[SecretReference] = Field(
        default_factory=list,
        description="Secrets whose keys are exposed to the application as environment variables.",
        max_length=20,
    )


# ---------------------------------------------------------------- servers


class HealthCheck(CodebModel):
    rules = (
        Rule(
            cel="self.timeoutSeconds < self.intervalSeconds",
            message="timeoutSeconds must be shorter than intervalSeconds",
            field_path=".timeoutSeconds",
            check=lambda h: h.timeout_seconds < h.interval_seconds,
        ),
    )

    path: str = Field(
        "/api/health", description="HTTP path the load balancer probes.", pattern=HTTP_PATH, max_length=256
    )
    interval_seconds: int = Field(15, description="Seconds between probes.", ge=5, le=300)
    timeout_seconds: int = Field(5, description="Seconds before a probe counts as failed.", ge=1, le=120)
    healthy_threshold: int = Field(2, description="Consecutive successes before a host takes traffic.", ge=1, le=10)
    unhealthy_threshold: int = Field(3, description="Consecutive failures before a host is taken out.", ge=1, le=10)


class LoadBalancer(CodebModel):
    enabled: bool = Field(False, description="Put a provider load balancer in front of the hosts.")
    health_check: HealthCheck = Field(default_factory=HealthCheck, description="Load balancer health check.")


class Firewall(CodebModel):
    ports: list[PortNumber] = Field(
        default_factory=lambda: [22, 80, 443],
        description="TCP ports open to the internet on each host.",
        max_length=32,
    )
    allowed_cidrs: list[Annotated[str, Field(pattern=r"^[0-9a-fA-F:.]+/[0-9]{1,3}$", max_length=64)]] = Field(
        default_factory=lambda: ["0.0.0.0/0"],
        description="Source networks allowed through the firewall.",
        max_length=32,
    )


class SshAccess(CodebModel):
    user: str = Field(
        "root", description="User the operator logs in as.", pattern=r"^[a-z_][a-z0-9_-]*$", max_length=32
    )
    port: PortNumber = Field(22, description="SSH port of the hosts.")
    secret_ref: str = Field(
        description=(
            "Secret in the Project's namespace with key privateKey (OpenSSH private key, no passphrase) and, "
            "optionally, knownHosts (known_hosts lines); without knownHosts, each host's key is trusted on first use, "
            "recorded in the cluster, and a changed key is refused (HostKeyChanged)."
        ),
        pattern=DNS_LABEL,
        max_length=253,
    )


class KubernetesCluster(CodebModel):
    kubeconfig_secret_ref: str = Field(
        description=(
            "Secret in the Project's namespace whose key kubeconfig holds a self-contained kubeconfig for the "
            "target cluster (certificates and token inline: kubectl config view --raw --flatten --minify); "
            "exec and auth-provider plugins and file paths are refused."
        ),
        pattern=DNS_LABEL,
        max_length=253,
    )


class Servers(CodebModel):
    rules = (
        Rule(
            cel="!(has(self.count) && (has(self.min) || has(self.max)))",
            message="set either count or min/max, not both",
            field_path=".count",
            check=lambda s: not (s.count is not None and (s.min is not None or s.max is not None)),
        ),
        Rule(
            cel="has(self.min) == has(self.max)",
            message="min and max go together",
            field_path=".max",
            check=lambda s: (s.min is None) == (s.max is None),
        ),
        Rule(
            cel="!has(self.min) || !has(self.max) || self.min <= self.max",
            message="min must be less than or equal to max",
            field_path=".min",
            check=lambda s: s.min is None or s.max is None or s.min <= s.max,
        ),
        Rule(
            cel="(self.provider == 'local') == (self.runtime == 'local')",
            message="runtime local goes with provider local (and only with it)",
            field_path=".runtime",
            check=lambda s: (s.provider == Provider.local) == (s.runtime == Runtime.local),
        ),
        Rule(
            cel="self.provider != 'lightsail' || self.runtime != 'kubernetes'",
            message="Lightsail has no managed Kubernetes: use runtime quadlet",
            field_path=".runtime",
            check=lambda s: not (s.provider == Provider.lightsail and s.runtime == Runtime.kubernetes),
        ),
        Rule(
            cel="self.provider != 'existing' || self.runtime != 'quadlet' || size(self.hosts) > 0",
            message="provider existing with runtime quadlet needs hosts (the machines to deploy to)",
            field_path=".hosts",
            check=lambda s: s.provider != Provider.existing or s.runtime != Runtime.quadlet or len(s.hosts) > 0,
        ),
        Rule(
            cel="self.provider != 'existing' || self.runtime != 'quadlet' || has(self.ssh)",
            message=(
                "provider existing with runtime quadlet needs ssh.secretRef: "
                "a Secret with the privateKey that logs in to the hosts"
            ),
            field_path=".ssh",
            check=lambda s: s.provider != Provider.existing or s.runtime != Runtime.quadlet or s.ssh is not None,
        ),
        Rule(
            cel="!has(self.cluster) || (self.provider == 'existing' && self.runtime == 'kubernetes')",
            message=(
                "cluster names an existing Kubernetes cluster: it goes with provider existing and runtime "
                "kubernetes (remove it, or set those two)"
            ),
            field_path=".cluster",
            check=lambda s: s.cluster is None or (s.provider == Provider.existing and s.runtime == Runtime.kubernetes),
        ),
        Rule(
            cel="!(self.provider in ['vultr', 'lightsail']) || has(self.credentialsSecretRef)",
            message=(
                "a cloud provider needs credentialsSecretRef: a Secret with apiKey (Vultr) or accessKeyId and "
                "secretAccessKey (Lightsail)"
            ),
            field_path=".credentialsSecretRef",
            check=lambda s: s.provider not in (Provider.vultr, Provider.lightsail) or s.credentials_secret_ref,
        ),
        Rule(
            cel="!(self.provider in ['vultr', 'lightsail']) || self.runtime != 'quadlet' || has(self.ssh)",
            message=(
                "hosts a cloud provider makes for runtime quadlet need ssh.secretRef: the operator's key, which "
                "the hosts are given at creation and the operator logs in with"
            ),
            field_path=".ssh",
            check=lambda s: (
                s.provider not in (Provider.vultr, Provider.lightsail)
                or s.runtime != Runtime.quadlet
                or s.ssh is not None
            ),
        ),
        Rule(
            cel="!has(self.approvedPlan) || self.apply == 'approve'",
            message="approvedPlan goes with apply: approve",
            field_path=".approvedPlan",
            check=lambda s: s.approved_plan is None or s.apply is ApplyMode.approve,
        ),
        Rule(
            cel="!(self.provider in ['vultr', 'lightsail']) || has(self.region)",
            message="a cloud provider needs a region (e.g. icn for Vultr Seoul, ap-northeast-2 for Lightsail)",
            field_path=".region",
            check=lambda s: s.provider not in (Provider.vultr, Provider.lightsail) or s.region is not None,
        ),
    )

    provider: Provider = Field(
        description="Where hosts come from: a cloud (vultr, lightsail), existing machines, or local."
    )
    region: str | None = Field(
        None,
        description="Provider region, e.g. icn (Vultr Seoul) or ap-northeast-2.",
        pattern=r"^[a-z0-9-]+$",
        max_length=32,
    )
    plan: str | None = Field(
        None,
        description="Host size: a Vultr plan (vc2-2c-4gb) or Lightsail bundle (medium_3_0).",
        pattern=r"^[a-z0-9_.-]+$",
        max_length=64,
    )
    count: int | None = Field(None, description="Fixed number of hosts. Exclusive with min/max.", ge=1, le=100)
    min: int | None = Field(None, description="Fewest hosts when autoscaling.", ge=1, le=100)
    max: int | None = Field(None, description="Most hosts when autoscaling.", ge=1, le=100)
    runtime: Runtime = Field(
        description="How the workload runs: Podman Quadlet units, Kubernetes pods, or local processes."
    )
    platform: str | None = Field(
        None,
        description=(
            "Name of the Platform (cluster-scoped) whose PostgreSQL, Redis, MinIO and Caddy this Project uses; "
            "without one, those components report NotImplemented (the operator has no built-in services)."
        ),
        pattern=DNS_LABEL,
        max_length=63,
    )
    hosts: list[Annotated[str, Field(pattern=HOST, min_length=1, max_length=253)]] = Field(
        default_factory=list,
        description="Host names or IP addresses, for provider existing with runtime quadlet.",
        max_length=100,
    )
    ssh: SshAccess | None = Field(None, description="How the operator logs in to the hosts (quadlet units).")
    cluster: KubernetesCluster | None = Field(
        None,
        description=(
            "For provider existing and runtime kubernetes: the cluster to deploy to. "
            "Omit it to deploy into the operator's own cluster."
        ),
    )
    load_balancer: LoadBalancer = Field(default_factory=LoadBalancer, description="Provider load balancer.")
    firewall: Firewall = Field(default_factory=Firewall, description="Host firewall.")
    credentials_secret_ref: str | None = Field(
        None,
        description=(
            "For vultr and lightsail: Secret in the Project's namespace with the provider's credentials, "
            "key apiKey (Vultr) or keys accessKeyId and secretAccessKey (Lightsail). They reach Terraform as "
            "environment variables only."
        ),
        pattern=DNS_LABEL,
        max_length=253,
    )
    apply: ApplyMode = Field(
        ApplyMode.auto,
        description=(
            "For vultr and lightsail, how Terraform changes reach the cloud: auto applies them; approve plans "
            "and waits until approvedPlan names that plan (status.infrastructure.plan.id); observe plans and "
            "reports drift, and never applies."
        ),
    )
    approved_plan: str | None = Field(
        None,
        description="With apply approve: the id of the plan to apply, as status.infrastructure.plan.id shows it.",
        pattern=r"^[0-9a-f]{12}$",
        max_length=12,
    )


# ---------------------------------------------------------------- resources


class Resources(CodebModel):
    port: int | None = Field(
        None,
        description=(
            "Host port of the application. Omit it to have one allocated from the environment's range "
            "(production 4000-4499, staging 4500-4999, preview 5000-5999); a pinned port must lie in that range."
        ),
        ge=1024,
        le=65535,
    )
    container_port: PortNumber = Field(3000, description="Port the application listens on inside its container.")
    cpu: str = Field("500m", description="CPU limit per replica, e.g. 500m or 2.", pattern=CPU_QUANTITY, max_length=16)
    memory: str = Field(
        "512Mi", description="Memory limit per replica, e.g. 512Mi or 2Gi.", pattern=MEMORY_QUANTITY, max_length=16
    )
    replicas: int = Field(
        1,
        description="Application instances in total (Kubernetes); quadlet and local run one per host.",
        ge=1,
        le=50,
    )


# ---------------------------------------------------------------- features


class Database(CodebModel):
    enabled: bool = Field(True, description="Create a PostgreSQL database and owner role for the project.")
    version: str = Field("16", description="PostgreSQL major version.", pattern=r"^(13|14|15|16|17)$", max_length=2)
    extensions: list[Annotated[str, Field(pattern=EXTENSION_NAME, max_length=63)]] = Field(
        default_factory=list,
        description="Extensions to create in the database, e.g. pg_trgm, uuid-ossp as uuid_ossp.",
        max_length=20,
    )
    connection_limit: int = Field(
        20, description="Most concurrent connections the project's role may open.", ge=1, le=1000
    )


class Redis(CodebModel):
    enabled: bool = Field(True, description="Allocate Redis for the project.")
    isolation: RedisIsolation = Field(
        RedisIsolation.acl,
        description=(
            "acl (the only mode): an ACL user limited to the key prefix '<project>:' and channel prefix, with no "
            "command that lists keys or channels or reaches another database. Numbered databases (dbIndex) are "
            "not offered: Redis ACLs cannot confine a user to one."
        ),
    )


class ObjectStorage(CodebModel):
    rules = (
        immutable("bucket", RENAME_WHY),
        Rule(
            cel="!has(self.bucket) || !self.bucket.startsWith('codeb-')",
            message="bucket names starting with 'codeb-' are the operator's own (final dumps, backups); choose another",
            field_path=".bucket",
            check=lambda s: not (s.bucket or "").startswith(OPERATOR_BUCKET_PREFIX),
        ),
    )

    enabled: bool = Field(True, description="Create an S3 (MinIO) bucket with a user limited to it.")
    bucket: str | None = Field(
        None,
        description="Bucket name; defaults to '<slug>-uploads' (with the environment for non-production).",
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        max_length=63,
    )
    versioning: bool = Field(False, description="Keep old versions of objects.")
    expire_after_days: int | None = Field(None, description="Delete objects older than this many days.", ge=1, le=3650)


class App(CodebModel):
    name: str = Field(description="App to install, e.g. forum, shop, crowdfunding.", pattern=DNS_LABEL, max_length=63)
    version: str | None = Field(
        None, description="App version (letters, digits, '.', '_', '-'); latest when omitted.", pattern=REVISION,
        max_length=64,
    )  # fmt: skip
    settings: dict[str, Annotated[str, Field(pattern=PRINTABLE, max_length=1024)]] = Field(
        default_factory=dict, description="App-specific settings.", max_length=50
    )


class Hook(CodebModel):
    name: str = Field(description="Hook name, unique in the project.", pattern=DNS_LABEL, max_length=63)
    command: list[Annotated[str, Field(pattern=PRINTABLE, min_length=1, max_length=1024)]] = Field(
        description=(
            "Command run in the new release's container, e.g. [npm, run, migrate]: a program and its arguments, "
            "none empty, no control characters."
        ),
        min_length=1,
        max_length=32,
    )
    timeout_seconds: int = Field(300, description="Seconds before the hook fails the deploy.", ge=1, le=3600)


class Features(CodebModel):
    database: Database | None = Field(None, description="PostgreSQL database for the project.")
    redis: Redis | None = Field(None, description="Redis allocation for the project.")
    storage: ObjectStorage | None = Field(None, description="S3-compatible bucket for the project.")
    apps: list[App] = Field(default_factory=list, description="Apps installed after the first deploy.", max_length=50)
    post_deploy_hooks: list[Hook] = Field(
        default_factory=list,
        description="Commands run after each deploy, before traffic switches (migrations, CMS initial pages).",
        max_length=20,
    )


# ---------------------------------------------------------------- monitoring


class Alerts(CodebModel):
    error_rate_percent: float = Field(
        5.0, description="Alert when more than this percent of requests fail.", ge=0, le=100
    )
    latency_p95_ms: int = Field(
        1000, description="Alert when the 95th percentile latency exceeds this.", ge=1, le=600000
    )


class Monitoring(CodebModel):
    health_path: str = Field(
        "/api/health",
        description="HTTP path that answers 200 when the application is healthy.",
        pattern=HTTP_PATH,
        max_length=256,
    )
    probe_interval_seconds: int = Field(15, description="Seconds between health probes.", ge=5, le=3600)
    metrics_path: str | None = Field(
        None, description="Prometheus metrics path, if the application exposes one.", pattern=HTTP_PATH, max_length=256
    )
    alerts: Alerts = Field(default_factory=Alerts, description="Alert thresholds.")


# ---------------------------------------------------------------- backup


class Backup(CodebModel):
    rules = (
        Rule(
            cel="!self.walArchiving || 'database' in self.include",
            message="walArchiving needs 'database' in include",
            field_path=".walArchiving",
            check=lambda b: not b.wal_archiving or BackupTarget.database in b.include,
        ),
    )

    enabled: bool = Field(True, description="Take scheduled backups.")
    schedule: str = Field(
        "0 3 * * *",
        description="When to back up: a 5-field cron expression (minute hour day month weekday) or @daily-style macro.",
        pattern=CRON,
        max_length=128,
    )
    retention_days: int = Field(7, description="Days backups are kept.", ge=1, le=3650)
    include: list[BackupTarget] = Field(
        default_factory=lambda: [BackupTarget.database], description="What to back up.", max_length=3
    )
    wal_archiving: bool = Field(False, description="Archive PostgreSQL WAL for point-in-time recovery.")


# ---------------------------------------------------------------- spec


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
                "use source.command with runtime local, source.image with quadlet or kubernetes"
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


# ---------------------------------------------------------------- status


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(CodebModel):
    type: str = Field(description="Condition type, e.g. Ready, Synced, DatabaseReady.", max_length=64)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.", max_length=128)
    message: str = Field("", description="Human-readable detail.", max_length=4096)
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(None, description="Generation the condition was computed for.")


class Allocations(CodebModel):
    port: int | None = Field(None, description="Host port allocated to the application (its blue colour).")
    alternate_port: int | None = Field(
        None, description="Port of the green colour (runtime local): where a new release starts beside the blue."
    )
    database: str | None = Field(None, description="PostgreSQL database name.")
    database_role: str | None = Field(None, description="PostgreSQL role owning the database.")
    redis_prefix: str | None = Field(None, description="Key prefix the project's Redis user may touch.")
    redis_user: str | None = Field(None, description="Redis ACL user.")
    bucket: str | None = Field(None, description="S3 bucket name.")
    connection_secret: str | None = Field(None, description="Secret holding the project's connection settings.")


class Endpoints(CodebModel):
    url: str | None = Field(None, description="Public URL of the application.")
    internal: list[str] = Field(
        default_factory=list, description="Upstream addresses (host:port) serving the application."
    )


class HostReport(CodebModel):
    address: str = Field(description="The host, as servers.hosts names it.")
    usable: bool = Field(description="Reachable over SSH, with podman and its quadlet generator.")
    podman: str | None = Field(None, description="podman's version on the host.")
    reason: str | None = Field(None, description="Why the host cannot be used, e.g. HostUnreachable or PodmanMissing.")
    message: str | None = Field(None, description="What was found, in words.")


class InfrastructureOutputs(CodebModel):
    public_addresses: list[str] = Field(default_factory=list, description="Public IP of each host.", max_length=100)
    private_addresses: list[str] = Field(
        default_factory=list, description="Private IP of each host, where the provider gives one.", max_length=100
    )
    load_balancer_address: str | None = Field(None, description="The load balancer's address, when there is one.")


class ResourceChange(CodebModel):
    address: str = Field(description="Terraform resource address, e.g. vultr_instance.hosts[1].")
    action: str = Field(description="create, update, delete or replace.")


class PlanSummary(CodebModel):
    id: str = Field(description="Names exactly these changes: set spec.servers.approvedPlan to it to apply them.")
    add: int = Field(0, description="Resources to create.")
    change: int = Field(0, description="Resources to update in place.")
    destroy: int = Field(0, description="Resources to destroy (a replacement counts here and in add).")
    resources: list[ResourceChange] = Field(
        default_factory=list, description="Every change, by resource.", max_length=500
    )
    config_hash: str = Field(description="The module and inputs the plan was made from.")
    planned_at: datetime = Field(description="When the plan was made.")


class TerraformRun(CodebModel):
    operation: str = Field(description="plan, apply or destroy.")
    result: str = Field(description="Running, Succeeded or Failed.")
    started_at: datetime = Field(description="When the run started.")
    finished_at: datetime | None = Field(None, description="When it ended.")
    message: str = Field("", description="What Terraform said, when it failed.", max_length=4096)


class InfrastructureStatus(CodebModel):
    applied_hash: str | None = Field(
        None, description="Hash of the module and inputs last applied: unchanged, no Terraform runs."
    )
    applied_at: datetime | None = Field(None, description="When they were applied.")
    outputs: InfrastructureOutputs = Field(
        default_factory=InfrastructureOutputs, description="What the last apply made: addresses of hosts and LB."
    )
    plan: PlanSummary | None = Field(
        None, description="The last plan with changes not applied (apply approve or observe), by resource."
    )
    last_run: TerraformRun | None = Field(None, description="The last Terraform run, or the one in progress.")


class Colour(StrEnum):
    blue = "blue"
    green = "green"

    @property
    def other(self) -> Colour:
        return Colour.green if self is Colour.blue else Colour.blue


class RolloutStep(StrEnum):
    checking = "Checking"  # the new colour runs; counting consecutive healthy checks
    hooks = "Hooks"  # the gate passed; post-deploy hooks run against the new colour
    switching = "Switching"  # the route is being pointed at the new colour
    draining = "Draining"  # the new colour serves; the old one finishes its requests
    succeeded = "Succeeded"
    failed = "Failed"
    superseded = "Superseded"  # the spec changed again before the switch


class HookRun(CodebModel):
    name: str = Field(description="The hook (features.postDeployHooks) or app (app-<name>).")
    result: str = Field(description="Running, Succeeded or Failed.")
    run_id: str | None = Field(
        None,
        description=(
            "Names this run where it runs. Recorded before the run starts: after a restart the operator finds "
            "the run again by it and never starts a hook twice."
        ),
        pattern="^[0-9a-f]{12}$",
    )
    started_at: datetime | None = Field(None, description="When the run was recorded (its timeout counts from here).")
    finished_at: datetime | None = Field(None, description="When it ended (none while it runs).")
    message: str = Field("", description="Its last output lines (secrets redacted).", max_length=2048)


class RolloutStatus(CodebModel):
    release: str = Field(description="Digest of everything the new colour runs with (revision, image, settings).")
    revision: str | None = Field(None, description="project.revision being rolled out.")
    image: str | None = Field(None, description="Image being rolled out (quadlet).")
    colour: Colour | None = Field(
        None, description="The colour the new release runs as (none on runtime kubernetes: one Deployment rolls)."
    )
    previous: Colour | None = Field(None, description="The colour that served before (None on a first deploy).")
    step: RolloutStep = Field(description="Where the rollout is.")
    started_at: datetime = Field(description="When it started.")
    checked_at: datetime | None = Field(None, description="When the new colour was last checked.")
    switched_at: datetime | None = Field(None, description="When traffic moved to the new colour.")
    finished_at: datetime | None = Field(None, description="When it succeeded or failed.")
    healthy_checks: int = Field(0, description="Consecutive healthy checks so far.")
    unhealthy_checks: int = Field(0, description="Consecutive failed checks since the first answer.")
    answered: bool = Field(False, description="Whether the new colour has answered a check at all.")
    hooks: list[HookRun] = Field(default_factory=list, description="Hooks run for this release.", max_length=80)
    retry: str | None = Field(None, description="The codeb.dev/retry-rollout value this attempt answers.")
    message: str = Field("", description="The last check's result, or why it failed.", max_length=4096)

    @property
    def new_colour(self) -> Colour:
        """The colour a blue-green rollout starts (runtimes local and quadlet always name one)."""
        if self.colour is None:
            raise ValueError("a rollout of runtime kubernetes has no colour")
        return self.colour


class ServingStatus(CodebModel):
    colour: Colour | None = Field(
        None, description="The colour the route sends traffic to (none on runtime kubernetes)."
    )
    replica_set: str | None = Field(None, description="Runtime kubernetes: the ReplicaSet whose Pods serve.")
    release: str = Field(description="Digest of what that colour runs.")
    revision: str | None = Field(None, description="Its project.revision.")
    since: datetime = Field(description="When it started serving.")
    warm: Colour | None = Field(None, description="The previous colour, still running for an instant rollback.")
    warm_release: str | None = Field(None, description="Digest of what the warm colour runs.")
    warm_revision: str | None = Field(None, description="Its project.revision.")
    warm_until: datetime | None = Field(None, description="When the warm colour is stopped.")


class DeploymentRecord(CodebModel):
    revision: str | None = Field(None, description="Revision deployed.")
    image: str | None = Field(None, description="Image deployed.")
    release: str = Field(description="Digest of everything the release runs with.")
    colour: Colour | None = Field(None, description="The colour it ran as (none on runtime kubernetes).")
    started_at: datetime = Field(description="When the deploy started.")
    switched_at: datetime | None = Field(None, description="When it took the traffic.")
    finished_at: datetime | None = Field(None, description="When it finished.")
    result: str = Field(description="Progressing, Succeeded, Failed or Superseded.")
    reason: str = Field("", description="Why it failed (RolloutFailed, HookFailed…) or what changed.")
    message: str = Field("", description="Detail.", max_length=2048)


class ProjectStatus(CodebModel):
    model_config = CodebModel.model_config | {"extra": "ignore"}

    phase: Phase = Field(Phase.Pending, description="Lifecycle phase.")
    observed_generation: int | None = Field(None, description="metadata.generation the status describes.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Synced and one per component.")
    allocations: Allocations = Field(
        default_factory=Allocations, description="Names and numbers allocated to the project."
    )
    endpoints: Endpoints = Field(default_factory=Endpoints, description="Where the application answers.")
    hosts: list[HostReport] = Field(
        default_factory=list, description="Each host the workload runs on, as last checked.", max_length=100
    )
    infrastructure: InfrastructureStatus | None = Field(
        None, description="Hosts made by Terraform (vultr, lightsail): what was applied, the pending plan, runs."
    )
    rollout: RolloutStatus | None = Field(None, description="The last rollout, or the one in progress.")
    serving: ServingStatus | None = Field(None, description="Which colour takes the traffic, and which is warm.")
    deployments: list[DeploymentRecord] = Field(
        default_factory=list, description="Recent deploys, newest first.", max_length=20
    )
    last_error: str | None = Field(None, description="The last error, when the last reconcile failed.")


def spec_from_body(body: dict[str, Any]) -> ProjectSpec:
    """Validate a Project object's spec (raises pydantic.ValidationError)."""
    return ProjectSpec.model_validate(body.get("spec") or {})
