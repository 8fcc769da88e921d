"""Start-up time of the local control plane (etcd + kube-apiserver) until /readyz.

    python bench/controlplane.py            # warm: binary cached
    python bench/controlplane.py --cold     # cold: rebuild kube-apiserver into an empty cache first

Prints seconds; --cold also prints the build time. Each start uses a fresh data dir.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.local.cluster import LocalCluster, ensure_kube_binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="build kube-apiserver into an empty cache first")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.cold:
        os.environ["CODEB_CACHE"] = tempfile.mkdtemp(prefix="codeb-cold-cache-")
        started = time.monotonic()
        ensure_kube_binary()
        print(f"cold build of kube-apiserver: {time.monotonic() - started:.1f}s")
    times = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as root:
            started = time.monotonic()
            cluster = LocalCluster(Path(root)).start()
            times.append(time.monotonic() - started)
            cluster.stop()
    print(f"start to /readyz over {args.runs} runs: median {statistics.median(times):.2f}s, "
          f"min {min(times):.2f}s, max {max(times):.2f}s")  # fmt: skip


if __name__ == "__main__":
    main()
