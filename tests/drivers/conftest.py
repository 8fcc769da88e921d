from __future__ import annotations

import pytest

from controller.loop.secrets import MemorySecrets


@pytest.fixture()
def secrets() -> MemorySecrets:
    """Where drivers keep credentials in these tests: the SecretStore in memory."""
    return MemorySecrets()
