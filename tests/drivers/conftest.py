from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.loop.secrets import MemorySecrets
from tests.gitserver import GitServer


@pytest.fixture()
def secrets() -> MemorySecrets:
    """Where drivers keep credentials in these tests: the SecretStore in memory."""
    return MemorySecrets()


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    """Git's own server over HTTPS on loopback, with a CA of its own (`tests.gitserver`)."""
    served = GitServer(tmp_path_factory.mktemp("git"), tls=True)
    try:
        yield served
    finally:
        served.stop()
