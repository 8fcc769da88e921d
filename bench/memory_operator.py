"""`codeb operator` with in-memory stand-ins for every driver: the control loop alone.

For bench/converge.py only. It measures what the reconciler, claims and kopf cost,
with no external system in the way; every component "converges" in memory, so its
Ready means nothing about the world. The real operator never runs this way.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.cli import run_operator
from tests.memory_drivers import memory_drivers

if __name__ == "__main__":
    print("control-loop benchmark operator: in-memory stand-in drivers, not a real deployment", file=sys.stderr)
    sys.exit(run_operator(lambda kube, config: memory_drivers()))
