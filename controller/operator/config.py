"""Operator configuration: read once at start-up from the environment into a typed object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator

from controller.jobs.point_in_time import SIDE_ROOT
from controller.specs.terraform import MODULES


class OperatorConfig(BaseModel):
    """Every knob, with its environment variable in the description."""

    model_config = {"frozen": True}

    drift_interval_seconds: float = Field(
        180.0, ge=1, description="CODEB_DRIFT_INTERVAL: seconds between drift checks."
    )
    claims_namespace: str = Field("codeb-system", description="CODEB_CLAIMS_NAMESPACE: where allocation claims live.")
    reserved_ports: frozenset[int] = Field(
        frozenset(), description="CODEB_RESERVED_PORTS: comma-separated ports never allocated."
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="CODEB_METRICS_PORT: Prometheus port; 0 disables.")
    prometheus_url: str | None = Field(
        None, description="CODEB_PROMETHEUS_URL: a Prometheus scraping the Platforms' Caddy, where autoscaling reads "
        "each Project's load (servers.min/max on hosts); unset: the host count stays."
    )  # fmt: skip
    inbound_port: int = Field(
        0, ge=0, le=65535, description="CODEB_INBOUND_PORT: where Alertmanager posts the Projects' alerts "
        "(POST /alertmanager); 0 disables."
    )  # fmt: skip
    inbound_token_file: Path | None = Field(
        None, description="CODEB_INBOUND_TOKEN_FILE: a file holding the bearer token Alertmanager sends (a mounted "
        "Secret; read at each delivery); unset: alert delivery is off."
    )  # fmt: skip
    quota_projects: int | None = Field(
        None, ge=0, description="CODEB_QUOTA_PROJECTS: Projects one namespace may have without a Platform; unset: any."
    )
    quota_domains: int | None = Field(
        None, ge=0, description="CODEB_QUOTA_DOMAINS: domains one namespace's Projects without a Platform may route."
    )
    peering: str | None = Field(
        None, description="CODEB_PEERING: kopf peering name; unset runs standalone (a single replica)."
    )
    peering_priority: int | None = Field(
        None,
        ge=0,
        description="CODEB_PEERING_PRIORITY: highest priority acts, others stand by; random when unset.",
    )
    peering_lifetime_seconds: int = Field(
        30, ge=5, le=600, description="CODEB_PEERING_LIFETIME: seconds a replica that stopped renewing its peering "
        "record still counts as alive; the bound on a standby's takeover after the active replica dies.",
    )  # fmt: skip
    max_workers: int = Field(32, ge=1, description="CODEB_MAX_WORKERS: threads for blocking driver calls.")
    log_format: str = Field("json", pattern="^(json|console)$", description="CODEB_LOG_FORMAT: json or console.")
    retry_max_seconds: float = Field(
        300.0, ge=1, description="CODEB_RETRY_MAX: longest wait between retries of a failing Project (backoff cap)."
    )
    api_timeout_seconds: float = Field(
        30.0, gt=0, description="CODEB_API_TIMEOUT: seconds before a Kubernetes API call is given up."
    )
    service_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="CODEB_SERVICE_TIMEOUT: seconds before a call to PostgreSQL, Redis, MinIO or Caddy is given up.",
    )
    service_concurrency: int = Field(
        8, ge=1, description="CODEB_SERVICE_CONCURRENCY: most calls in flight at once to each shared service."
    )
    reconcile_timeout_seconds: float = Field(
        300.0, gt=0, description="CODEB_RECONCILE_TIMEOUT: seconds before one reconcile pass is abandoned and retried."
    )
    backup_heartbeat_seconds: float = Field(
        20.0, ge=0.5, le=600, description="CODEB_BACKUP_HEARTBEAT: seconds between a running backup's signs of life; "
        "six missed make it stale (cut short, recorded Failed).",
    )  # fmt: skip
    backup_concurrency: int = Field(
        2, ge=1, le=64, description="CODEB_BACKUP_CONCURRENCY: backup runs at once per operator."
    )
    side_instances_dir: Path = Field(
        SIDE_ROOT, description="CODEB_SIDE_INSTANCES: where a point-in-time restore recovers the Platform's cluster "
        "(room for the whole cluster).",
    )  # fmt: skip

    allow_internal_targets: bool = Field(
        False,
        description=(
            "CODEB_ALLOW_INTERNAL_TARGETS: 1 lets Projects name hosts and cluster servers on loopback or link-local"
            " addresses (the operator's own machine, cloud metadata). Only where everything runs on one machine"
            " (codeb up, the tests)."
        ),
    )
    local_runtime: bool = Field(
        False,
        description=(
            "CODEB_LOCAL_RUNTIME: 1 lets Projects with runtime local run their source.command on this machine, as "
            "the operator's user. Only for a machine whose every Project author is trusted (codeb up sets it)."
        ),
    )
    local_runtime_namespaces: frozenset[str] | None = Field(
        None,
        description="CODEB_LOCAL_RUNTIME_NAMESPACES: comma-separated namespaces allowed runtime local; unset: all.",
    )
    local_root: Path = Field(
        default_factory=Path.cwd,
        description="CODEB_LOCAL_ROOT: directory a relative source.workingDir is taken from (default: current).",
    )
    state_dir: Path = Field(
        default_factory=lambda: Path.home() / ".local" / "state" / "codeb",
        description="CODEB_STATE_DIR: where local workloads keep their logs and runtime state.",
    )

    terraform_binary: str = Field(
        "terraform", description="CODEB_TERRAFORM: the Terraform binary (1.5 or later; tested with 1.11.4)."
    )
    terraform_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "codeb" / "terraform",
        description="CODEB_TERRAFORM_DIR: one workspace per Project (a cache: state lives in the cluster).",
    )
    terraform_modules: Path = Field(
        default_factory=lambda: MODULES,
        description="CODEB_TERRAFORM_MODULES: directory with one module per provider (vultr/, lightsail/).",
    )
    terraform_plugins: Path | None = Field(
        None,
        description=(
            "CODEB_TERRAFORM_PLUGINS: providers installed once (a filesystem mirror, as `terraform providers "
            "mirror` makes); every init reads them and none downloads. Unset: downloads go through a shared cache, "
            "one init at a time."
        ),
    )
    terraform_concurrency: int = Field(
        4, ge=1, description="CODEB_TERRAFORM_CONCURRENCY: most Terraform runs at once, across Projects."
    )
    terraform_timeout_seconds: float = Field(
        3600.0, ge=60, description="CODEB_TERRAFORM_TIMEOUT: seconds before a run is interrupted (it saves its state)."
    )
    terraform_wait_seconds: float = Field(
        20.0, ge=0, description="CODEB_TERRAFORM_WAIT: seconds a reconcile waits for a run before reporting it running."
    )
    terraform_plan_interval_seconds: float = Field(
        3600.0, ge=60, description="CODEB_TERRAFORM_PLAN_INTERVAL: with apply observe, seconds between drift plans."
    )

    @field_validator("reserved_ports", mode="before")
    @classmethod
    def _parse_ports(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(int(p) for p in value.split(",") if p.strip())
        return value

    @field_validator("local_runtime_namespaces", mode="before")
    @classmethod
    def _parse_names(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(n.strip() for n in value.split(",") if n.strip())
        return value


_ENV = {
    "drift_interval_seconds": "CODEB_DRIFT_INTERVAL",
    "claims_namespace": "CODEB_CLAIMS_NAMESPACE",
    "reserved_ports": "CODEB_RESERVED_PORTS",
    "metrics_port": "CODEB_METRICS_PORT",
    "inbound_port": "CODEB_INBOUND_PORT",
    "prometheus_url": "CODEB_PROMETHEUS_URL",
    "inbound_token_file": "CODEB_INBOUND_TOKEN_FILE",
    "quota_projects": "CODEB_QUOTA_PROJECTS",
    "quota_domains": "CODEB_QUOTA_DOMAINS",
    "peering": "CODEB_PEERING",
    "peering_priority": "CODEB_PEERING_PRIORITY",
    "peering_lifetime_seconds": "CODEB_PEERING_LIFETIME",
    "max_workers": "CODEB_MAX_WORKERS",
    "log_format": "CODEB_LOG_FORMAT",
    "retry_max_seconds": "CODEB_RETRY_MAX",
    "api_timeout_seconds": "CODEB_API_TIMEOUT",
    "service_timeout_seconds": "CODEB_SERVICE_TIMEOUT",
    "service_concurrency": "CODEB_SERVICE_CONCURRENCY",
    "reconcile_timeout_seconds": "CODEB_RECONCILE_TIMEOUT",
    "backup_heartbeat_seconds": "CODEB_BACKUP_HEARTBEAT",
    "backup_concurrency": "CODEB_BACKUP_CONCURRENCY",
    "side_instances_dir": "CODEB_SIDE_INSTANCES",
    "allow_internal_targets": "CODEB_ALLOW_INTERNAL_TARGETS",
    "local_runtime": "CODEB_LOCAL_RUNTIME",
    "local_runtime_namespaces": "CODEB_LOCAL_RUNTIME_NAMESPACES",
    "local_root": "CODEB_LOCAL_ROOT",
    "state_dir": "CODEB_STATE_DIR",
    "terraform_binary": "CODEB_TERRAFORM",
    "terraform_dir": "CODEB_TERRAFORM_DIR",
    "terraform_modules": "CODEB_TERRAFORM_MODULES",
    "terraform_plugins": "CODEB_TERRAFORM_PLUGINS",
    "terraform_concurrency": "CODEB_TERRAFORM_CONCURRENCY",
    "terraform_timeout_seconds": "CODEB_TERRAFORM_TIMEOUT",
    "terraform_wait_seconds": "CODEB_TERRAFORM_WAIT",
    "terraform_plan_interval_seconds": "CODEB_TERRAFORM_PLAN_INTERVAL",
}


class ConfigError(ValueError):
    """The operator's environment is invalid; the message names the variable."""


def load_config(environ: Mapping[str, str] = os.environ) -> OperatorConfig:
    values = {field: environ[var] for field, var in _ENV.items() if var in environ}
    try:
        return OperatorConfig.model_validate(values)
    except ValidationError as exc:
        problems = [f"{_ENV[str(e['loc'][0])]}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("; ".join(problems)) from None
