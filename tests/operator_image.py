"""The operator's image (`deploy/operator/Containerfile`), built by podman in a booted test host as a user
builds it, and kept as an archive in the build cache (named by what went into it) for the tests that run it:
in podman (`tests.apiserver.test_operator_image`) and as the Pod the installation makes on the node
(`tests.apiserver.test_operator_on_node`).

Built in a test host, where podman works: this machine's own cgroups (v1 and v2 mixed) do not suit it
(crun: "cgroups in hybrid mode not supported"), a systemd-nspawn machine's do. Nothing comes from Docker
Hub: BASE is a Debian rootfs from debootstrap (`deploy/testhost/build-rootfs.sh`), TERRAFORM an image
holding this machine's terraform, and the Python packages are wheels made here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from fnmatch import fnmatch
from pathlib import Path

from tests.testhosts import REPO, BootedHost

IMAGE = "localhost/codeb-operator:test"
BUILD_SECONDS = 900.0
# What the image's Containerfile copies, and so what the build context holds.
SOURCES = ("pyproject.toml", "README.md", "controller", "schemas", "terraform", "deploy/operator/Containerfile")
SKIPPED = ("__pycache__", ".terraform*", "*.tfstate*")


def wheels(cache: Path) -> Path:
    """The operator's dependencies as wheels for this Python (the image's is Debian's 3.11 too), made once
    per pyproject.toml."""
    pyproject = (REPO / "pyproject.toml").read_bytes()
    where = cache / f"operator-wheels-{hashlib.sha256(pyproject).hexdigest()[:12]}"
    if not (where / ".complete").exists():
        # Debian's Python is 3.11.2: redis wants async-timeout below 3.11.3, which this machine's newer 3.11 skips.
        wanted = [*tomllib.loads(pyproject.decode())["project"]["dependencies"], "async-timeout>=4.0.3"]
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--wheel-dir",
                        str(where), "setuptools>=68", *wanted], check=True, timeout=900)  # fmt: skip
        (where / ".complete").touch()
    return where


def _sources() -> list[Path]:
    """Every file the build context takes from the repository, in a stable order."""
    found: list[Path] = []
    for name in SOURCES:
        path = REPO / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        # As shutil.ignore_patterns: a file is left out when any part of its path matches (a .terraform/ tree).
        found += [p for p in files if not any(fnmatch(part, pattern) for part in p.relative_to(REPO).parts
                                              for pattern in SKIPPED)]  # fmt: skip
    return found


def content_hash(cache: Path) -> str:
    """What the image is made of: the sources' paths and bytes, and the wheels' names."""
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    for wheel in sorted(wheels(cache).glob("*.whl")):
        digest.update(wheel.name.encode())
    return digest.hexdigest()[:12]


def build_context(cache: Path) -> Path:
    """The repository's parts the Containerfile copies, and the wheels, where the host sees them (/codeb-cache)."""
    context = cache / f"operator-context-{os.getpid()}"
    shutil.rmtree(context, ignore_errors=True)
    for source in _sources():
        target = context / source.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (context / "wheels").mkdir()
    for wheel in wheels(cache).glob("*.whl"):
        os.link(wheel, context / "wheels" / wheel.name)
    return context


def terraform_image(cache: Path) -> Path:
    """An image of one file, /bin/terraform (as hashicorp/terraform has it): this machine's."""
    binary = shutil.which("terraform")
    assert binary is not None, "terraform is not on the PATH (../shared/PARTS.md)"
    tar = cache / f"operator-terraform-{os.getpid()}.tar"
    with tarfile.open(tar, "w") as out:
        out.add(binary, arcname="bin/terraform")
    return tar


def operator_image(host: BootedHost, key_file: Path, cache: Path) -> Path:
    """The image's archive in ``cache`` (the host sees it at /codeb-cache), built in ``host`` unless the same
    sources were built before. ``podman load`` or ``ctr images import`` takes it as :data:`IMAGE`."""
    archive = cache / f"operator-image-{content_hash(cache)}.tar"
    if archive.exists():
        return archive
    context, terraform = build_context(cache), terraform_image(cache)
    try:
        started = time.monotonic()
        host.ssh(key_file, "podman import -q /codeb-cache/operator-base-v1.tar localhost/codeb/base:bookworm "
                           f">/dev/null && podman import -q /codeb-cache/{terraform.name} "
                           "localhost/codeb/terraform:local >/dev/null", timeout=300)  # fmt: skip
        bases = "--build-arg BASE=localhost/codeb/base:bookworm --build-arg TERRAFORM=localhost/codeb/terraform:local"
        build = f"podman build -q {bases} -f deploy/operator/Containerfile -t {IMAGE} . >/dev/null"
        host.ssh(key_file, f"cd /codeb-cache/{context.name} && {build}", timeout=BUILD_SECONDS)
        # The cache is read-only in the host: saved into its image store, which is this machine's disk.
        host.ssh(key_file, f"podman save -q -o /var/lib/containers/operator.tar {IMAGE}", timeout=300)
        saved = host.directory / "containers" / "operator.tar"
        shutil.move(saved, archive.with_suffix(".tmp"))
        archive.with_suffix(".tmp").rename(archive)
        print(f"operator image built in {time.monotonic() - started:.0f} s")
    finally:
        shutil.rmtree(context, ignore_errors=True)
        terraform.unlink(missing_ok=True)
    return archive
