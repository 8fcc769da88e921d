from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controller.loop.status import dump_status, set_condition, status_patch
from controller.loop.summary import kstatus_conditions
from controller.operator.config import ConfigError, load_config
from schemas.project import Phase, ProjectStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_transition_time_moves_only_when_status_flips() -> None:
    conds = set_condition([], "Ready", False, "Pending", at=T0)
    conds = set_condition(conds, "Ready", False, "StillPending", "x", at=T0 + timedelta(hours=1))
    assert conds[0].last_transition_time == T0 and conds[0].reason == "StillPending"
    conds = set_condition(conds, "Ready", True, "Ok", at=T0 + timedelta(hours=2))
    assert conds[0].last_transition_time == T0 + timedelta(hours=2)


def test_unchanged_status_needs_no_patch() -> None:
    status = ProjectStatus(phase=Phase.Ready, conditions=set_condition([], "Ready", True, "Ok", at=T0))
    assert status_patch(dump_status(status), status) is None


def test_patch_carries_only_changes_and_removals() -> None:
    old = ProjectStatus(phase=Phase.Failed, last_error="boom")
    new = ProjectStatus(phase=Phase.Ready)
    assert status_patch(dump_status(old), new) == {"phase": "Ready", "lastError": None}


def test_config_errors_name_the_variable() -> None:
    try:
        load_config({"CODEB_DRIFT_INTERVAL": "soon"})
    except ConfigError as exc:
        assert "CODEB_DRIFT_INTERVAL" in str(exc)
    else:
        raise AssertionError("accepted an invalid interval")
    assert load_config({"CODEB_RESERVED_PORTS": "4000,4001"}).reserved_ports == {4000, 4001}


def test_kstatus_conditions_are_present_only_while_true_and_keep_their_transition_time() -> None:
    not_ready = set_condition([], "Ready", False, "ComponentsNotReady", "not ready: database", at=T0)
    converging = kstatus_conditions(not_ready, None, 3)
    [reconciling] = [c for c in converging if c.type == "Reconciling"]
    assert (reconciling.status.value, reconciling.reason, reconciling.observed_generation) == (
        "True", "ComponentsNotReady", 3)  # fmt: skip
    again = kstatus_conditions(converging, None, 3)  # the next pass: no new transition, so no status write
    assert [c.last_transition_time for c in again if c.type == "Reconciling"] == [reconciling.last_transition_time]
    stalled = kstatus_conditions(again, ("RolloutFailed", "r2 failed its health checks"), 3)
    assert [c.type for c in stalled] == ["Ready", "Stalled"]  # Reconciling gone: never both
    ready = kstatus_conditions(set_condition(stalled, "Ready", True, "AllComponentsReady", at=T0), None, 4)
    assert [c.type for c in ready] == ["Ready"]  # neither, once Ready


def test_a_ready_project_rolling_out_a_new_revision_is_still_reconciling() -> None:
    serving = set_condition([], "Ready", True, "AllComponentsReady", at=T0)
    rolling = set_condition(serving, "Synced", False, "Progressing", "blue serves r1; r2 as green: 1 healthy check")
    [reconciling] = [c for c in kstatus_conditions(rolling, None, 2) if c.type == "Reconciling"]
    assert (reconciling.reason, reconciling.message) == ("Progressing", "blue serves r1; r2 as green: 1 healthy check")
    converged = set_condition(rolling, "Synced", True, "Converged")
    assert [c.type for c in kstatus_conditions(converged, None, 2)] == ["Ready", "Synced"]
