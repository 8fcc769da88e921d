"""The alert rules (deploy/monitoring/codeb-rules.yaml) checked and unit-tested by Prometheus' own promtool
(Debian ``prometheus``), on the operator's real series names."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import generate_latest

from controller.loop.status import set_condition
from controller.operator.metrics import Metrics
from schemas.project import BackupSummary, Phase, ProjectStatus

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "monitoring" / "codeb-rules.yaml"
RULE_TESTS = ROOT / "tests" / "monitoring" / "codeb-rules-test.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is Debian's prometheus package (deploy/dev test installs it)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, check=False,
                          cwd=RULE_TESTS.parent)  # fmt: skip


def test_the_rules_load_and_fire_exactly_when_they_should() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0 and "SUCCESS: 5 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_series_the_rules_read_is_one_the_operator_exports() -> None:
    metrics = Metrics()
    status = ProjectStatus(observed_generation=1, conditions=set_condition([], "Ready", True, "Ok", generation=1))
    metrics.set_phase("uid-1", Phase.Ready)
    metrics.record_status("uid-1", "team", "shop", status)
    taken = datetime(2026, 12, 3, tzinfo=UTC)
    metrics.record_backup("uid-1", "team", "shop", BackupSummary(last_successful_at=taken))
    metrics.record_rollout([True], ("Failed", 3.0))
    metrics.actions.labels("database", "create", "ok").inc()
    exported = set(re.findall(r"^(codeb_[a-z_]+)", generate_latest(metrics.registry).decode(), re.MULTILINE))
    read = set(re.findall(r"\b(codeb_[a-z_]+)", RULES.read_text()))
    assert read and read <= exported, read - exported
