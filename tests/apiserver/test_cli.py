"""The `codeb` commands against the real control plane: their text, their JSON and their error paths.

The operator does not run here: status is what a test writes, and `diff` looks with the
operator's own drivers and planner. `tests/apiserver/test_up.py` runs them all against
the real example that `codeb up` serves.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli.common import EXIT_DIFFERS, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from controller.cli.main import main
from controller.local.cluster import REPO_ROOT, LocalCluster, find_binary
from tests.factories import project
from tests.helpers import get_json, wait_for

T = "2026-11-24T10:00:00Z"


@pytest.fixture()
def cli(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LocalCluster:
    """The commands pointed at the test cluster, with runtime local switched on as `codeb up` does."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setenv("CODEB_LOCAL_RUNTIME", "1")
    monkeypatch.setenv("CODEB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CODEB_CLAIMS_NAMESPACE", "codeb-cli-claims")
    monkeypatch.setenv("CODEB_CACHE", str(tmp_path / "cache"))
    return cluster


def said(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": T}


def test_status_lists_and_details_projects(cli: LocalCluster, namespace: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    for name in ("shop", "blog"):
        cli.kubectl("apply", "-f", "-", input_text=json.dumps(project(name, namespace)))
    status = {
        "phase": "Ready", "observedGeneration": 1,
        "conditions": [condition("Ready", "True", "Ready", "all components ready"),
                       condition("BackupReady", "False", "NotImplemented", "no backup driver yet")],
        "allocations": {"port": 4501, "alternatePort": 4502, "database": "shop_staging"},
        "endpoints": {"url": "https://shop.example.com", "internal": ["127.0.0.1:4501"]},
        "serving": {"colour": "blue", "release": "c2", "revision": "r2", "since": T},
        "deployments": [{"revision": "r2", "release": "c2", "colour": "blue", "startedAt": T, "result": "Succeeded"},
                        {"revision": "r1", "release": "c1", "colour": "green", "startedAt": T, "result": "Succeeded"}],
    }  # fmt: skip
    cli.kubectl("patch", "project", "shop", "-n", namespace, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": status}))  # fmt: skip

    assert main(["status", "-n", namespace, "-o", "json"]) == EXIT_OK
    rows = {row["name"]: row for row in said(capsys)["projects"]}
    assert rows["shop"] == {"namespace": namespace, "name": "shop", "ready": "True", "reason": "Ready",
                            "phase": "Ready", "revision": None, "serving": "blue r2",
                            "url": "https://shop.example.com"}  # fmt: skip
    assert rows["blog"]["ready"] == "Unknown" and rows["blog"]["reason"] == "NotReconciled"

    assert main(["status", "-A"]) == EXIT_OK
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "READY", "REASON", "PHASE", "REVISION", "SERVING", "URL"]
    assert any(line.split()[:4] == [namespace, "shop", "True", "Ready"] for line in table)

    assert main(["status", "shop", "-n", namespace, "-o", "json"]) == EXIT_OK
    shown = said(capsys)
    assert shown["allocations"] == {"port": 4501, "alternatePort": 4502, "database": "shop_staging"}
    assert shown["previousRevision"] == "r1" and shown["pendingPlan"] is None and shown["backup"] is None
    assert [c["reason"] for c in shown["conditions"]] == ["Ready", "NotImplemented"]
    assert main(["status", "shop", "-n", namespace]) == EXIT_OK
    text = capsys.readouterr().out
    assert "BackupReady  False   NotImplemented  no backup driver yet" in text and "port 4501" in text

    assert main(["status", "nothing", "-n", namespace, "-o", "json"]) == EXIT_NOT_FOUND
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": f"project {namespace}/nothing: not found (`codeb status -A` lists the "
                                        "Projects)", "exitCode": EXIT_NOT_FOUND}  # fmt: skip
    assert "codeb status: project" in err


def test_commands_say_when_there_is_no_cluster(cli: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    dead = yaml.safe_load(cli.kubeconfig.read_text())
    dead["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    (tmp_path / "dead").write_text(yaml.safe_dump(dead))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "dead"))
    assert main(["status", "-A"]) == EXIT_UNREACHABLE
    assert "cannot reach the API server" in capsys.readouterr().err
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config, and no `codeb up` under CODEB_CACHE
    assert main(["rollback", "shop"]) == EXIT_UNREACHABLE
    assert "no cluster to talk to: set KUBECONFIG, or start the local one with `codeb up`" in capsys.readouterr().err


def test_init_writes_what_the_api_server_accepts(cli: LocalCluster, namespace: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["init", "web", "-n", namespace, "--database", "--redis", "--domain", "web.example.com",
                 "--revision", "r1", "-o", "json"]) == EXIT_OK  # fmt: skip
    manifest = said(capsys)
    assert manifest["spec"]["features"] == {"database": {}, "redis": {}}
    assert manifest["spec"]["servers"] == {"provider": "local", "runtime": "local"}
    cli.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))  # the API server's schema agrees
    assert get_json(cli, "project", "web", "-n", namespace)["spec"]["project"]["revision"] == "r1"

    written = tmp_path / "api.yaml"
    assert main(["init", "api", "--runtime", "quadlet", "--image", "ghcr.io/acme/api:1", "--host", "10.0.0.5",
                 "--ssh-secret", "deploy-key", "-f", str(written)]) == EXIT_OK  # fmt: skip
    servers = yaml.safe_load(written.read_text())["spec"]["servers"]
    assert servers == {"provider": "existing", "runtime": "quadlet", "hosts": ["10.0.0.5"],
                       "ssh": {"secretRef": "deploy-key"}}  # fmt: skip
    assert main(["validate", str(written), "-o", "json"]) == EXIT_OK
    assert said(capsys) == {"valid": True, "problems": []}

    assert main(["init", "api", "-f", str(written)]) == EXIT_USAGE
    assert f"{written} exists: choose another path, or --force to replace it" in capsys.readouterr().err
    assert main(["init", "Bad_Name"]) == EXIT_USAGE
    assert "spec.project.slug" in capsys.readouterr().err
    assert main(["init", "api", "--runtime", "kubernetes"]) == EXIT_USAGE  # no image for a container runtime
    assert "spec.project.source" in capsys.readouterr().err
    # A private repository checked out and run on this machine: its template says how.
    site = tmp_path / "site.yaml"
    assert main(["init", "site", "--git", "git@git.example.com:acme/site.git", "--git-credentials", "site-git",
                 "--template", "static", "-f", str(site)]) == EXIT_OK  # fmt: skip
    made = yaml.safe_load(site.read_text())["spec"]
    assert made["project"]["template"] == "static" and made["servers"]["runtime"] == "local"
    assert made["project"]["source"] == {"git": {"url": "git@git.example.com:acme/site.git", "ref": "main",
                                                 "credentialsSecretRef": "site-git"}}  # fmt: skip
    assert main(["init", "site", "--git", "https://git.example.com/acme/site.git", "-f", str(site), "--force"]) == (
        EXIT_USAGE  # template container on runtime local: no Containerfile runs here
    )
    assert "spec.project.template" in capsys.readouterr().err


def run_deploy_step(workflow: dict[str, Any], cluster: LocalCluster, revision: str) -> subprocess.Popen[str]:
    """The workflow's deploy step as GitHub's runner would run it: its env, its script, with bash."""
    step = next(s for s in workflow["jobs"]["deploy"]["steps"] if s.get("name") == "Deploy the commit")
    env = {k: v.replace("${{ github.sha }}", revision) for k, v in step["env"].items()}
    env["CODEB_KUBECONFIG"] = cluster.kubeconfig.read_text()  # the repository secret
    return subprocess.Popen(["bash", "-c", step["run"]], env={**os.environ, **env, "WAIT": "60s"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def test_init_ci_github_writes_a_workflow_whose_deploy_step_sets_the_pushed_commit(
    cli: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    manifest, workflow_file = tmp_path / "site.yaml", tmp_path / "wf" / "deploy.yml"
    assert main(["init", "site", "-n", namespace, "--runtime", "quadlet", "--git", "https://git.example.com/a/site.git",
                 "--ref", "release", "--host", "10.0.0.5", "--ssh-secret", "key", "-f", str(manifest),
                 "--ci", "github", "--ci-file", str(workflow_file)]) == EXIT_OK  # fmt: skip
    cli.kubectl("apply", "-f", str(manifest))
    workflow = yaml.safe_load(workflow_file.read_text())
    assert workflow[True]["push"]["branches"] == ["release"]  # YAML 1.1 reads the key `on` as True
    assert [s["name"] for s in workflow["jobs"]["deploy"]["steps"]] == ["Deploy the commit"]  # the operator builds
    commit = "9" * 40
    step = run_deploy_step(workflow, cli, commit)
    try:
        wait_for(lambda: get_json(cli, "project", "site", "-n", namespace)["spec"]["project"].get("revision")
                 == commit, timeout=30, what="the deploy step's patch")  # fmt: skip
        assert step.poll() is None  # waiting until the commit serves, as the operator will say it does
        serving = {"status": {"serving": {"release": "r", "revision": commit, "since": T}}}
        cli.kubectl("patch", "project", "site", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps(serving))  # fmt: skip
        output, _ = step.communicate(timeout=60)
        assert step.returncode == 0, output
    finally:
        step.kill()
        step.communicate()

    # With an image, CI builds it: a build step, and the deploy sets the image tagged by the commit too.
    assert main(["init", "api", "-n", namespace, "--runtime", "quadlet", "--image", "localhost:5000/acme/api:1",
                 "--host", "10.0.0.5", "--ssh-secret", "key", "-f", str(tmp_path / "api.yaml"), "--ci", "github",
                 "--ci-file", str(workflow_file), "--force"]) == EXIT_OK  # fmt: skip
    cli.kubectl("apply", "-f", str(tmp_path / "api.yaml"))
    built = yaml.safe_load(workflow_file.read_text())
    assert [s.get("name") for s in built["jobs"]["deploy"]["steps"]] == [None, "Build and push the image",
                                                                         "Deploy the commit"]  # fmt: skip
    assert built["jobs"]["deploy"]["steps"][1]["env"]["IMAGE"] == "localhost:5000/acme/api"
    step = run_deploy_step(built, cli, commit)
    try:
        wait_for(lambda: get_json(cli, "project", "api", "-n", namespace)["spec"]["project"]["source"]
                 == {"image": f"localhost:5000/acme/api:{commit}"}, timeout=30, what="the image patched")  # fmt: skip
    finally:
        step.kill()
        step.communicate()


def test_generate_check_reports_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--check", "-o", "json"]) == EXIT_OK
    assert said(capsys) == {"checked": True, "stale": []}


def test_validate_names_each_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = project("shop")
    bad["spec"]["environment"]["type"] = "prod"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["validate", str(tmp_path / "bad.yaml"), "-o", "json"]) == EXIT_DIFFERS
    problems = said(capsys)["problems"]
    assert len(problems) == 1 and "spec.environment.type" in problems[0]
    assert main(["validate", str(tmp_path / "missing.yaml")]) == EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err


def test_diff_plans_with_the_operators_planner_and_writes_nothing(
    cli: LocalCluster, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project("fresh", namespace)
    (tmp_path / "fresh.yaml").write_text(yaml.safe_dump(manifest))
    ledgers_before = cli.kubectl("get", "configmaps", "-n", "codeb-cli-claims", "-o", "json", check=False).stdout

    assert main(["diff", "-f", str(tmp_path / "fresh.yaml"), "-o", "json"]) == EXIT_DIFFERS
    (result,) = said(capsys)["projects"]
    assert result["project"] == f"{namespace}/fresh" and result["exists"] is False
    assert {"component": "Workload", "verb": "create", "reason": "missing"} in result["changes"]
    assert cli.kubectl("get", "configmaps", "-n", "codeb-cli-claims", "-o", "json", check=False).stdout == \
        ledgers_before, "diff must not claim anything"  # fmt: skip
    assert cli.kubectl("get", "project", "fresh", "-n", namespace, check=False).returncode != 0

    assert main(["diff", "-f", str(tmp_path / "fresh.yaml")]) == EXIT_DIFFERS
    text = capsys.readouterr().out
    assert f"{namespace}/fresh (not created yet):" in text and "Workload   create" in text

    broken = {**manifest, "spec": {**manifest["spec"], "servers": {"provider": "local", "runtime": "lambda"}}}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    assert main(["diff", "-f", str(tmp_path / "broken.yaml")]) == EXIT_USAGE
    assert "spec.servers.runtime" in capsys.readouterr().err
    assert main(["diff", "nothing", "-n", namespace]) == EXIT_NOT_FOUND
    assert main(["diff"]) == EXIT_USAGE
    assert "give a Project name or -f FILE" in capsys.readouterr().err


def test_logs_and_down_say_what_is_missing(cli: LocalCluster, namespace: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    cli.kubectl("apply", "-f", "-", input_text=json.dumps(project("quiet", namespace)))
    assert main(["logs", "quiet", "-n", namespace, "--operator", "--operator-log", str(tmp_path / "none.log")]) == \
        EXIT_USAGE  # fmt: skip
    assert "no operator log at" in capsys.readouterr().err
    structured = json.dumps({"namespace": namespace, "project": "quiet", "event": "j"})
    (tmp_path / "op.log").write_text(f"x [{namespace}/quiet] done\ny [{namespace}/other] done\n{structured}\n")
    assert main(["logs", "quiet", "-n", namespace, "--operator", "--operator-log", str(tmp_path / "op.log"),
                 "-o", "json"]) == EXIT_OK  # fmt: skip
    lines = said(capsys)["operator"]
    assert len(lines) == 2 and "other" not in "".join(lines)
    assert main(["logs", "nothing", "-n", namespace]) == EXIT_NOT_FOUND

    assert main(["down", "-o", "json"]) == EXIT_OK  # nothing under this CODEB_CACHE runs
    assert said(capsys) == {"running": False, "pid": None, "stopped": True, "seconds": 0.0}


def test_kubectl_runs_codeb_as_a_plugin(cli: LocalCluster, namespace: str) -> None:
    cli.kubectl("apply", "-f", "-", input_text=json.dumps(project("plugged", namespace)))
    bin_dir = str(Path(find_binary("codeb")).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    listed = subprocess.run([find_binary("kubectl"), "plugin", "list"], env=env, capture_output=True, text=True)
    assert f"{bin_dir}/kubectl-codeb" in listed.stdout
    shown = subprocess.run([find_binary("kubectl"), "codeb", "status", "-n", namespace, "-o", "json"], env=env,
                           capture_output=True, text=True, cwd=REPO_ROOT)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert [row["name"] for row in json.loads(shown.stdout)["projects"]] == ["plugged"]
