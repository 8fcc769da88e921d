"""Requests dropped across blue-green deploys: the real operator, the real Caddy, a real local app.

Starts a control plane, Caddy and the operator (runtime local), deploys revision r1 of
`tests/apps/rollout_app.py`, then sends a bounded load through Caddy's TLS listener
(every request its own connection, each held 20 ms in the application) while deploying
one new revision after another, and prints how many requests failed, the p99 latency
overall and during switches (from a rollout's start to the end of its drain), and how
long each rollout took. The load stops by itself after ``--requests``; deploys go on
until it has and at least ``--deploys`` are done.

  .venv/bin/python bench/rollouts.py [--requests 5000] [--deploys 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.rollouts import Load, RolloutWorld, rollout_world


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--deploys", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="codeb-rollouts-") as tmp, rollout_world(Path(tmp)) as world:
        world.apply("shop", "r1")
        world.wait_rollout("shop", "r1", timeout=120)
        load = Load(world.caddy, "shop.localhost", limit=args.requests).start()
        windows, durations = [], []
        deploys = 0
        while deploys < args.deploys or load.running:
            revision = f"r{deploys + 2}"
            started = time.monotonic()
            world.apply("shop", revision)
            world.wait_rollout("shop", revision, timeout=120)
            windows.append((started, time.monotonic()))
            durations.append(time.monotonic() - started)
            deploys += 1
        load.wait_done(timeout=60)
        to_switch = [switch_seconds(world, f"d{n}") for n in range(3)]
        print(
            f"deploys:                 {deploys} (r2..r{deploys + 1}), each {min(durations):.1f}-{max(durations):.1f} s"
        )
        print(f"requests:                {load.sent}, of which failed: {len(load.failures)}")
        print(f"served by revision:      {dict(sorted(load.revisions.items(), key=lambda i: int(i[0][1:])))}")
        print(f"p99 latency, all:        {load.p99() * 1000:.0f} ms")
        print(f"p99 latency in switches: {load.p99(windows) * 1000:.0f} ms")
        print(
            f"rollout start to switch, default gate: {', '.join(f'{s:.1f}' for s in to_switch)} s "
            "(the new colour's start, its checks, then the switch)"
        )
        for failure in load.failures[:5]:
            print(f"  failed: {failure}")
        return 1 if load.failures else 0


def switch_seconds(world: RolloutWorld, revision: str) -> float:
    """Seconds from the rollout of ``revision`` starting to the route switching to it, with the manifest's
    default health gate (the rollout's own record: started and switched times, from the operator's clock)."""
    world.apply("shop", revision, healthCheck=None)
    record = world.wait_rollout("shop", revision, timeout=120)
    started, switched = (datetime.fromisoformat(record[k]) for k in ("startedAt", "switchedAt"))
    return (switched - started).total_seconds()


if __name__ == "__main__":
    raise SystemExit(main())
