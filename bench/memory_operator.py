"""`codeb operator` with in-memory stand-ins for every driver: the control loop alone.

For bench/converge.py only. It measures what the reconciler, claims and kopf cost,
with no external system in the way; every component "converges" in memory, so its
Ready means nothing about the world. The real operator never runs this way.

With ``CODEB_BENCH_WORLD`` naming a file, the stand-ins' world is saved there when the
operator exits and read back when it starts, so a restarted operator finds what the
last one made, as a real one finds its hosts, databases and routes still there.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.loop.planner import Component
from controller.operator.wiring import run_operator
from tests.memory_drivers import MemoryDriver, memory_drivers


def kept_world(drivers: dict[Component, MemoryDriver], path: Path) -> None:
    """Read the world a previous run left in ``path``; save this run's there at exit."""
    if path.exists():
        for component, world in json.loads(path.read_text()).items():
            drivers[Component(component)].world = world

    def save() -> None:
        path.write_text(json.dumps({c.value: d.world for c, d in drivers.items()}))

    atexit.register(save)


if __name__ == "__main__":
    print("control-loop benchmark operator: in-memory stand-in drivers, not a real deployment", file=sys.stderr)
    drivers = memory_drivers()
    if world := os.environ.get("CODEB_BENCH_WORLD"):
        kept_world(drivers, Path(world))
    sys.exit(run_operator(lambda kube, config: drivers))
