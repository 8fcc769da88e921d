from __future__ import annotations

import random

from prometheus_client import generate_latest

from controller.operator.metrics import Metrics
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


def test_the_phase_gauges_always_equal_a_recount() -> None:
    """Kept by moving one Project at a time (a recount per pass was quadratic in a fleet)."""
    metrics, rng = Metrics(), random.Random(7)
    phases: dict[str, Phase] = {}
    for _ in range(2000):
        uid, phase = f"p{rng.randrange(50)}", rng.choice([*Phase, None])
        metrics.set_phase(uid, phase)
        if phase is None:
            phases.pop(uid, None)
        else:
            phases[uid] = phase
    for each in Phase:
        expected = sum(1 for p in phases.values() if p is each)
        assert metrics.projects.labels(each.value)._value.get() == expected
