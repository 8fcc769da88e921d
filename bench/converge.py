"""Time for N Projects to converge, against the floor of a bare status-patching kopf operator.

    python bench/converge.py [--sizes 100 1000]

Each run gets a fresh real control plane (etcd + kube-apiserver), applies N Projects
(spread over the three environments, half with database/Redis/bucket) and times
until every one reports phase Ready for its generation. Prints seconds for CodeB
and for the floor, their ratio (target <= 1.5x), and the operator's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.cli import CRD_PATH
from controller.localcluster import LocalCluster, find_binary
from tests.apiserver.test_operator import fleet

FLOOR = Path(__file__).with_name("floor_operator.py")


def ready_count(cluster: LocalCluster, namespace: str) -> int:
    items = json.loads(cluster.kubectl("get", "projects", "-n", namespace, "-o", "json").stdout)["items"]
    return sum(
        1
        for i in items
        if i.get("status", {}).get("phase") == "Ready"
        and i["status"].get("observedGeneration") == i["metadata"]["generation"]
    )


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(kind: str, size: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as root:
        cluster = LocalCluster(Path(root)).start()
        try:
            cluster.kubectl("apply", "--server-side", "-f", str(CRD_PATH.parent))
            cluster.kubectl("wait", "--for=condition=Established", "crd/projects.codeb.dev")
            cluster.kubectl("create", "namespace", "bench")
            env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "CODEB_LOG_FORMAT": "json"}
            if kind == "codeb":
                cmd = [find_binary("codeb"), "operator"]
            else:
                cmd = [find_binary("kopf"), "run", "--standalone", "--all-namespaces", "--quiet", str(FLOOR)]
            with open(Path(root) / "operator.log", "wb") as log:
                proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
                try:
                    time.sleep(2)  # operator start-up is not what we measure
                    started = time.monotonic()
                    cluster.kubectl("apply", "--server-side", "-f", "-", input_text=fleet("bench", size))
                    applied = time.monotonic() - started
                    while ready_count(cluster, "bench") < size:
                        if proc.poll() is not None:
                            raise RuntimeError(f"{kind} operator exited with {proc.returncode}")
                        time.sleep(0.5)
                    elapsed = time.monotonic() - started
                    print(f"  {kind:>5} N={size}: apply {applied:.1f}s, all Ready {elapsed:.1f}s", file=sys.stderr)
                    return elapsed, peak_rss_mb(proc.pid)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    print(f"{'N':>6} {'codeb s':>9} {'floor s':>9} {'ratio':>7} {'codeb peak RSS MB':>18}")
    for size in args.sizes:
        codeb, rss = run("codeb", size)
        floor, _ = run("floor", size)
        print(f"{size:>6} {codeb:>9.1f} {floor:>9.1f} {codeb / floor:>6.2f}x {rss:>18.0f}", flush=True)


if __name__ == "__main__":
    main()
