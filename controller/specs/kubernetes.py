"""The Kubernetes objects of a workload on runtime kubernetes, rendered from its desired state (pure).

A Deployment with a health-gated rolling update, its Service, a PodDisruptionBudget and, with
autoscaling, a HorizontalPodAutoscaler. Each carries the digest of its rendering (`DIGEST`),
so the driver (`controller.drivers.kubernetes`) can tell an object edited by hand from its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from controller.loop.interface import DriverContext
from controller.loop.planner import State
from controller.loop.secrets import OWNER_LABEL
from controller.specs.registry import auth_config

MANAGER = "codeb"


DIGEST = "codeb.dev/rendered-digest"


CREDENTIALS = "codeb.dev/credentials-digest"


REVISION = "codeb.dev/revision"
# `codeb restart`'s token on the Pod template (as `kubectl rollout restart` does): a new one rolls every Pod.
RESTARTED = "codeb.dev/restartedAt"


# The release a failed rollout was rolled back from (`controller.loop.rollouts.rolling`): on the
# Deployment itself, so an operator that crashed before recording the failure still knows it.
HELD_BACK = "codeb.dev/held-back"
# Vultr's cloud controller manager: "<cidr>,<port>;…", the sources its load balancer lets in.
BALANCER_FIREWALL = "service.beta.kubernetes.io/vultr-loadbalancer-firewall-rules"


# Pods restart when the credentials change; the autoscaler aims at this CPU use.
TARGET_CPU_PERCENT = 70


Object = dict[str, Any]


def labels(ctx: DriverContext, desired: State) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": str(desired["instance"]),
        "app.kubernetes.io/managed-by": MANAGER,
        OWNER_LABEL: ctx.key.name,
    }


GATE_FIELDS = ("periodSeconds", "timeoutSeconds", "successThreshold", "failureThreshold")


def render_objects(ctx: DriverContext, desired: State, credentials_digest: str,
                   pull_secret: str | None = None) -> list[Object]:  # fmt: skip
    """Every object of the workload, in apply order (pure); ``pull_secret`` names the Secret the kubelet pulls
    the image from the Platform's registry with (`pull_secret_object`)."""
    deployment = _deployment(ctx, desired, credentials_digest)
    if pull_secret is not None:
        deployment["spec"]["template"]["spec"]["imagePullSecrets"] = [{"name": pull_secret}]
    objects = [deployment, _service(ctx, desired), _disruption_budget(ctx, desired)]
    if desired.get("autoscaling"):
        objects.append(_autoscaler(ctx, desired))
    for obj in objects:
        obj["metadata"].setdefault("annotations", {})[DIGEST] = _digest(obj)
    return objects


def _metadata(ctx: DriverContext, desired: State, **extra: Any) -> dict[str, Any]:
    return {"name": desired["instance"], "namespace": ctx.key.namespace, "labels": labels(ctx, desired), **extra}


# Seconds a Pod being replaced keeps serving before its application is told to stop: the Service's
# endpoints drop it at once, but each node's kube-proxy (and any balancer) takes a moment to stop sending
# it requests; stopped sooner, those requests are refused (a rollout's 502s through Caddy on a real node).
DRAIN_SECONDS = 5

# Set by the operator after the Project's own variables: never read back as one of them.
OPERATOR_ENV = ("PORT", "HOST", "CODEB_REVISION")


def _operator_env(desired: State) -> list[dict[str, str]]:
    # Where to listen (every address of the Pod's own), and what it runs, as the other runtimes tell
    # their applications.
    values = (str(desired["containerPort"]), "0.0.0.0", desired["revision"] or "")
    return [{"name": name, "value": value} for name, value in zip(OPERATOR_ENV, values, strict=True)]


def _deployment(ctx: DriverContext, desired: State, credentials_digest: str) -> Object:
    selector = {"app.kubernetes.io/name": desired["instance"]}
    check = {"httpGet": {"path": desired["healthPath"], "port": desired["containerPort"]}}
    liveness = {**check, "periodSeconds": desired["probeIntervalSeconds"], "timeoutSeconds": 5}
    env_from = [{"secretRef": {"name": desired["connectionSecret"]}}] if desired["connectionSecret"] else []
    optional = set(desired["optionalSecretRefs"])
    env_from += [{"secretRef": {"name": name, "optional": name in optional}} for name in desired["secretRefs"]]
    limits = {"cpu": desired["cpu"], "memory": desired["memory"]}
    container = {
        "name": "app",
        "image": desired["image"],
        "ports": [{"name": "http", "containerPort": desired["containerPort"]}],
        "env": [{"name": k, "value": v} for k, v in desired["variables"].items()] + _operator_env(desired),
        "envFrom": env_from,
        "resources": {"limits": limits, "requests": limits},
        # Readiness is the rollout's health gate: no traffic to a Pod before it passes.
        "readinessProbe": {**check, **desired["readinessGate"]},
        "livenessProbe": {**liveness, "failureThreshold": 3, "initialDelaySeconds": 10},
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
    }
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        # Health-gated rolling update: a new Pod must be ready before an old one goes.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "progressDeadlineSeconds": desired["progressDeadlineSeconds"],
        "template": {
            # The revision is in the template too, so each ReplicaSet says what it runs (a rollback reads it).
            "metadata": {
                "labels": {**labels(ctx, desired)},
                "annotations": {
                    CREDENTIALS: credentials_digest,
                    REVISION: desired["revision"] or "",
                    **({RESTARTED: desired["restartedAt"]} if desired.get("restartedAt") else {}),
                },
            },
            "spec": {"containers": [container], "enableServiceLinks": False},
        },
    }
    if desired["replicas"] is not None:
        spec["replicas"] = desired["replicas"]
    annotations = {REVISION: desired["revision"] or ""}
    if desired.get("heldBack"):
        annotations[HELD_BACK] = desired["heldBack"]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(ctx, desired, annotations=annotations),
            "spec": spec}  # fmt: skip


def _service(ctx: DriverContext, desired: State) -> Object:
    port = {"name": "http", "port": desired["port"], "targetPort": "http"}
    spec: Object = {"selector": {"app.kubernetes.io/name": desired["instance"]}, "ports": [port]}
    extra: dict[str, Any] = {}
    if desired.get("balancer") is not None:
        # Vultr's cloud controller makes the balancer, with a firewall of exactly these sources.
        spec["type"] = "LoadBalancer"
        rules = ";".join(f"{cidr},{desired['port']}" for cidr in desired["balancer"])
        extra["annotations"] = {BALANCER_FIREWALL: rules}
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(ctx, desired, **extra), "spec": spec}


def balancer_sources(service: Object) -> list[str] | None:
    """The sources a Service's balancer lets in (`_service`), or None when it is no LoadBalancer."""
    if service.get("spec", {}).get("type") != "LoadBalancer":
        return None
    rules = (service["metadata"].get("annotations") or {}).get(BALANCER_FIREWALL, "")
    return sorted({rule.rsplit(",", 1)[0] for rule in rules.split(";") if rule})


def _disruption_budget(ctx: DriverContext, desired: State) -> Object:
    # At most one Pod away at a time for a drain; never blocks a drain of a single replica.
    selector = {"matchLabels": {"app.kubernetes.io/name": desired["instance"]}}
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _metadata(ctx, desired),
            "spec": {"maxUnavailable": 1, "selector": selector}}  # fmt: skip


def _autoscaler(ctx: DriverContext, desired: State) -> Object:
    scaling = desired["autoscaling"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": desired["instance"]}
    utilization = {"type": "Utilization", "averageUtilization": TARGET_CPU_PERCENT}
    cpu = {"type": "Resource", "resource": {"name": "cpu", "target": utilization}}
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _metadata(ctx, desired),
            "spec": {"scaleTargetRef": target, "minReplicas": scaling["min"], "maxReplicas": scaling["max"],
                     "metrics": [cpu]}}  # fmt: skip


def _digest(obj: Object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


PULL_SECRET_TYPE = "kubernetes.io/dockerconfigjson"


def pull_secret_name(desired: State) -> str:
    return f"{desired['instance']}-registry"


def pull_secret_object(ctx: DriverContext, desired: State, registry: str, user: str, password: str) -> Object:
    """The Project's registry credential as the kubelet reads it (a dockerconfigjson Secret)."""
    config = auth_config(registry, user, password)
    metadata = {"name": pull_secret_name(desired), "namespace": ctx.key.namespace, "labels": labels(ctx, desired)}
    return {"apiVersion": "v1", "kind": "Secret", "type": PULL_SECRET_TYPE, "metadata": metadata,
            "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()}}  # fmt: skip
