"""Requests lost to Caddy config reloads, against the same changes made as upstream-file renames.

Starts the real Caddy, a local backend and a route through the Caddy driver, sends load through
Caddy's TLS listener (every request its own connection, as independent clients), and changes the
route's number of upstreams ``--changes`` times, one change every ``--every`` seconds: first as a
plain route (each change a config reload), then as an autoscaled Project's route over upstream
files (each change a rename, `controller.loop.planner.upstream_slots`). Prints the failed requests
of each and their ratio; the second must be 0.

  .venv/bin/python bench/caddy_reloads.py [--changes 100] [--every 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.drivers.caddy import CaddyDriver
from controller.loop.planner import Component, desired_state
from tests.drivers.test_caddy import named_backend
from tests.drivers_common import context
from tests.rollouts import Load
from tests.servers import CaddyServer, start_caddy

AUTOSCALED = {"provider": "lightsail", "region": "ap-northeast-2", "runtime": "quadlet", "min": 1, "max": 2}


async def failed_requests(caddy: CaddyServer, driver: CaddyDriver, slug: str, servers: dict[str, Any] | None,
                          upstreams: list[str], changes: int, every: float) -> tuple[int, int]:  # fmt: skip
    """(failed, sent) while the route goes between one and two upstreams ``changes`` times."""
    ctx, spec = context(slug, servers=servers) if servers else context(slug)

    def route(count: int) -> Any:
        served = {Component.workload: {"endpoints": upstreams[:count]}}
        return desired_state(spec, ctx.allocations, served)[Component.route]

    await driver.apply(ctx, route(1))
    load = Load(caddy, f"{slug}.example.com", threads=2, path="/").start()
    try:
        for change in range(changes):
            await driver.apply(ctx, route(2 - change % 2))
            await asyncio.sleep(every)
    finally:
        load.stop()
    await driver.delete(ctx, retain=False)
    return len(load.failures), load.sent


async def measure(changes: int, every: float) -> int:
    backends = [named_backend("r1", as_json=True) for _ in range(2)]
    upstreams = [f"127.0.0.1:{b.server_address[1]}" for b in backends]
    caddy = start_caddy()
    try:
        listen = [f"127.0.0.1:{caddy.https_port}"]
        driver = CaddyDriver(caddy.admin_url, listen, upstream_dir=Path(tempfile.mkdtemp(prefix="codeb-upstreams-")))
        reloaded = await failed_requests(caddy, driver, "reloaded", None, upstreams, changes, every)
        renamed = await failed_requests(caddy, driver, "renamed", AUTOSCALED, upstreams, changes, every)
    finally:
        caddy.stop()
        for backend in backends:
            backend.shutdown()
    print(f"{changes} route changes under load, every {every} s:")
    print(f"  as config reloads:        {reloaded[0]} failed of {reloaded[1]} requests")
    print(f"  as upstream-file renames: {renamed[0]} failed of {renamed[1]} requests")
    print(f"  failed requests per change: {reloaded[0] / changes:.3f} vs {renamed[0] / changes:.3f}")
    return 0 if renamed[0] == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--every", type=float, default=0.3)
    args = parser.parse_args()
    return asyncio.run(measure(args.changes, args.every))


if __name__ == "__main__":
    sys.exit(main())
