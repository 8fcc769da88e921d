"""GitOps with Flux's own controllers: source-controller and kustomize-controller (built from their Go
modules, `tests.gotools.flux_controller`) sync a Git repository served on loopback by git's own
server, into the local cluster the real operator watches, with `deploy/gitops/flux/projects.yaml`.

A commit adds a Project: Flux applies it, the operator deploys it, and the Kustomization
(`wait: true`) turns Ready for that commit only once the Project is Ready. A commit changes its
revision: a blue-green rollout, and Ready again only once the new revision serves. A commit removes
it: pruned, torn down by the operator's finalizer, its process gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.local.cluster import free_port
from tests.gitserver import GitServer, WorkTree
from tests.gotools import flux_controller, flux_crds
from tests.helpers import get_json, wait_for
from tests.rollouts import NS, RolloutWorld, rollout_project, rollout_world

pytestmark = pytest.mark.apiserver

EXAMPLE = Path(__file__).parents[2] / "deploy" / "gitops" / "flux" / "projects.yaml"
FLUX_NS = "flux-system"


class FluxControllers:
    """source-controller and kustomize-controller as processes against the local cluster."""

    def __init__(self, world: RolloutWorld, root: Path) -> None:
        self.root, self.procs = root, list[subprocess.Popen[bytes]]()
        env = {**os.environ, "KUBECONFIG": str(world.cluster.kubeconfig), "RUNTIME_NAMESPACE": FLUX_NS}
        storage = free_port()
        (root / "artifacts").mkdir()  # it must exist
        common = ["--enable-leader-election=false", "--watch-all-namespaces=true", "--log-encoding=console"]
        try:
            self._start("source-controller", env, common, f"--storage-path={root / 'artifacts'}",
                        f"--storage-addr=127.0.0.1:{storage}", f"--storage-adv-addr=127.0.0.1:{storage}")  # fmt: skip
            self._start("kustomize-controller", env, common)
        except BaseException:
            self.stop()  # one that started is stopped when the other does not
            raise

    def _start(self, name: str, env: dict[str, str], *args: str | list[str]) -> None:
        flat = [a for arg in args for a in ([arg] if isinstance(arg, str) else arg)]
        health = free_port()
        log = (self.root / f"{name}.log").open("ab")
        ports = [f"--metrics-addr=127.0.0.1:{free_port()}", f"--health-addr=127.0.0.1:{health}"]
        self.procs.append(subprocess.Popen([str(flux_controller(name)), *flat, *ports], env=env, stdout=log,
                                           stderr=log))  # fmt: skip

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{health}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(ready, timeout=60, what=f"{name} ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.log(name)}") from None

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RolloutWorld, FluxControllers, GitServer]]:
    crds = [c for name in ("source-controller", "kustomize-controller") for c in flux_crds(name)]
    for name in ("source-controller", "kustomize-controller"):
        flux_controller(name)  # built before the world: a cold build must not eat into its timeouts
    root = tmp_path_factory.mktemp("flux")
    with rollout_world(root) as made:
        for crd in crds:
            made.cluster.kubectl("apply", "--server-side", "-f", str(crd))
        made.cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        made.cluster.kubectl("create", "namespace", FLUX_NS)
        git = GitServer(root / "git")
        try:
            flux = FluxControllers(made, root)
            try:
                yield made, flux, git
            finally:
                flux.stop()
        finally:
            git.stop()


def sync(world: RolloutWorld, url: str) -> None:
    """The example's GitRepository and Kustomization, pointed at the loopback repository, looking often."""
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    for doc in docs:
        doc["spec"]["interval"] = "2s"
        if doc["kind"] == "GitRepository":
            doc["spec"]["url"] = url
        else:
            doc["spec"]["timeout"] = "3m"
    world.cluster.kubectl("apply", "-f", "-", input_text=json.dumps({"kind": "List", "apiVersion": "v1",
                                                                       "items": docs}))  # fmt: skip


def kustomization_ready(world: RolloutWorld, commit: str) -> bool:
    """The Kustomization is Ready with ``commit`` applied."""
    found = get_json(world.cluster, "kustomization", "projects", "-n", FLUX_NS).get("status") or {}
    ready = next((c for c in found.get("conditions", []) if c["type"] == "Ready"), {})
    return ready.get("status") == "True" and str(found.get("lastAppliedRevision", "")).endswith(commit)


def project(world: RolloutWorld, name: str) -> dict[str, Any] | None:
    """The Project, or None once it is gone."""
    listed = get_json(world.cluster, "projects", "-n", NS, f"--field-selector=metadata.name={name}")
    return next(iter(listed["items"]), None)


def project_done(world: RolloutWorld, name: str, revision: str) -> bool:
    """Ready at its current generation, serving ``revision``."""
    found = project(world, name)
    if not found:
        return False
    status = found.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
    current = status.get("observedGeneration") == found["metadata"]["generation"]
    return ready and current and (status.get("serving") or {}).get("revision") == revision


def watch_until_synced(world: RolloutWorld, flux: FluxControllers, commit: str, name: str, revision: str) -> int:
    """Look (Kustomization first, then the Project) until Flux says ``commit`` is synced; at every look
    where Flux said so, the Project must already have been done. How many looks saw it not yet done."""
    not_done, ends = 0, time.monotonic() + 180
    while time.monotonic() < ends:
        synced = kustomization_ready(world, commit)
        done = project_done(world, name, revision)
        if synced:
            assert done, f"Flux said synced before the Project was Ready: {world.status(name)}"
            return not_done
        not_done += not done
        time.sleep(0.2)
    raise AssertionError(
        f"not synced: {get_json(world.cluster, 'kustomization', 'projects', '-n', FLUX_NS).get('status')}\n"
        f"{flux.log('kustomize-controller')}\n{flux.log('source-controller')}"
    )


def served(world: RolloutWorld, name: str) -> bool:
    """Its page answers 200 through Caddy (a name Caddy no longer routes has no certificate either)."""
    host = f"{name}.localhost"
    with httpx.Client(verify=False, timeout=10) as client:
        try:
            answer = client.get(f"https://127.0.0.1:{world.caddy.https_port}/", headers={"Host": host},
                                extensions={"sni_hostname": host})  # fmt: skip
        except httpx.ConnectError:
            return False
    return answer.status_code == 200


def manifest(world: RolloutWorld, name: str, revision: str) -> str:
    return yaml.safe_dump(rollout_project(name, revision, world.counts))


def test_flux_applies_rolls_out_and_prunes_a_project_from_git(
    world: tuple[RolloutWorld, FluxControllers, GitServer], tmp_path: Path
) -> None:
    made, flux, git = world
    tree = WorkTree(git, "projects", tmp_path / "work")
    first = tree.commit("add shop", {"projects/shop.yaml": manifest(made, "shop", "r1"),
                                     "projects/README.md": "The team's Projects, synced by Flux.\n"})  # fmt: skip
    sync(made, git.url("projects"))

    # A commit adds the Project: Flux reads as synced only once it serves.
    assert watch_until_synced(made, flux, first, "shop", "r1") > 0  # it was seen converging first
    assert served(made, "shop") and made.served_by("r1") > 0

    # A commit changes its revision: a blue-green rollout, and synced once r2 serves.
    second = tree.commit("shop r2", {"projects/shop.yaml": manifest(made, "shop", "r2")})
    assert watch_until_synced(made, flux, second, "shop", "r2") > 0
    rollout = made.rollout("shop")
    assert (rollout["revision"], rollout["step"]) == ("r2", "Succeeded")
    fields = get_json(made.cluster, "project", "shop", "-n", NS, "--show-managed-fields")["metadata"]["managedFields"]
    managers = {m["manager"] for m in fields}
    assert "kustomize-controller" in managers  # Flux applied it, not the test

    # A commit removes it: pruned, and the operator's finalizer tears it down.
    third = tree.commit("remove shop", {"projects/shop.yaml": None})
    try:
        wait_for(lambda: kustomization_ready(made, third), timeout=120, what="the removal synced")
    except AssertionError as exc:
        found = get_json(made.cluster, "kustomization", "projects", "-n", FLUX_NS).get("status")
        raise AssertionError(f"{exc}: {found}") from None
    wait_for(lambda: project(made, "shop") is None, timeout=120, what="shop pruned and torn down")
    assert not served(made, "shop")  # its route went with it


def test_the_example_is_what_the_test_syncs_with() -> None:
    kinds = {doc["kind"]: doc for doc in yaml.safe_load_all(EXAMPLE.read_text())}
    assert set(kinds) == {"GitRepository", "Kustomization"}
    assert kinds["Kustomization"]["spec"]["wait"] is True and kinds["Kustomization"]["spec"]["prune"] is True
    assert kinds["Kustomization"]["spec"]["sourceRef"]["name"] == kinds["GitRepository"]["metadata"]["name"]
