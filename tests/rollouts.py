"""A world for blue-green rollouts on runtime local: control plane, Caddy, the operator, and load.

Shared by the rollout end-to-end tests and ``bench/rollouts.py``: the application is
`tests/apps/rollout_app.py`, behind the real Caddy, started and switched by the real
operator; `Load` sends requests through Caddy's TLS listener and counts every failure.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.drivers.processes import stop_everything_under
from controller.local.cluster import REPO_ROOT, LocalCluster
from tests.conftest import start_cluster
from tests.helpers import OperatorProcess, get_json, wait_for
from tests.servers import CaddyServer, https_get, start_caddy

NS = "rollouts"
APP_DIR = Path(__file__).resolve().parent / "apps"
# Quick enough for tests; the defaults (a check a second, 30 s drain, an hour warm) are documented.
FAST = {
    "healthCheck": {"intervalSeconds": 0.5, "timeoutSeconds": 0.5, "healthyThreshold": 2, "unhealthyThreshold": 3},
    "startTimeoutSeconds": 20,
    "drainSeconds": 1,
    "keepWarmSeconds": 600,
}


def rollout_project(
    name: str,
    revision: str,
    count_dir: Path,
    mode: str = "ok",
    hooks: list[dict[str, Any]] | None = None,
    **rollout: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "codeb.dev/v1alpha1",
        "kind": "Project",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "project": {
                "slug": name,
                "revision": revision,
                "source": {"command": ["python3", "rollout_app.py"], "workingDir": str(APP_DIR.relative_to(REPO_ROOT))},
                # A None drops the setting: the manifest's default applies (bench/rollouts.py measures them).
                "rollout": {k: v for k, v in {**FAST, **rollout}.items() if v is not None},
            },
            "environment": {
                "type": "staging",
                "domains": [f"{name}.localhost"],
                "variables": {"MODE": mode, "COUNT_DIR": str(count_dir)},
            },
            "servers": {"provider": "local", "runtime": "local", "platform": "edge"},
            "backup": {"enabled": False},
            **({"features": {"postDeployHooks": hooks}} if hooks else {}),
        },
    }


@dataclass
class RolloutWorld:
    cluster: LocalCluster
    caddy: CaddyServer
    operator: OperatorProcess
    root: Path

    @property
    def counts(self) -> Path:
        return self.root / "counts"

    def apply(self, name: str, revision: str, mode: str = "ok", hooks: list[dict[str, Any]] | None = None,
              **rollout: Any) -> None:  # fmt: skip
        doc = rollout_project(name, revision, self.counts, mode, hooks, **rollout)
        self.cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))

    def status(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = get_json(self.cluster, "project", name, "-n", NS).get("status", {})
        return found

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), {})

    def rollout(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.status(name).get("rollout") or {}
        return found

    def wait_rollout(self, name: str, revision: str, step: str = "Succeeded", timeout: float = 60) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            record = self.rollout(name)
            return record if record.get("revision") == revision and record.get("step") == step else None

        try:
            return wait_for(reached, timeout=timeout, what=f"{name} rollout of {revision} {step}")
        except AssertionError:
            raise AssertionError(
                json.dumps(self.status(name), indent=1)[-4000:] + self.operator.log()[-3000:]
            ) from None

    def served_by(self, revision: str) -> int:
        """Requests the application itself counted for ``revision``, over all its processes."""
        return sum(int(path.read_text() or 0) for path in self.counts.glob(f"{revision}.*"))


@contextmanager
def rollout_world(root: Path, drift_interval: float = 30, **settings: str) -> Iterator[RolloutWorld]:
    caddy = start_caddy()
    cluster = start_cluster(root / "cluster")
    state = root / "state"
    (root / "counts").mkdir(parents=True, exist_ok=True)
    env = {"CODEB_LOCAL_RUNTIME": "1", "CODEB_LOCAL_ROOT": str(REPO_ROOT), "CODEB_STATE_DIR": str(state),
           "CODEB_DRIFT_INTERVAL": str(drift_interval), **settings}  # fmt: skip
    operator = OperatorProcess(cluster, root / "operator.log", **env)
    try:
        cluster.kubectl("create", "namespace", NS)
        listen = [f"127.0.0.1:{caddy.https_port}"]
        edge = {"apiVersion": "codeb.dev/v1alpha1", "kind": "Platform", "metadata": {"name": "edge"},
                "spec": {"namespaces": {"names": [NS]}, "caddy": {"adminUrl": caddy.admin_url, "listen": listen,
                                   "upstreamDir": str(caddy.root / "upstreams")}}}  # fmt: skip
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(edge))
        operator.start()
        yield RolloutWorld(cluster, caddy, operator, root)
    finally:
        operator.stop()
        stop_everything_under(state)
        cluster.stop()
        caddy.stop()


@dataclass
class Load:
    """Requests to one domain through Caddy's TLS listener, in a few threads, until stopped.

    Each is a GET of ``path``; a transport error or any status but 200 is a failure.
    Every request opens its own connection, as independent clients do.
    """

    caddy: CaddyServer
    host: str
    threads: int = 4
    path: str = "/slow?ms=20"
    limit: int | None = None  # stop by itself after this many requests
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    failures: list[str] = field(default_factory=list)
    revisions: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _began: float = 0.0

    @property
    def running(self) -> bool:
        return any(worker.is_alive() for worker in self._workers)

    @property
    def sent(self) -> int:
        return len(self.latencies) + len(self.failures)

    def start(self) -> Load:
        # Caddy's internal CA issues a new domain's certificate moments after its route lands:
        # the load counts what deploys do to requests, not that first wait.
        wait_for(lambda: https_get(self.caddy, self.host, path="/api/health").returncode == 0, timeout=30,
                 what=f"{self.host} answering over TLS")  # fmt: skip
        self._began = time.monotonic()
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> Load:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)
        return self

    def wait_done(self, timeout: float) -> Load:
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.stop()

    def _run(self) -> None:
        url = f"https://127.0.0.1:{self.caddy.https_port}{self.path}"
        headers = {"Host": self.host, "Connection": "close"}
        with httpx.Client(verify=False, timeout=10) as client:
            while not self._stop.is_set():
                with self._lock:
                    if self.limit is not None and self.sent >= self.limit:
                        return
                started = time.monotonic()
                try:
                    response = client.get(url, headers=headers, extensions={"sni_hostname": self.host})
                    outcome = None if response.status_code == 200 else f"{response.status_code}: {response.text[:100]}"
                    revision = response.json().get("revision") if outcome is None else None
                except (httpx.HTTPError, ValueError) as exc:
                    outcome, revision = f"{type(exc).__name__}: {exc}", None
                with self._lock:
                    if outcome is None:
                        self.latencies.append((started, time.monotonic() - started))
                        self.revisions[str(revision)] = self.revisions.get(str(revision), 0) + 1
                    else:
                        self.failures.append(f"{outcome} (at {started - self._began:.1f} s)")

    def p99(self, windows: list[tuple[float, float]] | None = None) -> float:
        """The 99th percentile latency in seconds, of all requests or of those started in ``windows``."""
        chosen = [s for when, s in self.latencies if windows is None or any(a <= when <= b for a, b in windows)]
        if len(chosen) < 2:
            return max(chosen, default=0.0)
        return statistics.quantiles(chosen, n=100)[98]
