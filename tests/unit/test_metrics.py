from __future__ import annotations

from prometheus_client import generate_latest

from controller.metrics import Metrics
from schemas.project import Phase


def test_projects_by_phase_follow_each_project() -> None:
    metrics = Metrics()
    metrics.set_phase("a", Phase.Provisioning)
    metrics.set_phase("b", Phase.Ready)
    metrics.set_phase("a", Phase.Ready)
    text = generate_latest(metrics.registry).decode()
    assert 'codeb_projects{phase="Ready"} 2.0' in text
    assert 'codeb_projects{phase="Provisioning"} 0.0' in text
    metrics.set_phase("a", None)
    assert 'codeb_projects{phase="Ready"} 1.0' in generate_latest(metrics.registry).decode()


def test_registries_are_independent() -> None:
    first, second = Metrics(), Metrics()
    first.actions.labels("Database", "create", "ok").inc()
    labels = {"component": "Database", "verb": "create", "result": "ok"}
    assert first.registry.get_sample_value("codeb_actions_total", labels) == 1.0
    assert second.registry.get_sample_value("codeb_actions_total", labels) is None
