"""Small Go programs the tests run (`tests/tools/<name>`), built from the Go module proxy once per source.

They bring in the real libraries other tools judge our objects with: kstatus (cli-utils, what
Flux's ``wait`` and health checks compute) and gopher-lua (the interpreter Argo CD runs health
checks in). Built into the cache like the other real parts, keyed by their sources.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from controller.local.cluster import cache_dir

TOOLS = Path(__file__).parent / "tools"


def go_tool(name: str) -> Path:
    """The built ``tests/tools/<name>``: from the cache, or built now (the first build downloads modules)."""
    source = TOOLS / name
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(source.iterdir()))).hexdigest()[:12]
    binary = cache_dir() / "bin" / f"{name}-{digest}"
    if binary.exists():
        return binary
    go = shutil.which("go")
    assert go, "Go is needed to build the test tool " + name + " (from the Go module proxy)"
    binary.parent.mkdir(parents=True, exist_ok=True)
    built = subprocess.run([go, "build", "-o", str(binary), "."], cwd=source, capture_output=True, text=True,
                           timeout=900, check=False, env={**os.environ, "CGO_ENABLED": "0"})  # fmt: skip
    assert built.returncode == 0, f"building {name} failed: {built.stderr[-3000:]}"
    return binary


def judged(name: str, objects: list[dict[str, Any]], *args: str) -> list[dict[str, str]]:
    """What tool ``name`` answers for each object (one JSON answer per object)."""
    given = "\n".join(json.dumps(o) for o in objects)
    ran = subprocess.run([str(go_tool(name)), *args], input=given, capture_output=True, text=True, timeout=60,
                         check=False)  # fmt: skip
    assert ran.returncode == 0, f"{name}: {ran.stderr[-2000:]}"
    return [json.loads(line) for line in ran.stdout.splitlines()]


# Helm for the chart's tests (tests/apiserver/test_helm.py): v4, as the module list advises.
HELM = "helm.sh/helm/v4/cmd/helm@v4.3.2"
# The Prometheus Operator release whose CRDs the tests install (its module carries them as YAML).
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.87.1"


def module_dir(module: str) -> Path:
    """Where Go module ``module`` (path@version) is unpacked, fetched through the module proxy if need be."""
    go = shutil.which("go")
    assert go, "Go is needed to fetch " + module + " (from the Go module proxy)"
    done = subprocess.run([go, "mod", "download", "-json", module], capture_output=True, text=True, timeout=600,
                          check=False)  # fmt: skip
    assert done.returncode == 0, f"go mod download {module}: {done.stdout[-1000:]}{done.stderr[-1000:]}"
    return Path(json.loads(done.stdout)["Dir"])


def prometheus_crd(plural: str) -> Path:
    """One of the Prometheus Operator's real CRDs (``prometheusrules``, ``servicemonitors``), as it installs them."""
    return (
        module_dir(PROMETHEUS_OPERATOR) / "example" / "prometheus-operator-crd" / f"monitoring.coreos.com_{plural}.yaml"
    )


def go_installed(package: str, binary: str) -> Path:
    """The command ``package@version`` (e.g. helm) built from the module proxy once per machine, then cached."""
    path = cache_dir() / "bin" / f"{binary}-{package.rsplit('@', 1)[1]}"
    if path.exists():
        return path
    go = shutil.which("go")
    assert go, "Go is needed to build " + package + " (from the Go module proxy)"
    built_to = path.parent / f".{path.name}.partial"
    built_to.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([go, "install", package], capture_output=True, text=True, timeout=1800, check=False,
                          env={**os.environ, "GOBIN": str(built_to), "CGO_ENABLED": "0"})  # fmt: skip
    assert done.returncode == 0, f"go install {package} failed: {done.stderr[-3000:]}"
    (built_to / binary).rename(path)
    shutil.rmtree(built_to, ignore_errors=True)
    return path


# Flux's two controllers a GitOps flow needs (tests/apiserver/test_flux.py), built from their modules.
FLUX_VERSION = "v1.9.6"  # the newest both build with this machine's Go (v1.10 needs Go 1.27)
FLUX_REPLACES = {
    # source-controller v1.9.6 requires github.com/fluxcd/pkg/artifact v0.18.3, which the module proxy here
    # does not serve (403); v0.18.0, the same minor release, builds and passes the GitOps tests.
    "source-controller": ["github.com/fluxcd/pkg/artifact=github.com/fluxcd/pkg/artifact@v0.18.0"],
    "kustomize-controller": [],
}


def flux_crds(controller: str) -> list[Path]:
    """The CRDs ``controller`` installs (its module's config/crd/bases), as Flux's release does."""
    found = module_dir(f"github.com/fluxcd/{controller}@{FLUX_VERSION}") / "config" / "crd" / "bases"
    return sorted(found.glob("*.yaml"))


def flux_controller(controller: str) -> Path:
    """``source-controller`` or ``kustomize-controller``, built once per machine, then cached.

    Neither builds with `go install pkg@version`: each go.mod replaces its own API module with ./api,
    a nested module the release's module zip leaves out, so the API module is put back in its place."""
    path = cache_dir() / "bin" / f"{controller}-{FLUX_VERSION}"
    if path.exists():
        return path
    go = shutil.which("go")
    assert go, "Go is needed to build " + controller + " (from the Go module proxy)"
    module = f"github.com/fluxcd/{controller}"
    source = path.parent / f".{path.name}.src"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(module_dir(f"{module}@{FLUX_VERSION}"), source)
    shutil.rmtree(source / "api", ignore_errors=True)
    shutil.copytree(module_dir(f"{module}/api@{FLUX_VERSION}"), source / "api")
    for folder in (source, *[p for p in source.rglob("*") if p.is_dir()]):
        folder.chmod(0o755)  # the module cache's copies are read-only
    for file in (p for p in source.rglob("*") if p.is_file()):
        file.chmod(0o644)
    env = {**os.environ, "CGO_ENABLED": "0"}
    for replace in FLUX_REPLACES[controller]:
        subprocess.run([go, "mod", "edit", "-replace", replace], cwd=source, check=True, env=env, timeout=60)
    partial = path.parent / f".{path.name}.partial"
    done = subprocess.run([go, "build", "-mod=mod", "-o", str(partial), "."], cwd=source, capture_output=True,
                          text=True, timeout=1800, check=False, env=env)  # fmt: skip
    assert done.returncode == 0, f"building {controller} failed: {done.stderr[-3000:]}"
    partial.rename(path)
    shutil.rmtree(source, ignore_errors=True)
    return path


if __name__ == "__main__":
    # deploy/dev test builds the commands the tests use beforehand, where a cold build has the time it needs.
    print(go_installed(HELM, "helm"))
    for name in FLUX_REPLACES:
        print(flux_controller(name))
