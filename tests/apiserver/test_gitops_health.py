"""What GitOps tools conclude from a Project's status, computed by their own code on statuses the real
operator wrote across a Project's life: kstatus (sigs.k8s.io/cli-utils, behind Flux's ``wait`` and
health checks) and Argo CD's health check (``deploy/gitops/argocd/project-health.lua``, run in
gopher-lua as Argo CD runs it).

The life: applied (before and during the first pass), converging, Ready, changed, a rollout that
fails, deleting. At every look, "done" (kstatus Current, Argo CD Healthy) is said exactly when the
Project is Ready and Synced at its current generation: a new revision still rolling out (the old
one serving, Ready all along) is in progress; a failed rollout is Failed / Degraded, not in progress
forever; and nothing reads as done before the operator has looked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gotools import judged
from tests.helpers import get_json
from tests.rollouts import NS, RolloutWorld, rollout_world

pytestmark = pytest.mark.apiserver

ARGO = Path(__file__).parents[2] / "deploy" / "gitops" / "argocd"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutWorld]:
    with rollout_world(tmp_path_factory.mktemp("gitops")) as made:
        yield made


class Looks:
    """Every look at one Project, with what kstatus and Argo CD made of it."""

    def __init__(self, world: RolloutWorld, name: str) -> None:
        self.world, self.name = world, name
        self.seen: list[tuple[dict[str, Any], str, str]] = []  # (object, kstatus, Argo CD health)

    def look(self) -> tuple[dict[str, Any], str, str]:
        found = get_json(self.world.cluster, "project", self.name, "-n", NS)
        [kstatus] = judged("kstatus", [found])
        [argo] = judged("argolua", [found], str(ARGO / "project-health.lua"))
        self.seen.append((found, kstatus["status"], argo["status"]))
        return self.seen[-1]

    def until(self, reached: Callable[[dict[str, Any], str, str], bool], what: str, timeout: float = 90) -> None:
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            if reached(*self.look()):
                return
            time.sleep(0.2)
        found, kstatus, argo = self.seen[-1]
        raise AssertionError(f"{what}: last kstatus {kstatus}, Argo CD {argo}, status {json.dumps(found['status'])}")


def done_now(found: dict[str, Any]) -> bool:
    """Ready at its current generation, and nothing left to do (no new revision still rolling out)."""
    status = found.get("status") or {}
    true = {c["type"] for c in status.get("conditions", []) if c["status"] == "True"}
    converged = "Ready" in true and "Synced" in true and not true & {"Reconciling", "Stalled"}
    return converged and status.get("observedGeneration") == found["metadata"]["generation"]


def test_flux_and_argo_cd_read_a_projects_life_as_it_is(world: RolloutWorld) -> None:
    looks = Looks(world, "watched")
    world.apply("watched", "r1")
    _, kstatus, argo = looks.look()  # at once: before the operator's first pass, or just after
    assert (kstatus, argo) == ("InProgress", "Progressing")
    looks.until(lambda found, k, a: done_now(found), "Ready on r1")
    assert looks.seen[-1][1:] == ("Current", "Healthy")

    world.apply("watched", "r2")  # a new revision: a blue-green rollout
    _, kstatus, argo = looks.look()
    assert (kstatus, argo) == ("InProgress", "Progressing")  # a rollout takes several health checks
    looks.until(lambda found, k, a: done_now(found) and found["status"]["serving"]["revision"] == "r2", "r2 served")

    world.apply("watched", "bad", mode="broken")  # never healthy: the rollout fails, r2 keeps serving
    looks.until(lambda found, k, a: k == "Failed", "the failed rollout read as failed")
    found, kstatus, argo = looks.seen[-1]
    stalled = next(c for c in found["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "RolloutFailed" and argo == "Degraded"
    assert not any(c["type"] == "Reconciling" for c in found["status"]["conditions"])

    # Every look, whatever the moment: done exactly when Ready at the current generation.
    for found, kstatus, argo in looks.seen:
        assert (kstatus == "Current") == done_now(found) == (argo == "Healthy"), (kstatus, argo, found["status"])
        assert kstatus in ("InProgress", "Current", "Failed")

    world.cluster.kubectl("delete", "project", "watched", "-n", NS, "--wait=false")
    [terminating] = judged("kstatus", [get_json(world.cluster, "project", "watched", "-n", NS)])
    assert terminating["status"] == "Terminating"


def test_the_argo_cd_snippet_carries_the_script() -> None:
    config = yaml.safe_load((ARGO / "argocd-cm.yaml").read_text())
    assert config["data"]["resource.customizations.health.codeb.dev_Project"] == (
        ARGO / "project-health.lua").read_text()  # fmt: skip


def test_a_paused_project_with_drift_reads_as_stalled_and_suspended(world: RolloutWorld) -> None:
    looks = Looks(world, "paused")
    world.apply("paused", "r1")
    looks.until(lambda found, k, a: done_now(found), "Ready on r1")
    world.cluster.kubectl("annotate", "project", "paused", "-n", NS, "codeb.dev/paused=true")
    world.apply("paused", "r2")  # drift the operator will not act on while paused
    looks.until(lambda found, k, a: k == "Failed" and a == "Suspended", "paused with drift: stalled, suspended")
    world.cluster.kubectl("annotate", "project", "paused", "-n", NS, "codeb.dev/paused-")
    looks.until(lambda found, k, a: done_now(found) and k == "Current" and a == "Healthy", "acting again: r2")
