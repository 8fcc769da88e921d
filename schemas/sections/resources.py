"""Section ``resources``: what one instance of the application may use."""

from __future__ import annotations

from pydantic import Field

from schemas.base import (
    CPU_QUANTITY,
    MEMORY_QUANTITY,
    CodebModel,
)
from schemas.common import PortNumber


class Resources(CodebModel):
    port: int | None = Field(
        None,
        description=(
            "Host port of the application. Omit it to have one allocated from the environment's range "
            "(production 4000-4499, staging 4500-4999, preview 5000-5999); a pinned port must lie in that range."
        ),
        ge=1024,
        le=65535,
    )
    container_port: PortNumber | None = Field(
        None,
        description=(
            "Port the application listens on inside its container (and PORT it is given). Unset: its template's "
            "(project.template: nextjs, nodejs, node and container 3000; python 8000; static 8080)."
        ),
    )
    cpu: str = Field("500m", description="CPU limit per replica, e.g. 500m or 2.", pattern=CPU_QUANTITY, max_length=16)
    memory: str = Field(
        "512Mi", description="Memory limit per replica, e.g. 512Mi or 2Gi.", pattern=MEMORY_QUANTITY, max_length=16
    )
    replicas: int = Field(
        1,
        description="Application instances in total (Kubernetes); quadlet and local run one per host.",
        ge=1,
        le=50,
    )
