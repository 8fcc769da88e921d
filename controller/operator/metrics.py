"""Prometheus metrics, on a registry passed in (not the process-global one)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from schemas.project import BackupSummary, ConditionStatus, Phase, ProjectStatus

# A health endpoint answers in milliseconds; a probe times out at healthCheck.timeoutSeconds (2 s by default).
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconcile_seconds = Histogram(
            "codeb_reconcile_duration_seconds", "Time spent in one reconcile.", ["trigger"], registry=self.registry
        )
        self.actions = Counter(
            "codeb_actions_total", "Driver actions by component, verb and result.",
            ["component", "verb", "result"], registry=self.registry,
        )  # fmt: skip
        self.notifications = Counter(
            "codeb_notifications_total", "Deploy notifications to Projects' receivers, by result (sent, failed, "
            "dropped).", ["result"], registry=self.registry,
        )  # fmt: skip
        self.push_deliveries = Counter(
            "codeb_push_deliveries_total", "Git hosts' push webhooks, by result (accepted, forged, replayed, stale, "
            "ignored, conflict, failed, busy).", ["result"], registry=self.registry,
        )  # fmt: skip
        self.drift_repairs = Counter(
            "codeb_drift_repairs_total", "Actions taken by the drift timer.", ["component"], registry=self.registry
        )
        self.rollout_seconds = Histogram(
            "codeb_rollout_duration_seconds", "From a rollout's start to its end, by result.", ["result"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=self.registry,
        )  # fmt: skip
        self.rollouts = Counter(
            "codeb_rollouts_total", "Rollouts ended, by result.", ["result"], registry=self.registry
        )
        self.health_checks = Counter(
            "codeb_rollout_health_checks_total", "Health checks of a new colour, by result.", ["result"],
            registry=self.registry,
        )  # fmt: skip
        self.projects = Gauge("codeb_projects", "Projects by phase.", ["phase"], registry=self.registry)
        for phase in Phase:
            self.projects.labels(phase.value).set(0)  # every phase is a series from the start, at 0
        self._phases: dict[str, Phase] = {}
        self._serving = False
        # Per Project with backups: three series, removed when the Project goes (bounded by the Projects).
        labels = ["namespace", "project"]
        self.backup_last_success = Gauge(
            "codeb_backup_last_success_timestamp_seconds",
            "When the newest successful backup was taken.",
            labels,
            registry=self.registry,
        )
        self.backup_size = Gauge(
            "codeb_backup_last_size_bytes", "Bytes the newest successful backup stored.", labels, registry=self.registry
        )
        self.backup_duration = Gauge(
            "codeb_backup_last_duration_seconds",
            "How long the newest successful backup took.",
            labels,
            registry=self.registry,
        )
        self._backups: dict[str, tuple[str, str]] = {}
        # Per Project: three series while it exists, what the alert rules (deploy/monitoring) watch.
        self.project_ready = Gauge(
            "codeb_project_ready", "1 while the Project is Ready at its current generation, else 0.", labels,
            registry=self.registry,
        )  # fmt: skip
        self.project_stalled = Gauge(
            "codeb_project_stalled", "1 while the Project is Stalled (waiting will not make it converge), else 0.",
            labels, registry=self.registry,
        )  # fmt: skip
        self.project_suspended = Gauge(
            "codeb_project_suspended", "1 while the Project is suspended as asked (spec.suspended), else 0.",
            labels, registry=self.registry,
        )  # fmt: skip
        self._statuses: dict[str, tuple[str, str]] = {}
        # Per Project the operator probes (runtimes local and quadlet): its serving colour's health probe,
        # as the rollouts' health gate sees it. 17 series each (the histogram's 15 with its buckets), none per
        # colour or host: bounded by the Projects.
        self.probe_up = Gauge(
            "codeb_project_probe_up", "1 while the serving colour's last health probe passed, else 0.", labels,
            registry=self.registry,
        )  # fmt: skip
        self.probe_status = Gauge(
            "codeb_project_probe_http_status", "The HTTP status of the serving colour's last health probe (0: no "
            "answer).", labels, registry=self.registry,
        )  # fmt: skip
        self.probe_seconds = Histogram(
            "codeb_project_probe_duration_seconds", "How long the serving colour's health probes took.", labels,
            buckets=PROBE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._probed: dict[str, tuple[str, str]] = {}
        # Per Project: its rollouts ended, by result (at most Succeeded, Failed, Superseded: three series).
        self.project_rollouts = Counter(
            "codeb_project_rollouts_total", "The Project's rollouts ended, by result.",
            ["namespace", "project", "result"], registry=self.registry,
        )  # fmt: skip
        self._rolled: dict[str, set[tuple[str, str, str]]] = {}

    def set_phase(self, uid: str, phase: Phase | None) -> None:
        """Move one Project between the phase gauges (each pass calls this: constant time, not a recount);
        None: the Project is gone, and so are its series."""
        if phase is None:
            self.record_backup(uid, "", "", None)
            self.record_status(uid, "", "", None)
            self.record_probe(uid, "", "", None)
            for labels in self._rolled.pop(uid, set()):
                with contextlib.suppress(KeyError):
                    self.project_rollouts.remove(*labels)
        before = self._phases.pop(uid, None) if phase is None else self._phases.get(uid)
        if phase is not None:
            self._phases[uid] = phase
        if before is phase:
            return
        if before is not None:
            self.projects.labels(before.value).dec()
        if phase is not None:
            self.projects.labels(phase.value).inc()

    def record_backup(self, uid: str, namespace: str, project: str, summary: BackupSummary | None) -> None:
        """The Project's newest successful backup as series; none without one."""
        if summary is None or summary.last_successful_at is None:
            _forget(self._backups.pop(uid, None), (self.backup_last_success, self.backup_size, self.backup_duration))
            return
        self._backups[uid] = (namespace, project)
        self.backup_last_success.labels(namespace, project).set(summary.last_successful_at.timestamp())
        self.backup_size.labels(namespace, project).set(summary.last_successful_size_bytes or 0)
        self.backup_duration.labels(namespace, project).set(summary.last_successful_duration_seconds or 0)

    def record_status(self, uid: str, namespace: str, project: str, status: ProjectStatus | None) -> None:
        """Whether the Project is Ready and whether it is Stalled, as series; none once it is gone."""
        if status is None:
            _forget(self._statuses.pop(uid, None), (self.project_ready, self.project_stalled, self.project_suspended))
            return
        self._statuses[uid] = (namespace, project)
        true = {c.type: c for c in status.conditions if c.status is ConditionStatus.true}
        ready = "Ready" in true and true["Ready"].observed_generation == status.observed_generation
        self.project_ready.labels(namespace, project).set(1 if ready else 0)
        self.project_stalled.labels(namespace, project).set(1 if "Stalled" in true else 0)
        self.project_suspended.labels(namespace, project).set(1 if status.phase is Phase.Suspended else 0)

    def record_probe(self, uid: str, namespace: str, project: str, probe: Mapping[str, Any] | None) -> None:
        """The serving colour's last probe (`Outcome.probe`) as series; none without one (suspended, gone,
        or a runtime whose own probes decide, as Kubernetes' readiness does)."""
        if probe is None:
            _forget(self._probed.pop(uid, None), (self.probe_up, self.probe_status, self.probe_seconds))
            return
        self._probed[uid] = (namespace, project)
        self.probe_up.labels(namespace, project).set(1 if probe.get("up") else 0)
        self.probe_status.labels(namespace, project).set(int(probe.get("httpStatus") or 0))
        if isinstance(probe.get("probeSeconds"), int | float):
            self.probe_seconds.labels(namespace, project).observe(float(probe["probeSeconds"]))

    def record_rollout(self, checks: list[bool], finished: tuple[str, float] | None,
                       uid: str = "", namespace: str = "", project: str = "") -> None:  # fmt: skip
        for healthy in checks:
            self.health_checks.labels("healthy" if healthy else "unhealthy").inc()
        if finished is not None:
            result, seconds = finished
            self.rollouts.labels(result).inc()
            self.rollout_seconds.labels(result).observe(seconds)
            if uid:
                self.project_rollouts.labels(namespace, project, result).inc()
                self._rolled.setdefault(uid, set()).add((namespace, project, result))

    def serve(self, port: int) -> None:
        """Serve on ``port`` (0: not at all); a second call is a no-op, not EADDRINUSE."""
        if port and not self._serving:
            start_http_server(port, addr="0.0.0.0", registry=self.registry)
            self._serving = True


def _forget(labels: tuple[str, str] | None, metrics: tuple[Gauge | Histogram, ...]) -> None:
    """A gone Project's series, removed from each of ``metrics`` (``labels`` None: it had none)."""
    if labels is None:
        return
    for metric in metrics:
        with contextlib.suppress(KeyError):
            metric.remove(*labels)
