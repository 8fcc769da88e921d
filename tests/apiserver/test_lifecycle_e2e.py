"""`codeb stop`, `start` and `restart` end to end on runtime local: the real operator, Caddy and application.

Stopped, a Project's process is gone and its domain answers the maintenance page through Caddy, with
its ports and names kept, and GitOps tools read it as it is (kstatus Current: nothing in progress, so a
commit that suspends a Project finishes syncing; Argo CD Suspended). Started again, the same revision
serves on the same ports. A restart is a new deploy of the same revision, under load, without one
failed request, and the history says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.cli.main import main
from tests.gotools import judged
from tests.helpers import get_json, wait_for
from tests.rollouts import NS, Load, RolloutWorld, rollout_world
from tests.servers import https_get

pytestmark = pytest.mark.apiserver

ARGO_HEALTH = Path(__file__).parents[2] / "deploy" / "gitops" / "argocd" / "project-health.lua"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutWorld]:
    with rollout_world(tmp_path_factory.mktemp("lifecycle")) as made:
        yield made


def codeb(world: RolloutWorld, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          *argv: str) -> dict[str, Any]:  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", str(world.cluster.kubeconfig))
    assert main([*argv, "-n", NS, "-o", "json"]) == 0
    said: dict[str, Any] = json.loads(capsys.readouterr().out)
    return said


def answer(world: RolloutWorld, name: str) -> tuple[int, str]:
    got = https_get(world.caddy, f"{name}.localhost", "-w", "\n%{http_code}")
    body, _, code = got.stdout.rpartition("\n")
    return int(code or 0), body


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_stopped_project_answers_its_maintenance_page_and_starts_again_as_it_was(
    world: RolloutWorld, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world.apply("paused-shop", "r1")
    world.wait_rollout("paused-shop", "r1")
    code, body = answer(world, "paused-shop")
    assert code == 200, body
    pid = json.loads(body)["pid"]
    allocations = world.status("paused-shop")["allocations"]

    assert codeb(world, monkeypatch, capsys, "stop", "paused-shop") == {
        "project": f"{NS}/paused-shop", "suspended": True, "changed": True}  # fmt: skip
    wait_for(lambda: world.status("paused-shop").get("phase") == "Suspended", timeout=60, what="suspended")
    wait_for(lambda: answer(world, "paused-shop")[0] == 503, timeout=10, what="the maintenance page")
    code, body = answer(world, "paused-shop")
    assert "Temporarily unavailable" in body and "paused-shop" not in body
    assert not alive(pid)  # stopped, not just unrouted
    status = world.status("paused-shop")
    ready = world.condition("paused-shop", "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Suspended")  # as asked: see summary.SUSPENDED
    assert world.condition("paused-shop", "Synced")["status"] == "True"
    assert "WorkloadReady" not in {c["type"] for c in status["conditions"]}
    assert status["allocations"] == allocations and status.get("serving") is None
    found = get_json(world.cluster, "project", "paused-shop", "-n", NS)
    [kstatus] = judged("kstatus", [found])
    [argo] = judged("argolua", [found], str(ARGO_HEALTH))
    assert (kstatus["status"], argo["status"]) == ("Current", "Suspended"), (kstatus, found["status"])
    # Stopping what is stopped changes nothing; a restart of it is refused, with the way out.
    assert codeb(world, monkeypatch, capsys, "stop", "paused-shop")["changed"] is False
    monkeypatch.setenv("KUBECONFIG", str(world.cluster.kubeconfig))
    assert main(["restart", "paused-shop", "-n", NS]) == 2
    assert "`codeb start` starts it" in capsys.readouterr().err

    assert codeb(world, monkeypatch, capsys, "start", "paused-shop")["changed"] is True
    wait_for(lambda: answer(world, "paused-shop")[0] == 200, timeout=60, what="served again")
    wait_for(lambda: world.condition("paused-shop", "Ready").get("status") == "True", timeout=30, what="Ready")
    assert json.loads(answer(world, "paused-shop")[1])["revision"] == "r1"
    assert world.status("paused-shop")["allocations"] == allocations


def test_a_restart_is_a_new_deploy_of_the_same_revision_and_drops_no_request(
    world: RolloutWorld, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world.apply("restarted", "r1")
    world.wait_rollout("restarted", "r1")
    before = json.loads(answer(world, "restarted")[1])["pid"]
    load = Load(world.caddy, "restarted.localhost", threads=2).start()
    try:
        token = codeb(world, monkeypatch, capsys, "restart", "restarted")["restartedAt"]
        wait_for(lambda: world.status("restarted")["deployments"][0]["message"] == f"restart ({token})"
                 and world.rollout("restarted").get("step") == "Succeeded", timeout=60,
                 what="the restart deployed")  # fmt: skip
    finally:
        load.stop()
    assert load.failures == [] and set(load.revisions) == {"r1"} and load.sent > 20
    after = json.loads(answer(world, "restarted")[1])["pid"]
    assert after != before  # a new process serves
    history = world.status("restarted")["deployments"]
    assert [(d["revision"], d["result"]) for d in history] == [("r1", "Succeeded"), ("r1", "Succeeded")]
