"""Everything Terraform is given and everything read back from it, for one Project (pure).

One module per provider: ``terraform/vultr`` (instances, a firewall group with its rules,
a load balancer with the manifest's health check) and ``terraform/lightsail``
(instances, static IPs, public ports, a load balancer and its attachments); each
configures its own provider, whose credentials arrive as environment variables only.
The spec becomes the module's variables here and nowhere else; the hosts' cloud-init
comes from ``controller/specs/templates/cloud-init.yaml.j2``. The workspace's root
(`root_module`) adds the state backend (a Secret in the cluster) and the outputs; what
Terraform reports (plans, diagnostics, outputs) is read back by `summarize_plan`,
`diagnostics` and `read_outputs`. The driver that runs it is `controller.drivers.terraform`.

Hosts run Ubuntu 24.04: its podman (4.9) has the Quadlet generator, Debian 12's (4.3)
has not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.loop.naming import ProjectKey
from controller.loop.planner import host_count
from controller.specs.rendering import templates
from schemas.project import InfrastructureOutputs, PlanSummary, Provider, ResourceChange, Servers

MODULES = Path(__file__).resolve().parents[2] / "terraform"
VULTR_UBUNTU_24_04 = 2284  # Vultr's os_id
LIGHTSAIL_UBUNTU_24_04 = "ubuntu_24_04"  # Lightsail's blueprint_id
OUTPUTS = ("public_addresses", "private_addresses", "load_balancer_address")  # every host module's
# A VKE module's: its API endpoint, and its kubeconfig, sensitive: Terraform shows it in no plan or apply.
CLUSTER_OUTPUTS = ("endpoint", "kube_config")
SENSITIVE_OUTPUTS = frozenset({"kube_config"})
DEFAULT_PLAN = {Provider.vultr: "vc2-1c-2gb", Provider.lightsail: "small_3_0"}
# Where each provider has hosts (late 2026). A region missing here is refused before
# Terraform runs, with this list in the message; a new one needs a release of the operator.
_VULTR_REGIONS = (
    "ams atl blr bom cdg del dfw ewr fra hnl icn itm jnb lax lhr mad man mel mex mia nrt ord sao scl sea sgp"
)
_LIGHTSAIL_REGIONS = "us-east-1 us-east-2 us-west-2 ca-central-1 eu-west-1 eu-west-2 eu-west-3 eu-central-1 eu-north-1"
_LIGHTSAIL_ASIA = "ap-south-1 ap-northeast-1 ap-northeast-2 ap-southeast-1 ap-southeast-2 ap-southeast-3"
REGIONS = {
    Provider.vultr: frozenset(f"{_VULTR_REGIONS} sjc sto syd tlv waw yto".split()),
    Provider.lightsail: frozenset(f"{_LIGHTSAIL_REGIONS} {_LIGHTSAIL_ASIA}".split()),
}
# The shape of a size's name; whether the region sells it only the provider knows (its plan says).
PLAN_NAMES = {
    Provider.vultr: re.compile(r"^(vc2|vhf|vhp|vdc|voc|vcg|vbm)-[a-z0-9-]+$"),
    Provider.lightsail: re.compile(r"^(nano|micro|small|medium|large|xlarge|2xlarge|4xlarge)_[0-9]+_[0-9]+(_ipv6)?$"),
}
PLAN_EXAMPLES = {Provider.vultr: "vc2-1c-2gb, vhf-2c-4gb", Provider.lightsail: "small_3_0, medium_3_0"}


class InputError(ValueError):
    """A spec value the provider cannot take, found before Terraform runs; names the field."""

    def __init__(self, field: str, message: str, reason: str) -> None:
        super().__init__(f"{field}: {message}")
        self.reason = reason


def check_servers(servers: Servers) -> None:
    """Refuse what the operator can know is wrong: an unknown region, a size that is no size's name."""
    provider = servers.provider
    known = REGIONS.get(provider)
    if known is None:
        raise InputError("spec.servers.provider", f"{provider.value} has no Terraform module", "NoModule")
    if servers.region not in known:
        raise InputError(
            "spec.servers.region",
            f"{servers.region!r} is not a {provider.value} region; use one of {', '.join(sorted(known))}",
            "InvalidRegion",
        )
    if servers.plan is not None and not PLAN_NAMES[provider].match(servers.plan):
        raise InputError(
            "spec.servers.plan",
            f"{servers.plan!r} is not a {provider.value} size (e.g. {PLAN_EXAMPLES[provider]})",
            "InvalidPlan",
        )


def module_dir(provider: Provider) -> Path:
    return MODULES / provider.value


# The module of a VKE cluster (servers.vke), beside the providers' host modules.
CLUSTER_MODULE = "vultr-kubernetes"


def cluster_inputs(key: ProjectKey, servers: Servers, name: str | None = None) -> dict[str, Any]:
    """The variables of the VKE module (`terraform/vultr-kubernetes`): no hosts, keys or firewall of ours."""
    check_servers(servers)
    if servers.vke is None:
        raise InputError("spec.servers.vke", "is needed for a cluster (vke.version)", "InvalidCluster")
    return {
        "name": name or resource_name(key),
        "region": servers.region,
        "kubernetes_version": servers.vke.version,  # "version" is a name Terraform keeps for itself
        "plan": servers.plan or DEFAULT_PLAN[servers.provider],
        "node_count": servers.vke.nodes,
    }


NAME_LIMIT = 48  # the longest prefix the providers take with ``-<index>`` / ``-lb`` appended
_DIGEST = 10  # hex characters of sha256(namespace/name): 40 bits against an accidental meeting


def resource_name(key: ProjectKey) -> str:
    """The prefix of every resource's name: readable, and unique per Project within the providers' limits.

    The readable part alone is not: ``a-b``/``c`` and ``a``/``b-c`` meet, and so do long names
    cut at the limit. The digest of ``<namespace>/<name>`` (a namespace has no ``/``) tells them apart.
    """
    digest = hashlib.sha256(f"{key.namespace}/{key.name}".encode()).hexdigest()[:_DIGEST]
    return f"{_readable(key)[: NAME_LIMIT - _DIGEST - 1].rstrip('-')}-{digest}"


def legacy_resource_name(key: ProjectKey) -> str:
    """The prefix earlier releases gave (not injective): kept for the resources made with it."""
    return _readable(key)[:NAME_LIMIT].rstrip("-")


def _readable(key: ProjectKey) -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"codeb-{key.namespace}-{key.name}")


def name_in_state(key: ProjectKey, state: Mapping[str, Any] | None) -> str:
    """The prefix to pass for a Project whose Terraform state is ``state``: the one its resources have.

    A rename would replace every resource (on Lightsail, the instances and their disks), so a
    state made with the legacy prefix keeps it. Every module puts the prefix in its resources'
    names, so a state whose resources carry the injective prefix was made with it; a state
    with resources that do not was made before it. No state, or no resource: the injective one.
    """
    injective = resource_name(key)
    made = [r for r in (state or {}).get("resources", []) if isinstance(r, dict) and r.get("instances")]
    if not made or injective in json.dumps(made):
        return injective
    return legacy_resource_name(key)


def cloud_init(key: ProjectKey, ssh_public_key: str) -> str:
    if "\n" in ssh_public_key.strip():
        raise ValueError("the SSH public key spans lines")
    return templates.get_template("cloud-init.yaml.j2").render(
        project=f"{key.namespace}/{key.name}", ssh_public_key=ssh_public_key.strip()
    )


def module_inputs(key: ProjectKey, servers: Servers, app_port: int | None, ssh_public_key: str,
                  name: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The variables of the provider's module (raises `InputError` for what it cannot take).

    ``name``: the resources' prefix (`name_in_state`); the injective one when not given.
    """
    check_servers(servers)
    common = {
        "name": name or resource_name(key),
        "host_count": host_count(servers),
        "ssh_public_key": ssh_public_key.strip(),
        "user_data": cloud_init(key, ssh_public_key),
        "load_balancer_count": 1 if servers.load_balancer.enabled else 0,
        "app_port": app_port,
    }
    plan = servers.plan or DEFAULT_PLAN[servers.provider]
    if servers.provider is Provider.vultr:
        return common | _vultr(servers, plan)
    return common | _lightsail(key, servers, plan)


def _vultr(servers: Servers, plan: str) -> dict[str, Any]:
    firewall, health = servers.firewall, servers.load_balancer.health_check
    rules = {}
    for port in sorted(firewall.ports):
        for cidr in sorted(firewall.allowed_cidrs):
            subnet, size = cidr.split("/")
            name = f"{port}-{re.sub(r'[^0-9a-f]', '-', subnet.lower())}-{size}"
            ip_type = "v6" if ":" in subnet else "v4"
            rules[name] = {"port": str(port), "ip_type": ip_type, "subnet": subnet, "subnet_size": int(size)}
    return {
        "region": servers.region,
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


def _lightsail(key: ProjectKey, servers: Servers, plan: str) -> dict[str, Any]:
    firewall = servers.firewall
    v4 = sorted(c for c in firewall.allowed_cidrs if ":" not in c)
    v6 = sorted(c for c in firewall.allowed_cidrs if ":" in c)
    return {
        "region": servers.region,
        "availability_zone": f"{servers.region}a",
        "blueprint_id": LIGHTSAIL_UBUNTU_24_04,
        "bundle_id": plan,
        "public_ports": [{"port": port, "cidrs": v4, "ipv6_cidrs": v6} for port in sorted(firewall.ports)],
        "health_check_path": servers.load_balancer.health_check.path,
        "tags": {"codeb.dev/project": f"{key.namespace}/{key.name}"},
    }


def state_suffix(key: ProjectKey) -> str:
    """The Project's part of its state Secret's name (``tfstate-default-<suffix>``, in the operator's namespace).

    A namespace has no dot, so ``<namespace>.<name>`` cannot belong to two Projects.
    """
    return f"{key.namespace}.{key.name}"


STATE_LIMIT = 64 << 20  # bytes of state JSON: far above any Project's (hosts, a balancer, a firewall)


def stored_state(secret: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The Terraform state the ``kubernetes`` backend keeps in a Secret (``data.tfstate``: gzip, then base64).

    None when there is no Secret; unreadable or larger than `STATE_LIMIT` raises ValueError.
    """
    encoded = ((secret or {}).get("data") or {}).get("tfstate")
    if not encoded:
        return None
    inflate = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        text = inflate.decompress(base64.b64decode(encoded), STATE_LIMIT + 1)
        state = json.loads(text) if len(text) <= STATE_LIMIT and inflate.eof else None
    except (zlib.error, ValueError, binascii.Error):
        state = None
    if not isinstance(state, dict):
        raise ValueError("the Terraform state Secret does not hold a whole gzip-compressed JSON state")
    return state


def backend_settings(namespace: str, suffix: str, kubeconfig: str | None) -> dict[str, Any]:
    """The ``kubernetes`` backend: state in a Secret, locked by a Lease, in the operator's own cluster."""
    where = {"config_path": kubeconfig} if kubeconfig else {"in_cluster_config": True}
    return {"secret_suffix": suffix, "namespace": namespace, **where}


def root_module(inputs: Mapping[str, Any], backend: Mapping[str, Any] | None, source: str = "./module",
                outputs: Iterable[str] = OUTPUTS) -> dict[str, Any]:  # fmt: skip
    """The workspace's root (Terraform JSON): the state backend, the Project's module, its outputs.

    The module's arguments are the root's variables, never the values themselves: in
    Terraform JSON every string is a template, so a value written here would be evaluated
    (a key comment ``${file("/var/run/secrets/...")}`` reads the operator's files). The
    values go in ``terraform.tfvars.json`` (`input_values`), which Terraform reads as
    literal values. No credentials here: the module's provider reads them from the environment.
    """
    sensitive = {"sensitive": True}
    passed = {name: {"value": f"${{module.project.{name}}}", **(sensitive if name in SENSITIVE_OUTPUTS else {})}
              for name in outputs}  # fmt: skip
    arguments = {name: f"${{var.{name}}}" for name in sorted(inputs)}
    # Untyped (any) and nullable: the module's own declarations check each value.
    variables: dict[str, Any] = {name: {} for name in sorted(inputs)}
    root: dict[str, Any] = {"module": {"project": {"source": source, **arguments}}, "output": passed}
    if variables:
        root["variable"] = variables
    if backend is not None:
        root["terraform"] = {"backend": {"kubernetes": dict(backend)}}
    return root


INPUT_VALUES_FILE = "terraform.tfvars.json"


def input_values(inputs: Mapping[str, Any]) -> bytes:
    """``terraform.tfvars.json``: the module's inputs as values, which Terraform never evaluates."""
    return json.dumps(dict(inputs), indent=2, sort_keys=True).encode()


def config_hash(files: Mapping[str, bytes]) -> str:
    """What a run depends on, the module and its inputs: unchanged, Terraform has nothing new to do."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{len(name)}:{name}:{len(files[name])}:".encode())
        digest.update(files[name])
    return digest.hexdigest()


# Terraform's action lists, as `show -json` gives them, in the words status uses.
_ACTIONS = {("create",): "create", ("update",): "update", ("delete",): "delete",
            ("delete", "create"): "replace", ("create", "delete"): "replace"}  # fmt: skip


def summarize_plan(shown: Mapping[str, Any], hash_of_config: str, at: datetime) -> PlanSummary:
    """A saved plan (``terraform show -json``) by resource, with an id naming exactly these changes."""
    changes = []
    for change in shown.get("resource_changes", []):
        action = _ACTIONS.get(tuple(change["change"]["actions"]))
        if action is not None:
            changes.append((change["address"], action, change["change"].get("before"), change["change"].get("after")))
    changes.sort(key=lambda c: c[0])
    ident = hashlib.sha256(json.dumps([hash_of_config, changes], sort_keys=True, default=str).encode()).hexdigest()
    actions = [action for _, action, _, _ in changes]
    return PlanSummary(
        id=ident[:12],
        add=sum(a in ("create", "replace") for a in actions),
        change=actions.count("update"),
        destroy=sum(a in ("delete", "replace") for a in actions),
        resources=[ResourceChange(address=address, action=action) for address, action, _, _ in changes],
        config_hash=hash_of_config,
        planned_at=at,
    )


def diagnostics(json_lines: Iterable[str], limit: int = 3) -> str:
    """Terraform's errors from its ``-json`` stream, one line each: what, why, and where."""
    found: list[str] = []
    for line in json_lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict) or message.get("@level") != "error":
            continue
        diagnostic = message.get("diagnostic") or {}
        text = diagnostic.get("summary") or message.get("@message", "")
        detail = " ".join(str(diagnostic.get("detail", "")).split())
        span = diagnostic.get("range") or {}
        where = diagnostic.get("address") or (f"{span['filename']}:{span.get('start', {}).get('line', '?')}"
                                              if span.get("filename") else None)  # fmt: skip
        entry = text + (f": {detail}" if detail else "") + (f" (at {where})" if where else "")
        if entry and entry not in found:
            found.append(entry)
    return "; ".join(found[:limit])


def read_outputs(output_json: Mapping[str, Any]) -> InfrastructureOutputs:
    """``terraform output -json``: the addresses the Project's hosts and balancer got."""

    def value(name: str) -> Any:
        return (output_json.get(name) or {}).get("value")

    return InfrastructureOutputs(
        public_addresses=[str(a) for a in value("public_addresses") or []],
        private_addresses=[str(a) for a in value("private_addresses") or [] if a],
        load_balancer_address=value("load_balancer_address") or None,
        # A cluster's API endpoint; its kube_config (sensitive) is read from the state, never kept here.
        cluster_endpoint=str(value("endpoint")) if value("endpoint") else None,
    )


def kubeconfig_in_state(state: Mapping[str, Any] | None) -> str | None:
    """The kubeconfig a VKE module's state holds (output ``kube_config``, base64 as Vultr gives it), as text."""
    output = ((state or {}).get("outputs") or {}).get("kube_config") or {}
    value = output.get("value") if isinstance(output, dict) else None
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class LockInfo:
    """Who holds a state lock, from the Lease's ``app.terraform.io/lock-info`` annotation."""

    id: str
    operation: str
    who: str
    created: str


def lock_info(lease: Mapping[str, Any] | None) -> LockInfo | None:
    """The lock a ``kubernetes`` backend Lease holds, or None when it is free."""
    if not lease:
        return None
    holder = (lease.get("spec") or {}).get("holderIdentity")
    if not holder:
        return None
    annotations = (lease.get("metadata") or {}).get("annotations") or {}
    try:
        info = json.loads(annotations.get("app.terraform.io/lock-info", "{}"))
    except ValueError:
        info = {}
    operation = str(info.get("Operation", "")).removeprefix("OperationType").lower() or "unknown"
    return LockInfo(str(holder), operation, str(info.get("Who", "unknown")), str(info.get("Created", "")))
