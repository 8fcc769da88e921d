"""Helpers for tests against the real control plane."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from controller.local.cluster import LocalCluster, find_binary
from controller.loop.interface import Driver, DriverContext
from controller.loop.planner import Observation

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 60.0, interval: float = 0.25, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout}s: {what or predicate}")
        time.sleep(interval)


async def observe_until(
    driver: Driver, ctx: DriverContext, check: Callable[[Observation], object], timeout: float = 30.0
) -> Observation:
    """The driver's observation once ``check`` holds, or the last one at ``timeout`` (the test's asserts say why)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = await driver.observe(ctx)
        if check(seen) or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.2)


def get_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def projects(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    return list(get_json(cluster, "projects", "-n", namespace)["items"])


def ledger_entries(cluster: LocalCluster, namespace: str) -> dict[str, dict[str, str]]:
    """Every allocation ledger in ``namespace``, by pool (all its ledgers merged): pool -> {value: "<uid> <owner>"}.

    Ports are per machine, so a port value is ``<ledger>:<port>`` (``ledger-port-local:4500``).
    """
    pools: dict[str, dict[str, str]] = {}
    for item in get_json(cluster, "configmaps", "-n", namespace, "-l", "codeb.dev/ledger")["items"]:
        pool, name = item["metadata"]["labels"]["codeb.dev/ledger"], item["metadata"]["name"]
        entries = pools.setdefault(pool, {})
        for value, holder in (item.get("data") or {}).items():
            entries[f"{name}:{value}" if pool == "port" else value] = holder
    return pools


class OperatorProcess:
    """`codeb operator` as a real process: started, SIGKILLed and restarted by tests."""

    def __init__(self, cluster: LocalCluster, log_path: Path, **env: str) -> None:
        self.cluster = cluster
        self.log_path = log_path
        # The tests' hosts and clusters live on loopback; a test of the refusal sets it to "0".
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "CODEB_ALLOW_INTERNAL_TARGETS": "1", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([find_binary("codeb"), "operator"], env=self.env, stdout=log, stderr=log)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, namespace: str, name: str, timeout: float) -> None:
        wait_project_ready(self.cluster, namespace, name, timeout, self.log)


def wait_project_ready(cluster: LocalCluster, namespace: str, name: str, timeout: float,
                       log: Callable[[], str], generation: int = 1, settled: bool = False) -> None:  # fmt: skip
    """Until the Project is Ready at ``generation`` (or a later one), and with ``settled`` Synced too (Ready
    stays True while a new revision rolls out and the old one serves); otherwise fail with its conditions
    and the operator's last lines (``log``)."""

    def status() -> dict[str, Any]:
        return dict(get_json(cluster, "project", name, "-n", namespace).get("status", {}))

    def ready() -> bool:
        seen = status()
        true = {c["type"] for c in seen.get("conditions", []) if c["status"] == "True"}
        wanted = {"Ready", "Synced"} if settled else {"Ready"}
        return seen.get("observedGeneration", 0) >= generation and wanted <= true

    try:
        wait_for(ready, timeout=timeout, what=f"{name} Ready")
    except AssertionError:
        raise AssertionError(json.dumps(status().get("conditions", []), indent=1) + log()[-3000:]) from None


class Heard:
    """A receiver of notifications on loopback (this operator allows internal targets): what it was told."""

    def __init__(self) -> None:
        heard = self.bodies = list[dict[str, Any]]()

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                heard.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def texts(self, containing: str) -> list[str]:
        return [b["text"] for b in self.bodies if containing in b["text"]]
