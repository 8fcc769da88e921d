"""The workload's desired state, one shape per runtime (pure; part of `controller.loop.planner`).

Each is everything an instance runs with, so that any change to it (a revision, a variable, a
rotated credential's digest, a restart) is a new release that the rollout carries out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from controller.loop import naming
from schemas.project import Allocations, ProjectSpec, Runtime

State = Mapping[str, Any]


def workload_state(spec: ProjectSpec, allocations: Allocations, infrastructure: State) -> State:
    """What the workload runs, by runtime; the hosts from what the infrastructure was seen to have."""
    if spec.servers.runtime is Runtime.local:
        return _local_workload(spec, allocations)
    if spec.servers.runtime is Runtime.kubernetes:
        return _kubernetes_workload(spec, allocations)
    return _quadlet_workload(spec, allocations, infrastructure)


def _container_workload(spec: ProjectSpec, allocations: Allocations) -> State:
    source = spec.project.source
    return {
        "instance": naming.instance_name(spec),
        "runtime": spec.servers.runtime.value,
        "image": source.image,
        "git": source.git.model_dump(mode="json") if source.git else None,
        "revision": spec.project.revision,
        "port": allocations.port,
        "containerPort": spec.container_port,
        "replicas": spec.resources.replicas,
        "cpu": spec.resources.cpu,
        "memory": spec.resources.memory,
        "variables": dict(sorted(spec.environment.variables.items())),
        "secretRefs": sorted(ref.name for ref in spec.environment.secret_refs),
        "connectionSecret": allocations.connection_secret,
        "healthPath": spec.health_path,
        **_restart(spec),
    }


def _restart(spec: ProjectSpec) -> State:
    """`codeb restart`'s token, part of the release so that a new one deploys again; absent when never set,
    so the release of every Project never restarted stays what it was."""
    return {"restartedAt": spec.restarted_at} if spec.restarted_at else {}


def _quadlet_workload(spec: ProjectSpec, allocations: Allocations, infrastructure: State) -> State:
    """One Quadlet unit per host (`controller.drivers.quadlet`), on the hosts the infrastructure was seen to have.

    The units themselves depend on what each host's podman and kernel support, so
    whether they match is the driver's to judge (``unitsMatch``).
    """
    state = {k: v for k, v in _container_workload(spec, allocations).items() if k != "replicas"}
    return {
        **state,
        "hosts": sorted(host["address"] for host in infrastructure.get("hosts", [])),
        "optionalSecretRefs": sorted(ref.name for ref in spec.environment.secret_refs if ref.optional),
        "probeIntervalSeconds": spec.monitoring.probe_interval_seconds,
        "environmentCurrent": True,
        "unitsMatch": True,
    }


def _kubernetes_workload(spec: ProjectSpec, allocations: Allocations) -> State:
    """A Deployment, Service, PodDisruptionBudget and (with servers.min/max) an autoscaler.

    With an autoscaler the replica count is its business, so the state does not fix one.
    """
    servers, features = spec.servers, spec.features
    autoscaling = {"min": servers.min, "max": servers.max} if servers.min is not None else None
    uses_services = any(f is not None and f.enabled for f in (features.database, features.redis, features.storage))
    return {
        **_container_workload(spec, allocations),
        "replicas": None if autoscaling else spec.resources.replicas,
        "autoscaling": autoscaling,
        "optionalSecretRefs": sorted(ref.name for ref in spec.environment.secret_refs if ref.optional),
        # No data service, no connection Secret: Pods must not wait for one that never comes.
        "connectionSecret": allocations.connection_secret if uses_services else None,
        # A VKE cluster is the Project's own, outside the Platform's Caddy: its Service is the cloud's load
        # balancer, open only to servers.firewall.allowedCidrs. Elsewhere the Service is the cluster's.
        "balancer": sorted(servers.firewall.allowed_cidrs) if servers.vke is not None else None,
        "probeIntervalSeconds": spec.monitoring.probe_interval_seconds,
        **_kubernetes_gate(spec),
        # The release a failed rollout was rolled back from: none while the spec's own runs.
        "heldBack": None,
        "environmentCurrent": True,
        "objectsMatch": True,
    }


def _kubernetes_gate(spec: ProjectSpec) -> State:
    """The rollout's health gate as the Deployment's rolling update enforces it: a new Pod takes traffic
    (is ready) after healthyThreshold passing checks, and a rollout that is not done within
    startTimeoutSeconds is reported failed. Kubernetes counts whole seconds, at least one."""
    rollout = spec.project.rollout
    gate = rollout.health_check
    return {
        "readinessGate": {
            "periodSeconds": max(1, math.ceil(gate.interval_seconds)),
            "timeoutSeconds": max(1, math.ceil(gate.timeout_seconds)),
            "successThreshold": gate.healthy_threshold,
            "failureThreshold": gate.unhealthy_threshold,
        },
        "progressDeadlineSeconds": max(1, math.ceil(rollout.start_timeout_seconds)),
    }


def _local_workload(spec: ProjectSpec, allocations: Allocations) -> State:
    """One supervised process on the operator's machine (`controller.drivers.processes`).

    cpu, memory and replicas are not here: a local process is neither limited nor
    replicated, and a state that listed them would claim what nobody enforces.
    """
    source = spec.project.source
    return {
        "instance": naming.instance_name(spec),
        "runtime": Runtime.local.value,
        "command": list(source.command or []),
        "workingDir": source.working_dir,
        "revision": spec.project.revision,
        "port": allocations.port,
        "variables": dict(sorted(spec.environment.variables.items())),
        "secretRefs": sorted(ref.name for ref in spec.environment.secret_refs),
        "optionalSecretRefs": sorted(ref.name for ref in spec.environment.secret_refs if ref.optional),
        "connectionSecret": allocations.connection_secret,
        "healthPath": spec.health_path,
        # The process runs with the credentials the Secrets hold now: a rotation is drift.
        "environmentCurrent": True,
        **_restart(spec),
    }
