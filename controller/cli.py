"""The `codeb` command.

codeb up              start the local control plane and a local Platform (PostgreSQL,
                      Redis, MinIO, Caddy), run the operator and serve the example
                      application at a URL (the embedded default); Ctrl-C stops all
codeb operator        run the operator against the current kubeconfig
codeb generate        regenerate the CRD and docs from the models (--check: fail on drift)
codeb validate FILE…  check manifests the way the operator does
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import kubernetes.client
import yaml
from pydantic import ValidationError

from controller import rollout
from controller.kube import api_client_from_environment
from controller.localcluster import REPO_ROOT, LocalCluster, cache_dir, stop_process
from controller.status import format_validation_error, load_status
from schemas.crd import platform_crd, project_crd, render_yaml
from schemas.docs import render_markdown
from schemas.project import API_GROUP, API_VERSION, KIND, PLURAL, ProjectSpec, Provider, Runtime

if TYPE_CHECKING:
    from controller.config import OperatorConfig
    from controller.drivers import Driver
    from controller.drivers.clusters import TargetClusters
    from controller.drivers.registry import InfrastructureDrivers
    from controller.kube import KubeClient
    from controller.localplatform import LocalPlatform
    from controller.reconcile import DriverSource
    from controller.ssh import SshPool

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
    from controller.drivers.clusters import TargetClusters
    from controller.drivers.registry import DriverRegistry
    from controller.platforms import PlatformDrivers
    from controller.ssh import SshPool

    def registry(kube: KubeClient, config: OperatorConfig) -> DriverSource:
        platforms = PlatformDrivers(kube, config.service_timeout_seconds, config.service_concurrency)
        ssh, clusters = SshPool(), TargetClusters(kube)
        return DriverRegistry(
            platforms=platforms,
            infrastructure=infrastructure_drivers(kube, ssh, clusters, config),
            workload=workload_drivers(kube, config, ssh, clusters),
        )

    return run_operator(registry)


def infrastructure_drivers(
    kube: KubeClient, ssh: SshPool, clusters: TargetClusters, config: OperatorConfig
) -> InfrastructureDrivers:
    """Where this operator can run things: its own machine, existing hosts over SSH, existing clusters,
    and hosts it makes with Terraform."""
    from controller.drivers.clusters import ExistingCluster
    from controller.drivers.hosts import ExistingHosts
    from controller.drivers.registry import LocalMachine, NotImplementedDriver
    from controller.drivers.terraform import TerraformHosts, TerraformRunner, terraform_settings
    from controller.planner import Component

    hosts = ExistingHosts(kube.read_secret, ssh)
    runner = TerraformRunner(terraform_settings(config))
    return {
        Provider.local: LocalMachine(),
        Provider.existing: hosts,
        (Provider.existing, Runtime.kubernetes): ExistingCluster(clusters),
        Provider.vultr: TerraformHosts(Provider.vultr, runner, kube.read_secret, kube, hosts),
        Provider.lightsail: TerraformHosts(Provider.lightsail, runner, kube.read_secret, kube, hosts),
        (Provider.vultr, Runtime.kubernetes): NotImplementedDriver(
            Component.infrastructure, "provider vultr with runtime kubernetes: VKE clusters are not made yet"
        ),
    }


def workload_drivers(
    kube: KubeClient, config: OperatorConfig, ssh: SshPool, clusters: TargetClusters
) -> dict[Runtime, Driver]:
    """The runtimes this operator may run workloads on; local only where it was switched on."""
    from controller.drivers.kubernetes import KubernetesWorkload
    from controller.drivers.processes import LocalProcesses
    from controller.drivers.quadlet import QuadletUnits

    drivers: dict[Runtime, Driver] = {
        Runtime.kubernetes: KubernetesWorkload(clusters),
        Runtime.quadlet: QuadletUnits(kube.read_secret, ssh),
    }
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
    """The embedded local default, to a URL: control plane, local Platform, operator, the example."""
    from controller.drivers.processes import stop_everything_under
    from controller.localplatform import LocalPlatform

    started = time.monotonic()

    def step(message: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {message}", flush=True)

    home = cache_dir() / "local"
    cluster = LocalCluster(home, fast_storage=False)
    platform = LocalPlatform.open(home / "platform")
    operator: subprocess.Popen[bytes] | None = None
    try:
        step("starting the control plane (etcd, kube-apiserver)")
        cluster.start()
        step("starting the local Platform (PostgreSQL, Redis, MinIO, Caddy)")
        platform.start()
        step("installing the CRDs, the Platform and the example Project")
        _install(cluster, platform)
        step(f"starting the operator (log: {home / 'operator.log'})")
        operator = _start_operator(cluster, home)
        step("waiting for the example to serve")
        if not _wait_serving(cluster, operator, platform.https_port, step):
            return 1
        url = f"https://hello.localhost:{platform.https_port}/"
        step(f"serving: {url}")
        print(f"  open it (Caddy's local CA: accept the warning), or: curl -k {url}")
        print(f"  kubectl: export KUBECONFIG={cluster.kubeconfig}; kubectl get projects -A")
        print("  Ctrl-C stops everything; the next `codeb up` finds the same data.")
        operator.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_operator(operator)
        # The example's processes outlive an operator by design; they do not outlive `up`.
        stop_everything_under(home / "state")
        platform.stop()
        cluster.stop()


def _install(cluster: LocalCluster, platform: LocalPlatform) -> None:
    from controller.localplatform import ADMIN_NAMESPACE, PLATFORM_NAME

    cluster.install_crds(CRD_PATH.parent)
    documents: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ADMIN_NAMESPACE}}
    ]
    for name, data in platform.admin_secrets().items():
        metadata = {"name": name, "namespace": ADMIN_NAMESPACE}
        documents.append({"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "stringData": data})
    documents.append(platform.platform_object())
    example = yaml.safe_load(LOCAL_EXAMPLE.read_text())
    example["spec"]["servers"]["platform"] = PLATFORM_NAME
    # The shared server's version is whatever Debian ships here.
    example["spec"]["features"]["database"] = {"version": platform.postgres_major()}
    documents.append(example)
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(documents))


def _start_operator(cluster: LocalCluster, home: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "CODEB_LOCAL_RUNTIME": "1",
           "CODEB_LOCAL_ROOT": str(REPO_ROOT), "CODEB_STATE_DIR": str(home / "state"), "CODEB_DRIFT_INTERVAL": "30",
           "CODEB_LOG_FORMAT": "console"}  # fmt: skip
    log = (home / "operator.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "controller", "operator"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _wait_serving(
    cluster: LocalCluster, operator: subprocess.Popen[bytes], https_port: int, step: Callable[[str], None]
) -> bool:
    """Until the example is Ready and its page really answers through Caddy (a status left from the
    last run says Ready before this operator has looked), printing each change of what it waits for."""
    deadline, last = time.monotonic() + 300, ""
    while time.monotonic() < deadline:
        if operator.poll() is not None:
            step(f"the operator exited with {operator.returncode}; see its log")
            return False
        found = cluster.kubectl("get", "project", "hello", "-o", "json", check=False)
        status = json.loads(found.stdout).get("status", {}) if found.returncode == 0 else {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        if ready and ready["status"] == "True" and _answers(https_port, "hello.localhost", "/api/health"):
            return True
        now = f"{status.get('phase', 'Pending')}: {ready['message'] if ready else 'not reconciled yet'}"
        if now != last:
            step(f"  hello is {now}")
            last = now
        time.sleep(0.5)
    step("hello did not serve within 5 minutes: kubectl describe project hello")
    return False


def _answers(port: int, host: str, path: str) -> bool:
    """GET ``path`` through Caddy's TLS listener with the right SNI; Caddy's local CA is not checked."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return tls.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _stop_operator(operator: subprocess.Popen[bytes] | None) -> None:
    if operator is not None:
        stop_process(operator, 20)


def cmd_rollback(args: argparse.Namespace) -> int:
    """Set a Project's revision back to one that succeeded before; the operator does the switch.

    Exit codes: 0 done, 1 the Project cannot be read or patched, 2 no such revision to go back to.
    """
    api = kubernetes.client.CustomObjectsApi(api_client_from_environment(pool_size=1))
    try:
        found = api.get_namespaced_custom_object(API_GROUP, API_VERSION, args.namespace, PLURAL, args.project)
    except kubernetes.client.ApiException as exc:
        print(f"codeb rollback: cannot read project {args.namespace}/{args.project}: {exc.reason}", file=sys.stderr)
        return 1
    body = cast(dict[str, Any], found)
    status = load_status(body.get("status") or {})
    current = (body.get("spec") or {}).get("project", {}).get("revision")
    try:
        target = rollout.rollback_target(status.deployments, current, args.to)
    except ValueError as exc:
        print(f"codeb rollback: {exc}", file=sys.stderr)
        return 2
    project: dict[str, Any] = {"revision": target.revision}
    if target.image:
        project["source"] = {"image": target.image}
    api.patch_namespaced_custom_object(API_GROUP, API_VERSION, args.namespace, PLURAL, args.project,
                                       {"spec": {"project": project}})  # fmt: skip
    warm = status.serving is not None and status.serving.warm_release == target.release
    result = {"project": f"{args.namespace}/{args.project}", "from": current, "to": target.revision,
              "image": target.image, "warm": warm}  # fmt: skip
    if args.output == "json":
        print(json.dumps(result))
    else:
        how = "its colour is still warm: traffic switches back at once" if result["warm"] else "a new rollout starts"
        print(f"{result['project']}: revision {current} -> {target.revision} ({how})")
    return 0


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
    back = sub.add_parser("rollback", help="set a Project back to a revision that succeeded before")
    back.add_argument("project")
    back.add_argument("-n", "--namespace", default="default")
    back.add_argument("--to", help="the revision (default: the newest success before the current one)")
    back.add_argument("-o", "--output", choices=("text", "json"), default="text")
    back.set_defaults(func=cmd_rollback)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
