"""Alerts: a Project's rule group (`controller.specs.alerts`) as a PrometheusRule beside it.

The Prometheus Operator loads every PrometheusRule it selects into its Prometheus, so the
rules live where the Project does and go with it. The object carries the state it was
rendered from (an annotation), so a look tells what it says and whether it is still exactly
that; one of the same name the operator did not make is never touched (``NotOwned``). The
driver is offered only where the cluster serves PrometheusRules (`available`), so a cluster
without the Prometheus Operator gets no ``AlertsReady`` condition rather than a false one.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from controller.clients.kube import KubeClient
from controller.errors import CodebError, PermanentError
from controller.loop.interface import DriverContext
from controller.loop.planner import Component, Observation, State
from controller.specs.alerts import render_group
from controller.specs.kubernetes import MANAGER

API = "/apis/monitoring.coreos.com/v1"
OWNER_UID = "codeb.dev/owner-uid"
RENDERED_FROM = "codeb.dev/alerts"
# How long the answer to "does this cluster serve PrometheusRules?" is kept (an install is noticed within it).
DISCOVERY_SECONDS = 300.0


def rule_name(ctx: DriverContext) -> str:
    """The PrometheusRule's name: codeb-<project>, or a digest where that would be too long."""
    name = f"codeb-{ctx.key.name}"
    return name if len(name) <= 253 else f"codeb-{hashlib.sha256(ctx.key.name.encode()).hexdigest()[:16]}"


def render_rule(ctx: DriverContext, desired: State) -> dict[str, Any]:
    state = {k: v for k, v in desired.items() if k != "rulesMatch"}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": rule_name(ctx),
            "namespace": ctx.key.namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGER},
            "annotations": {OWNER_UID: ctx.key.uid, RENDERED_FROM: json.dumps(state, sort_keys=True)},
        },
        "spec": {"groups": [render_group(ctx, state)]},
    }


class PrometheusRules:
    component = Component.alerts

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube
        self._served: tuple[float, bool] | None = None

    async def available(self) -> bool:
        """Whether the cluster serves PrometheusRules (the Prometheus Operator's CRD is installed)."""
        now = time.monotonic()
        if self._served is None or now - self._served[0] > DISCOVERY_SECONDS:
            try:
                found = await self._kube.request("GET", API)
            except CodebError:
                found = None
            served = any(r.get("name") == "prometheusrules" for r in (found or {}).get("resources", []))
            self._served = (now, served)
        return self._served[1]

    async def observe(self, ctx: DriverContext) -> Observation:
        live = await self._read(ctx)
        if live is None:
            return Observation()
        try:
            state = json.loads(live["metadata"]["annotations"].get(RENDERED_FROM) or "{}")
            if not isinstance(state, dict):
                raise TypeError("not an object")
            matches = bool(state) and live.get("spec") == render_rule(ctx, state)["spec"]
        except (ValueError, KeyError, TypeError):  # the annotation edited by hand: drift, written again
            state, matches = {}, False
        return Observation(state={**state, "rulesMatch": matches})

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        await self._read(ctx)  # refuses one the operator did not make
        rule = render_rule(ctx, desired)
        await self._kube.request("PATCH", self._path(ctx), rule, content_type="application/apply-patch+yaml",
                                 fieldManager=MANAGER, force="true")  # fmt: skip

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        """Rules are not data: they go with the Project whatever its deletionPolicy."""
        try:
            live = await self._read(ctx)
        except PermanentError:
            return  # not ours: not ours to delete
        if live is not None:
            await self._kube.request("DELETE", self._path(ctx))

    async def _read(self, ctx: DriverContext) -> dict[str, Any] | None:
        live = await self._kube.request("GET", self._path(ctx))
        if live is not None and (live["metadata"].get("annotations") or {}).get(OWNER_UID) != ctx.key.uid:
            raise PermanentError(
                f"PrometheusRule {ctx.key.namespace}/{rule_name(ctx)} exists and was not made by the operator for "
                "this Project; it is left as it is (rename or remove it to let the operator write the alerts)",
                reason="NotOwned",
            )
        return live

    def _path(self, ctx: DriverContext) -> str:
        return f"{API}/namespaces/{ctx.key.namespace}/prometheusrules/{rule_name(ctx)}"
