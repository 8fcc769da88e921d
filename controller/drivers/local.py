"""Local drivers: every component converges in this process's memory.

They let the whole loop run end to end with no external system (the embedded
local default, and the reconciler's own tests). State lives only as long as the
process: after a restart the world looks empty and is re-created, which is what a
crash-safe reconciler must cope with anyway. Real drivers replace them one
component at a time behind the same interface.
"""

from __future__ import annotations

import copy

from controller.drivers import DriverContext, Drivers
from controller.planner import ORDER, Component, Observation, State


class LocalDriver:
    def __init__(self, component: Component) -> None:
        self.component = component
        self.world: dict[str, State] = {}
        self.calls: list[tuple[str, str]] = []

    async def observe(self, ctx: DriverContext) -> Observation:
        return Observation(state=copy.deepcopy(self.world.get(ctx.key.uid)))

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        self.calls.append(("apply", ctx.key.uid))
        self.world[ctx.key.uid] = copy.deepcopy(dict(desired))

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        self.calls.append(("release" if retain else "delete", ctx.key.uid))
        self.world.pop(ctx.key.uid, None)


def local_drivers() -> dict[Component, LocalDriver]:
    return {component: LocalDriver(component) for component in ORDER}


__all__ = ["Drivers", "LocalDriver", "local_drivers"]
