"""Outage of each shared service with N Projects: does the operator back off, and recover?

    python bench/outage.py [--projects 200] [--outage 60]

Starts real PostgreSQL, Redis, MinIO and Caddy on loopback, a control plane with an
audit log, a Platform naming them, and the real operator (`codeb operator`, drift check
every 30 s). Applies N Projects with a database, a Redis user and a bucket and waits
until every one reports those three Ready. Then, for each service in turn, stops it for
``--outage`` seconds and prints the operator's API writes per second during the outage
(from the audit log: first 15 s, when each Project reports the failure once, and the
rest, when only backed-off retries run), then starts it again and prints how long until
every Project reports Ready again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.local.cluster import LocalCluster
from tests.apiserver.test_operator import AUDIT_WRITES, operator_writes
from tests.apiserver.test_platform_e2e import NS, app, install_platform
from tests.conftest import start_cluster
from tests.helpers import OperatorProcess, projects, wait_for
from tests.servers import start_caddy, start_minio, start_postgres, start_redis

DATA = {"postgres": "DatabaseReady", "redis": "CacheReady", "minio": "StorageReady"}


def ready_count(cluster: LocalCluster) -> int:
    def ready(item: dict[str, Any]) -> bool:
        conditions = {c["type"]: c["status"] for c in item.get("status", {}).get("conditions", [])}
        return all(conditions.get(t) == "True" for t in DATA.values())

    return sum(ready(i) for i in projects(cluster, NS))


def writes_between(cluster: LocalCluster, start: int, end: int) -> int:
    return sum(operator_writes(cluster, start).values()) - sum(operator_writes(cluster, end).values())


def measure(cluster: LocalCluster, name: str, stop: Callable[[], None], start: Callable[[], None],
            count: int, outage: float) -> None:  # fmt: skip
    begin = cluster.audit_log.stat().st_size
    stop()
    time.sleep(15)
    settled = cluster.audit_log.stat().st_size
    time.sleep(max(0.0, outage - 15))
    time.sleep(1)
    end = cluster.audit_log.stat().st_size
    burst, steady = writes_between(cluster, begin, settled), writes_between(cluster, settled, end)
    start()
    back = time.monotonic()
    wait_for(lambda: ready_count(cluster) == count, timeout=600, interval=2, what=f"recovery from {name}")
    print(f"{name:>9}: {burst / 15:6.1f} writes/s in the first 15 s ({burst} in all), "
          f"{steady / (outage - 15):5.2f} writes/s after; all {count} Ready again {time.monotonic() - back:5.1f} s "
          "after restart", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=200)
    parser.add_argument("--outage", type=float, default=60.0)
    args = parser.parse_args()
    pg, rd, s3, caddy = start_postgres(), start_redis(), start_minio(), start_caddy()
    root = Path(tempfile.mkdtemp(prefix="codeb-outage-"))
    cluster = start_cluster(root, audit_policy=AUDIT_WRITES)
    operator = OperatorProcess(cluster, root / "operator.log", CODEB_DRIFT_INTERVAL="30", CODEB_LOG_FORMAT="json")
    try:
        install_platform(cluster, pg, rd, s3, caddy)
        operator.start()
        docs = "\n---\n".join(json.dumps(app(f"p{i:03d}")) for i in range(args.projects))
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input_text=docs)
        wait_for(lambda: ready_count(cluster) == args.projects, timeout=900, interval=2, what="all Ready")
        print(f"{args.projects} Projects with database, Redis user and bucket Ready in "
              f"{time.monotonic() - started:.1f} s", flush=True)  # fmt: skip
        time.sleep(5)
        measure(cluster, "postgres", pg.stop, pg.start, args.projects, args.outage)
        measure(cluster, "redis", rd.stop, rd.start, args.projects, args.outage)
        measure(cluster, "minio", s3.stop, s3.start, args.projects, args.outage)
    finally:
        operator.stop()
        cluster.stop()
        for server in (caddy, s3, rd, pg):
            server.stop()
        print(f"operator log: {operator.log_path}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("CODEB_LOG_FORMAT", "json")
    main()
