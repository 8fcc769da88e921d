"""Shared fixtures. The real control plane starts once per session, on demand."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from controller.cli.common import CRD_PATH
from controller.clients.kube import KubeClient, api_client_from_environment
from controller.local.cluster import LocalCluster
from tests import process_sweep, servers

# Set before any fixture starts a process: what a test starts inherits it and can be found again.
SESSION_MARK = process_sweep.mark_session()
# Processes of session-scoped fixtures (the shared control plane): theirs to stop, not a module's.
SESSION_OWNED: set[int] = set()


def start_cluster(root: Path, audit_policy: str | None = None, controllers: bool = False,
                  address: str = "127.0.0.1", scheduler: bool = False) -> LocalCluster:  # fmt: skip
    """A real etcd + kube-apiserver (and kube-controller-manager, kube-scheduler) with the CodeB CRDs installed."""
    local = LocalCluster(root, audit_policy=audit_policy, controllers=controllers, scheduler=scheduler,
                         address=address).start()  # fmt: skip
    try:
        local.install_crds(CRD_PATH.parent)
    except BaseException:
        local.stop()
        raise
    return local


@pytest.fixture(scope="session", autouse=True)
def scratch_removed() -> Iterator[None]:
    """The servers' directories (`tests.servers.scratch`) go when the session ends, passed or not."""
    yield
    shutil.rmtree(servers.SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Shared by tests that need no operator; tests that run one get a cluster of their own."""
    before = set(_session_processes(tmp_path_factory))
    local = start_cluster(tmp_path_factory.mktemp("cluster"))
    SESSION_OWNED.update(set(_session_processes(tmp_path_factory)) - before)
    yield local
    local.stop()


def _session_processes(factory: pytest.TempPathFactory) -> dict[int, process_sweep.Proc]:
    return process_sweep.session_processes(SESSION_MARK, factory.getbasetemp())


@pytest.fixture(scope="module", autouse=True)
def no_process_outlives_its_module(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                                   ) -> Iterator[None]:  # fmt: skip
    """Every process a module's tests and fixtures started is gone when the module is, whether they passed or
    failed: what is left is stopped here and the module fails loudly, so it cannot break the modules after it."""
    before = set(_session_processes(tmp_path_factory))
    yield
    now = _session_processes(tmp_path_factory)
    new = [pid for pid in now if pid not in before and pid not in SESSION_OWNED]
    leaked = process_sweep.wait_gone(new, 5.0)  # some are just finishing their own exit
    if leaked:
        described = "; ".join(f"{pid}: {now[pid].command[:160]}" for pid in leaked)
        process_sweep.stop(leaked)
        pytest.fail(f"{request.module.__name__} left {len(leaked)} processes running (stopped now): {described}")


@pytest.fixture()
def kube(cluster: LocalCluster) -> Iterator[KubeClient]:
    """The operator's client for the shared cluster."""
    with ThreadPoolExecutor(8) as pool:
        yield KubeClient(api_client_from_environment(8, str(cluster.kubeconfig)), pool)


@pytest.fixture()
def namespace(cluster: LocalCluster) -> str:
    """A fresh namespace per test; no controller-manager runs, so it is never reaped."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    return name


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
