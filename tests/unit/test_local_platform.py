"""`codeb up`'s local Platform on plain files: a PostgreSQL home whose credentials are gone is set aside."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.local import platform
from controller.local.platform import LocalPlatform


def test_a_new_state_directory_sets_aside_the_postgres_home_an_earlier_one_of_its_path_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform.os, "geteuid", lambda: 0)  # the root layout: homes outside the state directory
    monkeypatch.setattr(platform, "ROOT_POSTGRES_HOMES", tmp_path / "homes")
    state = tmp_path / "state"
    first = LocalPlatform.open(state)
    (first.postgres_home / "data").mkdir(parents=True)
    (first.postgres_home / "data" / "PG_VERSION").write_text("15\n")
    assert LocalPlatform.open(state).postgres_home.exists()  # its platform.json is there: kept as it is
    (state / "platform.json").unlink()  # the state directory removed, its path used again
    again = LocalPlatform.open(state)
    assert not again.postgres_home.exists()  # a new cluster is made, with the new credentials
    [aside] = [p for p in (tmp_path / "homes").iterdir() if p.name.startswith(f"{again.postgres_home.name}.orphaned-")]
    assert (aside / "data" / "PG_VERSION").read_text() == "15\n"  # moved, not deleted
