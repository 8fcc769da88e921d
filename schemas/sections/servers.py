"""Section ``servers``: where the application runs (provider, runtime, hosts or cluster) and how it is reached."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from schemas.base import (
    DNS_LABEL,
    HOST,
    HTTP_PATH,
    CodebModel,
    Rule,
)
from schemas.common import ApplyMode, PortNumber, Provider, Runtime


class HealthCheck(CodebModel):
    rules = (
        Rule(
            cel="self.timeoutSeconds < self.intervalSeconds",
            message="timeoutSeconds must be shorter than intervalSeconds",
            field_path=".timeoutSeconds",
            check=lambda h: h.timeout_seconds < h.interval_seconds,
        ),
    )

    path: str = Field(
        "/api/health", description="HTTP path the load balancer probes.", pattern=HTTP_PATH, max_length=256
    )
    interval_seconds: int = Field(15, description="Seconds between probes.", ge=5, le=300)
    timeout_seconds: int = Field(5, description="Seconds before a probe counts as failed.", ge=1, le=120)
    healthy_threshold: int = Field(2, description="Consecutive successes before a host takes traffic.", ge=1, le=10)
    unhealthy_threshold: int = Field(3, description="Consecutive failures before a host is taken out.", ge=1, le=10)


class LoadBalancer(CodebModel):
    enabled: bool = Field(False, description="Put a provider load balancer in front of the hosts.")
    health_check: HealthCheck = Field(default_factory=HealthCheck, description="Load balancer health check.")


class Firewall(CodebModel):
    ports: list[PortNumber] = Field(
        default_factory=lambda: [22, 80, 443],
        description="TCP ports open to the internet on each host.",
        max_length=32,
    )
    allowed_cidrs: list[Annotated[str, Field(pattern=r"^[0-9a-fA-F:.]+/[0-9]{1,3}$", max_length=64)]] = Field(
        default_factory=lambda: ["0.0.0.0/0"],
        description="Source networks allowed through the firewall.",
        max_length=32,
    )


class SshAccess(CodebModel):
    user: str = Field(
        "root", description="User the operator logs in as.", pattern=r"^[a-z_][a-z0-9_-]*$", max_length=32
    )
    port: PortNumber = Field(22, description="SSH port of the hosts.")
    secret_ref: str = Field(
        description=(
            "Secret in the Project's namespace with key privateKey (OpenSSH private key, no passphrase) and, "
            "optionally, knownHosts (known_hosts lines); without knownHosts, each host's key is trusted on first use, "
            "recorded in the cluster, and a changed key is refused (HostKeyChanged)."
        ),
        pattern=DNS_LABEL,
        max_length=253,
    )


class KubernetesCluster(CodebModel):
    kubeconfig_secret_ref: str = Field(
        description=(
            "Secret in the Project's namespace whose key kubeconfig holds a self-contained kubeconfig for the "
            "target cluster (certificates and token inline: kubectl config view --raw --flatten --minify); "
            "exec and auth-provider plugins and file paths are refused."
        ),
        pattern=DNS_LABEL,
        max_length=253,
    )


class VultrKubernetes(CodebModel):
    version: str = Field(
        description=(
            "The VKE version of the cluster the operator makes, e.g. v1.33.0+1 (Vultr's list: GET "
            "/v2/kubernetes/versions)."
        ),
        pattern=r"^v1\.[0-9]+\.[0-9]+\+[0-9]+$",
        max_length=32,
    )
    nodes: int = Field(
        1,
        description="Nodes in the cluster's node pool, each of size servers.plan. count/min/max stay the Pod replicas.",
        ge=1,
        le=100,
    )


class Autoscale(CodebModel):
    requests_per_host: float = Field(
        50.0,
        description=(
            "Requests per second one host should take, as the Platform's Caddy counts them over the last minute "
            "(the operator's Prometheus, CODEB_PROMETHEUS_URL): more adds hosts, fewer removes them, between "
            "min and max."
        ),
        ge=0.1,
        le=1000000,
    )
    scale_out_cooldown_seconds: int = Field(
        60, description="Seconds after a change before hosts are added again.", ge=0, le=86400
    )
    scale_in_cooldown_seconds: int = Field(
        300,
        description="Seconds after a change before hosts are removed (each drained first, as a count change is).",
        ge=0,
        le=86400,
    )


class Servers(CodebModel):
    rules = (
        Rule(
            cel="!(has(self.count) && (has(self.min) || has(self.max)))",
            message="set either count or min/max, not both",
            field_path=".count",
            check=lambda s: not (s.count is not None and (s.min is not None or s.max is not None)),
        ),
        Rule(
            cel="has(self.min) == has(self.max)",
            message="min and max go together",
            field_path=".max",
            check=lambda s: (s.min is None) == (s.max is None),
        ),
        Rule(
            cel="!has(self.min) || !has(self.max) || self.min <= self.max",
            message="min must be less than or equal to max",
            field_path=".min",
            check=lambda s: s.min is None or s.max is None or s.min <= s.max,
        ),
        Rule(
            cel="(self.provider == 'local') == (self.runtime == 'local')",
            message="runtime local goes with provider local (and only with it)",
            field_path=".runtime",
            check=lambda s: (s.provider == Provider.local) == (s.runtime == Runtime.local),
        ),
        Rule(
            cel="self.provider != 'lightsail' || self.runtime != 'kubernetes'",
            message="Lightsail has no managed Kubernetes: use runtime quadlet",
            field_path=".runtime",
            check=lambda s: not (s.provider == Provider.lightsail and s.runtime == Runtime.kubernetes),
        ),
        Rule(
            cel="self.provider != 'existing' || self.runtime != 'quadlet' || size(self.hosts) > 0",
            message="provider existing with runtime quadlet needs hosts (the machines to deploy to)",
            field_path=".hosts",
            check=lambda s: s.provider != Provider.existing or s.runtime != Runtime.quadlet or len(s.hosts) > 0,
        ),
        Rule(
            cel="self.provider != 'existing' || self.runtime != 'quadlet' || has(self.ssh)",
            message=(
                "provider existing with runtime quadlet needs ssh.secretRef: "
                "a Secret with the privateKey that logs in to the hosts"
            ),
            field_path=".ssh",
            check=lambda s: s.provider != Provider.existing or s.runtime != Runtime.quadlet or s.ssh is not None,
        ),
        Rule(
            cel="!has(self.cluster) || (self.provider == 'existing' && self.runtime == 'kubernetes')",
            message=(
                "cluster names an existing Kubernetes cluster: it goes with provider existing and runtime "
                "kubernetes (remove it, or set those two)"
            ),
            field_path=".cluster",
            check=lambda s: s.cluster is None or (s.provider == Provider.existing and s.runtime == Runtime.kubernetes),
        ),
        Rule(
            cel="self.provider != 'vultr' || self.runtime != 'kubernetes' || has(self.vke)",
            message=(
                "provider vultr with runtime kubernetes makes a VKE cluster: it needs vke.version (e.g. v1.33.0+1)"
            ),
            field_path=".vke",
            check=lambda s: s.provider != Provider.vultr or s.runtime != Runtime.kubernetes or s.vke is not None,
        ),
        Rule(
            cel="!has(self.vke) || (self.provider == 'vultr' && self.runtime == 'kubernetes')",
            message="vke is the cluster of provider vultr with runtime kubernetes (remove it, or set those two)",
            field_path=".vke",
            check=lambda s: s.vke is None or (s.provider == Provider.vultr and s.runtime == Runtime.kubernetes),
        ),
        Rule(
            cel="!(self.provider in ['vultr', 'lightsail']) || has(self.credentialsSecretRef)",
            message=(
                "a cloud provider needs credentialsSecretRef: a Secret with apiKey (Vultr) or accessKeyId and "
                "secretAccessKey (Lightsail)"
            ),
            field_path=".credentialsSecretRef",
            check=lambda s: s.provider not in (Provider.vultr, Provider.lightsail) or s.credentials_secret_ref,
        ),
        Rule(
            cel="!(self.provider in ['vultr', 'lightsail']) || self.runtime != 'quadlet' || has(self.ssh)",
            message=(
                "hosts a cloud provider makes for runtime quadlet need ssh.secretRef: the operator's key, which "
                "the hosts are given at creation and the operator logs in with"
            ),
            field_path=".ssh",
            check=lambda s: (
                s.provider not in (Provider.vultr, Provider.lightsail)
                or s.runtime != Runtime.quadlet
                or s.ssh is not None
            ),
        ),
        Rule(
            cel="!has(self.approvedPlan) || self.apply == 'approve'",
            message="approvedPlan goes with apply: approve",
            field_path=".approvedPlan",
            check=lambda s: s.approved_plan is None or s.apply is ApplyMode.approve,
        ),
        Rule(
            cel="!(self.provider in ['vultr', 'lightsail']) || has(self.region)",
            message="a cloud provider needs a region (e.g. icn for Vultr Seoul, ap-northeast-2 for Lightsail)",
            field_path=".region",
            check=lambda s: s.provider not in (Provider.vultr, Provider.lightsail) or s.region is not None,
        ),
    )

    provider: Provider = Field(
        description="Where hosts come from: a cloud (vultr, lightsail), existing machines, or local."
    )
    region: str | None = Field(
        None,
        description="Provider region, e.g. icn (Vultr Seoul) or ap-northeast-2.",
        pattern=r"^[a-z0-9-]+$",
        max_length=32,
    )
    plan: str | None = Field(
        None,
        description="Host size: a Vultr plan (vc2-2c-4gb) or Lightsail bundle (medium_3_0).",
        pattern=r"^[a-z0-9_.-]+$",
        max_length=64,
    )
    count: int | None = Field(None, description="Fixed number of hosts. Exclusive with min/max.", ge=1, le=100)
    min: int | None = Field(None, description="Fewest hosts when autoscaling.", ge=1, le=100)
    max: int | None = Field(None, description="Most hosts when autoscaling.", ge=1, le=100)
    autoscale: Autoscale = Field(
        default_factory=Autoscale,
        description=(
            "How min/max hosts follow the load (providers vultr and lightsail; on runtime kubernetes, min/max are "
            "Pod replicas for the HorizontalPodAutoscaler)."
        ),
    )
    runtime: Runtime = Field(
        description="How the workload runs: Podman Quadlet units, Kubernetes pods, or local processes."
    )
    platform: str | None = Field(
        None,
        description=(
            "Name of the Platform (cluster-scoped) whose PostgreSQL, Redis, MinIO and Caddy this Project uses; "
            "without one, those components report NotImplemented (the operator has no built-in services)."
        ),
        pattern=DNS_LABEL,
        max_length=63,
    )
    hosts: list[Annotated[str, Field(pattern=HOST, min_length=1, max_length=253)]] = Field(
        default_factory=list,
        description="Host names or IP addresses, for provider existing with runtime quadlet.",
        max_length=100,
    )
    ssh: SshAccess | None = Field(None, description="How the operator logs in to the hosts (quadlet units).")
    cluster: KubernetesCluster | None = Field(
        None,
        description=(
            "For provider existing and runtime kubernetes: the cluster to deploy to. "
            "Omit it to deploy into the operator's own cluster."
        ),
    )
    vke: VultrKubernetes | None = Field(
        None,
        description=(
            "For provider vultr and runtime kubernetes: the VKE cluster Terraform makes for the Project (its "
            "node pool of servers.plan nodes), which the workload is deployed to with the kubeconfig from "
            "Terraform's state."
        ),
    )
    load_balancer: LoadBalancer = Field(default_factory=LoadBalancer, description="Provider load balancer.")
    firewall: Firewall = Field(default_factory=Firewall, description="Host firewall.")
    credentials_secret_ref: str | None = Field(
        None,
        description=(
            "For vultr and lightsail: Secret in the Project's namespace with the provider's credentials, "
            "key apiKey (Vultr) or keys accessKeyId and secretAccessKey (Lightsail). They reach Terraform as "
            "environment variables only."
        ),
        pattern=DNS_LABEL,
        max_length=253,
    )
    apply: ApplyMode = Field(
        ApplyMode.auto,
        description=(
            "For vultr and lightsail, how Terraform changes reach the cloud: auto applies them; approve plans "
            "and waits until approvedPlan names that plan (status.infrastructure.plan.id); observe plans and "
            "reports drift, and never applies."
        ),
    )
    approved_plan: str | None = Field(
        None,
        description="With apply approve: the id of the plan to apply, as status.infrastructure.plan.id shows it.",
        pattern=r"^[0-9a-f]{12}$",
        max_length=12,
    )
