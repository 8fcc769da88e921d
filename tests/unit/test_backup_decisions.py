"""When backups are due, which retention deletes, what status says: the pure decisions, on plain data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest

from controller.loop import backups as decide
from controller.loop.backups import Cron, RunRecord
from schemas.backups import BackupPhase, BackupTrigger
from schemas.project import Allocations, Backup, BackupTarget

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)  # a Thursday
DB = BackupTarget.database


def at(day: int, hour: int, minute: int = 0, month: int = 12) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "now", "previous", "following"),
    [
        ("0 3 * * *", T0, at(3, 3), at(4, 3)),
        ("@daily", T0, at(3, 0), at(4, 0)),
        ("*/15 * * * *", at(3, 12, 7), at(3, 12, 0), at(3, 12, 15)),
        ("5/20 * * * *", at(3, 12, 7), at(3, 12, 5), at(3, 12, 25)),
        ("0 0 * * 0", T0, at(29, 0, month=11), at(6, 0)),  # Sunday
        ("0 0 * * 7", T0, at(29, 0, month=11), at(6, 0)),  # 7 is Sunday too
        ("30 2 1,15 * *", T0, at(1, 2, 30), at(15, 2, 30)),
        ("0 9 1-5 * 4", at(6, 12), at(5, 9), at(10, 9)),  # day 1-5 OR Thursday (the 10th)
        ("0 12 * * *", T0, T0, at(4, 12)),  # a fire time exactly now is the previous one
        ("@hourly", at(3, 12, 59), at(3, 12), at(3, 13)),
    ],
)
def test_cron_previous_and_next(expression: str, now: datetime, previous: datetime, following: datetime) -> None:
    cron = Cron.parse(expression)
    assert cron.previous(now) == previous
    assert cron.next(now) == following


def test_leap_day_schedule_is_found_years_back() -> None:
    assert Cron.parse("0 0 29 2 *").previous(T0) == datetime(2024, 2, 29, tzinfo=UTC)


def test_spread_is_fixed_per_project_and_within_a_quarter_period() -> None:
    daily, minutely = Cron.parse("0 3 * * *"), Cron.parse("* * * * *")
    offsets = {decide.spread(daily, f"uid-{i}", at(3, 3)) for i in range(1000)}
    assert max(offsets) < timedelta(seconds=decide.SPREAD_SECONDS)
    # A thousand Projects at 03:00 start over hundreds of distinct seconds, not in one.
    assert len(offsets) > 400
    assert decide.spread(daily, "uid-1", at(3, 3)) == decide.spread(daily, "uid-1", at(4, 3))
    assert all(decide.spread(minutely, f"u{i}", at(3, 3)) < timedelta(seconds=15) for i in range(100))


def record(name: str, phase: BackupPhase, taken: datetime, slot: datetime | None = None,
           trigger: BackupTrigger = BackupTrigger.Scheduled, **extra: object) -> RunRecord:  # fmt: skip
    return RunRecord(name=name, target=DB, trigger=trigger, phase=phase, created_at=taken, scheduled_at=slot,
                     started_at=taken, **extra)  # type: ignore[arg-type]  # fmt: skip


def test_first_backup_is_at_once_then_by_schedule() -> None:
    cron = Cron.parse("0 3 * * *")
    first = decide.due_run(cron, "u", DB, [], T0)
    assert first is not None and first.trigger is BackupTrigger.Initial and first.slot == at(3, 3)
    taken = [record("a", BackupPhase.Succeeded, T0, slot=first.slot)]
    assert decide.due_run(cron, "u", DB, taken, T0 + timedelta(hours=10)) is None  # 22:00: not yet
    later = T0 + timedelta(hours=15, minutes=10)  # 03:10 the next day, past any spread
    due = decide.due_run(cron, "u", DB, taken, later)
    assert due is not None and due.trigger is BackupTrigger.Scheduled and due.slot == at(4, 3)


def test_missed_slots_run_once_not_once_each() -> None:
    cron = Cron.parse("0 * * * *")
    taken = [record("a", BackupPhase.Succeeded, at(3, 1), slot=at(3, 1))]
    back = at(3, 9, 30)  # the operator was down from 01:00 to 09:30
    due = decide.due_run(cron, "u", DB, taken, back)
    assert due is not None and due.slot == at(3, 9)
    taken.append(record("b", BackupPhase.Running, back, slot=due.slot))
    assert decide.due_run(cron, "u", DB, taken, back + timedelta(minutes=5)) is None


def test_a_slot_is_not_due_before_its_spread() -> None:
    cron = Cron.parse("0 3 * * *")
    uid = next(f"u{i}" for i in range(100) if decide.spread(cron, f"u{i}", at(4, 3)) > timedelta(seconds=60))
    offset = decide.spread(cron, uid, at(4, 3))
    taken = [record("a", BackupPhase.Succeeded, at(3, 3), slot=at(3, 3))]
    assert decide.due_run(cron, uid, DB, taken, at(4, 3) + offset - timedelta(seconds=1)) is None
    assert decide.due_run(cron, uid, DB, taken, at(4, 3) + offset) is not None
    assert decide.next_start(cron, uid, at(4, 3)) == at(4, 3) + offset


def test_record_names_make_a_slot_one_run() -> None:
    scheduled = decide.record_name("shop", DB, at(4, 3), BackupTrigger.Scheduled, T0)
    assert (
        scheduled
        == decide.record_name("shop", DB, at(4, 3), BackupTrigger.Initial, T0)
        == "shop-database-20261204-0300"
    )
    assert decide.record_name("shop", DB, None, BackupTrigger.Manual, T0) == "shop-database-manual-20261203-120000"


def test_retention_prunes_but_keeps_the_newest_successful() -> None:
    days = [record(f"d{i}", BackupPhase.Succeeded, T0 - timedelta(days=i)) for i in range(10)]
    gone = {r.name for r in decide.expired(days, T0, retention_days=3, keep_last=1)}
    assert gone == {f"d{i}" for i in range(4, 10)}
    # All older than the window: the newest successful ones are kept anyway.
    old = [record(f"o{i}", BackupPhase.Succeeded, T0 - timedelta(days=30 + i)) for i in range(5)]
    failed_after = [record("f", BackupPhase.Failed, T0 - timedelta(hours=1))]
    gone = {r.name for r in decide.expired(old + failed_after, T0, retention_days=7, keep_last=2)}
    assert gone == {"o2", "o3", "o4"}
    running = [record("r", BackupPhase.Running, T0 - timedelta(days=60))]
    assert decide.expired(running, T0, retention_days=1, keep_last=1) == []


def test_failed_history_is_bounded() -> None:
    failed = [record(f"f{i}", BackupPhase.Failed, T0 - timedelta(hours=i)) for i in range(8)]
    gone = {r.name for r in decide.expired(failed, T0, retention_days=30, keep_last=1)}
    assert gone == {f"f{i}" for i in range(decide.FAILED_HISTORY, 8)}


def test_stale_means_no_heartbeat_for_a_while() -> None:
    running = record("r", BackupPhase.Running, T0, heartbeat_at=T0)
    assert not running.stale(T0 + timedelta(seconds=decide.STALE_SECONDS - 1))
    assert running.stale(T0 + timedelta(seconds=decide.STALE_SECONDS + 1))
    assert not record("s", BackupPhase.Succeeded, T0).stale(T0 + timedelta(days=1))


def test_summary_and_last_failure() -> None:
    runs = [
        record("old", BackupPhase.Succeeded, T0 - timedelta(days=2)),
        record("new", BackupPhase.Succeeded, T0 - timedelta(days=1)),
        record("bad", BackupPhase.Failed, T0 - timedelta(hours=1), message="pg_dump exited 1"),
    ]
    summary = decide.summary(runs, at(4, 3))
    assert summary.last_successful == "new" and summary.first_recoverability_point == T0 - timedelta(days=2)
    assert summary.last_failure is not None and summary.last_failure.name == "bad"
    assert summary.next_scheduled_at == at(4, 3)
    # A success after the failure clears it.
    runs.append(record("fixed", BackupPhase.Succeeded, T0))
    assert decide.summary(runs, None).last_failure is None


def test_targets_are_what_is_included_of_the_data_there_is() -> None:
    backup = Backup.model_validate({"include": ["database", "storage", "redis"]})
    assert decide.targets(backup, Allocations(database="shop_db")) == [DB]
    assert decide.targets(backup, Allocations(database="d", bucket="b")) == [DB, BackupTarget.storage]
    per_target = Backup.model_validate({"schedule": "0 3 * * *", "schedules": {"storage": "0 4 * * 0"}})
    assert per_target.schedule_of(DB) == "0 3 * * *" and per_target.schedule_of(BackupTarget.storage) == "0 4 * * 0"


def test_every_schedule_the_manifest_accepts_parses() -> None:
    for expression in ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@hourly", "0-30/10 1,2 1-7 */2 1-5"):
        Backup.model_validate({"schedule": expression})
        assert Cron.parse(expression).next(T0) is not None


def test_only_new_and_just_finished_runs_are_news() -> None:
    from controller.operator.runs import NEWS_SECONDS, run_news

    def body(**status: object) -> Any:
        return kopf.Body({"metadata": {"name": "r", "namespace": "n"}, "spec": {"project": "p"}, "status": status})

    now = datetime.now(UTC)
    assert run_news(body(), "ADDED")  # made by hand (codeb backup): not claimed yet
    assert run_news(body(phase="Pending"), "MODIFIED")
    assert not run_news(body(phase="Running", heartbeatAt=now.isoformat()), "MODIFIED")  # a heartbeat
    assert run_news(body(phase="Succeeded", finishedAt=now.isoformat()), "MODIFIED")
    old = (now - timedelta(seconds=NEWS_SECONDS + 1)).isoformat()
    assert not run_news(body(phase="Failed", finishedAt=old), None)  # listed again at a restart
    assert not run_news(body(phase="Pending"), "DELETED")


def test_runs_of_one_project_go_one_at_a_time() -> None:
    running = record("r", BackupPhase.Running, T0)
    first = record("p1", BackupPhase.Pending, T0 + timedelta(seconds=1))
    second = record("p2", BackupPhase.Pending, T0 + timedelta(seconds=2))
    assert decide.next_run([second, running, first]) is None  # a thousand Backups made at once queue up
    assert decide.next_run([second, first, record("s", BackupPhase.Succeeded, T0)]) == first
    assert decide.next_run([]) is None


def test_a_restores_safety_backup_is_its_alone_and_stale_if_never_claimed() -> None:
    safety = record("s", BackupPhase.Pending, T0, trigger=BackupTrigger.Safety)
    assert decide.next_run([safety]) is None  # never started by a pass: its restore claims it
    assert not safety.stale(T0 + timedelta(seconds=decide.STALE_SECONDS - 1))
    assert safety.stale(T0 + timedelta(seconds=decide.STALE_SECONDS + 1))  # its restore died before claiming it


def test_backups_upkeep_is_not_called_drift() -> None:
    from controller.loop.planner import Action, Component, Verb
    from controller.loop.reconciler import _success_events, is_drift_repair

    upkeep = Action(Component.backup, Verb.update, "differs in due")
    repair = Action(Component.database, Verb.update, "differs in loginWorks")
    events = _success_events([(upkeep, "ok"), (repair, "ok")], "timer")
    assert {(e.reason, e.message) for e in events} == {
        ("BackupsMaintained", "Backup update: differs in due"),
        ("DriftRepaired", "Database update: differs in loginWorks"),
    }
    assert not is_drift_repair(upkeep, "wake") and is_drift_repair(repair, "wake")
    assert not is_drift_repair(repair, "update")
    # Made by a spec change, the backup component is Created like any other.
    [made] = _success_events([(Action(Component.backup, Verb.create, "missing"), "ok")], "update")
    assert (made.reason, made.message) == ("Created", "Backup create: missing")
