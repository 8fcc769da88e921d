"""The bad-manifest corpus: each entry breaks one rule and names the field it breaks.

Every case is asserted twice: refused by the real API server at `kubectl apply` time
(with a message naming the field) and refused by the operator's own validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.factories import project

Mutation = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class BadManifest:
    id: str
    mutate: Mutation
    field: str  # path the API server's and the operator's messages must name

    def build(self, namespace: str | None = None) -> dict[str, Any]:
        doc = project(name="bad", namespace=namespace)
        self.mutate(doc["spec"])
        return doc


def _set(path: str, value: Any) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return mutate


def _all(*mutations: Mutation) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        for m in mutations:
            m(spec)

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


def _on_vke() -> dict[str, Any]:
    """Servers on Vultr's Kubernetes, without the cluster's vke section."""
    return {"provider": "vultr", "region": "icn", "runtime": "kubernetes", "credentialsSecretRef": "keys"}


def _on_vultr(**changes: Any) -> dict[str, Any]:
    """Servers on Vultr with all a cloud needs, changed as given (None removes a field)."""
    servers = {"provider": "vultr", "region": "icn", "runtime": "quadlet", "credentialsSecretRef": "keys",
               "ssh": {"secretRef": "k"}} | changes  # fmt: skip
    return {k: v for k, v in servers.items() if v is not None}


CORPUS = [
    BadManifest("wrong-environment-enum", _set("environment.type", "prod"), "spec.environment.type"),
    BadManifest("wrong-provider-enum", _set("servers.provider", "digitalocean"), "spec.servers.provider"),
    BadManifest("wrong-runtime-enum", _set("servers.runtime", "docker"), "spec.servers.runtime"),
    BadManifest("port-outside-staging-range", _set("resources.port", 4100), "spec.resources.port"),
    BadManifest(
        "port-outside-production-range",
        _all(_set("environment.type", "production"), _set("resources.port", 5500)),
        "spec.resources.port",
    ),
    BadManifest("port-below-1024", _set("resources.port", 80), "spec.resources.port"),
    BadManifest("invalid-domain", _set("environment.domains", ["shop_example.com"]), "spec.environment.domains[0]"),
    BadManifest("domain-without-dot", _set("environment.domains", ["localhost"]), "spec.environment.domains[0]"),
    BadManifest("invalid-cron-words", _set("backup.schedule", "every day at 3"), "spec.backup.schedule"),
    BadManifest("invalid-cron-minute", _set("backup.schedule", "61 3 * * *"), "spec.backup.schedule"),
    BadManifest(
        "min-greater-than-max",
        _all(_set("servers.min", 5), _set("servers.max", 2)),
        "spec.servers.min",
    ),
    BadManifest(
        "count-and-min-max",
        _all(_set("servers.count", 2), _set("servers.min", 1), _set("servers.max", 3)),
        "spec.servers.count",
    ),
    BadManifest("unknown-field", _set("project.colour", "blue"), "spec.project.colour"),
    BadManifest("unknown-section", _set("scaling", {"enabled": True}), "spec.scaling"),
    BadManifest("slug-too-long", _set("project.slug", "a-very-long-project-slug-name-x1"), "spec.project.slug"),
    BadManifest("slug-not-dns-label", _set("project.slug", "Food_Delivery"), "spec.project.slug"),
    BadManifest(
        "preview-without-pr",
        _set("environment.type", "preview"),
        "spec.environment.pullRequest",
    ),
    BadManifest("pr-outside-preview", _set("environment.pullRequest", 12), "spec.environment.pullRequest"),
    BadManifest(
        "image-and-git", _set("project.source.git", {"url": "https://github.com/acme/shop.git"}), "spec.project.source"
    ),
    BadManifest("missing-source", _drop("project.source"), "spec.project.source"),
    BadManifest(
        "local-git-with-a-containerfile-template",
        _all(
            _set("project.source", {"git": {"url": "https://github.com/acme/shop.git"}}),
            _set("project.template", "container"),
        ),
        "spec.project.template",
    ),
    BadManifest(
        "ssh-git-without-credentials",
        _set("project.source", {"git": {"url": "git@github.com:acme/shop.git"}}),
        "spec.project.source.git.credentialsSecretRef",
    ),
    BadManifest("bad-env-var-name", _set("environment.variables", {"1ST": "x"}), "spec.environment.variables"),
    BadManifest("bad-memory-quantity", _set("resources.memory", "lots"), "spec.resources.memory"),
    BadManifest(
        "lightsail-kubernetes",
        _all(
            _set("servers.provider", "lightsail"),
            _set("servers.region", "ap-northeast-2"),
            _set("servers.runtime", "kubernetes"),
            _set("servers.credentialsSecretRef", "keys"),
        ),
        "spec.servers.runtime",
    ),
    BadManifest("cloud-without-region", _set("servers", _on_vultr(region=None)), "spec.servers.region"),
    BadManifest(
        "cloud-without-credentials",
        _set("servers", _on_vultr(provider="lightsail", region="ap-northeast-2", credentialsSecretRef=None)),
        "spec.servers.credentialsSecretRef",
    ),
    BadManifest("cloud-quadlet-without-ssh", _set("servers", _on_vultr(ssh=None)), "spec.servers.ssh"),
    BadManifest(
        "approved-plan-without-approve",
        _set("servers", _on_vultr(approvedPlan="0123456789ab")),
        "spec.servers.approvedPlan",
    ),
    BadManifest(
        "approved-plan-not-an-id",
        _set("servers", _on_vultr(apply="approve", approvedPlan="yes")),
        "spec.servers.approvedPlan",
    ),
    BadManifest(
        "health-timeout-not-below-interval",
        _set("servers.loadBalancer", {"healthCheck": {"intervalSeconds": 10, "timeoutSeconds": 10}}),
        "spec.servers.loadBalancer.healthCheck.timeoutSeconds",
    ),
    BadManifest(
        "wal-without-database",
        _set("backup", {"include": ["storage"], "walArchiving": True}),
        "spec.backup.walArchiving",
    ),
    BadManifest(
        "existing-without-ssh",
        _set("servers", {"provider": "existing", "runtime": "quadlet", "hosts": ["10.0.0.5"]}),
        "spec.servers.ssh",
    ),
    BadManifest(
        "cluster-with-quadlet",
        _set(
            "servers",
            {
                "provider": "existing",
                "runtime": "quadlet",
                "hosts": ["10.0.0.5"],
                "ssh": {"secretRef": "k"},
                "cluster": {"kubeconfigSecretRef": "target"},
            },
        ),
        "spec.servers.cluster",
    ),
    BadManifest(
        "cluster-secret-not-a-name",
        _set("servers", {"provider": "existing", "runtime": "kubernetes", "cluster": {"kubeconfigSecretRef": "../x"}}),
        "spec.servers.cluster.kubeconfigSecretRef",
    ),
    BadManifest(
        "vultr-kubernetes-without-vke",
        _set("servers", _on_vke()),
        "spec.servers.vke",
    ),
    BadManifest(
        "vke-on-quadlet-hosts",
        _set("servers", {**_on_vultr(), "vke": {"version": "v1.33.0+1"}}),
        "spec.servers.vke",
    ),
    BadManifest(
        "vke-version-not-a-version",
        _set("servers", {**_on_vke(), "vke": {"version": "latest; rm -rf /"}}),
        "spec.servers.vke.version",
    ),
    BadManifest(
        "quadlet-replicas",
        _all(
            _set("servers", _on_vultr()),
            _set("project.source", {"image": "ghcr.io/acme/shop:1"}),
            _set("resources.replicas", 2),
        ),
        "spec.resources.replicas",
    ),
    BadManifest("wrong-deletion-policy", _set("deletionPolicy", "Orphan"), "spec.deletionPolicy"),
    # Values that would reach a route, a file, a command line or a unit on a host.
    *[
        BadManifest(
            f"host-{label}",
            _set("servers", {"provider": "existing", "runtime": "quadlet", "hosts": [host], "ssh": {"secretRef": "k"}}),
            "spec.servers.hosts[0]",
        )
        for label, host in (("empty", ""), ("newline", "a\nb"), ("sql", "'; DROP TABLE x; --"), ("port", "a:b:c d"))
    ],
    BadManifest("revision-newline", _set("project.revision", "v1\nExecStart=/bin/sh"), "spec.project.revision"),
    BadManifest("revision-space", _set("project.revision", "v1 beta"), "spec.project.revision"),
    BadManifest("variable-value-newline", _set("environment.variables", {"A": "x\nB=y"}), "spec.environment.variables"),
    BadManifest(
        "app-version-newline",
        _set("features.apps", [{"name": "forum", "version": "1\n2"}]),
        "spec.features.apps[0].version",
    ),
    BadManifest(
        "hook-empty-command",
        _set("features.postDeployHooks", [{"name": "migrate", "command": [""]}]),
        "spec.features.postDeployHooks[0].command[0]",
    ),
    BadManifest(
        "hook-no-command",
        _set("features.postDeployHooks", [{"name": "migrate", "command": []}]),
        "spec.features.postDeployHooks[0].command",
    ),
    BadManifest(
        "image-too-long", _set("project.source.image", "ghcr.io/acme/" + "a" * 290), "spec.project.source.image"
    ),
    BadManifest(
        "pull-request-huge",
        _all(_set("environment.type", "preview"), _set("environment.pullRequest", 1_000_000_000_000)),
        "spec.environment.pullRequest",
    ),
    BadManifest("redis-db-index", _set("features.redis", {"isolation": "dbIndex"}), "spec.features.redis.isolation"),
    BadManifest("restart-token-with-space", _set("restartedAt", "now please"), "spec.restartedAt"),
    BadManifest("template-unknown", _set("project.template", "rails"), "spec.project.template"),
    BadManifest(
        "notify-url-in-manifest",
        _set("monitoring.notify", [{"name": "team", "urlSecretRef": "https://hooks.slack.com/services/T0/B0/x"}]),
        "spec.monitoring.notify[0].urlSecretRef",
    ),
    BadManifest(
        "notify-unknown-event",
        _set("monitoring.notify", [{"name": "team", "urlSecretRef": "hook", "events": ["Deployed"]}]),
        "spec.monitoring.notify[0].events[0]",
    ),
]
