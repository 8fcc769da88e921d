"""What following a hook run concludes from its machine's answer (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controller.jobs.hookruns import GRACE_SECONDS, judge
from schemas.project import HookRun

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
RUN = HookRun(name="migrate", result="Running", run_id="0123456789ab", started_at=T0)


def test_an_exit_is_the_outcome_with_the_output_redacted() -> None:
    done, stop = judge(RUN, 60, "exit 0\nmigrated with hunter2\n", frozenset({"hunter2"}), T0)
    assert (done.result, done.run_id, stop) == ("Succeeded", RUN.run_id, False)
    assert done.message == "migrated with ***\n(exit code 0)"
    late, _ = judge(RUN, 60, "exit 124\n", frozenset(), T0)
    assert late.result == "Failed" and late.message.endswith("timed out after 60 s")


def test_a_run_past_its_timeout_by_its_machines_clock_is_stopped() -> None:
    assert judge(RUN, 60, f"running {60 + GRACE_SECONDS}\n", frozenset(), T0) == (RUN, False)
    stopped, stop = judge(RUN, 60, f"running {61 + GRACE_SECONDS}\n", frozenset(), T0)
    assert stop and stopped.result == "Failed" and "stopped" in stopped.message


def test_a_vanished_run_fails_and_one_that_never_answers_fails_after_its_timeout() -> None:
    lost, stop = judge(RUN, 60, "lost\nhalf way\n", frozenset(), T0)
    assert lost.result == "Failed" and "half way" in lost.message and "not started again" in lost.message and not stop
    assert judge(RUN, 60, "", frozenset(), T0 + timedelta(seconds=60)) == (RUN, False)  # asked again next pass
    never, _ = judge(RUN, 60, "", frozenset(), T0 + timedelta(seconds=61 + GRACE_SECONDS))
    assert never.result == "Failed" and "could not be started or followed" in never.message
