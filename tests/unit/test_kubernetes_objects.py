"""The Kubernetes workload's objects, rendered from plain data and compared whole."""

from __future__ import annotations

from typing import Any

from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, desired_state
from controller.specs.kubernetes import DIGEST, balancer_sources, render_objects
from schemas.project import Allocations, ProjectSpec
from tests.factories import project_spec

ON_VKE = {"provider": "vultr", "region": "icn", "runtime": "kubernetes", "vke": {"version": "v1.33.0+1"}}
CTX = DriverContext(
    ProjectKey("shop-team", "shop", "uid-1"), Allocations(port=4512, connection_secret="shop-staging-connection")
)
LABELS = {
    "app.kubernetes.io/name": "shop-staging",
    "app.kubernetes.io/managed-by": "codeb",
    "codeb.dev/project": "shop",
}


def objects(**sections: Any) -> dict[str, dict[str, Any]]:
    spec = ProjectSpec.model_validate(
        project_spec(
            servers={**ON_VKE, **sections.pop("servers", {})},
            features={"database": {}},
            **sections,
        )
    )
    allocations = Allocations(port=4512, connection_secret="shop-staging-connection", database="shop_staging_db")
    desired = desired_state(spec, allocations)[Component.workload]
    rendered = render_objects(CTX, desired, "cafe")
    for obj in rendered:
        assert len(obj["metadata"]["annotations"].pop(DIGEST)) == 16
    return {o["kind"]: o for o in rendered}


def test_deployment_carries_image_probes_limits_and_credentials_from_the_secret() -> None:
    deployment = objects(
        resources={"replicas": 2, "cpu": "250m", "memory": "256Mi", "containerPort": 8080},
        environment={
            "type": "staging",
            "variables": {"MODE": "web"},
            "secretRefs": [{"name": "stripe", "optional": True}],
        },
        monitoring={"healthPath": "/healthz", "probeIntervalSeconds": 10},
        project={
            "slug": "shop",
            "source": {"image": "ghcr.io/acme/shop:1.0.0"},
            "rollout": {
                "healthCheck": {
                    "intervalSeconds": 2.5,
                    "timeoutSeconds": 0.5,
                    "healthyThreshold": 3,
                    "unhealthyThreshold": 4,
                },
                "startTimeoutSeconds": 120,
            },
        },
    )["Deployment"]
    check = {"httpGet": {"path": "/healthz", "port": 8080}}
    # The rollout's gate, in the whole seconds Kubernetes counts: 2.5 s -> 3, 0.5 s -> 1.
    gate = {"periodSeconds": 3, "timeoutSeconds": 1, "successThreshold": 3, "failureThreshold": 4}
    limits = {"cpu": "250m", "memory": "256Mi"}
    assert deployment == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop-staging", "namespace": "shop-team", "labels": LABELS,
                     "annotations": {"codeb.dev/revision": ""}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "shop-staging"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "progressDeadlineSeconds": 120,
            "template": {
                "metadata": {"labels": LABELS,
                             "annotations": {"codeb.dev/credentials-digest": "cafe", "codeb.dev/revision": ""}},
                "spec": {
                    "enableServiceLinks": False,
                    "containers": [{
                        "name": "app",
                        "image": "ghcr.io/acme/shop:1.0.0",
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "env": [{"name": "MODE", "value": "web"}, {"name": "PORT", "value": "8080"},
                                {"name": "HOST", "value": "0.0.0.0"}, {"name": "CODEB_REVISION", "value": ""}],
                        "envFrom": [{"secretRef": {"name": "shop-staging-connection"}},
                                    {"secretRef": {"name": "stripe", "optional": True}}],
                        "resources": {"limits": limits, "requests": limits},
                        "readinessProbe": {**check, **gate},
                        "livenessProbe": {**check, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3,
                                          "initialDelaySeconds": 10},
                        # Replaced Pods keep serving while kube-proxy stops sending them requests.
                        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                    }],
                },
            },
        },
    }  # fmt: skip


def test_service_and_disruption_budget() -> None:
    rendered = objects(servers={"provider": "existing", "region": None, "vke": None})
    assert rendered["Service"]["spec"] == {
        "selector": {"app.kubernetes.io/name": "shop-staging"},
        "ports": [{"name": "http", "port": 4512, "targetPort": "http"}],
    }
    assert rendered["Service"]["metadata"]["annotations"] == {}  # its digest only (taken off above)
    assert rendered["PodDisruptionBudget"]["spec"] == {
        "maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "shop-staging"}}
    }  # fmt: skip
    assert "HorizontalPodAutoscaler" not in rendered


def test_min_and_max_hand_the_replica_count_to_an_autoscaler() -> None:
    rendered = objects(servers={"min": 2, "max": 6})
    assert "replicas" not in rendered["Deployment"]["spec"]
    assert rendered["HorizontalPodAutoscaler"]["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop-staging"},
        "minReplicas": 2,
        "maxReplicas": 6,
        "metrics": [{"type": "Resource",
                     "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
    }  # fmt: skip


def test_a_project_without_data_services_waits_for_no_connection_secret() -> None:
    spec = ProjectSpec.model_validate(project_spec(servers=ON_VKE))
    desired = desired_state(spec, Allocations(port=4512, connection_secret="shop-staging-connection"))
    container = render_objects(CTX, desired[Component.workload], "x")[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == []


def test_a_vke_clusters_service_is_the_clouds_balancer_open_only_to_the_firewalls_sources() -> None:
    """A VKE cluster is the Project's own, outside the Platform's Caddy: the route reaches it through Vultr's
    load balancer, which lets in only servers.firewall.allowedCidrs on the application's port."""
    firewall = {"ports": [443], "allowedCidrs": ["203.0.113.7/32", "2001:db8::/48"]}
    service = objects(servers={"firewall": firewall})["Service"]
    assert service["spec"]["type"] == "LoadBalancer"
    rules = service["metadata"]["annotations"]["service.beta.kubernetes.io/vultr-loadbalancer-firewall-rules"]
    assert rules == "2001:db8::/48,4512;203.0.113.7/32,4512"
    assert balancer_sources(service) == ["2001:db8::/48", "203.0.113.7/32"]
    assert balancer_sources(objects(servers={"provider": "existing", "region": None, "vke": None})["Service"]) is None
