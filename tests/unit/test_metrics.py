from __future__ import annotations

import random
from datetime import UTC, datetime

from prometheus_client import generate_latest

from controller.loop.status import set_condition
from controller.operator.metrics import Metrics
from schemas.project import BackupSummary, Phase, ProjectStatus


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


def test_backup_series_per_project_come_and_go_with_it() -> None:
    metrics = Metrics()
    taken = datetime(2026, 12, 3, 3, 4, tzinfo=UTC)
    summary = BackupSummary(last_successful="shop-database-20261203-0300", last_successful_at=taken,
                            last_successful_size_bytes=4096, last_successful_duration_seconds=1.5)  # fmt: skip
    metrics.record_backup("uid-1", "team", "shop", summary)
    metrics.record_backup("uid-2", "team", "blog", BackupSummary())  # no successful backup yet: no series
    labels = {"namespace": "team", "project": "shop"}
    value = metrics.registry.get_sample_value
    assert value("codeb_backup_last_success_timestamp_seconds", labels) == taken.timestamp()
    assert value("codeb_backup_last_size_bytes", labels) == 4096
    assert value("codeb_backup_last_duration_seconds", labels) == 1.5
    assert value("codeb_backup_last_size_bytes", {"namespace": "team", "project": "blog"}) is None
    metrics.set_phase("uid-1", Phase.Ready)
    metrics.set_phase("uid-1", None)  # the Project is gone
    assert value("codeb_backup_last_size_bytes", labels) is None
    # A thousand Projects that came and went leave no series behind.
    for i in range(1000):
        metrics.record_backup(f"u{i}", "team", f"p{i}", summary)
        metrics.set_phase(f"u{i}", None)
    assert "codeb_backup_last_size_bytes{" not in generate_latest(metrics.registry).decode()


def test_ready_and_stalled_series_per_project_come_and_go_with_it() -> None:
    metrics = Metrics()
    value = metrics.registry.get_sample_value
    labels = {"namespace": "team", "project": "shop"}
    ready = ProjectStatus(observed_generation=2, conditions=set_condition([], "Ready", True, "AllComponentsReady",
                                                                          generation=2))  # fmt: skip
    metrics.record_status("uid-1", "team", "shop", ready)
    assert (value("codeb_project_ready", labels), value("codeb_project_stalled", labels)) == (1, 0)
    failed = set_condition(set_condition([], "Ready", False, "RolloutFailed", generation=3), "Stalled", True,
                           "RolloutFailed", generation=3)  # fmt: skip
    metrics.record_status("uid-1", "team", "shop", ProjectStatus(observed_generation=3, conditions=failed))
    assert (value("codeb_project_ready", labels), value("codeb_project_stalled", labels)) == (0, 1)
    assert value("codeb_project_suspended", labels) == 0
    stopped = set_condition([], "Ready", True, "Suspended", generation=4)
    metrics.record_status("uid-1", "team", "shop", ProjectStatus(observed_generation=4, conditions=stopped,
                                                                 phase=Phase.Suspended))  # fmt: skip
    assert (value("codeb_project_ready", labels), value("codeb_project_suspended", labels)) == (1, 1)
    metrics.set_phase("uid-1", Phase.Degraded)
    metrics.set_phase("uid-1", None)  # the Project is gone, and its series with it
    gone = [value(name, labels) for name in ("codeb_project_ready", "codeb_project_stalled", "codeb_project_suspended")]
    assert gone == [None, None, None]


def test_probe_series_per_project_come_and_go_with_it_and_name_no_colour() -> None:
    metrics = Metrics()
    value = metrics.registry.get_sample_value
    labels = {"namespace": "team", "project": "shop"}
    metrics.record_probe("uid-1", "team", "shop", {"up": True, "httpStatus": 200, "probeSeconds": 0.02})
    metrics.record_probe("uid-1", "team", "shop", {"up": False, "httpStatus": 503, "probeSeconds": 0.3})
    assert (value("codeb_project_probe_up", labels), value("codeb_project_probe_http_status", labels)) == (0, 503)
    assert value("codeb_project_probe_duration_seconds_count", labels) == 2
    assert value("codeb_project_probe_duration_seconds_bucket", {**labels, "le": "0.025"}) == 1
    metrics.record_probe("uid-1", "team", "shop", {"up": False, "httpStatus": None, "probeSeconds": None})
    assert value("codeb_project_probe_http_status", labels) == 0  # no answer (timed out, refused)
    assert value("codeb_project_probe_duration_seconds_count", labels) == 2
    metrics.record_probe("uid-1", "team", "shop", None)  # suspended: no probe, no series
    assert value("codeb_project_probe_up", labels) is None
    metrics.record_probe("uid-1", "team", "shop", {"up": True, "httpStatus": 200, "probeSeconds": 0.01})
    metrics.record_rollout([], ("Succeeded", 4.0), "uid-1", "team", "shop")
    assert value("codeb_project_rollouts_total", {**labels, "result": "Succeeded"}) == 1
    metrics.set_phase("uid-1", None)
    assert value("codeb_project_rollouts_total", {**labels, "result": "Succeeded"}) is None
    assert value("codeb_project_probe_up", labels) is None
    assert value("codeb_project_probe_duration_seconds_count", labels) is None


def series(metrics: Metrics) -> int:
    return sum(1 for line in generate_latest(metrics.registry).decode().splitlines() if not line.startswith("#"))


def test_per_project_series_are_a_fixed_number_per_project_at_ten_thousand_projects() -> None:
    metrics = Metrics()
    empty = series(metrics)
    ready = ProjectStatus(observed_generation=1, conditions=set_condition([], "Ready", True, "AllComponentsReady",
                                                                          generation=1))  # fmt: skip
    backup = BackupSummary(last_successful="b", last_successful_at=datetime.now(UTC), last_successful_size_bytes=1,
                           last_successful_duration_seconds=1.0)  # fmt: skip

    def one(n: int) -> None:
        uid, name = f"uid-{n}", f"p{n}"
        metrics.set_phase(uid, Phase.Ready)
        metrics.record_status(uid, "team", name, ready)
        metrics.record_backup(uid, "team", name, backup)
        for look in range(3):  # many passes add no series
            metrics.record_probe(uid, "team", name, {"up": True, "httpStatus": 200, "probeSeconds": 0.01 * look})
        for result in ("Succeeded", "Failed", "Succeeded"):  # a result's series counts, once made
            metrics.record_rollout([True], (result, 3.0), uid, "team", name)

    one(0)
    first = series(metrics)  # the fleet-wide series the first Project's rollouts made, and its own
    for n in range(1, 10_000):
        one(n)
    per_project = (series(metrics) - first) / 9_999
    # status, backup, probe up and status, probe histogram, rollouts by result (each with its _created)
    assert per_project == 3 + 3 + 2 + 15 + 2 * 2, per_project
    for n in range(10_000):
        metrics.set_phase(f"uid-{n}", None)
    assert series(metrics) - empty == first - empty - (3 + 3 + 2 + 15 + 2 * 2)  # only the fleet-wide ones stay
