"""Time for N Projects to converge, against the floor of a bare status-patching kopf operator.

    python bench/converge.py [--sizes 100 1000] [--repeat 3]

Each run gets a fresh real control plane (etcd + kube-apiserver), applies N Projects
(spread over the three environments, half with database/Redis/bucket) and times
until every one has settled for its generation (Ready, or Failed with its reason, printed),
within --timeout. Runs alternate between the
operators and each figure is the median of ``--repeat`` runs, because a 2-core VM
shared with its neighbours varies by 20% from run to run.

The fleet runs quadlet on shared ``existing`` hosts, ``--per-host`` Projects on each
(ports are unique per host, so a fleet is bounded by its hosts, not one port range).
After CodeB has settled, the restart run stops it and starts it again: the time until
every Project has been reconciled again, and the writes that took (the goal is 0: nothing
changed).

Prints seconds for CodeB, for the floor (kopf keeping its bookkeeping in annotations,
as it does by default) and for the strict floor (kopf bookkeeping in status, as CodeB
keeps it), both ratios, CodeB's peak RSS, and every operator's API writes per Project,
counted from the API server's audit log. Every floor has CodeB's handlers (a delete
handler, so kopf adds the finalizer, and a timer) and its log level, so it is the least
any kopf operator with teardown writes.

CodeB runs here with in-memory stand-in drivers (bench/memory_operator.py): this
measures the control loop itself, not any real component.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import kubernetes.client
import kubernetes.watch

from controller.cli.common import CRD_PATH
from controller.clients.kube import api_client_from_environment
from controller.local.cluster import LocalCluster, find_binary, free_port
from schemas.project import API_GROUP, API_VERSION, PLURAL
from tests.apiserver.test_operator import AUDIT_WRITES, fleet, operator_writes

FLOOR = Path(__file__).with_name("floor_operator.py")
# The control loop alone: CodeB with in-memory stand-in drivers (see its docstring).
MEMORY_OPERATOR = Path(__file__).with_name("memory_operator.py")


class ReadyWatch:
    """Counts Projects settled for their generation (Ready, or Failed with a reason), from one watch.

    A watch, not a list every half second: listing 1000 Projects costs the API server
    ~0.7 CPU-seconds each time, which would slow down the very thing being timed. It
    starts at the resourceVersion of a list taken before the apply, so nothing is missed.
    """

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        api = api_client_from_environment(pool_size=1, config_file=str(cluster.kubeconfig))
        self._custom = kubernetes.client.CustomObjectsApi(api)
        self._namespace = namespace
        listed: dict[str, Any] = self._custom.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL)
        self._version = listed["metadata"]["resourceVersion"]

    def wait(self, size: int, operator: subprocess.Popen[bytes], timeout: float) -> dict[str, str]:
        """Until all ``size`` have settled, or ``timeout``: each failed one's reason (empty: all Ready)."""
        settled: dict[str, str] = {}  # name -> "" (Ready) or why it failed
        deadline = time.monotonic() + timeout
        while len(settled) < size:
            if operator.poll() is not None:
                raise RuntimeError(f"operator exited with {operator.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{size - len(settled)} of {size} Projects not settled within {timeout:.0f} s")
            try:
                self._follow(settled, size)
            except kubernetes.client.ApiException as exc:
                if exc.status != 410:
                    raise
                self._relist(settled)  # the version was compacted away (a long run): start again from a list
        return {name: why for name, why in settled.items() if why}

    def _follow(self, settled: dict[str, str], size: int) -> None:
        stream = kubernetes.watch.Watch().stream(
            self._custom.list_namespaced_custom_object, API_GROUP, API_VERSION, self._namespace, PLURAL,
            resource_version=self._version, timeout_seconds=2,
        )  # fmt: skip
        for event in stream:
            self._version = event["object"]["metadata"]["resourceVersion"]
            self._count(settled, event["object"])
            if len(settled) >= size:
                break

    def _relist(self, settled: dict[str, str]) -> None:
        listed = self._custom.list_namespaced_custom_object(API_GROUP, API_VERSION, self._namespace, PLURAL)
        settled.clear()
        for item in listed["items"]:
            self._count(settled, item)
        self._version = listed["metadata"]["resourceVersion"]

    @staticmethod
    def _count(settled: dict[str, str], item: dict[str, Any]) -> None:
        status, name = item.get("status") or {}, item["metadata"]["name"]
        current = status.get("observedGeneration") == item["metadata"]["generation"]
        if current and status.get("phase") in ("Ready", "Failed"):
            settled[name] = "" if status["phase"] == "Ready" else str(status.get("lastError") or "?")[:80]
        else:
            settled.pop(name, None)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reconciles(port: int) -> float:
    """Reconciles the operator has finished (all triggers), from its own metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("codeb_reconcile_duration_seconds_count"))  # fmt: skip


def restart_run(cmd: list[str], env: dict[str, str], root: Path, cluster: LocalCluster, size: int,
                timeout: float) -> tuple[float, float]:  # fmt: skip
    """A fresh operator over ``size`` settled Projects: seconds until each was reconciled again, writes per Project."""
    port = free_port()
    offset = cluster.audit_log.stat().st_size
    with open(root / "restart.log", "wb") as log:
        proc = subprocess.Popen(cmd, env={**env, "CODEB_METRICS_PORT": str(port)}, stdout=log, stderr=log)
        try:
            started, deadline = time.monotonic(), time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"operator exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not every Project reconciled again within {timeout:.0f} s")
                try:
                    if reconciles(port) >= size:
                        break
                except httpx.HTTPError:
                    pass  # not serving metrics yet
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            time.sleep(1)  # the audit log is written asynchronously
            writes = operator_writes(cluster, offset)
            print(f"  restart N={size}: all reconciled again {elapsed:.1f}s; writes {dict(writes)}", file=sys.stderr)
            return elapsed, sum(writes.values()) / size
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def run(kind: str, size: int, timeout: float, per_host: int) -> tuple[float, float, float, tuple[float, float] | None]:
    with tempfile.TemporaryDirectory() as root:
        cluster = LocalCluster(Path(root), audit_policy=AUDIT_WRITES).start()
        try:
            cluster.install_crds(CRD_PATH.parent)
            cluster.kubectl("create", "namespace", "bench")
            env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "CODEB_LOG_FORMAT": "json"}
            env["CODEB_FLOOR_STORAGE"] = "status" if kind == "strict" else "annotations"
            env["CODEB_BENCH_WORLD"] = str(Path(root) / "world.json")  # what the restarted operator finds
            if kind == "codeb":
                cmd = [sys.executable, str(MEMORY_OPERATOR)]
            else:
                cmd = [find_binary("kopf"), "run", "--standalone", "--all-namespaces", str(FLOOR)]
            with open(Path(root) / "operator.log", "wb") as log:
                proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
                try:
                    time.sleep(2)  # operator start-up is not what we measure
                    etcd, apiserver = cluster.processes
                    pids = {"operator": proc.pid, "etcd": etcd.pid, "apiserver": apiserver.pid}
                    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    watch = ReadyWatch(cluster, "bench")
                    offset = cluster.audit_log.stat().st_size
                    started = time.monotonic()
                    cluster.kubectl("apply", "--server-side", "-f", "-", input_text=fleet("bench", size, per_host))
                    applied = time.monotonic() - started
                    failed = watch.wait(size, proc, timeout)
                    elapsed = time.monotonic() - started
                    if failed:
                        reasons = Counter(failed.values()).most_common(3)
                        print(f"  {kind:>6} N={size}: {len(failed)} Failed: {reasons}", file=sys.stderr)
                    time.sleep(1)  # the audit log is written asynchronously
                    writes = operator_writes(cluster, offset)
                    cpu = ", ".join(f"{n} {cpu_seconds(pid) - cpu_before[n]:.1f}" for n, pid in pids.items())
                    print(
                        f"  {kind:>6} N={size}: apply {applied:.1f}s, all settled {elapsed:.1f}s; CPU s: {cpu}; "
                        f"writes {dict(writes)}",
                        file=sys.stderr,
                    )
                    peak = peak_rss_mb(proc.pid)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                restart = restart_run(cmd, env, Path(root), cluster, size, timeout) if kind == "codeb" else None
                return elapsed, peak, sum(writes.values()) / size, restart
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take to settle")
    parser.add_argument("--per-host", type=int, default=100, help="Projects on each shared host")
    args = parser.parse_args()
    kinds = ("codeb", "floor", "strict")
    print("CodeB runs with in-memory stand-in drivers: this measures the control loop, not real components.")
    header = (
        f"{'N':>6} {'codeb s':>8} {'floor s':>8} {'strict s':>9} {'ratio':>7} {'vs strict':>10} {'codeb RSS MB':>13}"
        f" {'writes/Project codeb':>21} {'floor':>6} {'strict':>7} {'restart s':>10} {'restart writes/P':>17}"
    )
    print(header)
    for size in args.sizes:
        seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
        writes: dict[str, list[float]] = {kind: [] for kind in kinds}
        rss: list[float] = []
        restarts: list[tuple[float, float]] = []
        for _ in range(args.repeat):
            for kind in kinds:
                elapsed, peak, per_project, restart = run(kind, size, args.timeout, args.per_host)
                seconds[kind].append(elapsed)
                writes[kind].append(per_project)
                if kind == "codeb":
                    rss.append(peak)
                if restart is not None:
                    restarts.append(restart)
        codeb, floor, strict = (statistics.median(seconds[kind]) for kind in kinds)
        w_codeb, w_floor, w_strict = (statistics.median(writes[kind]) for kind in kinds)
        print(
            f"{size:>6} {codeb:>8.2f} {floor:>8.2f} {strict:>9.2f} {codeb / floor:>6.2f}x {codeb / strict:>9.2f}x "
            f"{max(rss):>13.0f} {w_codeb:>21.2f} {w_floor:>6.2f} {w_strict:>7.2f}"
            f" {statistics.median(r[0] for r in restarts):>10.2f} {statistics.median(r[1] for r in restarts):>17.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
