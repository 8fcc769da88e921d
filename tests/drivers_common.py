"""Shared bits for driver tests: contexts for fake Projects."""

from __future__ import annotations

import uuid

from controller.claims import allocations_for
from controller.drivers import DriverContext
from controller.naming import ProjectKey
from schemas.project import ProjectSpec
from tests.factories import project_spec


def context(slug: str, port: int = 4600, **sections: object) -> tuple[DriverContext, ProjectSpec]:
    """A driver context as the reconciler builds it, without claiming anything."""
    spec = ProjectSpec.model_validate(project_spec(slug=slug, **sections))
    key = ProjectKey("team", slug, str(uuid.uuid4()))
    return DriverContext(key, allocations_for(spec, port)), spec
