"""The operator's configuration: every variable is read into its field, and documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.operator.config import _ENV, ConfigError, load_config

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@pytest.mark.parametrize("variable", sorted(_ENV.values()))
def test_every_variable_is_in_the_operations_guide(variable: str) -> None:
    assert f"| `{variable}` |" in OPERATIONS.read_text()


def test_quotas_without_a_platform_are_read_and_checked() -> None:
    config = load_config({"CODEB_QUOTA_PROJECTS": "3", "CODEB_QUOTA_DOMAINS": "10"})
    assert (config.quota_projects, config.quota_domains) == (3, 10)
    assert (load_config({}).quota_projects, load_config({}).quota_domains) == (None, None)
    with pytest.raises(ConfigError, match="CODEB_QUOTA_PROJECTS"):
        load_config({"CODEB_QUOTA_PROJECTS": "-1"})
