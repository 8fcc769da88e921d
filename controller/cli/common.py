"""What every `codeb` command shares: exit codes, errors, the cluster it talks to, tables."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import kubernetes.client
import urllib3

from controller.clients.kube import api_client_from_environment
from controller.local.cluster import REPO_ROOT, cache_dir
from schemas.project import API_GROUP, API_VERSION, PLURAL

if TYPE_CHECKING:
    from controller.clients.kube import KubeClient
    from controller.operator.config import OperatorConfig

# The Project CRD as generated (`codeb generate`), and as `codeb up` installs it.
CRD_PATH = REPO_ROOT / "manifests" / "crd" / "projects.codeb.dev.yaml"

EXIT_OK = 0


EXIT_DIFFERS = 1  # the answer is no: diff found changes, validate problems, generate --check drift


EXIT_USAGE = 2  # the command cannot do what it was asked: a bad flag, an invalid manifest, no such revision


EXIT_NOT_FOUND = 3  # no such Project


EXIT_UNREACHABLE = 4  # no cluster to talk to, or it refused


EXIT_CODES = {
    EXIT_OK: "done (diff: nothing would change)",
    EXIT_DIFFERS: "the answer is no: diff found changes, validate problems, generate --check drift;"
    " up: the example did not serve (its log says why); down: `up` did not stop within a minute",
    EXIT_USAGE: "the command cannot do what it was asked (a flag, a manifest, a revision): the message says which",
    EXIT_NOT_FOUND: "no such Project",
    EXIT_UNREACHABLE: "no cluster to talk to, or the API server refused: the message says which",
}


class CommandError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def local_home() -> Path:
    """Where `codeb up` keeps its state (read when called: tests point CODEB_CACHE elsewhere)."""
    return cache_dir() / "local"


def local_operator_env(home: Path) -> dict[str, str]:
    """How `codeb up` configures its operator; the other commands look at its Projects the same way."""
    return {
        "KUBECONFIG": str(home / "kubeconfig"),
        "CODEB_LOCAL_RUNTIME": "1",
        # Everything of the embedded default (hosts, clusters) is on this machine's loopback.
        "CODEB_ALLOW_INTERNAL_TARGETS": "1",
        "CODEB_LOCAL_ROOT": str(REPO_ROOT),
        "CODEB_STATE_DIR": str(home / "state"),
        "CODEB_DRIFT_INTERVAL": "30",
        "CODEB_LOG_FORMAT": "console",
        **_local_prometheus(home),
    }


def _local_prometheus(home: Path) -> dict[str, str]:
    """The operator's metrics port `codeb up`'s Prometheus scrapes, and that Prometheus for `codeb status`."""
    saved = home / "platform" / "platform.json"
    try:
        chosen = json.loads(saved.read_text())["prometheus"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    found = {"CODEB_METRICS_PORT": str(chosen["operatorMetricsPort"])}
    if shutil.which("prometheus"):
        found["CODEB_PROMETHEUS_URL"] = f"http://127.0.0.1:{chosen['port']}"
    return found


def target_environment() -> None:
    """Point this process at a cluster: the environment's, else ~/.kube/config, else `codeb up`'s.

    On `codeb up`'s cluster (found, or named by KUBECONFIG) the operator's settings come with it:
    runtime local on, its state directory, so `diff` and `logs` see what its operator sees.
    """
    home = local_home()
    named = os.environ.get("KUBECONFIG")
    if named and Path(named).resolve() != (home / "kubeconfig").resolve():
        return
    if not named and (Path.home() / ".kube" / "config").exists():
        return
    if not (home / "kubeconfig").exists():
        raise CommandError("no cluster to talk to: set KUBECONFIG, or start the local one with `codeb up`",
                           EXIT_UNREACHABLE)  # fmt: skip
    for name, value in local_operator_env(home).items():
        os.environ.setdefault(name, value)


def projects_api() -> kubernetes.client.CustomObjectsApi:
    target_environment()
    client = api_client_from_environment(pool_size=2)
    client.configuration.retries = 0  # an unreachable API server is reported at once, not after retries
    return kubernetes.client.CustomObjectsApi(client)


@contextmanager
def api_errors(what: str) -> Iterator[None]:
    """The API server's answers as CommandErrors that say what to do."""
    try:
        yield
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            raise CommandError(f"{what}: not found (`codeb status -A` lists the Projects)", EXIT_NOT_FOUND) from None
        raise CommandError(f"{what}: the API server answered {exc.status} {exc.reason}", EXIT_UNREACHABLE) from None
    except (urllib3.exceptions.HTTPError, OSError):
        kubeconfig = os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise CommandError(f"{what}: cannot reach the API server that {kubeconfig} names: is it running? "
                           "(`codeb up` starts the local one)", EXIT_UNREACHABLE) from None  # fmt: skip


def read_project(api: kubernetes.client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    with api_errors(f"project {namespace}/{name}"):
        found = api.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
    return cast(dict[str, Any], found)


def list_projects(api: kubernetes.client.CustomObjectsApi, namespace: str | None) -> list[dict[str, Any]]:
    with api_errors("listing projects"):
        if namespace is None:
            found = api.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL)
        else:
            found = api.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL)
    items = cast(dict[str, Any], found)["items"]
    return sorted(items, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))


def run(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command, printing a CommandError as `codeb <command>: <message>` with its exit code."""
    try:
        return command(args)
    except CommandError as exc:
        if getattr(args, "output", "text") == "json":
            print(json.dumps({"error": exc.message, "exitCode": exc.code}))
        print(f"codeb {args.subcommand}: {exc.message}", file=sys.stderr)
        return exc.code


def operator_config() -> OperatorConfig:
    """The operator's configuration from the environment, as the operator reads it."""
    from controller.operator.config import ConfigError, load_config

    try:
        return load_config()
    except ConfigError as exc:
        raise CommandError(f"invalid configuration: {exc}", EXIT_USAGE) from None


def operator_kube(config: OperatorConfig) -> KubeClient:
    """A client such as the operator's drivers take, small: one command, a few requests."""
    from concurrent.futures import ThreadPoolExecutor

    from controller.clients.kube import KubeClient

    return KubeClient(api_client_from_environment(4), ThreadPoolExecutor(4), config.api_timeout_seconds)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[["-" if c is None or c == "" else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
