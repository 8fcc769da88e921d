"""Section ``monitoring``: the health path, metrics, alert thresholds and who hears of deploys."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from schemas.base import (
    DNS_LABEL,
    HTTP_PATH,
    CodebModel,
)


class ReceiverKind(StrEnum):
    slack = "slack"  # a Slack-compatible incoming webhook: {"text": ...}
    webhook = "webhook"  # any HTTPS endpoint: the event as JSON


class NotifyEvent(StrEnum):
    deploy_succeeded = "DeploySucceeded"
    deploy_failed = "DeployFailed"
    rolled_back = "RolledBack"  # a release that served before took the traffic again (`codeb rollback`)
    hook_failed = "HookFailed"
    backup_failed = "BackupFailed"
    alert_firing = "AlertFiring"  # the Project's alert rules, through Alertmanager (docs/operations.md)
    alert_resolved = "AlertResolved"


class Receiver(CodebModel):
    name: str = Field(description="A name for the receiver (DNS label), for logs and metrics.", pattern=DNS_LABEL,
                      max_length=63)  # fmt: skip
    kind: ReceiverKind = Field(ReceiverKind.webhook, description="slack (a Slack-compatible webhook) or webhook.")
    url_secret_ref: str = Field(
        description=(
            "A Secret in the Project's namespace whose key url holds the receiver's HTTPS URL (a Slack webhook "
            "URL is a credential, so it is never written in the manifest)."
        ),
        pattern=DNS_LABEL,
        max_length=253,
    )
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(NotifyEvent),
        description="What it hears of: DeploySucceeded, DeployFailed (a failed rollout, with what its check said), "
        "RolledBack (a release that served before serves again), HookFailed, BackupFailed, AlertFiring and "
        "AlertResolved (its monitoring.alerts, where the operator receives Alertmanager's webhooks). Default: all.",
        max_length=10,
    )


class Alerts(CodebModel):
    error_rate_percent: float = Field(
        5.0, description="Alert when more than this percent of requests fail.", ge=0, le=100
    )
    latency_p95_ms: int = Field(
        1000, description="Alert when the 95th percentile latency exceeds this.", ge=1, le=600000
    )
    for_seconds: int = Field(
        300,
        description=(
            "How long a threshold must be crossed before its alert fires (the rule's `for`). The rates are taken "
            "over the last 5 minutes of the Platform's Caddy's requests for the Project's domains."
        ),
        ge=0,
        le=86400,
    )


class Monitoring(CodebModel):
    health_path: str | None = Field(
        None,
        description=(
            "HTTP path that answers 200 when the application is healthy. Unset: its template's (project.template: "
            "/api/health, as the seeds' applications answer; static /)."
        ),
        pattern=HTTP_PATH,
        max_length=256,
    )
    probe_interval_seconds: int = Field(15, description="Seconds between health probes.", ge=5, le=3600)
    metrics_path: str | None = Field(
        None, description="Prometheus metrics path, if the application exposes one.", pattern=HTTP_PATH, max_length=256
    )
    alerts: Alerts = Field(default_factory=Alerts, description="Alert thresholds.")
    notify: list[Receiver] = Field(
        default_factory=list,
        description="Where deploys, failures and alerts are told, as they happen (best effort: one try and a retry).",
        max_length=5,
    )
