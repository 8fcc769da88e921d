"""Section ``monitoring``: the health path, metrics and alert thresholds."""

from __future__ import annotations

from pydantic import Field

from schemas.base import (
    HTTP_PATH,
    CodebModel,
)


class Alerts(CodebModel):
    error_rate_percent: float = Field(
        5.0, description="Alert when more than this percent of requests fail.", ge=0, le=100
    )
    latency_p95_ms: int = Field(
        1000, description="Alert when the 95th percentile latency exceeds this.", ge=1, le=600000
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
