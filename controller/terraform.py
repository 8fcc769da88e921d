"""Inputs of the Terraform modules in ``terraform/`` for one Project (pure).

One module per provider: ``terraform/vultr`` (instances, a firewall group with its rules,
a load balancer with the manifest's health check) and ``terraform/lightsail``
(instances, static IPs, public ports, a load balancer and its attachments). The spec
becomes the module's variables here and nowhere else; the hosts' cloud-init comes from
``controller/templates/cloud-init.yaml.j2``.

Hosts run Ubuntu 24.04: its podman (4.9) has the Quadlet generator, Debian 12's (4.3)
has not.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from controller.naming import ProjectKey
from controller.planner import host_count
from controller.rendering import templates
from schemas.project import Allocations, ProjectSpec, Provider

MODULES = Path(__file__).resolve().parents[1] / "terraform"
VULTR_UBUNTU_24_04 = 2284  # Vultr's os_id
LIGHTSAIL_UBUNTU_24_04 = "ubuntu_24_04"  # Lightsail's blueprint_id
OUTPUTS = ("public_addresses", "private_addresses", "load_balancer_address")  # every module's
DEFAULT_PLAN = {Provider.vultr: "vc2-1c-2gb", Provider.lightsail: "small_3_0"}


def module_dir(provider: Provider) -> Path:
    return MODULES / provider.value


def resource_name(key: ProjectKey) -> str:
    """The prefix of every resource's name: unique per Project, within the providers' limits."""
    return re.sub(r"[^a-z0-9-]", "-", f"codeb-{key.namespace}-{key.name}")[:48].rstrip("-")


def cloud_init(key: ProjectKey, ssh_public_key: str) -> str:
    if "\n" in ssh_public_key.strip():
        raise ValueError("the SSH public key spans lines")
    return templates.get_template("cloud-init.yaml.j2").render(
        project=f"{key.namespace}/{key.name}", ssh_public_key=ssh_public_key.strip()
    )


def module_inputs(key: ProjectKey, spec: ProjectSpec, allocations: Allocations, ssh_public_key: str) -> dict[str, Any]:
    """The variables of the provider's module (``terraform.tfvars.json``)."""
    servers = spec.servers
    common = {
        "name": resource_name(key),
        "host_count": host_count(servers),
        "ssh_public_key": ssh_public_key.strip(),
        "user_data": cloud_init(key, ssh_public_key),
        "load_balancer_count": 1 if servers.load_balancer.enabled else 0,
        "app_port": allocations.port,
    }
    plan = servers.plan or DEFAULT_PLAN[servers.provider]
    if servers.provider is Provider.vultr:
        return common | _vultr(spec, plan)
    if servers.provider is Provider.lightsail:
        return common | _lightsail(key, spec, plan)
    raise ValueError(f"provider {servers.provider.value} has no Terraform module")


def _vultr(spec: ProjectSpec, plan: str) -> dict[str, Any]:
    firewall, health = spec.servers.firewall, spec.servers.load_balancer.health_check
    rules = {}
    for port in sorted(firewall.ports):
        for cidr in sorted(firewall.allowed_cidrs):
            subnet, size = cidr.split("/")
            name = f"{port}-{re.sub(r'[^0-9a-f]', '-', subnet.lower())}-{size}"
            ip_type = "v6" if ":" in subnet else "v4"
            rules[name] = {"port": str(port), "ip_type": ip_type, "subnet": subnet, "subnet_size": int(size)}
    return {
        "region": spec.servers.region,
        "plan": plan,
        "os_id": VULTR_UBUNTU_24_04,
        "firewall_rules": rules,
        "health_check": {
            "path": health.path,
            "interval": health.interval_seconds,
            "timeout": health.timeout_seconds,
            "healthy": health.healthy_threshold,
            "unhealthy": health.unhealthy_threshold,
        },
        "tags": ["codeb"],
    }


def _lightsail(key: ProjectKey, spec: ProjectSpec, plan: str) -> dict[str, Any]:
    firewall = spec.servers.firewall
    v4 = sorted(c for c in firewall.allowed_cidrs if ":" not in c)
    v6 = sorted(c for c in firewall.allowed_cidrs if ":" in c)
    return {
        "availability_zone": f"{spec.servers.region}a",
        "blueprint_id": LIGHTSAIL_UBUNTU_24_04,
        "bundle_id": plan,
        "public_ports": [{"port": port, "cidrs": v4, "ipv6_cidrs": v6} for port in sorted(firewall.ports)],
        "health_check_path": spec.servers.load_balancer.health_check.path,
        "tags": {"codeb.dev/project": f"{key.namespace}/{key.name}"},
    }


def root_module(provider: Provider, region: str, inputs: dict[str, Any], source: Path | None = None) -> dict[str, Any]:
    """The workspace's root (Terraform JSON): the provider in its region, and the Project's module.

    Credentials are not here: they reach Terraform as environment variables only.
    """
    if provider is Provider.vultr:
        configured: dict[str, Any] = {"vultr": {}}  # VULTR_API_KEY from the environment; regions are per resource
    elif provider is Provider.lightsail:
        configured = {"aws": {"region": region}}
    else:
        raise ValueError(f"provider {provider.value} has no Terraform module")
    module = {"source": str(source or module_dir(provider)), **inputs}
    outputs = {name: {"value": f"${{module.project.{name}}}"} for name in OUTPUTS}
    return {"provider": configured, "module": {"project": module}, "output": outputs}
