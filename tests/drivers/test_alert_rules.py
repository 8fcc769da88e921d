"""The alert rules (deploy/monitoring/codeb-rules.yaml) checked and unit-tested by Prometheus' own promtool
(Debian ``prometheus``), on the operator's real series names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import generate_latest

from controller.drivers.alerts import render_rule
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.status import set_condition
from controller.operator.metrics import Metrics
from controller.specs.alerts import SERIES, host_pattern
from schemas.project import Allocations, BackupSummary, Phase, ProjectStatus

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
    assert checked.returncode == 0 and "SUCCESS: 7 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_series_the_rules_read_is_one_the_operator_exports() -> None:
    metrics = Metrics()
    status = ProjectStatus(observed_generation=1, conditions=set_condition([], "Ready", True, "Ok", generation=1))
    metrics.set_phase("uid-1", Phase.Ready)
    metrics.record_status("uid-1", "team", "shop", status)
    taken = datetime(2026, 12, 3, tzinfo=UTC)
    metrics.record_backup("uid-1", "team", "shop", BackupSummary(last_successful_at=taken))
    metrics.record_rollout([True], ("Failed", 3.0), "uid-1", "team", "shop")
    metrics.record_probe("uid-1", "team", "shop", {"up": True, "httpStatus": 200, "probeSeconds": 0.01})
    metrics.actions.labels("database", "create", "ok").inc()
    exported = set(re.findall(r"^(codeb_[a-z_]+)", generate_latest(metrics.registry).decode(), re.MULTILINE))
    read = set(re.findall(r"\b(codeb_[a-z_]+)", RULES.read_text()))
    assert read and read <= exported, read - exported


def test_a_projects_rendered_rules_load_in_promtool_and_match_only_its_hosts(tmp_path: Path) -> None:
    ctx = DriverContext(ProjectKey("team", "shop", "uid-1"), Allocations())
    hosts = ["*.preview.example.com", "shop.example.com"]
    desired = {"hosts": hosts, "errorRatePercent": 2.5, "latencyP95Ms": 800, "forSeconds": 120, "rulesMatch": True}
    rule = render_rule(ctx, desired)
    (tmp_path / "shop.yaml").write_text(json.dumps({"groups": rule["spec"]["groups"]}))
    checked = promtool("check", "rules", str(tmp_path / "shop.yaml"))
    assert checked.returncode == 0 and "SUCCESS: 2 rules found" in checked.stdout, checked.stdout + checked.stderr
    [error_rate, latency] = rule["spec"]["groups"][0]["rules"]
    assert error_rate["expr"].endswith("> 2.5") and latency["expr"].endswith("> 800") and error_rate["for"] == "120s"
    assert error_rate["labels"] == {"severity": "warning", "namespace": "team", "project": "shop"}
    # The regex, as Prometheus reads it (RE2, anchored): exactly these hosts, with or without a port.
    pattern = re.compile(host_pattern(hosts).replace("\\\\", "\\"))
    for host in ("shop.example.com", "shop.example.com:8443", "pr-7.preview.example.com"):
        assert pattern.fullmatch(host), host
    for host in ("shopxexample.com", "a.b.preview.example.com", "preview.example.com", "blog.example.com"):
        assert not pattern.fullmatch(host), host


DASHBOARD = ROOT / "deploy" / "monitoring" / "codeb-dashboard.json"


def test_every_dashboard_query_parses_and_reads_series_that_exist(tmp_path: Path) -> None:
    """Each panel's query, checked by promtool as a recording rule; each series it reads, one the operator
    exports or Caddy's request series (which the alert rules fire on in tests/apiserver/test_alerts_e2e.py)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = [t["expr"] for p in panels for t in p.get("targets", [])]
    rules = [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]
    (tmp_path / "dashboard.yaml").write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", str(tmp_path / "dashboard.yaml"))
    assert checked.returncode == 0 and f"SUCCESS: {len(queries)} rules found" in checked.stdout, checked.stderr
    metrics = Metrics()
    metrics.set_phase("uid-1", Phase.Ready)
    metrics.record_status("uid-1", "team", "shop", ProjectStatus())
    metrics.record_backup("uid-1", "team", "shop", BackupSummary(last_successful_at=datetime(2026, 12, 3, tzinfo=UTC)))
    metrics.record_rollout([True], ("Failed", 3.0), "uid-1", "team", "shop")
    metrics.record_probe("uid-1", "team", "shop", {"up": True, "httpStatus": 200, "probeSeconds": 0.01})
    metrics.actions.labels("database", "create", "ok").inc()
    metrics.drift_repairs.labels("database").inc()
    metrics.notifications.labels("sent").inc()
    metrics.reconcile_seconds.labels("create").observe(0.1)
    exported = set(re.findall(r"^(codeb_[a-z_]+)", generate_latest(metrics.registry).decode(), re.MULTILINE))
    caddy = {f"{SERIES}_count", f"{SERIES}_bucket"}
    read = {name for q in queries for name in re.findall(r"\b((?:codeb|caddy)_[a-z_]+)", q)}
    assert read <= exported | caddy, read - exported - caddy
    assert {"codeb_projects", "codeb_rollouts_total", "codeb_backup_last_success_timestamp_seconds"} <= read
