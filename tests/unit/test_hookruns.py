"""What following a hook run concludes from its machine's answer (pure), and what `FOLLOW` answers."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.jobs.hookruns import GRACE_SECONDS, STARTING_SECONDS, follow_argv, judge
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


def follow(run_dir: Path) -> str:
    """`FOLLOW` as a machine runs it, in follow mode, for a run that is already recorded as started."""
    argv = follow_argv("follow", str(run_dir), 60, ["true"])
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.split("\n")[0]


def test_a_run_whose_launcher_has_not_written_its_pid_yet_is_starting_then_lost(tmp_path: Path) -> None:
    """On a loaded machine the detached wrapper can take seconds to start: its run is not lost meanwhile
    (that failed a hook that went on to succeed), but one that never starts is, once that window passes."""
    young = tmp_path / "0123456789ab"
    young.mkdir()
    assert follow(young) == "starting"
    assert judge(RUN, 60, "starting\n", frozenset())[0].result == "Running"
    old = tmp_path / "ba9876543210"
    old.mkdir()
    then = time.time() - STARTING_SECONDS - 5
    os.utime(old, (then, then))
    assert follow(old) == "lost"


def test_a_run_that_finishes_between_the_two_looks_is_its_exit_not_lost(tmp_path: Path) -> None:
    """The wrapper writes its exit file, then ends. FOLLOW looks for the exit file, then for the process:
    one that finished in between (seen once in the full suite on a loaded machine) has ended with its exit
    code, not without a result. Made deterministic by a `grep` that finishes the run as the liveness check
    reads it: the exit file appears, and the process is gone."""
    run_dir = tmp_path / "0123456789ab"
    run_dir.mkdir()
    (run_dir / "pid").write_text("999999999\n")  # no such process: it has just ended
    (run_dir / "output").write_text("migrating\n")
    shims = tmp_path / "bin"
    shims.mkdir()
    grep = shims / "grep"
    grep.write_text(f'#!/bin/sh\necho 3 >"{run_dir}/exit"\nexit 1\n')
    grep.chmod(0o755)
    argv = follow_argv("follow", str(run_dir), 60, ["true"])
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
    answer = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True, env=env).stdout
    assert answer.split("\n")[0] == "exit 3" and "migrating" in answer
    run, _ = judge(RUN, 60, answer, frozenset())
    assert run.result == "Failed" and "(exit code 3)" in run.message
