"""Shared bits for driver tests: contexts for fake Projects, hooks followed as the reconciler does."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from controller.claims.ledger import allocations_for
from controller.loop.interface import DriverContext, HookRunner
from controller.loop.naming import ProjectKey
from schemas.project import App, Hook, HookRun, ProjectSpec
from tests.factories import project_spec


def context(slug: str, port: int = 4600, **sections: object) -> tuple[DriverContext, ProjectSpec]:
    """A driver context as the reconciler builds it, without claiming anything."""
    spec = ProjectSpec.model_validate(project_spec(slug=slug, **sections))
    key = ProjectKey("team", slug, str(uuid.uuid4()))
    return DriverContext(key, allocations_for(spec, port)), spec


def recorded(name: str) -> HookRun:
    """A run as the reconciler records it in status before it is started."""
    return HookRun(name=name, result="Running", run_id=uuid.uuid4().hex[:12], started_at=datetime.now(UTC))


async def follow_to_end(driver: HookRunner, ctx: DriverContext, want: Any, endpoints: tuple[str, ...],
                        hook: Hook | App, run: HookRun | None = None, within: float = 60) -> HookRun:  # fmt: skip
    """Follow a run pass after pass until it has an outcome (as the reconciler does, every few seconds).

    ``within`` is generous: launching a hook in a test host that is busy (or still booting) can take
    seconds, and the outcome, not the speed, is what is asserted."""
    run = run or recorded(hook.name if isinstance(hook, Hook) else f"app-{hook.name}")
    deadline = time.monotonic() + within
    while run.result == "Running":
        assert time.monotonic() < deadline, f"{run.name} still running after {within} s"
        run = await driver.follow_hook(ctx, want, endpoints, hook, run)
        await asyncio.sleep(0.1)
    return run
