"""The machine's Terraform and its provider mirror, for tests that run real Terraform offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from controller.specs import terraform as tf

MIRROR_DIR = "registry.terraform.io"


def terraform_binary() -> str:
    found = shutil.which("terraform")
    assert found, "Terraform is not on the PATH: these tests need the machine's Terraform (1.5 or later)"
    return found


def provider_mirror() -> Path:
    """The filesystem mirror's root (the parent of its registry.terraform.io), found as its README says."""
    for top in sorted(Path("/").iterdir()):
        if not top.is_dir() or top.name in ("proc", "sys", "dev"):
            continue
        for candidate in [top / MIRROR_DIR, *(p / MIRROR_DIR for p in _subdirs(top))]:
            if candidate.is_dir():
                return candidate.parent
    raise AssertionError("no Terraform provider mirror (a registry.terraform.io directory within 3 levels of /)")


def _subdirs(top: Path) -> list[Path]:
    try:
        return [p for p in top.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def offline_environment(workdir: Path) -> dict[str, str]:
    """Terraform reading providers from the mirror only, with no credentials and no network."""
    config = workdir / "terraformrc"
    config.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{provider_mirror()}"\n  }}\n}}\n')
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return keep | {"TF_CLI_CONFIG_FILE": str(config), "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1",
                   "AWS_ACCESS_KEY_ID": "AKIAOFFLINEPLANONLY00", "AWS_SECRET_ACCESS_KEY": "offline-plan-only",
                   "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip


def terraform(workdir: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([terraform_binary(), *args], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, f"terraform {' '.join(args)}: {result.stderr[-3000:]}"
    return result


def planned(workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    terraform(workdir, "plan", "-input=false", "-lock=false", "-out=plan.bin", env=env)
    shown: dict[str, Any] = json.loads(terraform(workdir, "show", "-json", "plan.bin", env=env).stdout)
    return shown


def stored_state(secret: dict[str, Any]) -> dict[str, Any]:
    """The Terraform state the ``kubernetes`` backend keeps in a Secret (gzip, then base64)."""
    state = tf.stored_state(secret)
    assert state is not None, "the Secret holds no state"
    return state
