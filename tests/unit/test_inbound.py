"""What the operator makes of what is pushed to it: Alertmanager's alerts and failed Backups, as news."""

from __future__ import annotations

from typing import Any

import kopf

from controller.operator.inbound import alert_news, alert_project
from controller.operator.notify import WORDS, News
from controller.operator.runs import FailedBackups
from schemas.sections.monitoring import NotifyEvent

SPEC = {"monitoring": {"alerts": {"errorRatePercent": 12.5, "latencyP95Ms": 800}}}


def alert(name: str, status: str = "firing", **labels: Any) -> dict[str, Any]:
    return {"status": status, "labels": {"alertname": name, "namespace": "team", "project": "shop", **labels},
            "annotations": {"summary": "visit http://phish.example", "description": "anything"}}  # fmt: skip


def test_an_alert_is_told_in_the_operators_words_with_the_projects_threshold() -> None:
    assert alert_news(alert("CodebProjectErrorRate"), SPEC) == News(
        NotifyEvent.alert_firing, None, "CodebProjectErrorRate: more than 12.5% of requests answer 5xx"
    )
    resolved = alert_news(alert("CodebProjectLatencyP95", "resolved"), SPEC)
    assert resolved == News(NotifyEvent.alert_resolved, None, "CodebProjectLatencyP95: p95 latency above 800 ms")
    assert alert_news(alert("CodebProjectErrorRate"), {}) == News(
        NotifyEvent.alert_firing, None, "CodebProjectErrorRate: more than 5% of requests answer 5xx"
    )


def test_alerts_that_are_not_the_operators_or_name_no_project_are_not_told() -> None:
    assert alert_news(alert("Watchdog"), SPEC) is None
    assert alert_news({"labels": "no"}, SPEC) is None
    assert alert_news("not an alert", SPEC) is None
    assert alert_project(alert("CodebProjectErrorRate")) == ("team", "shop")
    for labels in (
        {"project": "../etc"},
        {"namespace": "Team"},
        {"project": 7},
        {"namespace": "x" * 64},
        {"project": "a/b"},
        {"project": "-a"},
    ):
        assert alert_project(alert("CodebProjectErrorRate", **labels)) is None, labels
    assert alert_project({"labels": None}) is None


def backup(uid: str, phase: str, message: str | None = None) -> kopf.Body:
    return kopf.Body({"kind": "Backup", "metadata": {"name": f"b-{uid}", "uid": uid},
                      "status": {"phase": phase, "message": message}})  # fmt: skip


def test_a_failed_backup_is_news_once_and_a_running_or_good_one_never() -> None:
    told = FailedBackups()
    assert told.news(backup("1", "Running")) is None
    assert told.news(backup("2", "Succeeded")) is None
    news = told.news(backup("3", "Failed", "pg_dump exited 1"))
    assert news == News(NotifyEvent.backup_failed, None, "b-3: pg_dump exited 1")
    assert told.news(backup("3", "Failed", "pg_dump exited 1")) is None
    restore = kopf.Body({"kind": "Restore", "metadata": {"name": "r", "uid": "4"}, "status": {"phase": "Failed"}})
    assert told.news(restore) is None


def test_failed_backups_remembered_are_bounded() -> None:
    told = FailedBackups()
    for n in range(FailedBackups.REMEMBERED + 50):
        assert told.news(backup(str(n), "Failed")) is not None
    assert len(told._told) == FailedBackups.REMEMBERED
    assert told.news(backup("0", "Failed")) is not None  # the oldest was forgotten


def test_every_event_has_words() -> None:
    assert set(WORDS) == set(NotifyEvent)
