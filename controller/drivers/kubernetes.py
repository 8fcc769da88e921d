"""Runtime ``kubernetes``: a Deployment, Service, PodDisruptionBudget and autoscaler per Project.

The objects live in the Project's namespace of the operator's own cluster, or of the
cluster ``servers.cluster`` names (`controller.drivers.clusters`); there the namespace is
made if missing and the Secrets the Pods read are copied in (the operator's are the
truth: a copy that differs is drift, and is copied again). They are rendered
by pure functions (`render_objects`) and written with server-side apply (field manager
``codeb``), so fields others own (an HPA's replica count, kubectl annotations) are left
alone. Observation reads them back: the workload state is rebuilt from the live
Deployment and Service, so ``kubectl edit`` of an image or a limit is drift and is put
back. Each object carries the digest of its rendering; an object deleted or edited by
hand no longer matches it (``objectsMatch``).

Health is the Deployment's own: every desired replica updated and available. Without
that, the detail names what the Pods are waiting on (ErrImagePull, CrashLoopBackOff…)
as their kubelet reported it. Credentials reach Pods through ``envFrom`` the
connection Secret; the digest of the Secrets' contents is a Pod-template annotation,
so a rotated password rolls the Pods.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from controller.clients.kube import KubeClient
from controller.clients.ssh import SshPool
from controller.drivers.clusters import Target, TargetClusters
from controller.drivers.platform_builds import PlatformBuilds, PlatformReader
from controller.drivers.registry_pulls import RegistryPulls
from controller.drivers.workloads import SecretReader
from controller.errors import PermanentError
from controller.loop.interface import DriverContext
from controller.loop.planner import Component, Observation, State
from controller.loop.secrets import OWNER_LABEL
from controller.specs.kubernetes import (
    CREDENTIALS,
    DIGEST,
    GATE_FIELDS,
    HELD_BACK,
    MANAGER,
    OPERATOR_ENV,
    PULL_SECRET_TYPE,
    RESTARTED,
    REVISION,
    Object,
    balancer_sources,
    labels,
    pull_secret_name,
    pull_secret_object,
    render_objects,
)

KINDS = {  # kind: (API path prefix, plural), the workload's own objects
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
}
# and the Secrets copied into another cluster, and the ReplicaSets the Deployment makes
PATHS = {**KINDS, "Secret": ("/api/v1", "secrets"), "ReplicaSet": ("/apis/apps/v1", "replicasets")}
# Progressing reasons that mean the Deployment moved on its current template.
PROGRESS_REASONS = frozenset({"NewReplicaSetCreated", "FoundNewReplicaSet", "ReplicaSetUpdated"})
# What the Deployment controller numbers its ReplicaSets by.
RS_REVISION = "deployment.kubernetes.io/revision"


async def _no_secret(namespace: str, name: str, project: str | None = None) -> None:
    return None


def _path(kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = PATHS[kind]
    return f"{prefix}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


class KubernetesWorkload(PlatformBuilds):
    component = Component.workload

    def __init__(self, clusters: TargetClusters, pulls: RegistryPulls | None = None, ssh: SshPool | None = None,
                 platforms: PlatformReader | None = None, read_secret: SecretReader | None = None) -> None:  # fmt: skip
        self._clusters = clusters
        self._pulls = pulls  # the Project's credential for its image in its Platform's registry
        # Builds of source.git on the Platform's builder (none without ``platforms``: source.git is refused),
        # a private repository's credentials read with ``read_secret``.
        self._ssh, self._platforms = ssh or SshPool(), platforms
        self._read_login = read_secret or (platforms.read_secret if platforms is not None else _no_secret)

    # ------------------------------------------------------------ observe

    async def observe(self, ctx: DriverContext) -> Observation:
        target = await self._clusters.of(ctx)
        live = {kind: await _read(target, kind, ctx.key.namespace, _instance(ctx)) for kind in KINDS}
        deployment, service = live["Deployment"], live["Service"]
        if deployment is None or not _ours(ctx, deployment):
            return Observation()
        state = _state_of(deployment, service, live["HorizontalPodAutoscaler"])
        credentials = await _credentials_digest(self._clusters.own, ctx, state)
        if target.remote and await _credentials_digest(target.kube, ctx, state) != credentials:
            credentials = "copies-differ"  # what the Pods get is not what the Secrets say: copy again
        launched_with = deployment["spec"]["template"]["metadata"].get("annotations", {}).get(CREDENTIALS, "")
        launched_pull = _pull_secret_of(deployment)
        rendered = render_objects(ctx, state, launched_with, launched_pull)
        expected = {o["kind"]: o["metadata"]["annotations"][DIGEST] for o in rendered}
        matches = all(
            (live[kind] or {}).get("metadata", {}).get("annotations", {}).get(DIGEST) == expected.get(kind)
            for kind in KINDS
        ) and await self._pull_current(target, ctx, state, launched_pull)
        state |= {"environmentCurrent": launched_with == credentials, "objectsMatch": matches}
        healthy, detail = await _health(target, ctx, deployment)
        endpoints = _endpoints(ctx, state, service)
        if not endpoints:
            name = f"{ctx.key.namespace}/{state['instance']}"
            healthy, detail = False, f"the cluster's load balancer has no address yet (Service {name})"
        rolling = await _rollout_of(target, deployment, service, live["HorizontalPodAutoscaler"], credentials)
        return Observation(state=state, healthy=healthy, detail=detail,
                           outputs={"endpoints": endpoints, "rollout": rolling})  # fmt: skip

    async def logs(self, ctx: DriverContext, tail: int) -> dict[str, list[str]]:
        """Each of the Deployment's Pods' log, from the cluster the workload runs in."""
        target, namespace = await self._clusters.of(ctx), ctx.key.namespace
        pods = await target.kube.request("GET", f"/api/v1/namespaces/{namespace}/pods",
                                         labelSelector=f"app.kubernetes.io/name={_instance(ctx)}")  # fmt: skip
        found = {}
        for pod in (pods or {}).get("items", []):
            name = pod["metadata"]["name"]
            text = await target.kube.read_text(f"/api/v1/namespaces/{namespace}/pods/{name}/log", tailLines=str(tail))
            found[f"pod/{name}"] = (text or "").splitlines()
        return found

    # ------------------------------------------------------------ apply / delete

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        if not desired.get("image"):  # source.git, never built (`build_places` says why)
            platform = ctx.servers.platform if ctx.servers is not None else None
            raise PermanentError(await self._unbuildable(ctx, platform), reason="SourceNotBuildable")
        target = await self._clusters.of(ctx)
        pull = await self._pull_secret(ctx, desired)
        credentials = await _credentials_digest(self._clusters.own, ctx, desired)
        objects = render_objects(ctx, desired, credentials, pull["metadata"]["name"] if pull else None)
        # Every object checked before any is applied: one of another's name (a Service someone made, another
        # Project's autoscaler) is never overwritten, later deleted as ours, or left half-replaced.
        for obj in [*objects, *([pull] if pull else [])]:
            existing = await _read(target, obj["kind"], ctx.key.namespace, obj["metadata"]["name"])
            if existing is not None and not _ours(ctx, existing):
                raise PermanentError(
                    f"{obj['kind']} {ctx.key.namespace}/{obj['metadata']['name']} in {target.name} exists and is not "
                    f"this Project's (no {OWNER_LABEL}={ctx.key.name} label); rename it or change spec.project.slug",
                    reason="NotOwned",
                )
        if target.remote:
            await target.kube.ensure_namespace(ctx.key.namespace)
            await self._copy_secrets(target, ctx, desired)
        for obj in [*([pull] if pull else []), *objects]:  # the credential before the Pods that pull with it
            await _apply(target, obj)
        if pull is None:
            await _delete_pull_secret(target, ctx, desired)
        if not desired.get("autoscaling"):
            await _delete_if_ours(target, ctx, "HorizontalPodAutoscaler", desired["instance"])

    async def _pull_secret(self, ctx: DriverContext, desired: State) -> Object | None:
        """The pull Secret for the wanted image, when it is the Project's own in its Platform's registry."""
        found = await self._pulls.credential(ctx, str(desired["image"])) if self._pulls else None
        return pull_secret_object(ctx, desired, *found) if found else None

    async def _pull_current(self, target: Target, ctx: DriverContext, state: State, launched: str | None) -> bool:
        """Whether the Pods pull with the credential they should (none, or the current one, present)."""
        wanted = await self._pull_secret(ctx, state)
        if wanted is None:
            return launched is None
        live = await _read(target, "Secret", ctx.key.namespace, wanted["metadata"]["name"])
        return launched == wanted["metadata"]["name"] and bool((live or {}).get("data") == wanted["data"])

    async def _copy_secrets(self, target: Target, ctx: DriverContext, desired: State) -> None:
        """The Secrets the Pods read, copied into the other cluster (the source stays the truth)."""
        for name in _secret_names(desired):
            data = await self._clusters.own.read_secret(ctx.key.namespace, name, ctx.key.name)
            copied = await _read(target, "Secret", ctx.key.namespace, name)
            if copied is not None and not _ours(ctx, copied):
                raise PermanentError(
                    f"Secret {ctx.key.namespace}/{name} in {target.name} exists and is not this Project's copy "
                    f"(no {OWNER_LABEL}={ctx.key.name} label); remove it or rename the Secret",
                    reason="NotOwned",
                )
            if data is None:  # an optional Secret that is absent: so is its copy
                await _delete_if_ours(target, ctx, "Secret", name)
                continue
            encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
            metadata = {"name": name, "namespace": ctx.key.namespace, "labels": labels(ctx, desired)}
            await _apply(target, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata,
                                  "data": encoded})  # fmt: skip

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        target = await self._clusters.of(ctx)
        for kind in reversed(list(KINDS)):
            await _delete_if_ours(target, ctx, kind, _instance(ctx))
        await _delete_pull_secret(target, ctx, {"instance": _instance(ctx)})
        if target.remote:
            copies = await target.kube.request(
                "GET", f"/api/v1/namespaces/{ctx.key.namespace}/secrets", labelSelector=f"{OWNER_LABEL}={ctx.key.name}"
            )
            for secret in (copies or {}).get("items", []):
                await _delete_if_ours(target, ctx, "Secret", secret["metadata"]["name"])
        if not retain:  # deleted (not suspended): its builds go from the Platform's builder too
            await self.forget_platform_builds(ctx)


async def _read(target: Target, kind: str, namespace: str, name: str) -> Object | None:
    return await target.kube.request("GET", _path(kind, namespace, name))


async def _apply(target: Target, obj: Object) -> None:
    path = _path(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
    await target.kube.request("PATCH", path, obj, content_type="application/apply-patch+yaml", fieldManager=MANAGER,
                              force="true")  # fmt: skip


async def _delete_if_ours(target: Target, ctx: DriverContext, kind: str, name: str) -> None:
    live = await _read(target, kind, ctx.key.namespace, name)
    if live is not None and _ours(ctx, live):
        await target.kube.request("DELETE", _path(kind, ctx.key.namespace, name), propagationPolicy="Background")


def _pull_secret_of(deployment: Object) -> str | None:
    """The pull Secret the Deployment's Pods name, if any."""
    named: list[dict[str, str]] = deployment["spec"]["template"]["spec"].get("imagePullSecrets") or []
    return named[0].get("name") if named else None


async def _delete_pull_secret(target: Target, ctx: DriverContext, desired: State) -> None:
    """The pull Secret this driver made (never a Secret of that name a person made, or a copy of one)."""
    name = pull_secret_name(desired)
    live = await _read(target, "Secret", ctx.key.namespace, name)
    if live is not None and live.get("type") == PULL_SECRET_TYPE and _ours(ctx, live):
        await target.kube.request("DELETE", _path("Secret", ctx.key.namespace, name))


async def _health(target: Target, ctx: DriverContext, deployment: Object) -> tuple[bool, str | None]:
    spec, status = deployment["spec"], deployment.get("status", {})
    want = spec.get("replicas", 1)
    current = status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
    available, updated = status.get("availableReplicas", 0), status.get("updatedReplicas", 0)
    if current and available >= want and updated >= want and not status.get("unavailableReplicas"):
        return True, None
    name = deployment["metadata"]["name"]
    waiting = await _pod_problems(target, ctx.key.namespace, name)
    stalled = next((c["message"] for c in status.get("conditions", [])
                    if c.get("reason") == "ProgressDeadlineExceeded"), None)  # fmt: skip
    detail = f"Deployment {name}: {available} of {want} replicas available"
    return False, detail + "".join(f"; {p}" for p in [*waiting, *([stalled] if stalled else [])])


async def _rollout_of(
    target: Target, deployment: Object, service: Object | None, autoscaler: Object | None, credentials: str
) -> dict[str, Any]:
    """Where the Deployment's rolling update stands (`controller.loop.rollouts.rolling`): its progress, the
    ReplicaSet of its template, and the state of the one before it, which a rollback returns to."""
    progress = progress_of(deployment)
    spec, status = deployment["spec"], deployment.get("status", {})
    found = {"progress": progress, "replicaSet": None, "previous": None, "progressedAt": progressed_at(deployment),
             "serving": status.get("availableReplicas", 0) >= spec.get("replicas", 1)}  # fmt: skip
    if status.get("observedGeneration", 0) < deployment["metadata"].get("generation", 0):
        return found  # the controller has not matched ReplicaSets to this template yet
    owned = await _replica_sets(target, deployment)
    if owned:
        found["replicaSet"] = owned[0]["metadata"]["name"]
    if len(owned) > 1:
        # Its revision is its template's own; not the Deployment's, which names the current one.
        meta = {**deployment["metadata"], "annotations": {}}
        before = {**deployment, "metadata": meta, "spec": {**spec, "template": owned[1]["spec"]["template"]}}
        state = _state_of(before, service, autoscaler)
        launched_with = owned[1]["spec"]["template"]["metadata"].get("annotations", {}).get(CREDENTIALS, "")
        found["previous"] = state | {"environmentCurrent": launched_with == credentials, "objectsMatch": True}
    return found


def progress_of(deployment: Object) -> str:
    """Complete, Progressing or Stalled, as `kubectl rollout status` judges a Deployment (pure)."""
    spec, status = deployment["spec"], deployment.get("status", {})
    if status.get("observedGeneration", 0) < deployment["metadata"].get("generation", 0):
        return "Progressing"
    progressing: Object = next((c for c in status.get("conditions", []) if c.get("type") == "Progressing"), {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return "Stalled"
    want, updated = spec.get("replicas", 1), status.get("updatedReplicas", 0)
    if updated < want or status.get("replicas", 0) > updated or status.get("availableReplicas", 0) < updated:
        return "Progressing"
    return "Complete"


def progressed_at(deployment: Object) -> str | None:
    """When the Deployment last made progress on its template, by its Progressing condition.

    NOTE: the controller sets a fresh condition for a new ReplicaSet, but for a template set
    back to one an existing ReplicaSet runs it may keep the condition of the rollout before
    (``NewReplicaSetAvailable``), which it never times out; so the deadline is also counted
    by the operator, from the later of this time and the rollout's start
    (`controller.loop.rollouts.rolling`).
    """
    for condition in deployment.get("status", {}).get("conditions", []):
        if condition.get("type") == "Progressing" and condition.get("reason") in PROGRESS_REASONS:
            return str(condition.get("lastUpdateTime")) if condition.get("lastUpdateTime") else None
    return None


async def _replica_sets(target: Target, deployment: Object) -> list[Object]:
    """The Deployment's own ReplicaSets, newest revision first: the first runs its template."""
    meta = deployment["metadata"]
    found = await target.kube.request("GET", _path("ReplicaSet", meta["namespace"]),
                                      labelSelector=f"app.kubernetes.io/name={meta['name']}")  # fmt: skip
    owned = [rs for rs in (found or {}).get("items", [])
             if any(ref.get("uid") == meta["uid"] for ref in rs["metadata"].get("ownerReferences", []))]  # fmt: skip
    return sorted(owned, key=lambda rs: -int(rs["metadata"].get("annotations", {}).get(RS_REVISION, "0")))


async def _pod_problems(target: Target, namespace: str, instance: str) -> list[str]:
    pods = await target.kube.request(
        "GET", f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"app.kubernetes.io/name={instance}"
    )
    return sorted({problem for pod in (pods or {}).get("items", []) for problem in _problems_of(pod)})[:3]


def _problems_of(pod: Object) -> list[str]:
    """What keeps one Pod from serving, as its status says: no node for it, or a container waiting or unready."""
    name, status = pod["metadata"]["name"], pod.get("status", {})
    for condition in status.get("conditions", []):
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return [f"Pod {name} Unschedulable: {str(condition.get('message', ''))[:200]}"]
    problems = []
    for container in status.get("containerStatuses", []):
        state = container.get("state", {})
        waiting = state.get("waiting")
        if waiting and waiting.get("reason") not in (None, "ContainerCreating"):
            message = f": {waiting['message'][:200]}" if waiting.get("message") else ""
            problems.append(f"Pod {name} {waiting['reason']}{message}")
        elif "running" in state and not container.get("ready"):
            problems.append(f"Pod {name} running, not ready: its readiness probe has not passed")
    return problems


def _secret_names(state: State) -> list[str]:
    return [n for n in [state["connectionSecret"], *state["secretRefs"]] if n]


async def _credentials_digest(kube: KubeClient, ctx: DriverContext, state: State) -> str:
    """A digest of the Secrets' contents as ``kube``'s cluster has them."""
    contents = {n: await kube.read_secret(ctx.key.namespace, n, ctx.key.name) for n in _secret_names(state)}
    return hashlib.sha256(json.dumps(contents, sort_keys=True).encode()).hexdigest()[:16]


def _instance(ctx: DriverContext) -> str:
    # The connection Secret is "<instance>-connection": the one place the instance name reaches a context.
    return (ctx.allocations.connection_secret or "").removesuffix("-connection")


def _ours(ctx: DriverContext, obj: Object) -> bool:
    return bool(obj.get("metadata", {}).get("labels", {}).get(OWNER_LABEL) == ctx.key.name)


def _endpoints(ctx: DriverContext, state: Object, service: Object | None) -> list[str]:
    """Where the route reaches the workload: the Service's cluster address, or its balancer's.

    The cluster IP rather than the Service's DNS name: a Caddy inside the cluster reaches both, and one
    beside it with a route to the Service network (the local cluster's node) reaches only the address.
    """
    if state.get("balancer") is None:
        address = ((service or {}).get("spec") or {}).get("clusterIP")
        if not address or address == "None":
            address = f"{state['instance']}.{ctx.key.namespace}.svc.cluster.local"
    else:
        ingress = (((service or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress") or [{}]
        address = ingress[0].get("ip") or ingress[0].get("hostname")
        if not address:
            return []
    return [f"[{address}]:{state['port']}" if ":" in address else f"{address}:{state['port']}"]


def _state_of(deployment: Object, service: Object | None, autoscaler: Object | None) -> dict[str, Any]:
    """The workload state as the live objects say it is."""
    template = deployment["spec"]["template"]["metadata"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env_from = [e["secretRef"] for e in container.get("envFrom", []) if "secretRef" in e]
    # The connection Secret is rendered without "optional"; secretRefs always say it.
    connection = next((e["name"] for e in env_from if "optional" not in e), None)
    refs = [e for e in env_from if "optional" in e]
    probe = container.get("readinessProbe", {})
    liveness = container.get("livenessProbe", {})
    limits = container.get("resources", {}).get("limits", {})
    scaling = autoscaler["spec"] if autoscaler else None
    return {
        "instance": deployment["metadata"]["name"],
        "runtime": "kubernetes",
        "image": container.get("image"),
        "git": None,
        "revision": template.get("annotations", {}).get(
            REVISION, deployment["metadata"].get("annotations", {}).get(REVISION)
        )
        or None,
        "port": ((service or {}).get("spec", {}).get("ports") or [{}])[0].get("port"),
        "containerPort": (container.get("ports") or [{}])[0].get("containerPort"),
        "replicas": None if scaling else deployment["spec"].get("replicas"),
        "autoscaling": {"min": scaling.get("minReplicas"), "max": scaling["maxReplicas"]} if scaling else None,
        "cpu": limits.get("cpu"),
        "memory": limits.get("memory"),
        "variables": {e["name"]: e.get("value", "") for e in container.get("env", []) if e["name"] not in OPERATOR_ENV},
        "secretRefs": sorted(e["name"] for e in refs),
        "optionalSecretRefs": sorted(e["name"] for e in refs if e.get("optional")),
        "connectionSecret": connection,
        "balancer": balancer_sources(service) if service else None,
        "healthPath": probe.get("httpGet", {}).get("path"),
        "probeIntervalSeconds": liveness.get("periodSeconds"),
        "readinessGate": {k: probe.get(k) for k in GATE_FIELDS},
        "progressDeadlineSeconds": deployment["spec"].get("progressDeadlineSeconds"),
        "heldBack": deployment["metadata"].get("annotations", {}).get(HELD_BACK) or None,
        **({"restartedAt": restarted} if (restarted := template.get("annotations", {}).get(RESTARTED)) else {}),
    }
