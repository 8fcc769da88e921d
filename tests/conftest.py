"""Shared fixtures. The real control plane starts once per session, on demand."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from controller.cli import CRD_PATH
from controller.kube import KubeClient, api_client_from_environment
from controller.localcluster import LocalCluster


def start_cluster(root: Path, audit_policy: str | None = None, controllers: bool = False) -> LocalCluster:
    """A real etcd + kube-apiserver (and kube-controller-manager) with the CodeB CRDs installed."""
    local = LocalCluster(root, audit_policy=audit_policy, controllers=controllers).start()
    try:
        local.install_crds(CRD_PATH.parent)
    except BaseException:
        local.stop()
        raise
    return local


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Shared by tests that need no operator; tests that run one get a cluster of their own."""
    local = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield local
    local.stop()


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
