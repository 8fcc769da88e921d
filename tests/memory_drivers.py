"""In-memory stand-ins for drivers: every component "converges" in this process's memory.

For unit tests of the reconciler and for the control-loop benchmark only. They store
the desired state and report it back as observed, so they prove nothing about the
world; the running operator never uses them (`controller.drivers.registry`).
"""

from __future__ import annotations

import copy

from controller.loop.interface import DriverContext
from controller.loop.planner import ORDER, Component, Observation, State


class MemoryDriver:
    def __init__(self, component: Component) -> None:
        self.component = component
        self.world: dict[str, State] = {}
        self.calls: list[tuple[str, str]] = []

    async def observe(self, ctx: DriverContext) -> Observation:
        state = copy.deepcopy(self.world.get(ctx.key.uid))
        if self.component is Component.workload and state is not None and "colours" in state:
            # Blue-green runtimes: each colour runs on its own port and is healthy at once.
            colours = {name: {"healthy": True, "endpoints": [f"127.0.0.1:{colour['port']}"]}
                       for name, colour in state["colours"].items()}  # fmt: skip
            return Observation(state=state, outputs={"colours": colours})
        if self.component is Component.workload and state is not None:
            return Observation(state=state, outputs={"endpoints": [f"127.0.0.1:{state['port']}"]})
        return Observation(state=state)

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        self.calls.append(("apply", ctx.key.uid))
        self.world[ctx.key.uid] = copy.deepcopy(dict(desired))

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        self.calls.append(("release" if retain else "delete", ctx.key.uid))
        self.world.pop(ctx.key.uid, None)


def memory_drivers() -> dict[Component, MemoryDriver]:
    return {component: MemoryDriver(component) for component in ORDER}
