"""`codeb rollback` against the real control plane: the revision goes back to the last success."""

from __future__ import annotations

import json

import pytest

from controller.cli.main import main
from controller.local.cluster import LocalCluster
from tests.factories import project
from tests.helpers import get_json

T = "2026-11-24T10:00:00Z"


def deployed(revision: str, result: str, release: str) -> dict[str, str]:
    return {"revision": revision, "release": release, "colour": "blue", "startedAt": T, "result": result}


def test_rollback_goes_to_the_last_success_and_names_what_it_cannot(
    cluster: LocalCluster, namespace: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    doc = project("shop", namespace)
    doc["spec"]["project"]["revision"] = "r3"
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    history = [deployed("r3", "Failed", "c3"), deployed("r2", "Succeeded", "c2"), deployed("r1", "Succeeded", "c1")]
    serving = {"colour": "green", "release": "c1", "since": T, "warm": "blue", "warmRelease": "c2", "warmUntil": T}
    patch = json.dumps({"status": {"deployments": history, "serving": serving}})
    cluster.kubectl("patch", "project", "shop", "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)

    assert main(["rollback", "shop", "-n", namespace, "-o", "json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said == {"project": f"{namespace}/shop", "from": "r3", "to": "r2", "image": None, "warm": True}
    assert get_json(cluster, "project", "shop", "-n", namespace)["spec"]["project"]["revision"] == "r2"

    assert main(["rollback", "shop", "-n", namespace, "--to", "r1"]) == 0
    assert capsys.readouterr().out.strip() == f"{namespace}/shop: revision r2 -> r1 (a new rollout starts)"

    assert main(["rollback", "shop", "-n", namespace, "--to", "r9"]) == 2
    assert "revision r9 never deployed successfully here (succeeded: r1, r2)" in capsys.readouterr().err
    assert main(["rollback", "nothing", "-n", namespace]) == 3
    assert f"project {namespace}/nothing: not found" in capsys.readouterr().err
