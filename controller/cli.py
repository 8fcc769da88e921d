"""The `codeb` command.

codeb up              start the local control plane, install the CRDs, apply the
                      local example and run the operator (the embedded default)
codeb operator        run the operator against the current kubeconfig
codeb generate        regenerate the CRD and docs from the models (--check: fail on drift)
codeb validate FILE…  check manifests the way the operator does
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

from controller.localcluster import REPO_ROOT, LocalCluster, cache_dir
from controller.status import format_validation_error
from schemas.crd import platform_crd, project_crd, render_yaml
from schemas.docs import render_markdown
from schemas.project import KIND, ProjectSpec, Runtime

if TYPE_CHECKING:
    from controller.config import OperatorConfig
    from controller.drivers import Driver
    from controller.kube import KubeClient
    from controller.reconcile import DriverSource

CRD_PATH = REPO_ROOT / "manifests" / "crd" / "projects.codeb.dev.yaml"
PLATFORM_CRD_PATH = REPO_ROOT / "manifests" / "crd" / "platforms.codeb.dev.yaml"
DOCS_PATH = REPO_ROOT / "docs" / "manifest.md"
LOCAL_EXAMPLE = REPO_ROOT / "manifests" / "examples" / "hello-local.yaml"


def generated_files() -> dict[Path, str]:
    return {
        CRD_PATH: render_yaml(project_crd()),
        PLATFORM_CRD_PATH: render_yaml(platform_crd()),
        DOCS_PATH: render_markdown(),
    }


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def cmd_generate(args: argparse.Namespace) -> int:
    stale = [path for path, text in generated_files().items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{_shown(path)} is out of date: run `codeb generate`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in generated_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {_shown(path)}")
    return 0


def validate_documents(text: str) -> list[str]:
    """Problems found in every Project document of a YAML stream."""
    problems = []
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            continue
        name = (doc.get("metadata") or {}).get("name", "<unnamed>")
        try:
            ProjectSpec.model_validate(doc.get("spec") or {})
        except ValidationError as exc:
            problems.append(f"{name}: {format_validation_error(exc)}")
    return problems


def cmd_validate(args: argparse.Namespace) -> int:
    problems = [f"{path}: {p}" for path in args.files for p in validate_documents(Path(path).read_text())]
    print("\n".join(problems) or "all manifests valid")
    return 1 if problems else 0


def cmd_operator(args: argparse.Namespace) -> int:
    from controller.drivers.registry import DriverRegistry
    from controller.platforms import PlatformDrivers

    def registry(kube: KubeClient, config: OperatorConfig) -> DriverSource:
        platforms = PlatformDrivers(kube, config.service_timeout_seconds, config.service_concurrency)
        return DriverRegistry(platforms=platforms, workload=workload_drivers(kube, config))

    return run_operator(registry)


def workload_drivers(kube: KubeClient, config: OperatorConfig) -> dict[Runtime, Driver]:
    """The runtimes this operator may run workloads on; local only where it was switched on."""
    from controller.drivers.kubernetes import KubernetesWorkload
    from controller.drivers.processes import LocalProcesses

    drivers: dict[Runtime, Driver] = {Runtime.kubernetes: KubernetesWorkload(kube)}
    if config.local_runtime:
        drivers[Runtime.local] = LocalProcesses(kube.read_secret, config.local_root, config.state_dir)
    return drivers


def run_operator(make_drivers: Callable[[KubeClient, OperatorConfig], DriverSource]) -> int:
    """Run the operator against the current kubeconfig with the drivers ``make_drivers`` picks."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import kopf

    from controller.claims import ClaimStore, local_port_free
    from controller.config import ConfigError, load_config
    from controller.kube import KubeClient, api_client_from_environment
    from controller.logs import configure_logging
    from controller.metrics import Metrics
    from controller.operator import Runtime, build_registry
    from controller.reconcile import Reconciler
    from controller.retries import Backoff, Retries

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format)
    kopf.configure(
        verbose=os.environ.get("CODEB_DEBUG") == "1",
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    kube = KubeClient(api_client_from_environment(config.max_workers), ThreadPoolExecutor(config.max_workers),
                      config.api_timeout_seconds)  # fmt: skip
    claims = ClaimStore(kube, config.claims_namespace, config.reserved_ports, local_port_free)
    retries = Retries(Backoff(cap=config.retry_max_seconds))
    runtime = Runtime(config, Reconciler(make_drivers(kube, config), claims), Metrics(), kube, retries)
    asyncio.run(
        kopf.operator(
            registry=build_registry(runtime),
            clusterwide=True,
            standalone=config.peering is None,
            peering_name=config.peering,
        )
    )
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    cluster = LocalCluster(cache_dir() / "local", fast_storage=False)
    started = time.monotonic()
    cluster.start()
    print(f"control plane ready in {time.monotonic() - started:.1f}s; kubeconfig: {cluster.kubeconfig}")
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(CRD_PATH.parent))
        cluster.kubectl("wait", "--for=condition=Established", "crd/projects.codeb.dev", "--timeout=60s")
        cluster.kubectl("apply", "-f", str(LOCAL_EXAMPLE))
        print(f"applied {_shown(LOCAL_EXAMPLE)}")
        print(f"try: KUBECONFIG={cluster.kubeconfig} kubectl get projects -A")
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        return cmd_operator(args)
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="codeb", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = root.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="local control plane + CRDs + example + operator").set_defaults(func=cmd_up)
    sub.add_parser("operator", help="run the operator (current kubeconfig)").set_defaults(func=cmd_operator)
    gen = sub.add_parser("generate", help="regenerate CRD and docs from the models")
    gen.add_argument("--check", action="store_true", help="exit 1 if the checked-in files differ")
    gen.set_defaults(func=cmd_generate)
    val = sub.add_parser("validate", help="validate Project manifests")
    val.add_argument("files", nargs="+")
    val.set_defaults(func=cmd_validate)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
