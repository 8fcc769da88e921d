"""Factories for test objects: valid by default, overridden per test."""

from __future__ import annotations

import copy
from typing import Any

from schemas.project import API_GROUP, API_VERSION, KIND


def project_spec(slug: str = "shop", env: str = "staging", **sections: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "project": {"slug": slug, "source": {"command": ["python3", "app.py"]}},
        "environment": {"type": env, "domains": [f"{slug}.example.com"]},
        "servers": {"provider": "local", "runtime": "local"},
    }
    if env == "preview":
        spec["environment"]["pullRequest"] = 7
    spec.update(copy.deepcopy(sections))
    servers = spec["servers"]
    if servers.get("provider") in ("vultr", "lightsail"):
        # What every cloud Project needs (tests that leave them out delete them).
        servers.setdefault("credentialsSecretRef", "cloud-credentials")
        if servers.get("runtime") == "quadlet":
            servers.setdefault("ssh", {"secretRef": "deploy-key"})
    if "project" not in sections and spec["servers"].get("runtime") != "local":
        # Containers run images; only runtime local runs a command.
        spec["project"]["source"] = {"image": "ghcr.io/acme/shop:1.0.0"}
    return spec


def project(name: str = "shop", namespace: str | None = None, **spec_args: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": metadata,
        "spec": project_spec(**({"slug": name} | spec_args)),
    }
